"""Posterior pruning of the Neural Tangent Ensemble (:mod:`sparse_nte.nte_prune`; Benjamin,
Pehle & Daruwalla, NeurIPS 2024) as a plasticity schedule."""
from __future__ import annotations

import math
from typing import Any, Optional

import torch

from sparse_nte.nte.protocol import is_expert_ensemble
from sparse_nte.nte_prune import PRUNE_RULES, prune_mask
from sparse_nte.plasticity.base import LayerList, PlasticitySchedule, check_interval
from sparse_nte.plasticity.masks import commit, unit_rows

__all__ = ["NTEPosteriorPruning"]


class NTEPosteriorPruning(PlasticitySchedule):
    """Posterior pruning of the NTE ensemble (:mod:`sparse_nte.nte_prune`) as a schedule.

    Every ``interval`` steps of a task while ``t < end_fraction * steps_in_task``, every layer
    loses the experts :func:`sparse_nte.nte_prune.prune_mask` selects: with ``rule="magnitude"``
    the ``round(rate * n_live)`` smallest posterior weights of the layer, with ``rule="score"``
    those whose running score ``v = m v + (1 - m) g s`` is at least ``mean + z * std`` over the
    layer's live experts. The rules act on the layer's posterior as a whole, so unlike the other
    schedules they keep neither equal counts per unit nor the E/I split (Dale signs are kept:
    pruning only removes weights). Pruned connections never return; the NTE normaliser Z is
    unchanged, so the surviving experts are renormalised to the same total at the next step.
    Needs the :class:`~sparse_nte.nte.NTE` optimizer managing every layer's weight (and built
    with ``score_momentum`` for the score rule).
    """

    kind = "nte_prune"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 rule: str = "magnitude", rate: float = 0.01, z: float = 2.33,
                 interval: int = 100, end_fraction: float = 0.75, **kwargs: Any) -> None:
        if not is_expert_ensemble(optimizer):
            raise ValueError(f"NTEPosteriorPruning: plasticity = nte_prune needs optimizer = nte "
                             f"(it prunes by the experts' posterior), got "
                             f"{type(optimizer).__name__}")
        if rule not in PRUNE_RULES:
            raise ValueError(f"NTEPosteriorPruning: nte_prune_rule must be one of {PRUNE_RULES}, "
                             f"got {rule!r}")
        if not (isinstance(rate, (int, float)) and 0.0 < rate < 1.0):
            raise ValueError(f"NTEPosteriorPruning: nte_prune_rate must be in (0, 1), got {rate!r}")
        if not (isinstance(z, (int, float)) and math.isfinite(z) and z > 0):
            raise ValueError(f"NTEPosteriorPruning: nte_prune_z must be > 0, got {z!r}")
        if rule == "score" and optimizer.score_momentum is None:
            raise ValueError("NTEPosteriorPruning: nte_prune_rule = score needs the NTE optimizer "
                             "built with score_momentum = nte_prune_momentum (build_nte_optimizer "
                             "does so for plasticity = nte_prune)")
        check_interval(interval, end_fraction, "NTEPosteriorPruning")
        super().__init__(layers, optimizer, **kwargs)
        managed = {id(p) for p in optimizer.managed_params()}
        unmanaged = [name for name, layer in self.layers if id(layer.weight_param) not in managed]
        if unmanaged:
            raise ValueError(f"NTEPosteriorPruning: the NTE optimizer does not manage the weights "
                             f"of layers {unmanaged}; there is no posterior to prune them by")
        self.rule, self.rate, self.z = rule, float(rate), float(z)
        self.interval, self.end_fraction = interval, float(end_fraction)

    def _after_optimizer_step(self, step: int) -> None:
        if not self._interval_event(step, self.interval, self.end_fraction):
            return
        for name, layer in self.layers:
            remove = prune_mask(layer, self.optimizer, self.rule, self.rate, self.z)
            new_live = unit_rows(~layer.zero_mask & ~remove)
            self._record(step, name, *commit(layer, self.optimizer, new_live, None,
                                             self.init_scale, self.generator))
