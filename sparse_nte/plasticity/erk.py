"""Erdős–Rényi-Kernel re-allocation of the layer densities (Evci et al., "Rigging the Lottery",
ICML 2020, sec. 3), keeping the total number of connections, and keeping the fan-in-normalised
variance of the initial weights (``Var(w) * fan_in * density``)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from sparse_nte.layers import SparseWeightsBase
from sparse_nte.plasticity.formulas import erk_densities
from sparse_nte.plasticity.masks import commit, excitatory_columns, layer_density, resize, unit_rows

__all__ = ["erk_layer_densities", "apply_erk"]

LayerList = Sequence[Tuple[str, SparseWeightsBase]]


def erk_layer_densities(layers: LayerList) -> List[float]:
    """The densities :func:`apply_erk` gives ``layers``: the ERK allocation of their current
    total density, rounded to whole inputs per unit, ``round(d_l * fan_in) / fan_in``."""
    shapes = [tuple(layer.zero_mask.shape) for _, layer in layers]
    live_total = sum(int((~layer.zero_mask).sum().item()) for _, layer in layers)
    total = sum(layer.zero_mask.numel() for _, layer in layers)
    fans = [layer.zero_mask[0].numel() for _, layer in layers]
    return [round(d * f) / f for d, f in zip(erk_densities(shapes, live_total / total), fans)]


def apply_erk(layers: LayerList, optimizer: Optional[torch.optim.Optimizer],
              generator: torch.Generator) -> List[Dict[str, Any]]:
    """Re-allocate the live weights of ``layers`` by :func:`erk_densities`, keeping their total
    (up to one weight per unit of rounding; see :func:`erk_layer_densities`). Run before
    training.

    Where a layer gets denser, its new weights are drawn by resampling its own live weights
    (the same sign group with Dale's law, so the builder's initial distribution and E/I scaling
    are kept); then every live weight of the layer is scaled by ``sqrt(d_old / d_new)`` so that
    the fan-in-normalised variance ``Var(w) * fan_in * density`` of the initialisation is
    unchanged. Returns one event dict per layer (``pruned``, ``grown``, ``density``).
    """
    targets = erk_layer_densities(layers)
    events = []
    for (name, layer), d_new in zip(layers, targets):
        d_old = layer_density(layer)
        w = unit_rows(layer.weight.detach())
        new_live = resize(layer, d_new, True, generator)
        live = ~unit_rows(layer.zero_mask)
        values = torch.zeros_like(w)
        exc = excitatory_columns(layer)
        for g in ([None] if exc is None else [exc, ~exc]):
            pool = w[live if g is None else live & g]
            if pool.numel() == 0:
                continue
            pick = torch.randint(0, pool.numel(), w.shape, generator=generator).to(w.device)
            values = pool[pick] if g is None else torch.where(g, pool[pick], values)
        pruned, grown, density = commit(layer, optimizer, new_live, None, 0.0, generator,
                                        new_values=values)
        if density > 0:
            with torch.no_grad():
                layer.weight.mul_(math.sqrt(d_old / density))
        events.append({"layer": name, "pruned": pruned, "grown": grown, "density": density})
    return events
