"""Dynamic pruning with scores learned from the training losses, as a multi-armed bandit
(Raju, Daruwalla & Lipasti, "Accelerating Deep Learning with Dynamic Data Pruning",
arXiv 2111.12621): every example is an arm whose reward is its loss; the selection exploits
high-loss examples and explores the others.

Scores come from ``observe``: the per-example losses l_i the rule computed while training (no
extra forward pass), for the rows just trained on only. With alpha = ``data_prune_ema``:

epsilon-greedy::

    s_i <- (1 - alpha) s_i + alpha l_i
    keep the top (k - r) by s, plus r = floor(eps k) drawn uniformly from the rest

UCB (the variance, not the standard deviation, as in the paper's reimplementations)::

    mu_i  <- (1 - alpha) mu_i + alpha l_i
    v_i   <- (1 - alpha) v_i + alpha (l_i - mu_i,old)^2
    s_i    = mu_i + c v_i,   keep the top k

The first observation of an example initialises its average (s_i = mu_i = l_i, v_i = 0)
instead of blending with an arbitrary prior; an example not yet observed in the task ranks
above every observed one (s_i = +inf), so, as in UCB1 (Auer, Cesa-Bianchi & Fischer 2002),
every arm is tried before arms are judged: with ``data_prune_start = 0`` the first selection is
a uniformly random subset (all scores tie) and unseen examples are preferred afterwards. (The
reimplementation sodabori/dataset_pruning starts s at 1 and mu, v at 0.) Ties are broken at
random (:func:`sparse_nte.selection.sampling.top_k`).

Only the scores of kept examples move, which is why epsilon-greedy explores and UCB adds an
uncertainty bonus. Scores restart with every task (each task has its own training set).

Inclusion probabilities (for ``data_prune_rescale``): epsilon-greedy
pi_i = pi^g_i + (1 - pi^g_i) r / (N - k + r) (see :mod:`sparse_nte.selection.sampling`);
UCB keeps the top k deterministically (up to ties), so it admits no unbiased rescaling.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Tuple

import torch

from sparse_nte.selection import sampling
from sparse_nte.selection.base import PrunedSelection
from sparse_nte.selection.spec import random_count

__all__ = ["EpsilonGreedySelection", "UCBSelection"]


class _LossScores(PrunedSelection):
    """Exponential averages of each example's training loss."""

    dynamic = True

    def _reset_scores(self, n: int) -> None:
        self.seen = torch.zeros(n, dtype=torch.bool)
        self.mean = torch.zeros(n, dtype=torch.float64)

    def _update(self, rows: torch.Tensor, losses: torch.Tensor) -> None:
        a = self.spec.data_prune_ema
        seen = self.seen[rows]
        old = self.mean[rows]
        self.mean[rows] = torch.where(seen, old * (1.0 - a) + a * losses, losses)
        self.seen[rows] = True
        self._update_extra(rows, losses, old, seen)

    def _update_extra(self, rows: torch.Tensor, losses: torch.Tensor, old_mean: torch.Tensor,
                      seen: torch.Tensor) -> None:
        pass

    def scores(self) -> torch.Tensor:
        """The ranking scores (float64, +inf for examples not yet observed in the task)."""
        self._flush()
        return torch.where(self.seen, self._score_values(), torch.inf)

    def _score_values(self) -> torch.Tensor:
        return self.mean

    def _scores_state(self) -> Dict[str, Any]:
        return {"seen": self.seen.clone(), "mean": self.mean.clone()}

    def _load_scores(self, state: Mapping[str, Any]) -> None:
        self.seen = state["seen"].clone()
        self.mean = state["mean"].clone()

    def _score_stats(self) -> Dict[str, Any]:
        return {"never_observed": int((~self.seen).sum())}


class EpsilonGreedySelection(_LossScores):
    """Top (1 - eps) k by the loss average, eps k uniformly from the rest."""

    name = "epsilon_greedy"

    def _check_counts(self, n: int, k: int, task: int) -> None:
        r = random_count(k, self.spec.data_prune_epsilon)
        if self.spec.data_prune_rescale and r == 0 and k < n:
            raise ValueError(
                f"data selection (epsilon_greedy): data_prune_rescale = true needs every example "
                f"to be kept with positive probability, but data_prune_epsilon = "
                f"{self.spec.data_prune_epsilon} draws floor(eps * {k}) = 0 examples at random "
                f"on task {task} ({n} examples); raise data_prune_epsilon or turn rescaling off")

    def _select(self) -> Tuple[torch.Tensor, torch.Tensor]:
        r = random_count(self._k, self.spec.data_prune_epsilon)
        return sampling.epsilon_greedy(self.scores(), self._k, r, self._generator)


class UCBSelection(_LossScores):
    """Top k by loss average + c x loss variance."""

    name = "ucb"

    def _reset_scores(self, n: int) -> None:
        super()._reset_scores(n)
        self.var = torch.zeros(n, dtype=torch.float64)

    def _update_extra(self, rows: torch.Tensor, losses: torch.Tensor, old_mean: torch.Tensor,
                      seen: torch.Tensor) -> None:
        a = self.spec.data_prune_ema
        old = self.var[rows]
        self.var[rows] = torch.where(seen, old * (1.0 - a) + a * (losses - old_mean) ** 2,
                                     torch.zeros_like(old))

    def _score_values(self) -> torch.Tensor:
        return self.mean + self.spec.data_prune_ucb_c * self.var

    def _select(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return sampling.top_k(self.scores(), self._k, self._generator)

    def _scores_state(self) -> Dict[str, Any]:
        return {**super()._scores_state(), "var": self.var.clone()}

    def _load_scores(self, state: Mapping[str, Any]) -> None:
        super()._load_scores(state)
        self.var = state["var"].clone()
