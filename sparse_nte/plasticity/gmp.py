"""Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017) as a schedule."""
from __future__ import annotations

from typing import Any, Optional

import torch

from sparse_nte.plasticity.base import LayerList, PlasticitySchedule, check_interval
from sparse_nte.plasticity.erk import erk_layer_densities
from sparse_nte.plasticity.formulas import erk_densities, gmp_sparsity
from sparse_nte.plasticity.masks import commit, layer_density, resize

__all__ = ["GradualMagnitudePruning"]


class GradualMagnitudePruning(PlasticitySchedule):
    """Gradual magnitude pruning (Zhu & Gupta 2017).

    At global steps ``t = t0 + j * dt`` (``j = 1..n``, ``t`` = optimizer steps done in the whole
    run) every layer is pruned by magnitude to sparsity
    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3``, where ``s_i`` is the layer's
    sparsity at the start (so layers of different initial sparsity converge to the same
    ``s_f``). With ``erk`` the initial and the final densities are both ERK allocations (``s_f``
    then is the final sparsity of all layers together). Pruned connections are never regrown.
    """

    kind = "gmp"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 final_sparsity: float, start: int = 0, n: int = 10, interval: int = 100,
                 **kwargs: Any) -> None:
        if not (isinstance(final_sparsity, (int, float)) and 0.0 <= final_sparsity < 1.0):
            raise ValueError(f"GMP: gmp_final_sparsity must be in [0, 1), got {final_sparsity!r}")
        if not (isinstance(start, int) and start >= 0):
            raise ValueError(f"GMP: gmp_start must be an int >= 0, got {start!r}")
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"GMP: gmp_n must be an int >= 1, got {n!r}")
        check_interval(interval, 1.0, "GMP")
        super().__init__(layers, optimizer, **kwargs)
        total = sum(self.steps_per_task)
        if start + n * interval > total:
            raise ValueError(f"GMP: the last pruning step gmp_start + gmp_n * plasticity_interval "
                             f"= {start} + {n} * {interval} = {start + n * interval} lies beyond "
                             f"the run's {total} steps; lower gmp_n or plasticity_interval")
        if self.erk:   # ERK allocates the densities when task 0 starts, and the final ones
            shapes = [tuple(layer.zero_mask.shape) for _, layer in self.layers]
            self.initial_sparsity = [1.0 - d for d in erk_layer_densities(self.layers)]
            self.final_sparsity = [1.0 - d for d in erk_densities(shapes, 1.0 - final_sparsity)]
        else:
            self.initial_sparsity = [1.0 - layer_density(layer) for _, layer in self.layers]
            self.final_sparsity = [float(final_sparsity)] * len(self.layers)
        too_dense = [(name, round(s_i, 6)) for (name, _), s_i, s_f
                     in zip(self.layers, self.initial_sparsity, self.final_sparsity)
                     if s_i > s_f + 1e-12]
        if too_dense:
            raise ValueError(f"GMP: gmp_final_sparsity={final_sparsity} is below the initial "
                             f"sparsity of layers {too_dense}; pruning cannot lower sparsity")
        self.start, self.n, self.interval = start, n, interval

    def target_sparsity(self, layer_index: int, t: int) -> float:
        """s_t of layer ``layer_index`` after ``t`` optimizer steps of the run."""
        return gmp_sparsity(t, self.initial_sparsity[layer_index], self.final_sparsity[layer_index],
                            self.start, self.n, self.interval)

    def _after_optimizer_step(self, step: int) -> None:
        t = step + 1
        j, rem = divmod(t - self.start, self.interval)
        if rem != 0 or not 1 <= j <= self.n:
            return
        for i, (name, layer) in enumerate(self.layers):
            density = 1.0 - self.target_sparsity(i, t)
            new_live = resize(layer, density, False, self.generator)
            self._record(step, name, *commit(layer, self.optimizer, new_live, None,
                                             self.init_scale, self.generator))
