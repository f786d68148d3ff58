"""tools/original_study.py: the metrics and blocks of docs/original_study.md, and the k-WTA tie
and winner comparison it counts in a real run."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("original_study", REPO / "tools" / "original_study.py")
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)

NAN = float("nan")


def test_measures_are_final_average_forgetting_and_just_learned_by_hand():
    r = [[0.9, NAN, NAN], [0.6, 0.8, NAN], [0.5, 0.7, 0.85]]
    acc, forgetting, just = tool.measures(r)
    assert acc == pytest.approx(100 * (0.5 + 0.7 + 0.85) / 3)
    assert forgetting == pytest.approx(100 * ((0.9 - 0.5) + (0.8 - 0.7)) / 2)   # best earlier row
    assert just == pytest.approx(100 * (0.9 + 0.8 + 0.85) / 3)
    assert tool.measures(r, 2) == pytest.approx((70.0, 30.0, 85.0))           # first 2 tasks


def test_welch_difference_and_standard_error():
    a, b = [1.0, 2.0, 3.0], [2.0, 4.0]
    se = math.sqrt(1.0 / 3 + 2.0 / 2)
    assert tool.welch(a, b).startswith(f"{2.0 - 3.0:+.2f} ± {se:.2f} (se)")


def test_blocks_are_replaced_between_their_markers_only():
    doc = ("intro\n<!-- generated:a -->\nold a\n<!-- /generated:a -->\nmiddle\n"
           "<!-- generated:b -->\nold b\nmore\n<!-- /generated:b -->\nend\n")
    new = tool.replace_blocks(doc, {"a": "| new a |", "b": "new b"})
    assert new == ("intro\n<!-- generated:a -->\n| new a |\n<!-- /generated:a -->\nmiddle\n"
                   "<!-- generated:b -->\nnew b\n<!-- /generated:b -->\nend\n")
    assert tool.replace_blocks(new, {"a": "| new a |", "b": "new b"}) == new   # idempotent
    empty = "<!-- generated:a -->\n<!-- /generated:a -->\n"                      # a fresh block
    assert tool.replace_blocks(empty, {"a": "x"}) == "<!-- generated:a -->\nx\n<!-- /generated:a -->\n"
    with pytest.raises(SystemExit, match="generated:c"):
        tool.replace_blocks(doc, {"c": "x"})


def test_compare_winners_flags_ties_at_the_threshold_and_agrees_without_boost_differences():
    x = torch.tensor([[5.0, 3.0, 3.0, 1.0],     # 2nd and 3rd largest equal: a tie at k = 2
                      [5.0, 4.0, 3.0, 1.0],     # no tie
                      [-1.0, -2.0, -2.0, -3.0]])  # negative values tie too
    tie, differs = tool.compare_winners(x, torch.zeros(4), 2, torch.tensor(1.0))
    assert tie.tolist() == [True, False, True]
    assert differs.tolist() == [False, False, False]   # equal duty cycles: same ranking
    # boosting changes the winners of both formulas alike (unit 0 very active, suppressed)
    duty = torch.tensor([5.0, 0.0, 0.0, 0.0])
    tie, differs = tool.compare_winners(x[1:2], duty, 2, torch.tensor(1.0))
    assert not tie.item() and not differs.item()


def test_ties_counts_every_row_through_the_kwta_of_a_real_run(tmp_path):
    """A 2-task run of the shipped MLP_1LayerSparse on a small stand-in of Fashion-MNIST: every
    training row (300 padded to 384 by the original order, 2 epochs a task) and every evaluated
    test row passes the hook once."""
    import pickle

    write_synthetic_dataset("fashion_mnist", tmp_path / "data", num_train=300, num_test=100)
    out = tool.count_ties(tmp_path / "res", 2, 0, str(tmp_path / "data"))
    assert (out["n"], out["k"], out["tasks"]) == (4000, 4, 2)
    assert out["train"]["rows"] == 2 * 2 * 384
    with open(tmp_path / "res" / "ties_MLP_1LayerSparse" / "seed0.pkl", "rb") as f:
        res = pickle.load(f)
    entries = int(np.isfinite(res["acc_matrix"]).sum() + np.isfinite(res["random_init_acc"]).sum())
    assert out["eval"]["rows"] == 100 * entries
    for mode in ("train", "eval"):
        assert 0 <= out[mode]["ties"] <= out[mode]["rows"]
        assert 0 <= out[mode]["nupic_differs"] <= out[mode]["rows"] - out[mode]["ties"]
    json.dumps(out)   # plain data


def test_log_rows_reads_the_rows_printed_after_every_task_in_order():
    text = ("training ep:  0\ntask 0: exact 0.775 0.118 0.133\nnoise task 1: exact 0.5\n"
            "task 1: exact 0.616 0.779 0.120\n==>>> it: 0\n")
    assert tool.log_rows(text) == [[0.775, 0.118, 0.133], [0.616, 0.779, 0.120]]
    with pytest.raises(ValueError, match="expected task 0"):
        tool.log_rows("task 1: exact 0.5 0.5\n")


def test_interrupted_runs_are_logs_without_a_result_file(tmp_path):
    rows = [[0.8, 0.1, 0.1], [0.6, 0.7, 0.1]]
    (tmp_path / "kwta_seed1.log").write_text(
        "".join(f"task {i}: exact {' '.join(map(str, r))}\n" for i, r in enumerate(rows)))
    (tmp_path / "kwta_seed2.log").write_text("task 0: exact 0.9 0.1 0.1\n")
    (tmp_path / "kwta_seed2.json").write_text(json.dumps({"seed": 2, "acc_exact": [[0.9]]}))
    (tmp_path / "dense_seed3.log").write_text("preparing CL benchmark...\n")   # no task finished
    runs = tool.interrupted_runs(tmp_path)
    assert runs == {"MLP_1LayerSparse": [{"seed": 1, "acc_exact": rows}], "MLP_1Layer": []}
    assert [r["seed"] for r in tool.original_runs(tmp_path)["MLP_1LayerSparse"]] == [2]


def test_early_block_compares_the_first_k_tasks_of_every_run(tmp_path):
    """K is the fewest tasks an interrupted run finished; finished runs are cut to K x K."""
    full = np.tril(np.full((4, 4), 0.5)) + np.diag([0.3] * 4)        # R[j, j] = 0.8, others 0.5
    toolkit = {"MLP_1LayerSparse": {0: full, 1: full}, "MLP_1Layer": {0: full}}
    finished = {"MLP_1LayerSparse": [{"seed": 2, "acc_exact": full.tolist()}], "MLP_1Layer": []}
    cut = [[0.8, 0.0], [0.6, 0.8]]
    interrupted = {"MLP_1LayerSparse": [{"seed": 1, "acc_exact": cut}], "MLP_1Layer": []}
    text = tool.early(toolkit, finished, interrupted)
    assert "first 2 tasks" in text and "tasks 1-1" in text and "MLP_1Layer`" not in text
    rows = [line.split(" | ") for line in text.splitlines()[2:]]
    # final average accuracy over 2 tasks: toolkit (0.5 + 0.8) / 2; original seeds 1, 2: 0.7, 0.65
    assert rows[0][2].startswith(f"{100 * (0.7 + 0.65) / 2:.2f} ± ")
    assert "stopped after task 1" in rows[0][2] and rows[0][3].startswith("65.00 ± 0.00")
    assert rows[1][3].startswith("30.00 ± 0.00")          # forgetting: 0.8 - 0.5
    assert tool.early(toolkit, finished, {"MLP_1LayerSparse": [], "MLP_1Layer": []}).startswith("(no ")


def _matrix(diag: float, off: float, n: int) -> np.ndarray:
    m = np.full((n, n), np.nan)
    for i in range(n):
        m[i, : i + 1] = off
        m[i, i] = diag
    return m


def test_loo_block_reads_the_study_and_the_leave_one_out_folders(tmp_path):
    """Seed 0's first 3 tasks and the seeds' spread from the study's folder; each variant from
    L/KEY_VALUE/MLP_1Layer*/seed0.pkl; a missing variant names its command; a file of another
    configuration is refused."""
    import pickle

    from sparse_nte.study import resolve_study

    study = resolve_study(tool.CONFIG, tool.STUDY)
    folder = study.folders["MLP_1Layer"]
    base = study.configs["MLP_1Layer"].to_dict()

    def write(path, cfg, acc):
        path.parent.mkdir(parents=True, exist_ok=True)
        k = acc.shape[0]
        with open(path, "wb") as f:
            pickle.dump({"acc_matrix": acc, "metrics": {}, "config": cfg, "tasks_trained": k,
                         "stats": {"per_task": [{"train_loss_last_epoch": 0.25 + t} for t in range(k)]}}, f)

    for seed, diag in ((0, 0.8), (1, 0.9)):
        write(tmp_path / "R" / folder / f"seed{seed}.pkl", {**base, "seed": seed}, _matrix(diag, 0.5, 10))
    variant = {**base, "num_batch": 3, "seed": 0, "input_scaling": "standard"}
    write(tmp_path / "L" / "input_scaling_standard" / "MLP_1Layer" / "seed0.pkl", variant, _matrix(0.7, 0.2, 3))
    rows = tool.loo(tmp_path / "R", tmp_path / "L").splitlines()[2:]
    assert rows[0].startswith("| original protocol, seeds 0, 1 (mean ± sd) | done | 3 | ")
    cells = rows[0].split(" | ")
    assert cells[3].startswith(f"{100 * (0.5 + 0.5 + 0.85) / 3:.2f} ± ")       # (2 x 0.5 + mean diag) / 3
    assert cells[5].startswith("85.00 ± 7.07")                                  # diag 80, 90
    assert rows[1] == "| original protocol, seed 0 | done | 3 | 60.0 | 30.0 | 80.0 | 2.25 |"
    assert rows[2] == "| `input_scaling = standard`, seed 0 | done | 3 | 36.7 | 50.0 | 70.0 | 2.25 |"
    assert "not finished" in rows[3] and "--set train_order=shuffle" in rows[3]
    write(tmp_path / "L" / "train_order_shuffle" / "MLP_1Layer" / "seed0.pkl", variant, _matrix(0.7, 0.2, 3))
    with pytest.raises(SystemExit, match="expected train_order = shuffle"):
        tool.loo(tmp_path / "R", tmp_path / "L")
