"""Exact per-example log-likelihood sums (equation (1) of :mod:`sparse_nte.per_example`)::

    S_i = sum_b log(max(1 - beta * s_i * g_{b,i}, floor))                            (1)

* :func:`linear_exact`: a linear layer with one location per example; the ``(n, rows, in)``
  block of likelihoods is formed chunk by chunk in float64 and reduced as
  ``sum_groups log(prod_{b in group} (1 - beta s g))``, which is (1) with one logarithm per
  group of examples instead of one per example (groups are sized so that the products can
  neither overflow nor underflow).
* :func:`bmm_exact`: layers with several locations per example (convolutions through their
  unfolded input, linear layers on ``(n, ..., in)`` inputs, layers called several times):
  ``g_b = D_b^T A_b`` with ``bmm``, in chunks of examples and output rows.
* :func:`dense_log_likelihood`: from explicit per-example gradients.
* :func:`add_log_likelihood`: (1) for a single observation (one gradient the shape of the
  parameter), in place and block by block.

Guard: the linearised likelihood ``1 - beta s g`` is <= 0 when ``beta s g >= 1`` (the reference
implementation then produces NaN). It is clamped to ``floor`` (> 0) and the number of clamped
(example, parameter) terms is returned so it can be reported.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import torch

from sparse_nte.per_example.blocks import blocks
from sparse_nte.per_example.series import row_bound

__all__ = ["linear_exact", "bmm_exact", "dense_log_likelihood", "add_log_likelihood"]

# log of the largest/smallest factor product kept in float64 (|log| < 709 is representable).
_LOG_RANGE = 600.0


def _group_size(n: int, xmax: float, floor: float, guarded: bool) -> int:
    """Largest number of factors in [lo, 1 + xmax] whose product stays in float64 range."""
    hi = math.log1p(xmax) if xmax > 0 else 0.0
    lo = -math.log(floor) if guarded else (-math.log1p(-xmax) if xmax < 1 else _LOG_RANGE)
    worst = max(hi, lo, 1e-300)
    return max(1, min(n, int(_LOG_RANGE / worst)))


def _reduce_likelihoods(u: torch.Tensor, floor: float, xmax: float,
                        out: torch.Tensor) -> int:
    """out = sum over dim 0 of log(max(u, floor)) for a float64 block ``u`` of likelihoods
    (modified in place), as a sum of logs of group products. ``out`` is a float64 buffer of
    ``u.shape[1:]``. Returns the number of clamped terms."""
    guarded = xmax >= 1.0 - floor
    clamped = 0
    if guarded:
        clamped = int((u < floor).sum())
        if clamped:
            u.clamp_(min=floor)
    n = u.shape[0]
    group = _group_size(n, xmax, floor, guarded)
    torch.prod(u[:group], dim=0, out=out).log_()
    if group < n:
        part = torch.empty_like(out)
        for start in range(group, n, group):
            out.add_(torch.prod(u[start:start + group], dim=0, out=part).log_())
    return clamped


def _rows_per_chunk(n: int, k: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, n * k))


def linear_exact(a: torch.Tensor, d: torch.Tensor, beta: float, rows: Optional[torch.Tensor],
                 sign: Optional[torch.Tensor], col_sign: Optional[torch.Tensor], floor: float,
                 x: torch.Tensor, chunk_elements: int, out: torch.Tensor,
                 alpha: float = 1.0) -> int:
    """Equation (1), exactly, for output rows of a linear layer with one location per example:
    adds ``alpha * sum_b log(max(1 - beta s g_b, floor))`` to those rows of ``out``.

    Args:
        a: (n, K) inputs; d: (n, out) output gradients; rows: int64 row indices, or None for
            all rows.
        sign: (out, K) expert signs or None (then ``col_sign`` is used); col_sign: (K,) or None.
        floor: smallest likelihood (the guard); x: (n, out) row bounds (:func:`row_bound`).
        chunk_elements: likelihoods formed at once (n * rows_per_chunk * K).
        out: (out, K) tensor to add to; alpha: factor of the sums.

    Returns:
        The number of clamped (example, entry) terms.
    """
    n, k = a.shape
    a64 = a.to(torch.float64, copy=True)  # copies: the captured tensors must not change
    if col_sign is not None:
        a64.mul_(col_sign)
    dneg = d.to(torch.float64, copy=True).mul_(-beta)
    xmax_rows = x.amax(dim=0)
    clamped = 0
    count = d.shape[1] if rows is None else len(rows)
    step = min(count, _rows_per_chunk(n, k, chunk_elements))
    buf = torch.empty(n * step * k, dtype=torch.float64, device=a.device)  # reused per chunk
    sums = torch.empty(step * k, dtype=torch.float64, device=a.device)
    for start in range(0, count, step):
        idx = slice(start, min(count, start + step)) if rows is None else rows[start:start + step]
        r = (idx.stop - idx.start) if rows is None else len(idx)
        u = buf[:n * r * k].view(n, r, k)
        torch.mul(dneg[:, idx].unsqueeze(2), a64.unsqueeze(1), out=u)  # -beta * g
        if col_sign is None:
            u.mul_(sign[idx])
        u.add_(1.0)
        part = sums[:r * k].view(r, k)
        clamped += _reduce_likelihoods(u, floor, float(xmax_rows[idx].max()), part)
        if rows is None:
            out[idx].add_(part, alpha=alpha)
        else:
            out.index_add_(0, idx, part.to(out.dtype), alpha=alpha)
    return clamped


def bmm_exact(sources: Sequence[Tuple[torch.Tensor, torch.Tensor]], beta: float,
              sign: Optional[torch.Tensor], col_sign: Optional[torch.Tensor], floor: float,
              chunk_elements: int, out: torch.Tensor, alpha: float = 1.0, unfold=None) -> int:
    """Equation (1), exactly, for a layer with several locations per example (convolutions,
    linear layers on ``(n, ..., in)`` inputs, layers called several times on the whole batch):
    adds ``alpha * sum_b log(max(1 - beta s g_b, floor))`` to ``out`` of shape (out, K).

    Args:
        sources: list of (input, output_grad) per call; every call sees the same n examples.
            Inputs are (n, L, K) — or, with ``unfold``, raw inputs turned into (n, L, K) by
            ``unfold(input)`` chunk by chunk; output grads are (n, L, out).
        sign / col_sign: as in :func:`linear_exact`.
        chunk_elements: bound on the elements of any temporary block.

    Returns:
        The number of clamped (example, entry) terms.
    """
    out_features, k = out.shape
    n = sources[0][1].shape[0]
    total_l = sum(g.shape[1] for _, g in sources)
    per_example = max(k * total_l, out_features * k, 1)
    nb = max(1, min(n, chunk_elements // per_example))
    step = min(out_features, _rows_per_chunk(nb, k, chunk_elements))
    g_buf = torch.empty(nb * step * k, dtype=out.dtype, device=out.device)
    u_buf = torch.empty(nb * step * k, dtype=torch.float64, device=out.device)
    sums = torch.empty(step * k, dtype=torch.float64, device=out.device)
    clamped = 0
    col = col_sign.to(out.dtype) if col_sign is not None else None
    for b0 in range(0, n, nb):
        a_parts, d_parts = [], []
        for inp, grad in sources:
            a_b = inp[b0:b0 + nb]
            if unfold is not None:
                a_b = unfold(a_b)
            a_parts.append(a_b)
            d_parts.append(grad[b0:b0 + nb])
        a_b = torch.cat(a_parts, dim=1) if len(a_parts) > 1 else a_parts[0]
        d_b = torch.cat(d_parts, dim=1) if len(d_parts) > 1 else d_parts[0]
        if col is not None:
            a_b = a_b * col
        m = a_b.shape[0]
        xmax_rows = row_bound(a_b, d_b, beta).amax(dim=0)  # (out,)
        dt = d_b.transpose(1, 2)  # (m, out, L)
        for r0 in range(0, out_features, step):
            r = min(step, out_features - r0)
            g = torch.bmm(dt[:, r0:r0 + r], a_b, out=g_buf[:m * r * k].view(m, r, k))
            u = u_buf[:m * r * k].view(m, r, k).copy_(g)  # per-example gradients, float64
            if col is None:
                u.mul_(sign[r0:r0 + r])
            u.mul_(-beta).add_(1.0)
            part = sums[:r * k].view(r, k)
            clamped += _reduce_likelihoods(u, floor, float(xmax_rows[r0:r0 + r].max()), part)
            out[r0:r0 + r].add_(part, alpha=alpha)
    return clamped


def dense_log_likelihood(g: torch.Tensor, sign: torch.Tensor, beta: float,
                         floor: float) -> Tuple[torch.Tensor, int]:
    """Equation (1) from explicit per-example gradients ``g`` of shape (n, *shape):
    ``sum_b log(max(1 - beta s g_b, floor))`` in float64, and the number of clamped terms."""
    u = g.double() * (-beta)
    u.mul_(sign.to(torch.float64)).add_(1.0)
    low = u < floor
    clamped = int(low.sum())
    if clamped:
        u.clamp_(min=floor)
    return u.log_().sum(dim=0), clamped


def add_log_likelihood(out: torch.Tensor, g: torch.Tensor, sign: torch.Tensor, beta: float,
                       floor: float, alpha: float = 1.0) -> int:
    """Equation (1) for ONE observation whose gradient ``g`` has the shape of ``out``: adds
    ``alpha * log(max(1 - beta s g, floor))`` to ``out`` in place, block by block (the
    likelihoods in float64, one block at a time), and returns the number of clamped entries.
    ``out`` and ``sign`` must be contiguous."""
    clamped = 0
    for o_blk, g_blk, s_blk in zip(blocks(out), blocks(g.contiguous()), blocks(sign)):
        u = g_blk.to(torch.float64, copy=True).mul_(-beta)
        u.mul_(s_blk.to(torch.float64)).add_(1.0)
        low = int((u < floor).sum())
        if low:
            u.clamp_(min=floor)
            clamped += low
        o_blk.add_(u.log_(), alpha=alpha)
    return clamped
