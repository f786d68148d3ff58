"""Evaluation at the forward bound: only the entries the metrics need, the activity statistics
from the evaluation pass itself, and optional fixed subsets of old tasks.

* The metrics of a matrix holding only the needed entries equal those of the full matrix.
* A run with ``eval_tasks = needed`` fills exactly those entries, with the values the full
  evaluation (``all``) gives them, and records how many test examples back each entry.
* The activity statistics recorded during evaluation equal an independent second pass.
* ``eval_subset``: old tasks on the same fixed subset in every row between full rows; the
  current and next task, the last row and every ``eval_full_every``-th row in full.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import build_scenario
from benchmarks.synthetic import write_synthetic_dataset
from models import build_model
from sparse_nte.config import config_from_dict
from sparse_nte.evaluation import (EvalSpec, evaluate_tasks, random_init_tasks, subset_rows,
                                   tasks_after)
from sparse_nte.metrics import continual_metrics
from sparse_nte.runner import run_trial
from sparse_nte.stats import activity_from_summaries, activity_stats


def needed_mask(t):
    """Entries the metrics read: seen tasks of every row, and the next task."""
    return np.tril(np.ones((t, t), dtype=bool)) | np.eye(t, k=1, dtype=bool)


def test_the_tasks_each_row_evaluates():
    assert tasks_after(0, 4, "needed") == [0, 1]
    assert tasks_after(2, 4, "needed") == [0, 1, 2, 3]
    assert tasks_after(3, 4, "needed") == [0, 1, 2, 3]
    assert tasks_after(1, 4, "all") == [0, 1, 2, 3]
    assert random_init_tasks(4, "needed") == [1, 2, 3]
    assert random_init_tasks(4, "all") == [0, 1, 2, 3]
    passes = sum(len(tasks_after(i, 10, "needed")) for i in range(10)) + 9
    assert passes == 73          # 110 with eval_tasks = all
    with pytest.raises(ValueError, match="eval_tasks"):
        tasks_after(0, 3, "some")


@settings(max_examples=80, deadline=None)
@given(t=st.integers(1, 7), n=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_metrics_of_the_needed_entries_equal_those_of_the_full_matrix(t, n, seed):
    n = min(n, t)
    rng = np.random.default_rng(seed)
    full = rng.uniform(0, 1, size=(t, t))
    b = rng.uniform(0, 0.2, size=t)
    sparse = np.where(needed_mask(t), full, np.nan)
    sparse[n:] = np.nan
    b_sparse = b.copy()
    b_sparse[0] = np.nan
    a = continual_metrics(full, trained=n, random_init_acc=b)
    c = continual_metrics(sparse, trained=n, random_init_acc=b_sparse)
    for key in ("avg_acc", "bwt", "forgetting", "fwt", "learning_acc"):
        assert (math.isnan(a[key]) and math.isnan(c[key])) or a[key] == c[key], key
    np.testing.assert_array_equal(a["avg_acc_curve"], c["avg_acc_curve"])
    np.testing.assert_array_equal(a["plasticity"], c["plasticity"])


def test_forgetting_counts_only_rows_since_the_task_was_learned():
    # task 1 scored 0.9 before it was trained (row 0): not an accuracy it can forget
    r = np.array([[0.8, 0.9, 0.1], [0.7, 0.6, 0.1], [0.7, 0.5, 0.9]])
    m = continual_metrics(r)
    assert m["forgetting"] == pytest.approx(((0.8 - 0.7) + (0.6 - 0.5)) / 2)


def test_a_missing_needed_entry_is_named():
    r = np.array([[0.8, np.nan], [np.nan, 0.9]])
    with pytest.raises(ValueError, match=r"R\[1, 0\]"):
        continual_metrics(r)
    with pytest.raises(ValueError, match=r"R\[0, 1\]"):
        continual_metrics(np.array([[0.8, np.nan], [0.7, 0.9]]), random_init_acc=[0.1, 0.1])


# ---------------------------------------------------------------------------------------------
# Runs
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset("mnist", root, num_train=300, num_test=120, seed=1)
    return root


def trial(data_root, **kw):
    base = dict(name="ev", dataset="mnist", num_batch=4, hidden_units=48, hidden_layers=1,
                sparsify=True, percent_on_fc=0.25, mb_size=32, lr=0.05,
                data_root=str(data_root), record_stats=True)
    base.update(kw)
    return config_from_dict(base)


def test_needed_rows_hold_the_values_of_the_full_evaluation(tmp_path, data_root):
    full = run_trial(trial(data_root, eval_tasks="all"), tmp_path / "a", progress=False,
                     log=lambda m: None)
    part = run_trial(trial(data_root), tmp_path / "b", progress=False, log=lambda m: None)
    mask = needed_mask(4)
    assert not np.isnan(full["acc_matrix"]).any()
    np.testing.assert_array_equal(part["acc_matrix"][mask], full["acc_matrix"][mask])
    assert np.isnan(part["acc_matrix"][~mask]).all()
    assert np.isnan(part["random_init_acc"][0])
    np.testing.assert_array_equal(part["random_init_acc"][1:], full["random_init_acc"][1:])
    np.testing.assert_array_equal(part["acc_examples"], np.where(mask, 120, 0))
    for key in ("avg_acc", "bwt", "forgetting", "fwt", "learning_acc"):
        assert part["metrics"][key] == full["metrics"][key]
    # the activity statistics are the same whichever tasks are evaluated
    for a, b in zip(part["stats"]["per_task"], full["stats"]["per_task"]):
        for layer, stats in a["activity"].items():
            for k, v in stats.items():
                np.testing.assert_array_equal(v, b["activity"][layer][k])


def test_activity_recorded_during_evaluation_equals_a_separate_pass(data_root):
    cfg = trial(data_root, dale=True, weight_sparsity_fc=0.5)
    scenario = build_scenario("mnist", num_tasks=4, data_root=data_root, download=False,
                              progress=False)
    model = build_model(cfg, scenario)
    row = evaluate_tasks(model, scenario, [0, 1, 2], 2, record=[0, 1, 2])
    folded = activity_from_summaries([row.activity[j] for j in range(3)])
    # independent pass: another batch size, its own recorder loop
    model.eval()
    per_task = []
    with torch.inference_mode():
        for j in range(3):
            with model.record_activity() as rec:
                for x, _, t in scenario.batches(j, "test", batch_size=50, shuffle=False):
                    model(x, t)
            per_task.append(rec.summary())
    separate = activity_from_summaries(per_task)
    for layer in separate:
        for k in separate[layer]:
            np.testing.assert_allclose(folded[layer][k], separate[layer][k], rtol=0, atol=1e-15)
    assert activity_stats(model, scenario, 2).keys() == separate.keys()


def test_subsets_of_old_tasks_between_full_rows(tmp_path, data_root):
    cfg = trial(data_root, num_batch=5, eval_subset=50, eval_full_every=3)
    res = run_trial(cfg, tmp_path, progress=False, log=lambda m: None)
    ex = res["acc_examples"]
    for i in range(5):
        full_row = i == 4 or (i + 1) % 3 == 0
        for j in range(min(i + 2, 5)):
            expected = 120 if (full_row or j >= i) else 50
            assert ex[i, j] == expected, (i, j)
    # the subset of a task is the same in every row, and its accuracy is computed on it
    rows = subset_rows(120, 50, 0, 0)
    scenario = build_scenario("mnist", num_tasks=5, data_root=data_root, download=False,
                              progress=False)
    model = build_model(cfg, scenario).eval()
    with torch.inference_mode():
        x, y, t = next(scenario.batches(0, "test", batch_size=1000, shuffle=False))
        hits = (model(x, t).argmax(1) == y)[rows].double().mean().item()
    assert evaluate_tasks(model, scenario, [0], 0, rows={0: rows}).accuracy[0] == hits
    assert torch.equal(rows, subset_rows(120, 50, 0, 0)) and len(set(rows.tolist())) == 50
    assert not torch.equal(rows, subset_rows(120, 50, 0, 1))
    assert subset_rows(120, 0, 0, 0) is None and subset_rows(120, 500, 0, 0) is None
    assert EvalSpec(subset=50, full_every=3).full_row(2, 5)
    assert not EvalSpec(subset=50, full_every=3).full_row(1, 5)
    assert EvalSpec().full_row(1, 5)


def test_activity_counts_are_those_of_y_not_zero_including_nan_and_signed_zeros():
    from models.activity import ActivityRecorder
    y = torch.tensor([[0.0, -0.0, -2.0, 3.0], [float("nan"), 0.0, 1e-30, -float("inf")]])
    for data in (y, y.view(2, 4, 1, 1).expand(2, 4, 2, 3)):
        rec = ActivityRecorder(["a"])
        rec.record(0, data)
        positions = 2 * (6 if data.dim() == 4 else 1)
        expected = (data != 0).sum(dim=(0, 2, 3) if data.dim() == 4 else 0).double()
        np.testing.assert_array_equal(rec.summary()["a"]["unit_active_fraction"],
                                      (expected / positions).numpy())
