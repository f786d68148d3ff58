"""Preconditioned conjugate gradients for symmetric positive-definite systems A X = B, with
several right-hand sides solved independently (one step size per column).

Hestenes & Stiefel, "Methods of conjugate gradients for solving linear systems" (J. Res. NBS,
1952); preconditioned form as in Golub & Van Loan, "Matrix Computations", Algorithm 11.5.1::

    r = b - A x,  z = M^{-1} r,  p = z
    repeat:  alpha = (r.z) / (p.A p);  x += alpha p;  r -= alpha A p
             stop when ||r|| <= tol ||b||
             z' = M^{-1} r;  beta = (r.z') / (r.z);  p = z' + beta p

The stopping test uses the recursively updated residual; when the iteration cap binds, the TRUE
relative residual ||b - A x|| / ||b|| is computed (one more product) and reported in a
``RuntimeWarning`` (a solver that silently stops at its cap returns an unconverged solution as
if it were one). Columns that have converged stop changing.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["CGResult", "conjugate_gradients"]


@dataclass
class CGResult:
    """``solution`` (shape of B); ``iterations`` done; ``residual``: the largest relative
    residual over the columns (recursive, or true when the cap bound); ``converged``."""

    solution: torch.Tensor
    iterations: int
    residual: float
    converged: bool


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=0)


def conjugate_gradients(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *,
                        tol: float = 1e-5, max_iter: int = 1000,
                        preconditioner: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
                        x0: Optional[torch.Tensor] = None, what: str = "conjugate gradients"
                        ) -> CGResult:
    """Solve A X = B for SPD A given as ``matvec`` (applied to an (n, m) block of columns).

    Args:
        matvec: X -> A X on (n, m) blocks (1-d ``b`` is treated as one column).
        b: right-hand sides, (n,) or (n, m).
        tol: relative residual ||b - A x|| / ||b|| at which a column stops (> 0).
        max_iter: iteration cap (>= 1); a ``RuntimeWarning`` with the true residual when it binds.
        preconditioner: z = M^{-1} r for an SPD M approximating A (e.g. its diagonal), or None.
        x0: starting point (default 0).
        what: name used in the warning.
    """
    if not tol > 0:
        raise ValueError(f"{what}: tol must be > 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"{what}: max_iter must be an int >= 1, got {max_iter!r}")
    vector = b.dim() == 1
    bm = b.unsqueeze(1) if vector else b
    x = torch.zeros_like(bm) if x0 is None else (x0.unsqueeze(1) if vector else x0).clone()
    b_norm = bm.norm(dim=0)
    scale = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    r = bm - matvec(x) if x0 is not None else bm.clone()
    precond = preconditioner or (lambda v: v)
    z = precond(r)
    p = z.clone()
    rz = _dot(r, z)
    active = r.norm(dim=0) > tol * scale
    iterations = 0
    while bool(active.any()) and iterations < max_iter:
        ap = matvec(p)
        curvature = _dot(p, ap)
        alpha = torch.where(active & (curvature > 0), rz / torch.where(curvature > 0, curvature,
                                                                       torch.ones_like(curvature)),
                            torch.zeros_like(rz))
        x += alpha * p
        r -= alpha * ap
        iterations += 1
        active = active & (r.norm(dim=0) > tol * scale) & (curvature > 0)
        if not bool(active.any()):
            break
        z = precond(r)
        rz_new = _dot(r, z)
        beta = torch.where(active, rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)),
                           torch.zeros_like(rz))
        p = torch.where(active, z + beta * p, p)
        rz = torch.where(active, rz_new, rz)
    residual = float((r.norm(dim=0) / scale).max())
    converged = residual <= tol
    if not converged:
        true = float(((bm - matvec(x)).norm(dim=0) / scale).max())
        residual = true
        converged = true <= tol
        if not converged:
            why = (f"at the iteration cap max_iter={max_iter}" if iterations >= max_iter else
                   "on a non-positive curvature p.Ap <= 0 (the matrix is not positive definite "
                   "in floating point)")
            warnings.warn(f"{what} stopped after {iterations} iterations, {why}, with relative "
                          f"residual {true:.3g} > tol={tol:g}; the solution is not converged: "
                          f"raise max_iter, loosen tol, or add noise (a larger diagonal term "
                          f"makes the system better conditioned)", RuntimeWarning, stacklevel=2)
    return CGResult(x.squeeze(1) if vector else x, iterations, residual, converged)
