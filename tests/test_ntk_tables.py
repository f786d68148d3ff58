"""The NTK result tables (sparse_nte.reporting.ntk_tables) against means and sample sds worked
out by hand from small synthetic results: only done trials count, a per-seed quantity is first
averaged over the moments of the trial, and adaptation rows are matched by k, not by position."""
from __future__ import annotations

import math
import statistics

from hypothesis import given, strategies as st

from sparse_nte.reporting.collect import ExperimentRecords, StudyResults, TrialRecord
from sparse_nte.reporting.ntk_tables import (adaptation_table, kernel_table, mean_sd, ntk_markdown,
                                             within_task_table)


def _study(*experiments: ExperimentRecords) -> StudyResults:
    return StudyResults(name="s", question="?", file="f.cfg", results_dir="r",
                        experiments=list(experiments))


def _exp(name: str, results, statuses=None) -> ExperimentRecords:
    statuses = statuses or ["done"] * len(results)
    trials = [TrialRecord(name, name, seed, status, result)
              for seed, (status, result) in enumerate(zip(statuses, results))]
    return ExperimentRecords(name, name, {}, trials=trials)


def _row(table: str, *first_cells: str) -> list:
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[:len(first_cells)] == list(first_cells):
            return cells
    raise AssertionError(f"no row starting {first_cells} in\n{table}")


def _adapt(before: float, by_k: dict) -> dict:
    return {"before": {"new": before, "old": [0.9]},
            "results": [{"k": k, "finetune": {"new": ft, "old": ft_old},
                         "gp": {"new": gp, "old": gp_old}}
                        for k, (ft, gp, ft_old, gp_old) in by_k.items()]}


def test_mean_sd_is_the_sample_sd_and_skips_missing_values():
    assert mean_sd([0.5, 0.7], 100) == "60.00 ± 14.14"
    assert mean_sd([0.25], 100) == "25.00"
    assert mean_sd([]) == "n/a"
    assert mean_sd([1.0, float("nan"), None, 3.0], 1.0, 1) == "2.0 ± 1.4"


@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=8))
def test_mean_sd_agrees_with_statistics(values):
    text = mean_sd(values, 1.0, 6)
    mean, sd = (float(x) for x in text.split(" ± "))
    assert math.isclose(mean, statistics.fmean(values), abs_tol=1e-5)
    assert math.isclose(sd, statistics.stdev(values), abs_tol=1e-5)


def test_adaptation_rows_average_transitions_per_seed_then_seeds():
    seed0 = {"stats": {"per_task": [
        {"adaptation": _adapt(0.5, {1: (0.6, 0.7, [0.8], [0.9]), 10: (0.8, 0.7, [0.7], [0.9])})},
        {"adaptation": _adapt(0.3, {1: (0.4, 0.7, [0.6, 0.8], [0.9, 0.9]),
                                    10: (0.9, 0.8, [0.5, 0.7], [0.9, 0.9])})},
        {}]}}
    seed1 = {"stats": {"per_task": [
        {"adaptation": _adapt(0.4, {1: (0.5, 0.6, [0.7], [0.8]), 10: (0.7, 0.9, [0.6], [0.8])})},
        {"adaptation": _adapt(0.2, {1: (0.3, 0.2, [0.5, 0.7], [0.8, 0.8]),
                                    10: (0.8, 0.9, [0.6, 0.6], [0.8, 0.8])})},
        {}]}}
    failed = {"stats": {"per_task": [{"adaptation": _adapt(0.0, {1: (0, 0, [0], [0])})}]}}
    table = adaptation_table(_study(_exp("a", [seed0, seed1, failed], ["done", "done", "failed"])))
    row = _row(table, "a", "1")
    # seed 0: before (0.5+0.3)/2 = 0.4, FT (0.6+0.4)/2 = 0.5, GP 0.7, GP-FT 0.2,
    #         old FT (0.8 + 0.7)/2 = 0.75, old GP 0.9
    # seed 1: before 0.3, FT 0.4, GP 0.4, GP-FT 0.0, old FT (0.7 + 0.6)/2 = 0.65, old GP 0.8
    assert row[2] == "2"
    assert row[3] == mean_sd([0.4, 0.3], 100) == "35.00 ± 7.07"
    assert row[4] == mean_sd([0.5, 0.4], 100)
    assert row[5] == mean_sd([0.7, 0.4], 100)
    assert row[6] == mean_sd([0.2, 0.0], 100) == "10.00 ± 14.14"
    assert row[7] == "3/4"          # GP above FT in s0 t0, s0 t1, s1 t0; not in s1 t1
    assert row[8] == mean_sd([0.75, 0.65], 100)
    assert row[9] == mean_sd([0.9, 0.8], 100)
    row10 = _row(table, "a", "10")
    assert row10[5] == mean_sd([0.75, 0.9], 100)      # GP: (0.7+0.8)/2, (0.9+0.9)/2
    assert row10[7] == "2/4"


def test_adaptation_rows_are_matched_by_k_when_seeds_measured_different_ks():
    seed0 = {"stats": {"per_task": [{"adaptation": _adapt(0.5, {10: (0.6, 0.7, [0.8], [0.9])})}]}}
    seed1 = {"stats": {"per_task": [{"adaptation": _adapt(0.5, {1: (0.2, 0.3, [0.8], [0.9]),
                                                                 10: (0.8, 0.9, [0.8], [0.9])})}]}}
    table = adaptation_table(_study(_exp("a", [seed0, seed1])))
    assert _row(table, "a", "1")[2:6] == ["1", "50.00", "20.00", "30.00"]
    assert _row(table, "a", "10")[2:6] == ["2", "50.00 ± 0.00", "70.00 ± 14.14", "80.00 ± 14.14"]


def test_within_task_table_reads_the_chosen_steps_of_task_0():
    def result(curve, acc):
        return {"acc_matrix": [[acc]], "stats": {"per_task": [{"ntk": {"within_task": {
            "step": [0, 100, 200], "grad_alignment": curve, "kernel_drift": [0.0, 0.1, 0.2]}}}]}}
    table = within_task_table(_study(_exp("w", [result([1.0, 0.6, 0.4], 0.8),
                                                 result([1.0, 0.8, 0.5], 0.9)])), steps=[0, 200])
    assert table.splitlines()[0].split("|")[3].strip() == "step 0"
    assert _row(table, "w") == ["w", "2", "1.000 ± 0.000", mean_sd([0.4, 0.5], 1.0, 3),
                                mean_sd([0.8, 0.9], 100)]
    drift = within_task_table(_study(_exp("w", [result([1.0, 0.6, 0.4], 0.8)])),
                              measure="kernel_drift")
    assert _row(drift, "w")[2:5] == ["0.000", "0.100", "0.200"]


def test_kernel_table_reads_task_0_after_the_last_task_and_right_after_task_0():
    def result(drift0, drift_end, cka, align, acc, forget):
        return {"metrics": {"avg_acc": acc, "forgetting": forget}, "stats": {"per_task": [
            {"ntk": {"seen": [0], "kernel_drift": [drift0]}},
            {"ntk": {"seen": [0, 1], "kernel_drift": [drift_end, 0.05], "cka_learned": [cka, 1.0],
                     "grad_alignment": [align, 0.9], "effective_rank": [3.0, 4.0]}}]}}
    table = kernel_table(_study(_exp("k", [result(0.1, 0.3, 0.9, 0.5, 0.8, 0.1),
                                           result(0.2, 0.5, 0.7, 0.3, 0.6, 0.3)])))
    assert _row(table, "k") == ["k", "2", mean_sd([0.1, 0.2], 1, 3), mean_sd([0.3, 0.5], 1, 3),
                                mean_sd([0.9, 0.7], 1, 3), mean_sd([0.5, 0.3], 1, 3),
                                "3.0 ± 0.0", "70.00 ± 14.14", "20.00 ± 14.14"]


def test_markdown_says_so_when_nothing_was_recorded():
    plain = {"acc_matrix": [[0.5]], "metrics": {}, "stats": {"per_task": [{}]}}
    assert ntk_markdown(_study(_exp("p", [plain]))) == "(no NTK probe results in these trials)"
