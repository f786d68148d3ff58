"""Kernel diagnostics of continual learning: how far the network has left its tangent regime.

* Gradient alignment with initialisation, as the NTE demo notebook "gradient alignment is the
  problem" defines it (Benjamin, Pehle & Daruwalla, NeurIPS 2024; ZadorLaboratory/
  NeuralTangentEnsemble, ``pytorch_demo``). With g_b(theta) the gradient of example b's own
  cross-entropy, on a batch of B examples (24 in the demo), for every parameter tensor l::

      cos_l = sum_b <g_b,l(theta), g_b,l(theta_0)> / (||G_l(theta)||_F ||G_l(theta_0)||_F)

  one cosine over the stacked (B x params) per-example gradients G_l, NOT a mean of per-example
  cosines; then ``alignment = sum_l w_l cos_l`` with w_l the tensor's share of the parameters.
  Here w_l counts live entries (equal to ``numel`` without masks, as in the demo), and a tensor
  whose gradients are all zero at either point (a head no example uses) has no cosine: it is
  left out and the weights of the others renormalised (the demo would report NaN).
  The NTE update is exact for a linear model (Bayesian ensemble of tangent experts); the
  alignment says how well the tangent features at theta_0 still describe the network at theta.
* Kernel drift (Fort et al., "Deep learning versus kernel learning", NeurIPS 2020, kernel
  distance): ``||K_t - K_0||_F / ||K_0||_F`` on a fixed probe set.
* Centred kernel alignment (Cortes, Mohri & Rostamizadeh, "Algorithms for learning kernels based
  on centered alignment", JMLR 2012; Kornblith et al., ICML 2019)::

      CKA(K, L) = <H K H, H L H>_F / (||H K H||_F ||H L H||_F),   H = I - 1 1^T / n

  in [-1, 1] for any symmetric K, L (in [0, 1] for PSD kernels); invariant to scaling either kernel.
* Effective rank (Roy & Vetterli, "The effective rank: a measure of effective dimensionality",
  EUSIPCO 2007): ``exp(-sum_i p_i log p_i)`` with p_i = lambda_i / sum_j lambda_j the normalised
  eigenvalues of the PSD kernel (negative rounding noise clipped to 0); between 1 and n.

Kernels given as (N, N, C, C) are read as (N C, N C) matrices.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn

from sparse_nte.ntk.contract import contract
from sparse_nte.ntk.features import DEFAULT_BUDGET, extract
from sparse_nte.ntk.params import NetworkFunction, ParameterPoint, check_inputs

__all__ = ["GradientAlignment", "gradient_alignment", "kernel_drift",
           "centered_kernel_alignment", "effective_rank", "as_matrix"]


@dataclass
class GradientAlignment:
    """``value``: the weighted mean cosine; ``per_tensor``: name -> cosine; ``weights``: name ->
    share of live parameters used in the mean (tensors without a cosine are absent)."""

    value: float
    per_tensor: Dict[str, float]
    weights: Dict[str, float]


def gradient_alignment(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                       reference: ParameterPoint, t: Optional[torch.Tensor] = None,
                       budget: int = DEFAULT_BUDGET) -> GradientAlignment:
    """Alignment of the per-example cross-entropy gradients on (x, y) at the model's current
    parameters with those at ``reference`` (theta_0), as defined in the module docstring.

    The per-example gradients are contracted from factored rows where possible (never stored as
    B x P for the linear layers). Evaluated in the model's current mode (use eval mode).
    """
    check_inputs(x, t, "gradient_alignment")
    if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or y.dtype.is_floating_point:
        raise ValueError(f"gradient_alignment: y must be int64 labels of shape ({x.shape[0]},), "
                         f"got {getattr(y, 'dtype', type(y))} {tuple(getattr(y, 'shape', ()))}")
    fn = NetworkFunction(model)
    now = extract(fn, x, t, targets=y, budget=budget)
    then = extract(fn, x, t, targets=y, params=reference.params, buffers=reference.buffers,
                   keep=reference.keep, budget=budget)
    live = fn.num_live()
    cosines: Dict[str, float] = {}
    for name in fn.names:
        a, b = now.per_param.get(name), then.per_param.get(name)
        if a is None or b is None:
            continue
        norm_a = float(contract(a, a, "diagonal", budget).sum())
        norm_b = float(contract(b, b, "diagonal", budget).sum())
        if not (norm_a > 0 and norm_b > 0):
            continue
        dot = float(contract(a, b, "diagonal", budget).sum())
        cosines[name] = dot / math.sqrt(norm_a * norm_b)
    total = sum(live[n] for n in cosines)
    weights = {n: live[n] / total for n in cosines} if total else {}
    value = sum(weights[n] * cosines[n] for n in cosines) if cosines else float("nan")
    return GradientAlignment(value, cosines, weights)


def as_matrix(k: torch.Tensor) -> torch.Tensor:
    """A kernel as a square matrix: (N, N) as is, (N, N, C, C) as (N C, N C)."""
    if k.dim() == 2 and k.shape[0] == k.shape[1]:
        return k
    if k.dim() == 4 and k.shape[0] == k.shape[1] and k.shape[2] == k.shape[3]:
        n, _, c, _ = k.shape
        return k.permute(0, 2, 1, 3).reshape(n * c, n * c)
    raise ValueError(f"expected a kernel of shape (N, N) or (N, N, C, C), got {tuple(k.shape)}")


def kernel_drift(k: torch.Tensor, k0: torch.Tensor) -> float:
    """||K - K_0||_F / ||K_0||_F (same shapes)."""
    if k.shape != k0.shape:
        raise ValueError(f"kernel_drift: shapes differ, {tuple(k.shape)} vs {tuple(k0.shape)}")
    ref = float(torch.linalg.vector_norm(k0.double()))
    if ref == 0:
        raise ValueError("kernel_drift: the reference kernel is zero; the relative drift is "
                         "undefined")
    return float(torch.linalg.vector_norm((k - k0).double())) / ref


def _centre(k: torch.Tensor) -> torch.Tensor:
    k = k.double()
    return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()


def centered_kernel_alignment(k: torch.Tensor, l: torch.Tensor) -> float:  # noqa: E741  (CKA(K, L))
    """CKA(K, L) of two kernels on the same examples (module docstring); NaN if either centred
    kernel is zero (a constant kernel has no alignment)."""
    a, b = _centre(as_matrix(k)), _centre(as_matrix(l))
    if a.shape != b.shape:
        raise ValueError(f"centered_kernel_alignment: kernels on different example sets, "
                         f"{tuple(a.shape)} vs {tuple(b.shape)}")
    na, nb = float(torch.linalg.vector_norm(a)), float(torch.linalg.vector_norm(b))
    if na == 0 or nb == 0:
        return float("nan")
    return float((a * b).sum()) / (na * nb)


def effective_rank(k: torch.Tensor) -> float:
    """exp of the entropy of the normalised eigenvalues of the PSD kernel (module docstring);
    0 for the zero kernel."""
    m = as_matrix(k).double()
    eig = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0.0)
    total = float(eig.sum())
    if total == 0:
        return 0.0
    p = eig / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))
