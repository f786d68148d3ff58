"""Contractions of Jacobian features (:mod:`sparse_nte.ntk.features`) into kernel blocks.

For one parameter tensor with rows J1 (n1, K1, P) on examples x1 and J2 (n2, K2, P) on x2::

    full      Theta[a, b, k, l] = J1[a, k, :] . J2[b, l, :]          (n1, n2, K1, K2)
    trace     Theta[a, b]       = sum_k J1[a, k, :] . J2[b, k, :]    (n1, n2)
    diagonal  Theta[a, k, l]    = J1[a, k, :] . J2[a, l, :]          (n, K1, K2), rows paired

Factored linear rows J[b, k, (j, l)] = D[b, k, j] a[b, l] M[j, l] never form J (Novak et al.,
ICML 2022, structured derivatives)::

    unmasked  Theta[a, b, k, l] = (D1[a, k] . D2[b, l]) (a1[a] . a2[b])
    masked    Theta[a, b, k, l] = sum_j D1[a, k, j] D2[b, l, j] G_j[a, b],
              G_j[a, b] = sum_l M[j, l] a1[a, l] a2[b, l]    (Gram of unit j's live inputs)
    bias      Theta[a, b, k, l] = D1[a, k] . D2[b, l]

Costs per pair of chunks: unmasked n1 n2 (K1 K2 out + in); masked n1 n2 out (in + K1 K2); dense
n1 n2 K1 K2 P. When the two sides' masks differ (rows at two parameter points), M = M1 * M2.
The masked path works on blocks of output units so that its temporaries hold at most
``budget`` elements.
"""
from __future__ import annotations

from typing import Optional

import torch

from sparse_nte.ntk.features import DEFAULT_BUDGET, Factored, Feature
from sparse_nte.ntk.params import budget_rows, chunks

__all__ = ["MODES", "contract"]

MODES = ("full", "trace", "diagonal")


def _dense(j1: torch.Tensor, j2: torch.Tensor, mode: str) -> torch.Tensor:
    n1, k1, p = j1.shape
    n2, k2, _ = j2.shape
    if mode == "full":
        return (j1.reshape(n1 * k1, p) @ j2.reshape(n2 * k2, p).T).view(n1, k1, n2, k2) \
            .permute(0, 2, 1, 3)
    if mode == "trace":
        return torch.bmm(j1.transpose(0, 1), j2.permute(1, 2, 0)).sum(0)
    return torch.bmm(j1, j2.transpose(1, 2))


def _mask(f1: Factored, f2: Factored) -> Optional[torch.Tensor]:
    if f1.keep is None:
        return f2.keep
    if f2.keep is None or f2.keep is f1.keep:
        return f1.keep
    return f1.keep * f2.keep


def _factored(f1: Factored, f2: Factored, mode: str, budget: int) -> torch.Tensor:
    d1, d2 = f1.d, f2.d
    mask = _mask(f1, f2) if f1.a is not None else None
    if mask is None:
        if mode == "diagonal":
            s = torch.bmm(d1, d2.transpose(1, 2))                  # (n, K1, K2)
            return s if f1.a is None else s * (f1.a * f2.a).sum(1)[:, None, None]
        if mode == "trace":
            s = torch.bmm(d1.transpose(0, 1), d2.permute(1, 2, 0)).sum(0)   # (n1, n2)
            return s if f1.a is None else s * (f1.a @ f2.a.T)
        s = _dense(d1, d2, "full")
        return s if f1.a is None else s * (f1.a @ f2.a.T)[:, :, None, None]
    a1, a2 = f1.a, f2.a
    if mode == "diagonal":
        q = (a1 * a2) @ mask.T                                        # (n, out)
        return torch.bmm(d1 * q.unsqueeze(1), d2.transpose(1, 2))
    n1, k1, out_units = d1.shape
    n2, k2, _ = d2.shape
    per_unit = n1 * (a1.shape[1] + n2 * (1 + (k1 if mode == "full" else 1)))
    units = budget_rows(per_unit, budget, out_units)
    if mode == "trace":
        result = d1.new_zeros(n1, n2)
    else:
        result = d1.new_zeros(n2, n1 * k1, k2)
    for js in chunks(out_units, units):
        gram = torch.matmul(a1.unsqueeze(0) * mask[js].unsqueeze(1), a2.T)   # (U, n1, n2)
        e1 = d1[:, :, js].permute(2, 0, 1)                                     # (U, n1, K1)
        if mode == "trace":
            s = torch.bmm(e1, d2[:, :, js].permute(2, 1, 0))                   # (U, n1, n2)
            result += (s * gram).sum(0)
        else:
            prod = e1.unsqueeze(3) * gram.unsqueeze(2)                         # (U, n1, K1, n2)
            prod = prod.permute(3, 1, 2, 0).reshape(n2, n1 * k1, -1)           # (n2, n1 K1, U)
            result.baddbmm_(prod, d2[:, :, js].transpose(1, 2))               # (n2, n1 K1, K2)
    if mode == "trace":
        return result
    return result.view(n2, n1, k1, k2).permute(1, 0, 2, 3)


def contract(f1: Feature, f2: Feature, mode: str, budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """The kernel block of one parameter tensor between two feature sets (module docstring);
    ``mode="diagonal"`` pairs the rows of ``f1`` and ``f2`` (same examples)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "diagonal" and f1.n != f2.n:
        raise ValueError(f"diagonal contraction pairs rows: got {f1.n} and {f2.n} examples")
    if (isinstance(f1, Factored) and isinstance(f2, Factored)
            and (f1.a is None) == (f2.a is None)
            and (f1.a is None or f1.a.shape[1] == f2.a.shape[1])):
        return _factored(f1, f2, mode, budget)
    return _dense(f1.dense(), f2.dense(), mode)
