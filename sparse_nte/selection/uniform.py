"""Uniform dynamic pruning (Raju, Daruwalla & Lipasti 2021, arXiv 2111.12621, "uniform"):
at every selection, k = floor((1 - p) N) of the task's N examples, drawn uniformly without
replacement; no scores. Inclusion probability pi_i = k / N for every example, so with
``data_prune_rescale`` every kept loss is weighted N / k.
"""
from __future__ import annotations

from typing import Tuple

import torch

from sparse_nte.selection import sampling
from sparse_nte.selection.base import PrunedSelection

__all__ = ["UniformSelection"]


class UniformSelection(PrunedSelection):
    """k examples uniformly without replacement at every selection."""

    name = "uniform"

    def _select(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return sampling.uniform(self._n, self._k, self._generator)
