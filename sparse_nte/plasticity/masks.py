"""Mask surgery: the live connections of a layer, and changing them as one consistent update.

A layer's weight is viewed as ``(out_units, fan_in)`` rows. :func:`drop_regrow` (SET, RigL) and
:func:`resize` (density changes) compute a new live mask per unit (and per sign group under
Dale's law); :func:`commit` applies it atomically — new weights written, then
:meth:`~sparse_nte.layers.SparseWeightsBase.set_zero_mask`, then
:func:`sparse_nte.optim_state.reset_positions` at the pruned and grown positions. New weights
start at 0 under additive optimizers and at ``sign * init_scale`` under multiplicative ones
(:func:`is_multiplicative`: a weight at 0 never moves multiplicatively).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from sparse_nte.layers import SparseWeightsBase
from sparse_nte.optim_state import reset_positions
from sparse_nte.plasticity.ranking import random_per_row, top_k_per_row

__all__ = ["is_multiplicative", "unit_rows", "live_counts", "layer_density", "nonzero_density",
           "excitatory_columns", "commit", "drop_regrow", "resize"]


def is_multiplicative(optimizer: Optional[torch.optim.Optimizer], param: torch.Tensor) -> bool:
    """True if ``optimizer`` updates ``param`` multiplicatively (a weight at 0 cannot move).

    An optimizer declares it with an attribute ``multiplicative``: a bool, or a callable taking
    the parameter (for optimizers that treat some parameters additively; the protocol of
    :mod:`sparse_nte.nte.protocol`). The NTE optimizer (:class:`sparse_nte.nte.NTE`) is
    multiplicative for the parameters it manages; the others take plain SGD steps. Stock
    optimizers (no such attribute) are additive.
    """
    if optimizer is None:
        return False
    flag = getattr(optimizer, "multiplicative", None)
    if flag is not None:
        return bool(flag(param)) if callable(flag) else bool(flag)
    return False


def unit_rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def live_counts(layer: SparseWeightsBase) -> torch.Tensor:
    """Number of live (unmasked) inputs of every output unit, int64 ``(out_units,)``."""
    return (~unit_rows(layer.zero_mask)).sum(dim=1)


def layer_density(layer: SparseWeightsBase) -> float:
    """Mask density: the fraction of positions allowed to be non-zero."""
    return float((~layer.zero_mask).sum().item()) / layer.zero_mask.numel()


def nonzero_density(layer: SparseWeightsBase) -> float:
    """Non-zero density: the fraction of weights that are not exactly 0 (read from the stored
    weight, without re-applying the constraints)."""
    w = layer.module.weight.detach()
    return float((w != 0).sum().item()) / w.numel()


def excitatory_columns(layer: SparseWeightsBase) -> Optional[torch.Tensor]:
    """(fan_in,) bool, True at the inputs of a unit that come from excitatory units; None
    without Dale's law. The same for every output unit (a column property)."""
    s = layer.sign_tensor()
    if s is None:
        return None
    return s.expand((1,) + tuple(layer.zero_mask.shape[1:])).reshape(-1) > 0



def _in_columns(sub: torch.Tensor, cols: Optional[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """Spread a selection made on the column subset ``cols`` back to the full rows."""
    if cols is None:
        return sub
    out = torch.zeros(shape, dtype=torch.bool, device=sub.device)
    r, j = torch.nonzero(sub, as_tuple=True)
    out[r, cols[j]] = True
    return out


def _grow(live: torch.Tensor, k: torch.Tensor, cols: Optional[torch.Tensor],
          scores: Optional[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """``k[r]`` empty positions of every row among the columns ``cols`` (all if None): those
    with the largest ``scores``, or uniformly random ones with ``scores=None``."""
    empty = ~live if cols is None else ~live.index_select(1, cols)
    if scores is None:
        sub = random_per_row(empty, k, generator)
    else:
        s = scores if cols is None else scores.index_select(1, cols)
        sub = top_k_per_row(s.masked_fill(~empty, -math.inf), k, generator)
    return _in_columns(sub, cols, live.shape)


class _Live:
    """The live weights of a layer in compact form: ``idx[r, j]`` is the column of the j-th live
    input of unit r (``valid`` marks real entries when units have different counts), ``w`` their
    values. Selections among live weights work on these (units x live) matrices."""

    def __init__(self, layer: SparseWeightsBase) -> None:
        self.weight = unit_rows(layer.weight.detach())
        self.live = ~unit_rows(layer.zero_mask)
        rows, self.fan_in = self.live.shape
        counts = self.live.sum(dim=1)
        nmax = int(counts.max().item()) if rows else 0
        r, c = torch.nonzero(self.live, as_tuple=True)
        if bool((counts == nmax).all()):
            self.idx = c.view(rows, nmax)
            self.valid = torch.ones(rows, nmax, dtype=torch.bool, device=c.device)
        else:
            pos = torch.arange(len(r), device=c.device) - (counts.cumsum(0) - counts)[r]
            self.idx = torch.zeros(rows, nmax, dtype=torch.long, device=c.device)
            self.valid = torch.zeros(rows, nmax, dtype=torch.bool, device=c.device)
            self.idx[r, pos] = c
            self.valid[r, pos] = True
        self.w = self.weight.gather(1, self.idx)
        exc = excitatory_columns(layer)
        self.exc = None if exc is None else exc[self.idx] & self.valid   # live E inputs
        self.exc_cols = exc

    def groups(self) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """(live members in compact form, columns) of each sign group."""
        if self.exc is None:
            return [(self.valid, None)]
        return [(self.exc, torch.nonzero(self.exc_cols).flatten()),
                (self.valid & ~self.exc, torch.nonzero(~self.exc_cols).flatten())]

    def drop_smallest(self, members: torch.Tensor, k: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
        """Full-size mask of the ``k[r]`` smallest-magnitude weights among ``members``."""
        sub = top_k_per_row((-self.w.abs()).masked_fill(~members, -math.inf), k, generator)
        out = torch.zeros_like(self.live)
        r, j = torch.nonzero(sub, as_tuple=True)
        out[r, self.idx[r, j]] = True
        return out


def _random_signs(shape: torch.Size, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    return torch.randint(0, 2, tuple(shape), generator=generator).to(device).mul_(2).sub_(1)


def commit(layer: SparseWeightsBase, optimizer: Optional[torch.optim.Optimizer],
           new_live: torch.Tensor, init_sign: Optional[torch.Tensor], init_scale: float,
           generator: torch.Generator,
           new_values: Optional[torch.Tensor] = None,
           signed_start: bool = False) -> Tuple[int, int, float]:
    """Apply a new live mask (rows x fan_in) to ``layer`` as one update and reset the optimizer
    state at the changed positions. Returns (pruned, grown, density).

    With compact storage (``sparse_exec = "compact"``) the optimizer's state moves with the
    live set (grown weights start with fresh state) instead of being reset in place.

    Grown weights start at ``sign * init_scale`` when the optimizer is multiplicative or
    ``signed_start`` is true, else at 0; ``sign`` is the presynaptic sign with Dale's law, else
    ``init_sign`` where it is non-zero and a random sign (drawn from ``generator``) elsewhere.
    ``new_values`` (rows x fan_in) overrides the start values (used by ERK).
    """
    w = layer.weight
    param = layer.weight_param
    old_live = ~unit_rows(layer.zero_mask)
    grown = new_live & ~old_live
    pruned = old_live & ~new_live
    n_grown, n_pruned = int(grown.sum().item()), int(pruned.sum().item())
    if n_grown == 0 and n_pruned == 0:
        return 0, 0, layer_density(layer)
    with torch.no_grad():
        if n_grown:
            if new_values is not None:
                start = new_values
            elif signed_start or is_multiplicative(optimizer, param):
                dale = layer.sign_tensor()
                if dale is not None:
                    sign = unit_rows(dale.expand_as(w))
                else:
                    sign = unit_rows(_random_signs(w.shape, generator, w.device)).to(w.dtype)
                    if init_sign is not None:
                        sign = torch.where(init_sign != 0, init_sign.to(w.dtype), sign)
                start = sign.to(w.dtype) * init_scale
            else:
                start = torch.zeros((), dtype=w.dtype, device=w.device)
            start = start.reshape(w.shape) if start.dim() else start
            w.copy_(torch.where(grown.view(w.shape), start, w))
        compact = getattr(layer, "compact", False)
        if compact and optimizer is not None:
            layer.attach_optimizer(optimizer)   # its state moves with the live set, below
        layer.set_zero_mask((~new_live).view(w.shape))
    density = layer_density(layer)
    layer.sparsity = 1.0 - density
    if optimizer is not None and not compact:
        reset_positions(optimizer, w, (grown | pruned).view(w.shape))
    return n_pruned, n_grown, density


def drop_regrow(layer: SparseWeightsBase, fraction: float, grow_scores: Optional[torch.Tensor],
                generator: torch.Generator,
                by_value_sign: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop ``round(fraction * n)`` smallest-magnitude live weights of every unit and sign group
    and grow as many at the empty positions of the same group with the largest ``grow_scores``
    (uniformly random ones with ``grow_scores=None``). Returns (new_live, grown). Drops are
    capped by the group's empty positions so that every unit keeps its count exactly.

    ``by_value_sign`` (SET without Dale's law): count positive and negative weights separately
    for the drop (Mocanu et al. 2018) and grow anywhere in the row.
    """
    lv = _Live(layer)
    live = lv.live
    if lv.exc is None and by_value_sign:
        n_empty = lv.fan_in - lv.valid.sum(dim=1)
        pos, neg = lv.valid & (lv.w >= 0), lv.valid & (lv.w < 0)
        k_pos = torch.round(fraction * pos.sum(dim=1)).long().minimum(n_empty)
        k_neg = torch.round(fraction * neg.sum(dim=1)).long().minimum(n_empty - k_pos)
        dropped = lv.drop_smallest(pos, k_pos, generator) | lv.drop_smallest(neg, k_neg, generator)
        grown = _grow(live, k_pos + k_neg, None, grow_scores, generator)
    else:
        dropped = torch.zeros_like(live)
        grown = torch.zeros_like(live)
        for members, cols in lv.groups():
            n_cols = lv.fan_in if cols is None else len(cols)
            n = members.sum(dim=1)
            k = torch.round(fraction * n).long().minimum(n_cols - n)
            dropped |= lv.drop_smallest(members, k, generator)
            grown |= _grow(live, k, cols, grow_scores, generator)
    return (live & ~dropped) | grown, grown


def resize(layer: SparseWeightsBase, density: float, grow: bool,
           generator: torch.Generator, allow_drop: bool = True) -> torch.Tensor:
    """New live mask giving every unit ``round(density * fan_in)`` live inputs: units above the
    target lose their smallest-magnitude weights, units below gain uniformly random empty
    positions (with ``grow=False`` units below the target keep their count; with
    ``allow_drop=False`` units above it keep theirs). With Dale's law the unit's new count is
    split between E and I in its current proportion (nearest integer; by the E fraction of its
    inputs if it had none)."""
    lv = _Live(layer)
    live = lv.live
    rows, fan_in = live.shape
    target = int(round(density * fan_in))
    groups = lv.groups()
    if lv.exc is None:
        targets = [torch.full((rows,), target, dtype=torch.long, device=live.device)]
    else:
        n_live = lv.valid.sum(dim=1)
        e_live = lv.exc.sum(dim=1)
        n_exc_cols = int(lv.exc_cols.sum().item())
        share = torch.where(n_live > 0, e_live.double() / n_live.clamp(min=1).double(),
                            torch.full_like(n_live, n_exc_cols, dtype=torch.double) / fan_in)
        e_t = torch.round(target * share).long().clamp(min=max(0, target - (fan_in - n_exc_cols)),
                                                       max=n_exc_cols)
        targets = [e_t, target - e_t]
    new_live = live.clone()
    for (members, cols), t in zip(groups, targets):
        current = members.sum(dim=1)
        if allow_drop:
            new_live &= ~lv.drop_smallest(members, (current - t).clamp(min=0), generator)
        if grow:
            new_live |= _grow(live, (t - current).clamp(min=0), cols, None, generator)
    return new_live
