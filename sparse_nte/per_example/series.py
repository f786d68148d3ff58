"""The power series for the per-example log-likelihood sums of a linear layer.

For a linear layer with one location per example (input ``A`` (n, K), output gradient ``D``
(n, out), per-example gradients ``g_{b,jk} = D_bj A_bk``), the NTE sums
``S_jk = sum_b log(1 - beta s_jk g_{b,jk})`` become, with log(1 - x) = -sum_n x^n / n, a few
matrix products (element-wise powers)::

    S_jk = -sum_{n=1}^{N} (beta^n / n) s_jk^n [ (D^n)^T A^n ]_jk                     (2)

Equation (2) is used only for output rows j where the truncation error is provably below a
tolerance: with x_bj = beta |D_bj| max_k |A_bk| >= |beta g_{b,jk}|,
``|sum_{n>N} x^n/n| <= x^(N+1) / ((N+1)(1-x))`` (:func:`series_terms`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from sparse_nte.per_example.blocks import BLOCK_ELEMENTS

__all__ = ["row_bound", "series_terms", "linear_series"]

# Relative margin added to bounds computed in floating point, covering their rounding errors
# (a few units of 2^-24 in float32) so that the bounds stay bounds.
_BOUND_MARGIN = 1e-5


def row_bound(a: torch.Tensor, d: torch.Tensor, beta: float) -> torch.Tensor:
    """x_bj >= max_k |beta * g_{b,jk}|, shape (n, out), in the dtype of ``d``.

    ``a``: (n, L, K) inputs, ``d``: (n, L, out) output gradients; g_b = d_b^T a_b. The factor
    ``1 + 1e-5`` covers the rounding of the products.
    """
    amax = a.abs().amax(dim=2)  # (n, L)
    scale = beta * (1.0 + _BOUND_MARGIN)
    if a.shape[1] == 1:
        return d[:, 0, :].abs().mul_(amax).mul_(scale)
    return (d.abs() * amax.unsqueeze(2)).sum(dim=1).mul_(scale)


def series_terms(x: torch.Tensor, tol: float, max_terms: int) -> Tuple[int, torch.Tensor]:
    """Number of series terms N and the rows for which (2) is within ``tol`` of (1).

    ``x``: (n, out) row bounds from :func:`row_bound`. Row j qualifies when
    ``E_j(N) = sum_b x_bj^(N+1) / ((N+1)(1 - x_bj)) <= tol`` for some N <= ``max_terms``
    (which needs every x_bj < 1). N is the smallest value that works for every qualifying row.
    The sums are compared with ``tol / (1 + 1e-5)`` to absorb their rounding.

    Returns ``(N, fast)`` with ``fast`` a bool tensor over rows (N = 0 if no row qualifies).
    """
    out_features = x.shape[1]
    if x.numel() == 0 or max_terms < 1:
        return 0, torch.zeros(out_features, dtype=torch.bool, device=x.device)
    tol = tol / (1.0 + _BOUND_MARGIN)
    converges = (x < 1.0).all(dim=0)
    xs = x if bool(converges.all()) else x.masked_fill(~converges.unsqueeze(0), 0.0)
    weight = (1.0 - xs).reciprocal_().mul_(xs).mul_(xs)  # x^(N+1) / (1 - x) for N = 1
    bounds = []
    for n_terms in range(1, max_terms + 1):
        bound = weight.sum(dim=0).div_(n_terms + 1)
        bounds.append(bound)
        if bool((bound[converges] <= tol).all()):
            return n_terms, converges  # every converging row is within tol with N terms
        if n_terms < max_terms:
            weight.mul_(xs)
    fast = converges & (bounds[-1] <= tol)
    if not bool(fast.any()):
        return 0, fast
    worst = torch.stack(bounds)[:, fast].amax(dim=1)  # decreasing in N
    return int(torch.nonzero(worst <= tol)[0, 0]) + 1, fast


def linear_series(a: torch.Tensor, d: torch.Tensor, beta: float, n_terms: int,
                  sign: Optional[torch.Tensor], col_sign: Optional[torch.Tensor],
                  out: Optional[torch.Tensor] = None, alpha: float = 1.0) -> torch.Tensor:
    """Equation (2) for a linear layer with one location per example: adds
    ``alpha * sum_b log(1 - beta s g_b)`` (up to the truncation error) to ``out``.

    Args:
        a: (n, K) layer inputs; d: (n, r) output gradients of the rows to compute.
        beta: inverse temperature; n_terms: N.
        sign: (r, K) expert signs (any dtype), or None when ``col_sign`` is given.
        col_sign: (K,) signs when they depend only on the column (Dale's law), else None.
        out: (r, K) tensor to add to (a new zero tensor in ``a``'s dtype if None).
        alpha: factor of the sum (eta in the NTE rule).

    Returns:
        ``out``.

    The factors are normalised per example, ``X = beta * d * max_k|a_b|`` and
    ``Ahat = a / max_k|a_b|``, so every power stays in [-1, 1] (no overflow). With column
    signs, ``s^n A^n = (s A)^n`` folds the signs into the inputs and one GEMM (accumulating
    into ``out``) suffices; otherwise the odd terms O are formed separately and
    ``S = -(E + s * O)``.
    """
    if out is None:
        out = torch.zeros(d.shape[1], a.shape[1], dtype=a.dtype, device=a.device)
    n, r = d.shape
    amax = a.abs().amax(dim=1, keepdim=True)   # 0 for an all-zero input: X = 0, no terms
    folded = col_sign is not None or sign is None
    n_odd = (n_terms + 1) // 2
    # factors of the GEMMs, filled in place: rows [i*n, (i+1)*n) hold the term of power
    # order[i] (odd powers first); the first powers are X and Ahat themselves
    left = torch.empty(n_terms * n, r, dtype=a.dtype, device=a.device)
    right = torch.empty(n_terms * n, a.shape[1], dtype=a.dtype, device=a.device)
    order = list(range(1, n_terms + 1, 2)) + list(range(2, n_terms + 1, 2))
    slot = {power: i for i, power in enumerate(order)}
    x = torch.mul(d, amax, out=left[:n]).mul_(beta)
    ahat = torch.div(a, amax.masked_fill(amax == 0, 1.0), out=right[:n])
    if col_sign is not None:
        ahat.mul_(col_sign)
    for power in range(2, n_terms + 1):
        prev, cur = slot[power - 1], slot[power]
        torch.mul(left[prev * n:(prev + 1) * n], x, out=left[cur * n:(cur + 1) * n])
        torch.mul(right[prev * n:(prev + 1) * n], ahat, out=right[cur * n:(cur + 1) * n])
    for power in range(2, n_terms + 1):
        left[slot[power] * n:(slot[power] + 1) * n].div_(power)
    if folded:
        return out.addmm_(left.T, right, alpha=-alpha)
    # out -= alpha * s * O, O formed for a block of rows at a time so that the temporary (and
    # the int8 -> float cast of the signs) stays small
    left_odd, right_odd = left[:n_odd * n].T, right[:n_odd * n]
    rows = max(1, BLOCK_ELEMENTS // max(1, right.shape[1]))
    buf = torch.empty(min(rows, r) * right.shape[1], dtype=out.dtype, device=out.device)
    for r0 in range(0, r, rows):
        m = min(rows, r - r0)
        odd = torch.mm(left_odd[r0:r0 + m], right_odd, out=buf[:m * right.shape[1]].view(m, -1))
        out[r0:r0 + m].addcmul_(odd, sign[r0:r0 + m], value=-alpha)
    if n_terms > 1:
        out.addmm_(left[n_odd * n:].T, right[n_odd * n:], alpha=-alpha)
    return out
