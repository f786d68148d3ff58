"""What every selector shares: the per-task state, the epoch schedule, the unbiased loss
weights, statistics and checkpoints. A selector supplies only its scores and its draw.

Per task (``on_task_start``), for the task's N training examples and k = floor((1 - p) N):

* ``rows(ctx, e)``, called once per epoch in order: None (every row) outside the pruned
  epochs; in a pruned epoch the kept rows (int64, ascending), drawn anew at the epochs the
  schedule selects (:mod:`sparse_nte.selection.spec`) and kept in between.
* ``loss_weights(batch)`` with ``data_prune_rescale``: w_i = 1 / pi_i for the task's own rows
  of a pruned epoch (pi_i: the probability the last draw kept row i, see
  :mod:`sparse_nte.selection.sampling`), 1 for rows from elsewhere (replay). Since the learner
  averages w_i l_i over each batch of B rows, the sum over the epoch's steps of the batch
  losses has expectation (1/B) sum_i l_i, that of a full-data epoch (up to the last, smaller
  batch). Each step's loss is then N / k times larger on average: rescaling acts like a
  learning rate raised by N / k for the pruned epochs (InfoBatch's 1 / (1 - r) likewise).
* ``observe(batch, losses)``: dynamic selectors update the scores of the rows just trained on
  (``batch.own``), after dividing out the weight w_i they gave. The batches are queued and
  applied in one vectorised update when the scores are next needed (the next ``rows``,
  ``stats`` or ``state_dict``): each row is trained on at most once per epoch, so this equals
  applying them batch by batch (if a row was observed twice, they are applied batch by batch).

Randomness comes only from a ``torch.Generator`` seeded from (seed, task) with numpy's
SeedSequence (the same in every process); its state is part of the checkpoint, so a run
resumed at an epoch boundary draws exactly what the uninterrupted run draws. Loading a state
saved in the middle of task i and then calling ``on_task_start`` for task i keeps the loaded
state (that is a resume); any other task starts afresh.

Statistics of the task (``stats()``), plain data: the fraction of the task's examples used in
each epoch, how many times each example was kept over the P pruned epochs (``kept_histogram[j]``
= examples kept in exactly j of them; ``sometimes`` = examples kept in some but not all), the
seconds spent scoring (static scoring runs; dynamic: score updates) and selecting.
"""
from __future__ import annotations

import math
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from sparse_nte.seams import OTHER_ROW, Batch, Selection, TaskContext
from sparse_nte.selection.spec import (SelectionSpec, is_pruned, keep_count, planned_rows,
                                       pruned_epochs, schedule_warning, selects)

__all__ = ["PrunedSelection", "seeded_generator"]


def seeded_generator(*numbers: int) -> torch.Generator:
    """A CPU generator seeded from the integers, identically in every process."""
    state = np.random.SeedSequence([int(v) for v in numbers]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 31) ^ int(state[1]))


#: Tag mixed into the selection generator's seed (distinct from the runner's batch order).
_SELECT_TAG = 0x5E1EC7


class PrunedSelection(Selection):
    """Base of the selectors. Subclasses set ``name`` and implement :meth:`_select`; dynamic
    ones :meth:`_reset_scores` and :meth:`_update`, static ones :meth:`_score_task`."""

    name = ""
    #: Static selectors choose once per task (at the first pruned epoch).
    static = False
    #: Dynamic selectors learn from ``observe``.
    dynamic = False

    def __init__(self, spec: SelectionSpec) -> None:
        if spec.data_pruning != self.name:
            raise ValueError(f"{type(self).__name__} implements data_pruning = {self.name}, got "
                             f"a spec for {spec.data_pruning!r}")
        self.spec = spec
        self._task: Optional[int] = None
        self._resumed = False

    # -- what a selector implements -----------------------------------------------------------
    def planned_rows(self, n: int, epochs: int) -> List[int]:
        return planned_rows(self.spec, n, epochs)

    def warning(self, epochs_per_task: Sequence[int]) -> str:
        return schedule_warning(self.spec, list(epochs_per_task))

    def _check_counts(self, n: int, k: int, task: int) -> None:
        """Raise ValueError if the selector cannot work with these counts."""

    def _reset_scores(self, n: int) -> None:
        """Fresh scores for a task of n examples."""

    def _score_task(self, ctx: TaskContext) -> None:
        """Static selectors: compute the task's scores (on a copy of the model)."""

    def _select(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Draw the kept rows: ``(rows ascending, pi)`` for the current task."""
        raise NotImplementedError

    def _update(self, rows: torch.Tensor, losses: torch.Tensor) -> None:
        """Dynamic selectors: new float64 losses of ``rows`` (unweighted)."""

    def _scores_state(self) -> Dict[str, Any]:
        return {}

    def _load_scores(self, state: Mapping[str, Any]) -> None:
        pass

    def _score_stats(self) -> Dict[str, Any]:
        return {}

    # -- task events --------------------------------------------------------------------------
    def on_task_start(self, ctx: TaskContext) -> None:
        n = int(ctx.scenario.tasks[ctx.task].num_train)
        if self._resumed and self._task == ctx.task:
            if n != self._n:
                raise ValueError(f"data selection ({self.name}): the checkpoint was taken on task "
                                 f"{ctx.task} with {self._n} training examples, the scenario has "
                                 f"{n}")
            self._resumed = False
            return
        self._resumed = False
        k = keep_count(n, self.spec.data_prune_rate)
        prunes = bool(pruned_epochs(self.spec, ctx.epochs))
        if prunes and k < 1:
            raise ValueError(f"data selection ({self.name}): data_prune_rate = "
                             f"{self.spec.data_prune_rate} keeps floor((1 - p) * {n}) = 0 of the "
                             f"{n} training examples of task {ctx.task}; lower data_prune_rate")
        if prunes:
            self._check_counts(n, k, ctx.task)
        self._task, self._n, self._k = int(ctx.task), n, k
        self._generator = seeded_generator(ctx.seed, ctx.task, _SELECT_TAG)
        self._kept: Optional[torch.Tensor] = None
        self._pi: Optional[torch.Tensor] = None
        self._weights: Optional[torch.Tensor] = None
        self._pending: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self._pruning = False
        self._last_epoch = -1
        self._kept_count = torch.zeros(n, dtype=torch.int64)
        self._fractions: List[float] = []
        self._pruned = 0
        self._selections = 0
        self._score_s = 0.0
        self._select_s = 0.0
        self._reset_scores(n)
        if self.static and prunes:
            t0 = time.perf_counter()
            self._score_task(ctx)
            self._score_s += time.perf_counter() - t0

    def _require_task(self, what: str) -> None:
        if self._task is None:
            raise RuntimeError(f"data selection ({self.name}): {what} called before "
                               f"on_task_start")

    # -- per epoch ----------------------------------------------------------------------------
    def rows(self, ctx: TaskContext, epoch: int) -> Optional[torch.Tensor]:
        self._require_task("rows")
        if epoch == self._last_epoch:  # asked twice for the same epoch: same answer
            return self._kept if self._pruning else None
        self._flush()
        t0 = time.perf_counter()
        if is_pruned(self.spec, epoch, ctx.epochs):
            if self._kept is None or (not self.static and selects(self.spec, epoch, ctx.epochs)):
                self._kept, self._pi = self._select()
                self._weights = None
                self._selections += 1
            self._pruning = True
            self._kept_count[self._kept] += 1
            self._pruned += 1
            self._fractions.append(self._k / self._n)
        else:
            self._pruning = False
            self._fractions.append(1.0)
        self._last_epoch = int(epoch)
        self._select_s += time.perf_counter() - t0
        return self._kept if self._pruning else None

    def loss_weights(self, batch: Batch) -> Optional[torch.Tensor]:
        if not (self.spec.data_prune_rescale and self._pruning):
            return None
        if self._weights is None:  # 1 / pi per row (inf for rows not kept)
            self._weights = self._pi.reciprocal().to(torch.float32)
        index = batch.index
        if index.numel() == 0:
            return torch.ones(0, dtype=torch.float32, device=index.device)
        if int(index.min()) != OTHER_ROW:          # only the task's own rows (the usual case)
            w = self._weights.index_select(0, index.cpu())
        else:
            own = (index != OTHER_ROW).cpu()
            w = torch.ones(len(batch), dtype=torch.float32)
            w[own] = self._weights[index.cpu()[own]]
        if not math.isfinite(float(w.max())):
            raise ValueError(f"data selection ({self.name}): a batch of epoch {self._last_epoch} "
                             f"of task {self._task} holds rows that the selection did not keep; "
                             f"train only on the rows returned by rows()")
        return w.to(index.device)

    def observe(self, batch: Batch, losses: torch.Tensor) -> None:
        if not self.dynamic:
            return
        self._require_task("observe")
        # copies: the caller may reuse its buffers before the queue is applied
        self._pending.append((batch.index.to("cpu", copy=True),
                              losses.detach().to("cpu", torch.float64, copy=True)))

    def _flush(self) -> None:
        """Apply the queued observations (see the module docstring)."""
        if not self._pending:
            return
        t0 = time.perf_counter()
        pending, self._pending = self._pending, []
        index = torch.cat([i for i, _ in pending])
        values = torch.cat([v for _, v in pending])
        own = index != OTHER_ROW
        if not bool(own.all()):
            index, values = index[own], values[own]
        if index.numel() and int(torch.bincount(index, minlength=self._n).max()) > 1:
            for rows, losses in pending:       # a row observed twice: keep the order
                keep = rows != OTHER_ROW
                self._apply(rows[keep], losses[keep])
        else:
            self._apply(index, values)
        self._score_s += time.perf_counter() - t0

    def _apply(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        if self.spec.data_prune_rescale and self._pruning:
            values = values * self._pi[rows]  # the objective multiplied them by 1 / pi
        self._update(rows, values)

    # -- results and checkpoints --------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        if self._task is None:
            return {}
        self._flush()
        counts = self._kept_count
        hist = torch.bincount(counts, minlength=self._pruned + 1)
        sometimes = int(((counts > 0) & (counts < self._pruned)).sum())
        fractions = list(self._fractions)
        out: Dict[str, Any] = {
            "selector": self.name,
            "examples": self._n,
            "kept": self._k,
            "kept_fraction": fractions,
            "data_fraction": float(sum(fractions) / len(fractions)) if fractions else 1.0,
            "pruned_epochs": self._pruned,
            "selections": self._selections,
            "kept_histogram": [int(v) for v in hist.tolist()],
            "sometimes": sometimes,
            "score_s": float(self._score_s),
            "select_s": float(self._select_s),
        }
        out.update(self._score_stats())
        return out

    def state_dict(self) -> Dict[str, Any]:
        if self._task is None:
            return {"task": None}
        self._flush()

        def copy(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.clone()

        return {
            "task": self._task, "n": self._n, "k": self._k,
            "generator": self._generator.get_state(),
            "kept": copy(self._kept), "pi": copy(self._pi), "pruning": self._pruning,
            "last_epoch": self._last_epoch, "kept_count": copy(self._kept_count),
            "fractions": list(self._fractions), "pruned_epochs": self._pruned,
            "selections": self._selections, "score_s": self._score_s,
            "select_s": self._select_s, "scores": self._scores_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("task") is None:
            self._task = None
            self._resumed = False
            return
        self._task, self._n, self._k = int(state["task"]), int(state["n"]), int(state["k"])
        self._generator = torch.Generator()
        self._generator.set_state(state["generator"])
        self._kept = None if state["kept"] is None else state["kept"].clone()
        self._pi = None if state["pi"] is None else state["pi"].clone()
        self._weights = None
        self._pending = []
        self._pruning = bool(state["pruning"])
        self._last_epoch = int(state["last_epoch"])
        self._kept_count = state["kept_count"].clone()
        self._fractions = [float(v) for v in state["fractions"]]
        self._pruned = int(state["pruned_epochs"])
        self._selections = int(state["selections"])
        self._score_s = float(state["score_s"])
        self._select_s = float(state["select_s"])
        self._reset_scores(self._n)
        self._load_scores(state["scores"])
        self._resumed = True
