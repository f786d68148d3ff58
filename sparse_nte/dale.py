"""Dale's law: every presynaptic unit is either excitatory or inhibitory, for all its synapses.

A unit j has a fixed sign s_j in {+1, -1}; every outgoing weight w_ij keeps that sign or is zero::

    w_ij = s_j * |w_ij|        (w_ij * s_j >= 0 for all i)

The sign lives on the layer that receives unit j (``SparseWeightsBase.dale_sign``, dim 1 of the
weight: an input feature of a linear layer, an input channel of a convolution), so ONE class owns
every weight constraint (mask and sign, see :mod:`sparse_nte.layers`).

How the constraint is kept:

* Additive optimizers (SGD, Adam, ...) can push a weight across zero. Projection onto the
  feasible set fixes that: ``w_ij <- 0 if w_ij * s_j < 0`` (a weight that would cross zero
  stops at zero and may later regrow in its own sign). The layers project lazily before every
  forward pass, ``state_dict`` and ``.weight`` read; :func:`constrain_optimizer` additionally
  projects right after every ``optimizer.step()``, so stored values are feasible at all times.
* Multiplicative updates (the NTE rule) never change a weight's sign; the projection is then a
  no-op.

Initialisation (:func:`dale_init_`) follows the ColumnEI / DANN initialisation of Cornford et al.,
"Learning to live with Dale's principle: ANNs with separate excitatory and inhibitory units"
(ICLR 2021): magnitudes are exponential, and the inhibitory ones are scaled by n_E / n_I so that
each unit's expected input is centred, E[sum_j w_ij x_j] = 0, whatever its (non-negative) input.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.hooks import RemovableHandle

from sparse_nte.layers import SparseWeightsBase

__all__ = [
    "assign_signs",
    "num_excitatory",
    "dale_init_",
    "constrain_optimizer",
]

# c = 1 - 1/(2 pi). For an exponential magnitude of scale sigma (E[w^2] = 2 sigma^2,
# E[w]^2 = sigma^2) and an input x = relu(z), z ~ N(0, v) (E[x^2] = v/2, E[x]^2 = v/(2 pi)), a
# synapse adds E[w^2] E[x^2] - E[w]^2 E[x]^2 = c * sigma^2 * v to the variance of the unit's
# input once the balanced means cancel the cross terms (Cornford et al. 2021).
_RELU_EXP_FACTOR = (2.0 * math.pi - 1.0) / (2.0 * math.pi)


def num_excitatory(n: int, exc_fraction: float) -> int:
    """Number of excitatory units among ``n``: ``floor(exc_fraction * n + 0.5)`` (half rounds up)."""
    if not (isinstance(n, int) and n >= 0):
        raise ValueError(f"num_excitatory: n must be a non-negative int, got {n!r}")
    _check_fraction(exc_fraction)
    return int(math.floor(exc_fraction * n + 0.5))


def _check_fraction(exc_fraction: float) -> None:
    if isinstance(exc_fraction, bool) or not isinstance(exc_fraction, (int, float)) \
            or not 0.0 <= exc_fraction <= 1.0:
        raise ValueError(f"exc_fraction (fraction of excitatory units) must be a number in [0, 1], "
                         f"got {exc_fraction!r}")


def assign_signs(n: int, exc_fraction: float = 0.8,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Signs of ``n`` presynaptic units: a float tensor of shape ``(n,)`` with exactly
    :func:`num_excitatory` ``(n, exc_fraction)`` entries ``+1`` (excitatory) at random positions
    (drawn with ``generator``; deterministic for a seeded generator) and ``-1`` elsewhere."""
    n_exc = num_excitatory(n, exc_fraction)
    sign = torch.full((n,), -1.0)
    sign[torch.randperm(n, generator=generator)[:n_exc]] = 1.0
    return sign


def dale_init_(layer: SparseWeightsBase, generator: Optional[torch.Generator] = None) -> None:
    """Balanced excitatory/inhibitory initialisation of a Dale layer (in place); bias set to 0.

    ColumnEI initialisation of Cornford et al. (ICLR 2021), applied per output unit i over its
    ALLOWED connections (the sparse mask is respected: masked weights stay exactly 0). With
    n_E(i), n_I(i) the numbers of unmasked synapses from excitatory / inhibitory units and
    c = (2 pi - 1) / (2 pi)::

        |w_ij| ~ Exponential(scale sigma_E(i))   if s_j = +1
        |w_ij| ~ Exponential(scale sigma_I(i))   if s_j = -1
        sigma_E = 1 / sqrt(c * (n_E + n_E^2 / n_I)),   sigma_I = (n_E / n_I) * sigma_E
        w_ij = s_j * |w_ij|

    Then E[sum_j w_ij] = n_E sigma_E - n_I sigma_I = 0, so the expected input of every unit is 0
    for any non-negative input of equal mean, and for inputs x = relu(z), z ~ N(0, v) the
    pre-activation variance is v again (the He-initialisation property).

    A unit whose allowed synapses are all of one sign cannot be balanced; its magnitudes get
    scale ``1 / sqrt(c * n)`` (the same formula without the balancing term), n its number of
    allowed synapses. This happens when ``exc_fraction`` is 0 or 1 or a row is very sparse.
    """
    if not isinstance(layer, SparseWeightsBase):
        raise ValueError(f"dale_init_ expects a SparseWeights/SparseWeights2d layer, got "
                         f"{type(layer).__name__}")
    sign = layer.sign_tensor()
    if sign is None:
        raise ValueError("dale_init_: the layer has no presynaptic signs; call "
                         "layer.set_presynaptic_sign(sign) first")
    w = layer.module.weight
    with torch.no_grad():
        allowed = ~layer.zero_mask
        exc = (sign > 0) & allowed
        inh = (sign < 0) & allowed
        n_e = exc.flatten(1).sum(1).to(w.dtype)
        n_i = inh.flatten(1).sum(1).to(w.dtype)
        balanced = (n_e > 0) & (n_i > 0)
        one_sign = torch.rsqrt(_RELU_EXP_FACTOR * (n_e + n_i).clamp_min(1.0))
        sigma_e = torch.where(
            balanced, torch.rsqrt(_RELU_EXP_FACTOR * (n_e + n_e * n_e / n_i.clamp_min(1.0))),
            one_sign)
        sigma_i = torch.where(balanced, n_e / n_i.clamp_min(1.0) * sigma_e, one_sign)
        row = (-1,) + (1,) * (w.dim() - 1)
        scale = torch.where(sign > 0, sigma_e.view(row), sigma_i.view(row))
        magnitude = torch.empty_like(w).exponential_(1.0, generator=generator)
        w.copy_(magnitude * scale * sign)
        w.masked_fill_(~allowed, 0.0)
        if layer.module.bias is not None:
            layer.module.bias.zero_()
    layer.enforce_constraints()


class _ProjectAfterStep:
    """Optimizer step post-hook: re-apply mask and Dale sign of every constrained layer of the
    model whose weight the optimizer updates."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, SparseWeightsBase)]

    def __call__(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for layer in self.layers:
            if id(layer.weight_param) in trained:
                layer.enforce_constraints()


def constrain_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> RemovableHandle:
    """Project the weights of ``model`` onto their constraints right after every
    ``optimizer.step()``: masked weights to 0 and, with Dale's law, ``w_ij <- 0`` where
    ``w_ij * s_j < 0`` (registered with ``optimizer.register_step_post_hook``).

    The layers already project lazily before any forward pass, ``state_dict()`` or ``.weight``
    read, so correctness never depends on this call; with it, the values stored in the
    parameters satisfy the constraints directly after each step too (what optimizers, plasticity
    schedules and statistics that read ``module.weight`` see). The projection is idempotent, so
    registering it twice is harmless (but costs twice the time). Compact sparse layers
    (``sparse_exec = "compact"``) are also given the optimizer
    (:meth:`~sparse_nte.layers.SparseWeights.attach_optimizer`), so that a change of their live
    set carries its state along.

    Returns the hook's handle (``handle.remove()`` detaches it).
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"constrain_optimizer expects a torch.optim.Optimizer, got "
                         f"{type(optimizer).__name__}")
    if not isinstance(model, nn.Module):
        raise ValueError(f"constrain_optimizer expects an nn.Module as model, got "
                         f"{type(model).__name__}")
    hook = _ProjectAfterStep(model)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for layer in hook.layers:   # compact layers move the optimizer's state when masks change
        attach = getattr(layer, "attach_optimizer", None)
        if attach is not None and id(layer.weight_param) in trained:
            attach(optimizer)
    return optimizer.register_step_post_hook(hook)
