"""Jacobian products without forming the Jacobian.

With J = d f(X; theta) / d theta over the live parameters (:mod:`sparse_nte.ntk.params`),
f: (N, C) logits, a parameter-space vector v (name -> tensor, or the 1-d concatenation of the
trainable parameters in ``named_parameters()`` order) and an output-space u (N, C)::

    jacobian_vector_product   J v            forward mode (torch.func.jvp), one pass
    vector_jacobian_product   J^T u          reverse mode (torch.func.vjp)
    ntk_vector_product        Theta u = J (J^T u)      (Theta = J J^T, the empirical NTK)
    fisher_vector_product     F v = (1/N) sum_n J_n^T H_n J_n v,   H_n = diag(p_n) - p_n p_n^T

F is the generalised Gauss-Newton matrix of the mean softmax cross-entropy (Schraudolph, "Fast
curvature matrix-vector products for second-order gradient descent", Neural Computation 2002),
equal to the Fisher information of the model's categorical predictive p_n = softmax(f(x_n))
(Martens, "New insights and perspectives on the natural gradient method", JMLR 2020). It is
exact (finite_ntk's ``FVP_FD`` approximates it by a finite difference of a KL divergence).

Masked entries of v are ignored and the masked entries of every parameter-space result are 0.
Examples are processed in chunks of ``chunk`` (default all at once): memory is that of a
forward and backward pass on a chunk (plus one parameter-sized accumulator), never N x P.
The model is evaluated in the mode the caller set (see :mod:`sparse_nte.ntk.params`).
"""
from __future__ import annotations

import warnings
from typing import Mapping, Optional, Union

import torch
import torch.nn as nn

from sparse_nte.ntk.params import (NetworkFunction, ParameterPoint, TensorDict, as_tensor_dict,
                                   check_inputs, chunks, flatten, slice_t)

__all__ = ["jacobian_vector_product", "vector_jacobian_product", "ntk_vector_product",
           "fisher_vector_product"]

ParamVector = Union[torch.Tensor, Mapping[str, torch.Tensor]]


def _rows(x: torch.Tensor, chunk: Optional[int]):
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be a positive int or None, got {chunk!r}")
    return chunks(x.shape[0], chunk or x.shape[0])


def _check_outputs(u: torch.Tensor, n: int, c: Optional[int], what: str) -> None:
    if not isinstance(u, torch.Tensor) or u.dim() != 2 or u.shape[0] != n \
            or (c is not None and u.shape[1] != c):
        raise ValueError(f"{what} must be an (N, C) tensor over the outputs, N={n}"
                         f"{'' if c is None else f', C={c}'}; got "
                         f"{tuple(getattr(u, 'shape', ()))}")


def _primals(fn: NetworkFunction, point: Optional[ParameterPoint]) -> TensorDict:
    return fn.params() if point is None else fn.full_params(point.params)


def _call(fn: NetworkFunction, point: Optional[ParameterPoint], x: torch.Tensor,
          t: Optional[torch.Tensor]):
    if point is None:
        return lambda p: fn(p, x, t)
    return lambda p: fn(p, x, t, buffers=point.buffers, keep=point.keep)


def jvp_at(fn: NetworkFunction, point: Optional[ParameterPoint], tangent: TensorDict,
           x: torch.Tensor, t: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), J(x) v) at ``point`` (None: the model's current state), one forward-mode pass."""
    return torch.func.jvp(_call(fn, point, x, t), (_primals(fn, point),), (tangent,))


def vjp_at(fn: NetworkFunction, point: Optional[ParameterPoint], cotangent: torch.Tensor,
           x: torch.Tensor, t: Optional[torch.Tensor],
           what: str = "cotangent") -> tuple[torch.Tensor, TensorDict]:
    """(f(x), J(x)^T u) at ``point``, one reverse pass."""
    out, pullback = torch.func.vjp(_call(fn, point, x, t), _primals(fn, point))
    _check_outputs(cotangent, x.shape[0], out.shape[1], what)
    (grads,) = pullback(cotangent.to(out.dtype))
    return out, grads


def _accumulate(total: Optional[TensorDict], part: TensorDict) -> TensorDict:
    if total is None:
        return {n: g.clone() for n, g in part.items()}
    for n, g in part.items():
        total[n] += g
    return total


def jacobian_vector_product(model: nn.Module, x: torch.Tensor, tangent: ParamVector, *,
                            t: Optional[torch.Tensor] = None,
                            chunk: Optional[int] = None) -> torch.Tensor:
    """J(x) v: the change of the logits (N, C) along the parameter direction ``tangent``."""
    check_inputs(x, t, "jacobian_vector_product")
    fn = NetworkFunction(model)
    v, _ = as_tensor_dict(tangent, fn, "tangent")
    return torch.cat([jvp_at(fn, None, v, x[r], slice_t(t, r))[1] for r in _rows(x, chunk)])


def vector_jacobian_product(model: nn.Module, x: torch.Tensor, cotangent: torch.Tensor, *,
                            t: Optional[torch.Tensor] = None, chunk: Optional[int] = None,
                            flat: bool = False) -> ParamVector:
    """J(x)^T u for an output-space ``cotangent`` u (N, C): name -> tensor (masked entries 0),
    or the flat concatenation with ``flat=True``."""
    check_inputs(x, t, "vector_jacobian_product")
    _check_outputs(cotangent, x.shape[0], None, "cotangent")
    fn = NetworkFunction(model)
    total = vjp_sum(fn, None, cotangent, x, t, _rows(x, chunk))
    return flatten(total, fn.names) if flat else total


def vjp_sum(fn: NetworkFunction, point: Optional[ParameterPoint], cotangent: torch.Tensor,
            x: torch.Tensor, t: Optional[torch.Tensor], rows, what: str = "cotangent"
            ) -> TensorDict:
    """J(x)^T u summed over chunks of examples."""
    total: Optional[TensorDict] = None
    for r in rows:
        _, grads = vjp_at(fn, point, cotangent[r], x[r], slice_t(t, r), what)
        total = _accumulate(total, grads)
    return total


def ntk_product_at(fn: NetworkFunction, point: Optional[ParameterPoint], v: torch.Tensor,
                   x: torch.Tensor, t: Optional[torch.Tensor], rows) -> torch.Tensor:
    """Theta(x, x) v = J (J^T v) at ``point``, by chunks of examples."""
    total = vjp_sum(fn, point, v, x, t, rows, "v")
    return torch.cat([jvp_at(fn, point, total, x[r], slice_t(t, r))[1] for r in rows])


def ntk_matrix_product_at(fn: NetworkFunction, point: Optional[ParameterPoint], v: torch.Tensor,
                          x: torch.Tensor, t: Optional[torch.Tensor], rows) -> torch.Tensor:
    """Theta(x, x) V for a stack V (m, N, C) of output-space vectors: ``torch.func.vmap`` over
    the columns (one batched reverse and forward-mode pass per chunk), falling back to one
    product per column for models whose operations vmap cannot batch."""
    def one(u: torch.Tensor) -> torch.Tensor:
        return ntk_product_at(fn, point, u, x, t, rows)

    try:
        with warnings.catch_warnings():
            # an unbatched fallback inside vmap is slower, not wrong
            warnings.filterwarnings("ignore", message="There is a performance drop")
            return torch.func.vmap(one)(v)
    except RuntimeError:
        return torch.stack([one(u) for u in v])


def ntk_vector_product(model: nn.Module, x: torch.Tensor, v: torch.Tensor, *,
                       t: Optional[torch.Tensor] = None,
                       chunk: Optional[int] = None) -> torch.Tensor:
    """Theta(x, x) v = J (J^T v) for v (N, C): one reverse pass then one forward-mode pass per
    chunk; Theta is never formed."""
    check_inputs(x, t, "ntk_vector_product")
    _check_outputs(v, x.shape[0], None, "v")
    fn = NetworkFunction(model)
    return ntk_product_at(fn, None, v, x, t, _rows(x, chunk))


def fisher_vector_product(model: nn.Module, x: torch.Tensor, v: ParamVector, *,
                          t: Optional[torch.Tensor] = None,
                          chunk: Optional[int] = None) -> ParamVector:
    """F v with F the exact Gauss-Newton / Fisher matrix of the mean softmax cross-entropy over
    the N examples (module docstring). Returns the same kind as ``v`` (dict or flat)."""
    check_inputs(x, t, "fisher_vector_product")
    fn = NetworkFunction(model)
    tangent, flat = as_tensor_dict(v, fn, "v")
    total: Optional[TensorDict] = None
    for r in _rows(x, chunk):
        xr, tr = x[r], slice_t(t, r)
        logits, jv = jvp_at(fn, None, tangent, xr, tr)
        p = torch.softmax(logits.detach(), dim=1)
        hjv = p * jv - p * (p * jv).sum(dim=1, keepdim=True)
        _, grads = vjp_at(fn, None, hjv, xr, tr)
        total = _accumulate(total, grads)
    n = x.shape[0]
    result = {k: g / n for k, g in total.items()}
    return flatten(result, fn.names) if flat else result
