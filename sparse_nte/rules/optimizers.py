"""How a rule's updates are applied: the choices of config key ``optimizer``.

- ``sgd``: ``torch.optim.SGD`` (lr, momentum, nesterov, weight_decay);
- ``adam``: ``torch.optim.Adam`` (Kingma & Ba 2015; lr, weight_decay as L2, betas (0.9, adam_beta2));
- ``adamw``: ``torch.optim.AdamW`` (Loshchilov & Hutter 2019; lr, decoupled weight_decay, betas).
- ``nte``: the Neural Tangent Ensemble posterior update (:class:`sparse_nte.nte.NTE`), which
  takes the per-example losses instead of a gradient.

``fused_optimizer``: sgd / adam / adamw use torch's fused update (one pass over a parameter, its
gradient and its state; :class:`FusedSGD` for SGD), whose rounding differs from the default
update in the last bit.

Every entry builds an optimizer over every trainable parameter of the model (so every head
trains). An optimizer that takes per-example losses says so with the class attribute
``takes_example_losses = True`` (the backprop rule then hands it a closure of per-example
losses instead of calling ``backward``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Dict

import torch
import torch.nn as nn

from sparse_nte.nte import build_nte_optimizer

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config import Config

__all__ = ["OPTIMIZERS", "build_optimizer", "takes_example_losses", "FusedSGD"]


class FusedSGD(torch.optim.SGD):
    """``torch.optim.SGD(fused=True)`` that also steps groups in which some parameters already
    have a momentum buffer and others get their first gradient now (a head trained from a later
    task on): torch's fused kernel treats a step as the first for all of a group's parameters
    or for none. A missing buffer is created as zeros, which with ``dampening = 0`` (the only
    value the config uses) makes ``buf = momentum * 0 + grad = grad``, exactly the first-step
    value."""

    def __init__(self, params, **kwargs) -> None:
        super().__init__(params, fused=True, **kwargs)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            if group["momentum"] == 0 or group["dampening"] != 0:
                continue
            with_grad = [p for p in group["params"] if p.grad is not None]
            states = [self.state.get(p, {}).get("momentum_buffer") for p in with_grad]
            if any(b is not None for b in states) and any(b is None for b in states):
                for p, b in zip(with_grad, states):
                    if b is None:
                        self.state[p]["momentum_buffer"] = torch.zeros_like(p)
        return super().step(closure)


def _sgd(config: "Config", model: nn.Module) -> torch.optim.Optimizer:
    kwargs = dict(lr=config.lr, momentum=config.momentum, nesterov=config.nesterov,
                  weight_decay=config.weight_decay)
    if config.fused_optimizer:
        return FusedSGD(model.parameters(), **kwargs)
    return torch.optim.SGD(model.parameters(), **kwargs)


def _adam(config: "Config", model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                            betas=(0.9, config.adam_beta2), **({"fused": True} if config.fused_optimizer else {}))


def _adamw(config: "Config", model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                             betas=(0.9, config.adam_beta2), **({"fused": True} if config.fused_optimizer else {}))


def _nte(config: "Config", model: nn.Module) -> torch.optim.Optimizer:
    return build_nte_optimizer(model, config)


#: name -> builder(config, model).
OPTIMIZERS: Dict[str, Callable[["Config", nn.Module], torch.optim.Optimizer]] = {
    "sgd": _sgd, "adam": _adam, "adamw": _adamw, "nte": _nte,
}


def build_optimizer(config: "Config", model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer of ``config.optimizer`` over every parameter of ``model``."""
    return OPTIMIZERS[config.optimizer](config, model)


def takes_example_losses(optimizer: torch.optim.Optimizer) -> bool:
    """True for optimizers whose ``step(closure)`` takes the per-example losses (NTE)."""
    return bool(getattr(optimizer, "takes_example_losses", False))
