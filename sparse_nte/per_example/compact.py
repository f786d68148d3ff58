"""Per-example log-likelihood sums of a compact sparse linear layer, at its live entries only.

A compact layer (:class:`~sparse_nte.layers.compact.CompactLinear`) trains the vector ``v`` of
its live weights, ``v_e = W[i_e, j_e]``. With the captured input ``A`` (n, K) and output
gradient ``D`` (n, out) its per-example gradients are ``g_{b,e} = D[b, i_e] A[b, j_e]``, and the
NTE sums of equation (1) of :mod:`sparse_nte.per_example` are::

    S_e = sum_b log(max(1 - beta s_e g_{b,e}, floor))                                 (1)

for the ``nnz`` live entries instead of the ``out * K`` entries of the dense weight:

* exact (:func:`compact_exact`): the likelihoods of a chunk of entries, ``(entries, n)`` in
  float64, reduced with one logarithm per group of examples (as :func:`linear_exact`);
* power series (:func:`compact_series`), log(1 - x) = -sum_n x^n / n::

      S_e = -sum_{n=1}^{N} (beta^n / n) s_e^n [ (D^n)^T A^n ]_{i_e j_e}
          = -(E_e + s_e O_e)          (E: the even powers, O: the odd ones, s_e = +-1)

  where each bracket is a sampled dense-dense product at the live entries
  (:meth:`~sparse_nte.sparse_exec.LiveConnections.sampled_mm`), ``nnz * n * N`` multiply-adds.

Both equal the dense computation of :mod:`~sparse_nte.per_example.exact` /
:mod:`~sparse_nte.per_example.series` at the live entries (same formulas, same normalisation of
the factors); the rows for which the series is within tolerance are chosen by the caller with
:func:`~sparse_nte.per_example.series.series_terms`, as for a dense layer.
"""
from __future__ import annotations

from typing import Optional

import torch

from sparse_nte.per_example.exact import _reduce_likelihoods
from sparse_nte.sparse_exec import LiveConnections

__all__ = ["compact_series", "compact_exact", "compact_weight_grad"]


def compact_weight_grad(a: torch.Tensor, d: torch.Tensor, live: LiveConnections) -> torch.Tensor:
    """``sum_b g_{b,e}`` at the live entries, (nnz,): the gradient of the summed losses."""
    return live.sampled_mm(d.t().contiguous(), a.contiguous())


def compact_series(a: torch.Tensor, d: torch.Tensor, beta: float, n_terms: int,
                   live: LiveConnections, sign: torch.Tensor) -> torch.Tensor:
    """Equation (1) by the power series with ``n_terms`` terms, at every live entry: (nnz,) in
    the dtype of ``a``. ``a``: (n, K) inputs, ``d``: (n, out) output gradients, ``sign``:
    (nnz,) expert signs (+-1, any dtype).

    The factors are normalised per example as in
    :func:`~sparse_nte.per_example.series.linear_series`: ``X = beta d max_k|a_b|`` and
    ``Ahat = a / max_k|a_b|``, so every power lies in [-1, 1]."""
    amax = a.abs().amax(dim=1, keepdim=True)
    x = d * amax * beta                                  # (n, out); 0 for an all-zero input
    ahat = a / amax.masked_fill(amax == 0, 1.0)          # (n, K)
    odd_l, odd_r, even_l, even_r = [], [], [], []
    xp, ap = x, ahat
    for power in range(1, n_terms + 1):
        if power > 1:
            xp, ap = xp * x, ap * ahat
        (odd_l if power % 2 else even_l).append(xp / power)
        (odd_r if power % 2 else even_r).append(ap)
    odd = live.sampled_mm(torch.cat(odd_l).t().contiguous(), torch.cat(odd_r))
    total = odd.mul_(sign.to(odd.dtype))
    if even_l:
        total.add_(live.sampled_mm(torch.cat(even_l).t().contiguous(), torch.cat(even_r)))
    return total.neg_()


def compact_exact(a: torch.Tensor, d: torch.Tensor, beta: float, live: LiveConnections,
                  sign: torch.Tensor, floor: float, x: torch.Tensor, chunk_elements: int,
                  entries: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, int]:
    """Equation (1), exactly: ``(sums, clamped)`` with ``sums`` float64 of the entries
    ``entries`` (int64 positions among the live entries; all if None) and the number of
    (example, entry) terms clamped by the guard.

    ``x``: (n, out) row bounds (:func:`~sparse_nte.per_example.series.row_bound`), for the
    grouping of the products; ``chunk_elements``: likelihoods formed at once."""
    n = a.shape[0]
    idx = torch.arange(live.nnz, device=a.device) if entries is None else entries
    a_t = a.t().to(torch.float64).contiguous()           # (K, n)
    d_t = d.t().to(torch.float64).contiguous().mul_(-beta)   # (out, n)
    s64 = sign.to(torch.float64)
    xmax_rows = x.amax(dim=0)
    sums = torch.empty(idx.numel(), dtype=torch.float64, device=a.device)
    step = max(1, chunk_elements // max(1, n))
    clamped = 0
    for start in range(0, idx.numel(), step):
        e = idx[start:start + step]
        rows, cols = live.row_idx.index_select(0, e), live.col_idx.index_select(0, e)
        u = d_t.index_select(0, rows).mul_(a_t.index_select(0, cols))   # -beta g, (E, n)
        u.mul_(s64.index_select(0, e).unsqueeze(1)).add_(1.0)
        clamped += _reduce_likelihoods(u.t(), floor, float(xmax_rows.index_select(0, rows).max()),
                                       sums[start:start + e.numel()])
    return sums, clamped
