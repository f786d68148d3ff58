"""How a rule's updates are applied: the choices of config key ``optimizer``.

- ``sgd``: ``torch.optim.SGD`` (lr, momentum, nesterov, weight_decay);
- ``adam``: ``torch.optim.Adam`` (Kingma & Ba 2015; lr, weight_decay as L2);
- ``adamw``: ``torch.optim.AdamW`` (Loshchilov & Hutter 2019; lr, decoupled weight_decay);
- ``nte``: the Neural Tangent Ensemble posterior update (:class:`sparse_nte.nte.NTE`), which
  takes the per-example losses instead of a gradient.

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

__all__ = ["OPTIMIZERS", "build_optimizer", "takes_example_losses"]


def _sgd(config: "Config", model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov, weight_decay=config.weight_decay)


def _adam(config: "Config", model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def _adamw(config: "Config", model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


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
