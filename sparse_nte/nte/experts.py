"""The experts of a parameter: creating them from the weights, re-deriving them where
connectivity changed, and the running pruning score.

Every entry i of a managed parameter is an expert ``w_i = theta0_i + s_i exp(l_i)`` (Benjamin,
Pehle & Daruwalla, NeurIPS 2024). The state entries are named in :mod:`sparse_nte.nte.state`.

* Around the origin (theta0 = 0): s = sign(w), l = log|w|. An unmasked entry that is exactly 0
  (or, in a Dale layer, has the wrong sign) is a dead expert, l = -inf; a tensor with no live
  unmasked entry is an error (it could never learn multiplicatively).
* Around init (as the reference): theta0 = w - s * delta0 with |delta0| = noise_scale * |xi|,
  xi ~ N(0, 1), s = sign(xi) (or the Dale sign), l = log|delta0|; so w is unchanged. In a Dale
  layer theta0 is clipped to the Dale sign, theta0 = s max(s (w - delta0), 0), so that w can
  never cross zero.
* Masked entries (a :class:`~sparse_nte.layers.SparseWeightsBase` mask) are not experts:
  l = -inf and theta0 = 0.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch

from sparse_nte.nte.state import LOG_MAGNITUDE, PRUNE_SCORE, SIGN, THETA0
from sparse_nte.per_example import blocks

__all__ = ["new_experts", "rederive_experts", "update_prune_score"]


@torch.no_grad()
def new_experts(w: torch.Tensor, mask: Optional[torch.Tensor], dale: Optional[torch.Tensor],
                expand: str, noise_scale: float, generator: torch.Generator, keep_score: bool,
                name: str) -> Dict[str, torch.Tensor]:
    """The state of the experts of weight ``w`` (module docstring); ``dale``: Dale signs
    broadcast over ``w`` or None; ``keep_score``: add a zero pruning score."""
    state: Dict[str, torch.Tensor] = {}
    if expand == "origin":
        sign = torch.ones(w.shape, dtype=torch.int8, device=w.device)
        if dale is not None:
            sign.copy_(dale.expand_as(w))
            dead = (w * dale) <= 0
        else:
            sign.masked_fill_(w < 0, -1)
            dead = w == 0
        log_mag = w.abs().log_().masked_fill_(dead, -math.inf)
        live = ~dead if mask is None else ~(dead | mask)
        unmasked = mask is None or not bool(mask.all())
        if unmasked and not bool(live.any()):
            raise ValueError(
                f"NTE: parameter '{name}' is zero at every unmasked entry. Around "
                f"the origin (expand='origin') a zero weight is an expert with no mass "
                f"and can never change multiplicatively. Initialise it non-zero, expand "
                f"around init (expand='init', nte_expand=init), or leave it to plain SGD "
                f"(a managed=False group; nte_params=weights)")
        del dead, live
    else:
        xi = torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device)
        sign = torch.ones(w.shape, dtype=torch.int8, device=w.device)
        if dale is not None:
            sign.copy_(dale.expand_as(w))
        else:
            sign.masked_fill_(xi < 0, -1)
        magnitude = xi.abs_().mul_(noise_scale)
        theta0 = w - sign * magnitude
        if dale is not None:
            theta0 = (theta0 * dale).clamp_min_(0.0).mul_(dale)
        if mask is not None:
            theta0.masked_fill_(mask, 0.0)
        log_mag = magnitude.log_()
        state[THETA0] = theta0
    if mask is not None:
        log_mag.masked_fill_(mask, -math.inf)
    state[LOG_MAGNITUDE] = log_mag
    state[SIGN] = sign
    if keep_score:
        state[PRUNE_SCORE] = torch.zeros_like(w)
    return state


@torch.no_grad()
def rederive_experts(state: Dict[str, torch.Tensor], w: torch.Tensor, changed_mask: torch.Tensor,
                     mask: Optional[torch.Tensor], dale: Optional[torch.Tensor]) -> None:
    """Re-derive the experts at the positions where ``changed_mask`` is True from the current
    weight values ``w`` (a plasticity schedule pruned or grew them), in place.

    At masked positions the expert is removed (l = -inf, theta0 = 0). Elsewhere
    delta = w - theta0 gives l = log|delta| and s = sign(delta) (the Dale sign for Dale layers;
    a delta of the wrong sign or 0 gives a dead expert, l = -inf). The pruning score restarts
    at 0 at every changed position.
    """
    changed = changed_mask.to(w.device)
    if mask is not None:
        removed = changed & mask
        changed = changed & ~mask
        state[LOG_MAGNITUDE].masked_fill_(removed, -math.inf)
        if THETA0 in state:
            state[THETA0].masked_fill_(removed, 0.0)
    theta0 = state.get(THETA0)
    delta = w - theta0 if theta0 is not None else w
    if dale is not None:
        new_sign = dale.expand_as(w).to(torch.int8)
        ok = delta * dale > 0
    else:
        new_sign = torch.where(delta < 0, -1, 1).to(torch.int8)
        new_sign = torch.where(delta != 0, new_sign, state[SIGN])
        ok = delta != 0
    new_log = torch.where(ok, delta.abs().log(), torch.full_like(w, -math.inf))
    # Dale: the expert sign is the presynaptic sign, masked or not
    signed = changed_mask.to(w.device) if dale is not None else changed
    state[SIGN].copy_(torch.where(signed, new_sign, state[SIGN]))
    state[LOG_MAGNITUDE].copy_(torch.where(changed, new_log, state[LOG_MAGNITUDE]))
    if theta0 is not None:
        theta0.copy_(torch.where(changed & ~ok, w, theta0))
    if PRUNE_SCORE in state:
        state[PRUNE_SCORE].masked_fill_(changed_mask.to(w.device), 0.0)


@torch.no_grad()
def update_prune_score(state: Dict[str, torch.Tensor], g: torch.Tensor, momentum: float) -> None:
    """The NTE pruning score v <- m v + (1 - m) g s (:mod:`sparse_nte.nte_prune`), block by
    block; ``g`` is the gradient of the step's objective."""
    m = momentum
    for v_blk, g_blk, s_blk in zip(blocks(state[PRUNE_SCORE]), blocks(g.contiguous()),
                                   blocks(state[SIGN])):
        v_blk.mul_(m).addcmul_(g_blk, s_blk, value=1.0 - m)
