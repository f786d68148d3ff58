"""tools/pruning_tables.py: the data-pruning doc's tables are what the result files say (read as
the runner writes them), paired by seed, and rewritten only between their markers."""
import statistics
import sys
from pathlib import Path

import pytest

from benchmarks.synthetic import write_synthetic_dataset
from sparse_nte.runner import run_trial
from sparse_nte.study import adhoc_study, collect

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import pruning_tables as pt  # noqa: E402


def trial(seed, acc, forgetting=5.0, la=90.0, cpu=10.0, wall=20.0, fraction=1.0):
    return pt.Trial(seed, acc, forgetting, la, cpu, wall, fraction)


def experiment(name, accs, cpus=None, fraction=1.0):
    cpus = cpus or [10.0] * len(accs)
    return pt.Experiment(name, {s: trial(s, a, cpu=c, fraction=fraction)
                                for s, (a, c) in enumerate(zip(accs, cpus))}, [])


def cells(row):
    return [c.strip() for c in row.strip().strip("|").split(" | ")]


def every_experiment():
    """All experiments of a pruning study: ACC of seed s = base + s, with the method's base."""
    base = {"uniform": 80.0, "egreedy": 81.0, "ucb": 83.0, "random_static": 79.0, "el2n": 70.0,
            "grand": 71.0, "forgetting": 72.0}
    exps = {"prune_full": experiment("prune_full", [85.0, 86.0, 87.0], [10.0, 20.0, 40.0])}
    for m, b in base.items():
        for p in pt.RATES:
            name = pt._name(m, p)
            exps[name] = experiment(name, [b - p / 10 + s for s in range(3)],
                                    [(1 - p / 100) * c for c in (10.0, 20.0, 40.0)],
                                    fraction=1 - p / 100)
    return exps


def test_mean_sd_and_paired_differences_against_hand_computation():
    assert pt.mean_sd([1.0, 2.0, 4.0]) == f"2.3 ± {statistics.stdev([1, 2, 4]):.1f}"
    assert pt.mean_sd([3.0]) == "3.0 (n = 1)" and pt.mean_sd([]) == "–"
    a = experiment("a", [80.0, 82.0, 90.0])
    b = experiment("b", [79.0, 83.0, 84.0])
    diffs = pt.paired(a, b, lambda t: t.acc, lambda x, y: x - y)
    assert diffs == [1.0, -1.0, 6.0]
    assert pt.diff_text(diffs) == f"2.0 ± {statistics.stdev(diffs):.1f} (2/3)"
    # pairing is by seed: a seed missing from one side is left out, not shifted
    del b.trials[1]
    assert pt.paired(a, b, lambda t: t.acc, lambda x, y: x - y) == [1.0, 6.0]


def test_main_table_rows_and_time_ratios_are_per_seed():
    table = pt.main_table(every_experiment())
    rows = [cells(r) for r in table.splitlines() if r.startswith("| ")][1:]
    assert len(rows) == 1 + 7 * 3
    full = rows[0]
    assert full[0] == "full data" and full[3] == "86.0 ± 1.0"
    ucb70 = next(r for r in rows if r[:2] == ["UCB (dynamic)", "0.7"])
    # ACC 83 - 7 + s; CPU time (0.3 x) the full run's, seed by seed: ratio 0.30 with sd 0
    assert ucb70[3] == "77.0 ± 1.0" and ucb70[6] == "0.30" and ucb70[8] == "0.30 ± 0.00"


def test_claims_compare_the_named_methods_seed_by_seed():
    table = pt.claims_table(every_experiment())
    lines = {cells(r)[0]: cells(r)[1:] for r in table.splitlines()[2:]}
    assert lines["UCB − uniform"][0] == "3.0 ± 0.0 (3/3)"
    assert lines["uniform (dynamic) − random (static)"][1] == "1.0 ± 0.0 (3/3)"
    # best dynamic (UCB, 83 - p/10) against best static (random, 79 - p/10): +4 at every rate
    assert lines["best dynamic − best static"] == ["4.0 ± 0.0 (3/3)"] * 3
    assert lines["full data − UCB"][2] == "9.0 ± 0.0 (3/3)"     # 86 + s - (76 + s)
    assert lines["best dynamic / best static (by mean ACC)"][0].startswith("UCB (dynamic) / random")


def test_tables_are_rewritten_between_their_markers_only():
    doc = ("intro\n<!-- table:a -->\nold a\n<!-- /table:a -->\nmiddle\n"
           "<!-- table:b -->\nold b\n<!-- /table:b -->\nend\n")
    new = pt.replace_tables(doc, {"a": "| new |", "b": "B"})
    assert new == ("intro\n<!-- table:a -->\n| new |\n<!-- /table:a -->\nmiddle\n"
                   "<!-- table:b -->\nB\n<!-- /table:b -->\nend\n")
    assert pt.replace_tables(new, {"a": "| new |"}) == new
    # a new page's markers enclose nothing yet
    assert pt.replace_tables("<!-- table:a -->\n<!-- /table:a -->\n", {"a": "T"}) == \
        "<!-- table:a -->\nT\n<!-- /table:a -->\n"
    with pytest.raises(ValueError, match="table:c"):
        pt.replace_tables(doc, {"c": "x"})


def test_trials_are_read_as_the_runner_writes_them(tmp_path):
    """A real (tiny) pruned run: the data fraction, the CPU time and the metrics the tables read
    are the result file's."""
    root = tmp_path / "data"
    write_synthetic_dataset("mnist", root, num_train=256, num_test=64, seed=0)
    cfg = tmp_path / "exps.cfg"
    cfg.write_text(f"[DEFAULT]\ndataset = mnist\nnum_batch = 2\nhidden_units = 32\n"
                   f"hidden_layers = 1\nmb_size = 32\ntrain_ep = 2\ntrain_ep_inc = 2\n"
                   f"record_stats = False\ndata_root = {root}\n\n"
                   f"[half]\ndescription = uniform pruning of half the examples from epoch 1\n"
                   f"data_pruning = uniform\ndata_prune_start = 1\n")
    study = adhoc_study(cfg, ["half"], seeds=[0])
    run_trial(study.trials[0].config, tmp_path / "res", progress=False, log=lambda m: None)
    exps = pt._experiments(collect(tmp_path / "res", study))
    (t,) = exps["half"].trials.values()
    # epochs: full then half, in both tasks
    assert t.data_fraction == pytest.approx(0.75)
    result = collect(tmp_path / "res", study).experiments[0].trials[0].result
    per_task = result["stats"]["per_task"]
    assert t.train_cpu == pytest.approx(sum(p["train_cpu_s"] for p in per_task))
    assert t.acc == pytest.approx(100 * result["metrics"]["avg_acc"])
    assert t.la == pytest.approx(100 * result["metrics"]["learning_acc"])


def test_experiments_without_results_are_shown_as_not_run_not_dropped():
    exps = every_experiment()
    for p in pt.RATES:
        name = pt._name("ucb", p)
        exps[name] = pt.Experiment(name, {}, [], not_run=[0, 1, 2])
    table = pt.main_table(exps)
    rows = {tuple(cells(r)[:2]): cells(r) for r in table.splitlines() if r.startswith("| ")}
    assert rows[("UCB (dynamic)", "0.5")][2:4] == ["0 (not run)", "–"]
    assert "Not run (no result file): prune_ucb_p30 (seeds 0, 1, 2)" in table
    claims = {cells(r)[0]: cells(r)[1:] for r in pt.claims_table(exps).splitlines()[2:]}
    assert claims["UCB − uniform"] == ["–"] * 3 and claims["full data − UCB"] == ["–"] * 3
    # the best dynamic method is chosen among those with results: ε-greedy (81 - p/10) here
    assert claims["best dynamic − best static"] == ["2.0 ± 0.0 (3/3)"] * 3
    # no results at all on one side: no comparison, no error
    for m in pt.STATIC:
        for p in pt.RATES:
            exps[pt._name(m, p)] = pt.Experiment(pt._name(m, p), {}, [], not_run=[0])
    claims = {cells(r)[0]: cells(r)[1:] for r in pt.claims_table(exps).splitlines()[2:]}
    assert claims["best dynamic − best static"] == ["–"] * 3
    assert claims["best dynamic / best static (by mean ACC)"][0] == "ε-greedy (dynamic) / –"
