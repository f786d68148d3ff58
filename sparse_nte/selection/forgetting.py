"""Forgetting-event static pruning (Toneva, Sordoni, Combes, Trischler, Bengio & Gordon, "An
Empirical Study of Example Forgetting during Deep Neural Network Learning", ICLR 2019).

During the scoring run (:mod:`sparse_nte.selection.scoring`; ``data_prune_score_epochs`` >= 2
epochs of SGD on a copy of the model), every time example i is presented its correctness
acc_i^e = [prediction = y_i] is read off the forward pass the step trains on (before the
update, train mode, as Toneva et al. do). With acc_i^0 := 0 before the first presentation::

    forgetting events   F_i = #{ e : acc_i^(e-1) = 1 and acc_i^e = 0 }
    learned             L_i = [ acc_i^e = 1 for some e ]
    score               s_i = F_i if L_i, +inf if example i was never learned

(the paper counts never-learned examples as forgotten infinitely often). The score is averaged
over the repeats (+inf if the example was never learned in some repeat). Keep the k HIGHEST:
the paper shows that unforgettable examples (F = 0) can be removed with little loss of
accuracy, and that the most forgotten ones (and those never learned) carry the information.
Predictions follow the runner's evaluation (class-incremental: argmax over the seen classes).

The counts are kept in place in the counter's own tensors. (DeepCore's implementation adds to
``forgetting_events[batch_inds][mask]``, a copy made by advanced indexing, so its counts stay
0 and its "forgetting" selection is effectively by position.)

Inclusion probabilities: 1 for the top k, 0 for the rest (random ties), so no unbiased
rescaling.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from sparse_nte.seams import TaskContext
from sparse_nte.selection.scoring import OnBatch, StaticSelection, predictions

__all__ = ["ForgettingCounter", "ForgettingSelection"]


class ForgettingCounter:
    """Forgetting events of n examples from a stream of (rows, correct) presentations."""

    def __init__(self, n: int) -> None:
        self.last = torch.zeros(n, dtype=torch.bool)      # acc at the last presentation
        self.learned = torch.zeros(n, dtype=torch.bool)   # correct at some presentation
        self.events = torch.zeros(n, dtype=torch.int64)   # 1 -> 0 transitions
        self.presented = torch.zeros(n, dtype=torch.int64)

    def update(self, rows: torch.Tensor, correct: torch.Tensor) -> None:
        """One presentation of each of ``rows`` (distinct) with its correctness (bool)."""
        rows = rows.cpu()
        correct = correct.cpu().bool()
        forgotten = self.last[rows] & ~correct
        self.events.index_add_(0, rows, forgotten.to(torch.int64))
        self.last[rows] = correct
        self.learned[rows] = self.learned[rows] | correct
        self.presented.index_add_(0, rows, torch.ones_like(rows))

    def scores(self) -> torch.Tensor:
        """Float64 forgetting counts, +inf for examples never learned."""
        return torch.where(self.learned, self.events.to(torch.float64), torch.inf)


class ForgettingSelection(StaticSelection):
    """Keep the k most forgotten examples (never learned counted as forgotten infinitely)."""

    name = "forgetting"

    def _reset_scores(self, n: int) -> None:
        super()._reset_scores(n)
        self._counters: Dict[int, ForgettingCounter] = {}
        self._never = 0
        self._unforgettable = 0

    def _on_batch(self, repeat: int) -> Optional[OnBatch]:
        counter = self._counters[repeat] = ForgettingCounter(self._n)

        def record(epoch: int, rows: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
            counter.update(rows, predictions(logits, self._ctx) == y)

        return record

    def _score_task(self, ctx: TaskContext) -> None:
        self._ctx = ctx
        try:
            super()._score_task(ctx)
        finally:
            self._ctx = None
        self._never = int(torch.isinf(self.score).sum())
        self._unforgettable = int((self.score == 0).sum())
        self._counters.clear()

    def _score_copy(self, model: nn.Module, ctx: TaskContext, repeat: int) -> torch.Tensor:
        return self._counters[repeat].scores()

    def _score_stats(self) -> Dict[str, Any]:
        return {"never_learned": self._never, "unforgettable": self._unforgettable}

    def _scores_state(self) -> Dict[str, Any]:
        return {**super()._scores_state(), "never_learned": self._never,
                "unforgettable": self._unforgettable}

    def _load_scores(self, state) -> None:
        super()._load_scores(state)
        self._never = int(state["never_learned"])
        self._unforgettable = int(state["unforgettable"])
