"""Evaluation of a continual-learning run: which entries of the accuracy matrix the metrics need,
and test accuracy with the hidden-activity statistics measured in the same forward pass.

Accuracy matrix ``R[i, j]``: test accuracy on task j after training task i (T tasks). The metrics
of :mod:`sparse_nte.metrics` read (Lopez-Paz & Ranzato 2017; Chaudhry et al. 2018; Riemer et
al. 2019)::

    ACC, BWT            R[n-1, j] and R[j, j]                  j < n
    forgetting          R[l, j] for every j <= l < n            (the best accuracy since learning j)
    accuracy curve      R[i, j] for j <= i
    learning accuracy   R[j, j]
    FWT                 R[j-1, j] and b_j (untrained network)  1 <= j < n

so after task i the rows need tasks ``0..i`` and, for FWT, task ``i + 1`` (``eval_tasks =
needed``: ``sum_i (i + 2) - 1 + (T - 1)`` test-set passes in a T-task run instead of the full
matrix's ``T^2 + T``; 73 instead of 110 for T = 10). The other entries are NaN. ``eval_tasks =
all`` evaluates every task after every task (and the untrained network on every task), as
before.

Subsets (``eval_subset = m > 0``, never on by default): after task i the tasks ``j < i`` are
evaluated on a fixed random subset of m test examples (drawn once per task from the seed),
except after every ``eval_full_every``-th task and after the last one, which are evaluated in
full, as are ``R[i, i]`` and ``R[i, i+1]`` always. Such an entry estimates the accuracy with
standard error ``sqrt(a (1 - a) / m)`` (1.6 points at a = 0.5, m = 1000), which enters the
forgetting (a maximum over rows) and the accuracy curve; ACC, BWT, FWT and the learning accuracy
use full rows only. The number of test examples behind every entry is recorded
(:func:`examples_matrix`).

Learning curves (``epoch_eval``): after every epoch, :func:`epoch_accuracy` measures the task
being trained on its whole test set and on a fixed random subset of its training rows
(:func:`train_rows`, drawn once per (seed, task)), in eval mode; nothing the training reads
changes (no duty-cycle update, no random draw).

One pass. The activity statistics of ``record_stats`` (:func:`sparse_nte.stats.activity_stats`)
are recorded during the evaluation pass of the tasks seen so far (on the same examples), in eval
mode before dropout, instead of a second pass over the same test sets.

Batches of :data:`EVAL_BATCH` rows keep a hidden layer's activations (256 x 4000 floats, 4 MB)
in cache between the layer, the k-WTA and the head; larger batches gain nothing in the matrix
products and lose in every element-wise pass (bench/bench_eval.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["EVAL_TASKS", "EVAL_BATCH", "EvalSpec", "tasks_after", "random_init_tasks",
           "subset_rows", "train_rows", "evaluate_task", "evaluate_tasks", "epoch_accuracy",
           "examples_matrix"]

#: Choices of the config key ``eval_tasks``.
EVAL_TASKS = ("needed", "all")
#: Rows per evaluation batch.
EVAL_BATCH = 256
_SUBSET_TAG = 0x45564C   # SeedSequence spawn key of the evaluation subsets
_TRAIN_TAG = 0x545241    # ... and of the training rows of the learning curves


@dataclass(frozen=True)
class EvalSpec:
    """What to evaluate (config keys ``eval_tasks``, ``eval_subset``, ``eval_full_every``)."""

    tasks: str = "needed"
    subset: int = 0
    full_every: int = 1

    def __post_init__(self) -> None:
        if self.tasks not in EVAL_TASKS:
            raise ValueError(f"eval_tasks must be one of {EVAL_TASKS}, got {self.tasks!r}")
        if not (isinstance(self.subset, int) and self.subset >= 0):
            raise ValueError(f"eval_subset must be an int >= 0, got {self.subset!r}")
        if not (isinstance(self.full_every, int) and self.full_every >= 1):
            raise ValueError(f"eval_full_every must be an int >= 1, got {self.full_every!r}")

    @classmethod
    def from_config(cls, config: Any) -> "EvalSpec":
        return cls(config.eval_tasks, config.eval_subset, config.eval_full_every)

    def full_row(self, after_task: int, num_tasks: int) -> bool:
        """Whether every task of row ``after_task`` is evaluated on its whole test set."""
        return (self.subset == 0 or after_task == num_tasks - 1
                or (after_task + 1) % self.full_every == 0)


def tasks_after(after_task: int, num_tasks: int, mode: str) -> List[int]:
    """Tasks evaluated after training task ``after_task``: every task (``all``), or the tasks
    seen so far and the next one (``needed``, module docstring)."""
    if mode == "all":
        return list(range(num_tasks))
    if mode != "needed":
        raise ValueError(f"eval_tasks must be one of {EVAL_TASKS}, got {mode!r}")
    return list(range(min(after_task + 2, num_tasks)))


def random_init_tasks(num_tasks: int, mode: str) -> List[int]:
    """Tasks the untrained network is evaluated on: FWT's baselines b_j, j >= 1 (``needed``), or
    every task (``all``)."""
    if mode == "all":
        return list(range(num_tasks))
    if mode != "needed":
        raise ValueError(f"eval_tasks must be one of {EVAL_TASKS}, got {mode!r}")
    return list(range(1, num_tasks))


def subset_rows(num_test: int, size: int, seed: int, task: int) -> Optional[torch.Tensor]:
    """The fixed subset of ``size`` test rows of ``task`` (sorted int64, drawn from
    ``SeedSequence(seed, spawn_key=(tag, task))``), or None when the test set is not larger."""
    if size <= 0 or size >= num_test:
        return None
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_SUBSET_TAG,
                                                                            int(task))))
    return torch.from_numpy(np.sort(rng.choice(num_test, size=size, replace=False)))


def train_rows(num_train: int, size: int, seed: int, task: int) -> Optional[torch.Tensor]:
    """The fixed subset of ``size`` training rows of ``task`` whose accuracy the learning curves
    record (sorted int64, from ``SeedSequence(seed, spawn_key=(tag, task))``, a stream of its
    own), or None when the training set is not larger (all of it)."""
    if size <= 0 or size >= num_train:
        return None
    rng = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(_TRAIN_TAG,
                                                                            int(task))))
    return torch.from_numpy(np.sort(rng.choice(num_train, size=size, replace=False)))


@torch.inference_mode()
def evaluate_task(model: nn.Module, scenario: Any, task: int, after_task: int,
                  device: Any = "cpu", batch_size: int = EVAL_BATCH,
                  rows: Optional[torch.Tensor] = None, recorder: Any = None,
                  split: str = "test") -> tuple[int, int]:
    """(correct, total) on task ``task``'s test set (or ``split``; ``rows`` of it, or all)
    after training task ``after_task``, in the model's current mode; every example counted
    once. Class-incremental scenarios predict the argmax over the classes seen up to
    ``after_task``. With ``recorder`` (``model.record_activity()``), the forward passes are
    recorded."""
    allowed = None
    if getattr(scenario, "setting", None) == "class":
        allowed = scenario.seen_outputs(after_task).to(device)
    correct = total = 0
    subset = {} if rows is None else {"rows": rows}
    for x, y, t in scenario.batches(task, split, batch_size=batch_size, shuffle=False,
                                    device=device, **subset):
        logits = model(x, t)
        if allowed is not None:
            pred = allowed[logits.index_select(1, allowed).argmax(1)]
        else:
            pred = logits.argmax(1)
        correct += int((pred == y).sum())
        total += int(y.numel())
    return correct, total


@dataclass
class RowResult:
    """One evaluation after a task: accuracy and examples per evaluated task, and the activity
    summaries (``ActivityRecorder.summary()``) of the tasks recorded."""

    accuracy: Dict[int, float] = field(default_factory=dict)
    examples: Dict[int, int] = field(default_factory=dict)
    activity: Dict[int, dict] = field(default_factory=dict)


def evaluate_tasks(model: nn.Module, scenario: Any, tasks: Sequence[int], after_task: int,
                   device: Any = "cpu", *, batch_size: int = EVAL_BATCH,
                   rows: Optional[Dict[int, Optional[torch.Tensor]]] = None,
                   record: Sequence[int] = ()) -> RowResult:
    """Evaluate ``tasks`` after training ``after_task`` in eval mode (the model's mode is
    restored): accuracy on each (on ``rows[task]`` when given), and for the tasks in ``record``
    the hidden activity of the same forward passes (``model.record_activity()``, before
    dropout)."""
    out = RowResult()
    was_training = model.training
    model.eval()
    recordable = hasattr(model, "record_activity")
    if record and not recordable:
        raise ValueError(f"evaluate_tasks: recording activity needs a model with "
                         f"record_activity() (models.Net), got {type(model).__name__}")
    try:
        for j in tasks:
            sub = None if rows is None else rows.get(j)
            if j in record:
                with model.record_activity() as recorder:
                    correct, total = evaluate_task(model, scenario, j, after_task, device,
                                                   batch_size, sub, recorder)
                out.activity[j] = recorder.summary()
            else:
                correct, total = evaluate_task(model, scenario, j, after_task, device,
                                               batch_size, sub)
            out.accuracy[j] = correct / max(total, 1)
            out.examples[j] = total
    finally:
        model.train(was_training)
    return out


def epoch_accuracy(model: nn.Module, scenario: Any, task: int, device: Any = "cpu", *,
                   train_subset: Optional[torch.Tensor] = None, train: bool = True,
                   batch_size: int = EVAL_BATCH) -> tuple[float, Optional[float]]:
    """(test accuracy, training accuracy) of ``task`` while it is being trained, in eval mode
    (the model's mode is restored): the whole test set, and the training rows ``train_subset``
    (all of them when None; no training accuracy when ``train`` is False)."""
    was_training = model.training
    model.eval()
    try:
        correct, total = evaluate_task(model, scenario, task, task, device, batch_size)
        test = correct / max(total, 1)
        accuracy = None
        if train:
            correct, total = evaluate_task(model, scenario, task, task, device, batch_size,
                                           train_subset, split="train")
            accuracy = correct / max(total, 1)
    finally:
        model.train(was_training)
    return test, accuracy


def examples_matrix(rows: Sequence[Optional[Dict[int, int]]], num_tasks: int) -> np.ndarray:
    """(T, T) int64: the test examples behind each entry of the accuracy matrix (0 where the
    entry was not evaluated) from the per-row ``examples`` dicts (None for rows not trained)."""
    m = np.zeros((num_tasks, num_tasks), dtype=np.int64)
    for i, row in enumerate(rows):
        for j, n in (row or {}).items():
            m[i, j] = n
    return m
