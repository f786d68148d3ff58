"""k-winner-take-all as functions (nupic.torch's ``functions``): ``kwinners`` for ``(batch, n)``
inputs and ``kwinners2d`` for ``(batch, C, H, W)`` feature maps.

k-winners (Ahmad & Scheinkman, "How can we be so dense? The benefits of using highly sparse
representations", 2019, eq. 1-3)::

    b_i   = exp(-boost_strength * d_i)                      boost factor of unit i
    y_i   = x_i   if b_i * x_i is among the k largest of b * x, else 0
    dy/dx = 1 on winners, 0 elsewhere

``exp(-beta * d_i)`` equals nupic's documented ``exp(beta * (target_density - d_i))`` up to the
positive constant ``exp(beta * target_density)``, which does not change which units win.

Ties: with ``break_ties=False`` every unit whose boosted value equals the k-th largest wins (so
possibly more than k); with ``break_ties=True`` exactly k win. ``relu=True`` also drops units
whose boosted value is <= 0, as if a ReLU preceded the k-WTA.

Compact selection (:func:`kwinners`, out of place, ``2 k <= n``): the ``k + 1`` largest boosted
values of every row come from ``topk``; when the k-th is a number strictly above the
(k+1)-th in every row (no tie at the threshold, no NaN) the winners are exactly the ``k``
indices, and the output is built by scattering their values into zeros (its gradient by
gathering the winners' gradients) instead of comparing and selecting over all ``n`` units of
every example. Same output, gradient and duty cycles; any tie or NaN takes the general path.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch

__all__ = ["boost_activations", "kwinners", "kwinners2d", "kwinners_with_indices",
           "winner_indices", "scale_nonzeros"]


def boost_activations(x: torch.Tensor, duty_cycles: torch.Tensor, boost_strength: float) -> torch.Tensor:
    """Return ``x * exp(-boost_strength * duty_cycles)`` detached from the graph (used only to
    choose winners; outputs keep the original values)."""
    if boost_strength > 0.0:
        return x.detach() * torch.exp(-boost_strength * duty_cycles)
    return x.detach()


def _kth_largest(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """The k-th largest value of ``x`` along ``dim`` (kept as a size-1 dim), NaN ranking above
    every number as in torch's sort order: exactly ``x.kthvalue(n - k + 1, dim, keepdim=True)``.

    For ``64 k <= n`` it is read off ``x.topk(k, dim)`` instead, which torch then computes with a
    partial heap sort of each row rather than a copy and full partition: 2-6x faster on CPU for
    the 0.1-1.5% winners k-WTA layers typically keep (e.g. k = 4 of 4000 units, batch 128).
    Above that size the two cost about the same and ``kthvalue`` is used.
    """
    n = x.shape[dim]
    if 64 * k <= n:
        return x.topk(k, dim=dim, largest=True, sorted=True).values.narrow(dim, k - 1, 1)
    return x.kthvalue(n - k + 1, dim=dim, keepdim=True).values


def _winner_off_mask(boosted: torch.Tensor, k: int, dim: int, break_ties: bool, relu: bool) -> torch.Tensor:
    """Boolean mask of the losers along ``dim``.

    With ``break_ties=False`` every unit whose boosted value equals the k-th largest wins, so a
    tie at the threshold can give more than k winners (nupic.torch's semantics). With
    ``break_ties=True`` exactly k win (``torch.topk`` picks among tied units). With ``relu=True``
    units whose boosted value is <= 0 also lose, as if a ReLU preceded the k-WTA.
    """
    if break_ties:
        _, idx = boosted.topk(k, dim=dim, sorted=False)
        off = torch.ones_like(boosted, dtype=torch.bool)
        off.scatter_(dim, idx, False)
    else:
        off = boosted < _kth_largest(boosted, k, dim)
    if relu:
        off.logical_or_(boosted <= 0)
    return off


def winner_indices(boosted: torch.Tensor, k: int) -> Optional[torch.Tensor]:
    """(batch, k) int64 indices of the winners of every row of a (batch, n) ``boosted`` tensor
    when they are unambiguously the ``k`` largest values (in every row the k-th largest is a
    number strictly above the (k+1)-th), else None (a tie at the threshold or a NaN: the caller
    takes the general path, which resolves them as documented)."""
    n = boosted.shape[1]
    if k >= n:
        return None
    vals, idx = boosted.topk(k + 1, dim=1, largest=True, sorted=True)
    if not bool((vals[:, k - 1] > vals[:, k]).all()):   # False for NaN and for ties
        return None
    return idx[:, :k]


def _compact_winners(x: torch.Tensor, boosted: torch.Tensor, idx: torch.Tensor, relu: bool,
                     scale: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x`` at the winner indices ``idx`` (with ``relu``: those of positive boosted value),
    times ``scale`` (batch, k) if given, 0 elsewhere; differentiable in ``x`` (the gradient is
    gathered at the winners)."""
    picked = x.gather(1, idx)
    if relu:
        picked = torch.where(boosted.gather(1, idx) > 0, picked, picked.new_zeros(()))
    if scale is not None:
        picked = picked * scale
    return torch.zeros_like(x).scatter_(1, idx, picked)   # in place: no copy of the zeros


def _zero_losers(x: torch.Tensor, off: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``x`` with the losers set to 0: in place, or as ``torch.where(off, 0, x)``, one pass
    instead of the copy and fill of ``masked_fill`` (same values and gradient, ~1.8x faster)."""
    if inplace:
        return x.masked_fill_(off, 0)
    return torch.where(off, x.new_zeros(()), x)


def kwinners(
    x: torch.Tensor,
    duty_cycles: torch.Tensor,
    k: int,
    boost_strength: float,
    break_ties: bool = False,
    relu: bool = False,
    inplace: bool = False,
) -> torch.Tensor:
    """k-winner-take-all over dim 1 of a ``(batch, n)`` tensor (nupic.torch's ``F.kwinners``).

    Winners are chosen on ``x * exp(-boost_strength * duty_cycles)``; the output keeps the
    original values of the winners and is 0 elsewhere; the gradient flows through winners only.
    """
    if x.dim() != 2:
        raise ValueError(f"kwinners expects a (batch, n) tensor, got shape {tuple(x.shape)}")
    if k == 0:
        return torch.zeros_like(x)
    if not 0 < k <= x.shape[1]:
        raise ValueError(f"kwinners: k={k} must be in [0, n={x.shape[1]}]")
    return kwinners_with_indices(x, duty_cycles, k, boost_strength, break_ties, relu,
                                 inplace)[0]


def kwinners_with_indices(x: torch.Tensor, duty_cycles: torch.Tensor, k: int,
                          boost_strength: float, break_ties: bool = False, relu: bool = False,
                          inplace: bool = False,
                          scales: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]
                          = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """:func:`kwinners` and, when the compact selection applied (module docstring), the
    (batch, k) indices of the winners (else None). Checks are the caller's.

    ``scales(idx, like)``: multipliers (batch, k) of the winners' values given their indices,
    applied on the compact path (the dropout of :class:`models.blocks.HiddenBlock`, fused with
    the k-WTA). On the general path (index None) they are NOT applied: the caller applies its
    dropout to the output."""
    boosted = boost_activations(x, duty_cycles, boost_strength)
    if not inplace and 2 * k <= x.shape[1] and x.device.type == "cpu":
        idx = winner_indices(boosted, k)
        if idx is not None:
            scale = None if scales is None else scales(idx, x)
            return _compact_winners(x, boosted, idx, relu, scale), idx
    off = _winner_off_mask(boosted, k, 1, break_ties, relu)
    return _zero_losers(x, off, inplace), None


def scale_nonzeros(y: torch.Tensor,
                   scales: Callable[[torch.Size, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``y`` with its non-zero entries (row-major order) multiplied by ``scales(count, y)``."""
    flat = y.reshape(-1)
    where = torch.nonzero(flat.detach()).squeeze(1)
    mask = torch.zeros_like(flat).index_put_((where,), scales(where.shape, y))
    return y * mask.view_as(y)


def kwinners2d(
    x: torch.Tensor,
    duty_cycles: torch.Tensor,
    k: int,
    boost_strength: float,
    local: bool = True,
    break_ties: bool = False,
    relu: bool = False,
    inplace: bool = False,
) -> torch.Tensor:
    """k-winner-take-all for ``(batch, C, H, W)`` tensors (nupic.torch's ``F.kwinners2d``).

    ``local=True``: k winners among the C channels at every location. ``local=False``: k winners
    over all C*H*W values of each example. ``duty_cycles`` has shape ``(1, C, 1, 1)``.
    """
    if x.dim() != 4:
        raise ValueError(f"kwinners2d expects a (batch, C, H, W) tensor, got shape {tuple(x.shape)}")
    if k == 0:
        return torch.zeros_like(x)
    boosted = boost_activations(x, duty_cycles, boost_strength)
    if local:
        if not 0 < k <= x.shape[1]:
            raise ValueError(f"kwinners2d(local): k={k} must be in [0, C={x.shape[1]}]")
        off = _winner_off_mask(boosted, k, 1, break_ties, relu)
    else:
        flat = boosted.reshape(x.shape[0], -1)
        if not 0 < k <= flat.shape[1]:
            raise ValueError(f"kwinners2d(global): k={k} must be in [0, C*H*W={flat.shape[1]}]")
        off = _winner_off_mask(flat, k, 1, break_ties, relu).reshape(x.shape)
    return _zero_losers(x, off, inplace)

