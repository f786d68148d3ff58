"""train_iters: every task trains exactly that many optimizer steps (van de Ven & Tolias's
"iterations per task"), running through its training set epoch after epoch in the orders an
epoch-counted run uses, the last epoch cut short; with cumul the count does not grow with the
union of the training sets. The config refuses what it cannot honour."""
from __future__ import annotations

import math
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import build_scenario
from benchmarks.synthetic import write_synthetic_dataset
from sparse_nte.config import ConfigError, load_config
from sparse_nte.learner import epochs_per_task
from sparse_nte.reporting.describe import describe
from sparse_nte.runner import _train_task, run_trial
from sparse_nte.seams import Batch, TaskContext

ROWS, MB = 200, 32            # 7 batches per epoch: 6 of 32 rows and one of 8
PER_EPOCH = math.ceil(ROWS / MB)

CFG = """
[DEFAULT]
dataset = mnist
mnist_mode = permutations
num_batch = 3
hidden_units = 32
hidden_layers = 1
mb_size = {mb}
optimizer = adam
lr = 0.001
record_stats = False
data_root = {root}

[e]
description = tiny permuted run
"""


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset("mnist", root, num_train=ROWS, num_test=50, seed=0)
    path = tmp_path_factory.mktemp("cfg") / "exps.cfg"
    path.write_text(CFG.format(mb=MB, root=root))
    return path


def run(cfg_file, tmp_path, **overrides):
    cfg = load_config(cfg_file, "e", {k: str(v) for k, v in overrides.items()}).to_dict()
    return run_trial(cfg, tmp_path, progress=False, log=lambda m: None)


def steps_of_each_task(result) -> list[int]:
    total = [s["steps"] for s in result["stats"]["per_task"]]    # the learner's running count
    return list(np.diff([0] + total))


# ---------------------------------------------------------------------------------------------
# Epochs a count of steps takes
# ---------------------------------------------------------------------------------------------
def test_epochs_per_task_closed_form():
    cfg = SimpleNamespace(train_iters=10, mb_size=32, train_ep=5, train_ep_inc=3)
    # 200, 400, 600 rows: 7, 13, 19 batches per epoch
    assert epochs_per_task(cfg, 3, [200, 400, 600]) == [2, 1, 1]
    cfg.train_iters = 5000      # van de Ven & Tolias: 5000 steps of 128 on 60,000 rows
    cfg.mb_size = 128
    assert epochs_per_task(cfg, 2, [60000, 600000]) == [11, 2]
    cfg.train_iters = 0
    assert epochs_per_task(cfg, 3) == [5, 3, 3]
    cfg.train_iters = 7
    with pytest.raises(ValueError, match="pass train_rows"):
        epochs_per_task(cfg, 3)


@given(rows=st.integers(1, 5000), mb=st.integers(1, 300), iters=st.integers(1, 10000))
def test_the_epochs_hold_the_steps_and_no_epoch_is_spare(rows, mb, iters):
    cfg = SimpleNamespace(train_iters=iters, mb_size=mb, train_ep=1, train_ep_inc=1)
    (epochs,) = epochs_per_task(cfg, 1, [rows])
    per_epoch = -(-rows // mb)
    assert (epochs - 1) * per_epoch < iters <= epochs * per_epoch


# ---------------------------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------------------------
class RecordingLearner:
    """What ``_train_task`` drives, recording the rows of every batch (no training)."""

    def __init__(self) -> None:
        self.model = nn.Linear(1, 1)
        self.rule = SimpleNamespace(unhealthy=lambda: None)
        self.step = 0
        self.rows: list[torch.Tensor] = []

    def on_task_start(self, ctx): pass

    def on_task_end(self, ctx): pass

    def epoch_rows(self, ctx, epoch):
        return None

    def train_step(self, batch: Batch) -> float:
        self.rows.append(batch.index.clone())
        self.step += 1
        return 0.0


@pytest.fixture(scope="module")
def scenario(cfg_file):
    root = load_config(cfg_file, "e").data_root
    return build_scenario(dataset="mnist", mode="permutations", num_tasks=2, seed=0, data_root=root)


def batches_seen(scenario, epochs: int, limit: int, seed: int = 3) -> list[torch.Tensor]:
    learner = RecordingLearner()
    ctx = TaskContext(task=1, num_tasks=2, scenario=scenario, model=learner.model, device="cpu",
                      seed=seed, steps=limit, epochs=epochs, batch_size=MB, step_limit=limit)
    _train_task(learner, ctx, progress=False)
    return learner.rows


@settings(max_examples=15, deadline=None)
@given(limit=st.integers(1, 3 * PER_EPOCH))
def test_a_step_limit_runs_the_first_steps_of_the_epoch_run(scenario, limit):
    epochs = -(-limit // PER_EPOCH)
    cut = batches_seen(scenario, epochs, limit)
    whole = batches_seen(scenario, epochs, 0)          # the same epochs run to their end
    assert len(cut) == limit and len(whole) == epochs * PER_EPOCH
    for a, b in zip(cut, whole):
        assert torch.equal(a, b)
    for e in range(limit // PER_EPOCH):                 # every whole epoch: each row once
        rows = torch.cat(cut[e * PER_EPOCH:(e + 1) * PER_EPOCH])
        assert torch.equal(rows.sort().values, torch.arange(ROWS))
    if limit > PER_EPOCH:                               # each epoch in its own order
        assert not torch.equal(cut[0], cut[PER_EPOCH])


@pytest.mark.parametrize("cumul", [False, True])
def test_every_task_takes_exactly_train_iters_steps(cfg_file, tmp_path, cumul):
    res = run(cfg_file, tmp_path, train_iters=10, cumul=cumul)
    assert res["status"] == "done"
    assert steps_of_each_task(res) == [10, 10, 10]
    by_epochs = run(cfg_file, tmp_path / "ep", cumul=cumul)      # train_ep = train_ep_inc = 1
    union = [ROWS * (k + 1) if cumul else ROWS for k in range(3)]
    assert steps_of_each_task(by_epochs) == [math.ceil(n / MB) for n in union]


def test_whole_epochs_of_steps_give_the_epoch_run_bit_for_bit(cfg_file, tmp_path):
    steps = run(cfg_file, tmp_path / "a", train_iters=2 * PER_EPOCH)
    epochs = run(cfg_file, tmp_path / "b", train_ep=2, train_ep_inc=2)
    np.testing.assert_array_equal(steps["acc_matrix"], epochs["acc_matrix"])
    assert steps_of_each_task(steps) == steps_of_each_task(epochs) == [2 * PER_EPOCH] * 3


def test_a_cut_epoch_resumes_to_the_uninterrupted_run(cfg_file, tmp_path):
    full = run(cfg_file, tmp_path / "full", train_iters=PER_EPOCH + 3)

    class Crash(Exception):
        pass

    def crash(i):
        if i == 0:
            raise Crash()

    cfg = load_config(cfg_file, "e", {"train_iters": str(PER_EPOCH + 3)}).to_dict()
    with pytest.raises(Crash):
        run_trial(cfg, tmp_path / "crash", progress=False, log=lambda m: None, after_task_hook=crash)
    resumed = run_trial(cfg, tmp_path / "crash", progress=False, log=lambda m: None)
    np.testing.assert_array_equal(resumed["acc_matrix"], full["acc_matrix"])


# ---------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------
def one(tmp_path, body: str):
    path = tmp_path / "x.cfg"
    path.write_text("[e]\ndescription = x\n" + textwrap.dedent(body))
    return load_config(path, "e")


@pytest.mark.parametrize("body, key, fragment", [
    ("train_iters = 100\ntrain_ep = 3\n", "train_ep", "train_iters = 100 sets the steps"),
    ("train_iters = 100\ntrain_ep_inc = 0\n", "train_ep_inc", "has no effect"),
    ("train_iters = 100\ndata_pruning = ucb\n", "train_iters", "plans its rows per epoch"),
])
def test_config_refuses_what_train_iters_cannot_honour(tmp_path, body, key, fragment):
    with pytest.raises(ConfigError) as info:
        one(tmp_path, body)
    err = info.value.errors[0]
    assert err.key == key and fragment in err.message


def test_train_iters_default_keeps_epochs_and_the_description_names_the_count(tmp_path):
    assert one(tmp_path, "").train_iters == 0
    c = one(tmp_path, "train_iters = 5000\nnum_batch = 4\n")
    assert (c.train_iters, c.train_ep, c.train_ep_inc) == (5000, 1, 1)
    rule = describe(c.to_dict())["rule"]
    assert rule.endswith("batch 128, 5000 steps/task") and " ep" not in rule
    assert describe(one(tmp_path, "").to_dict())["rule"].endswith("batch 128, 1 ep")
