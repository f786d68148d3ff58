"""The NTE optimizer of an experiment: :class:`NTESpec` (what the config says) and
:func:`build_nte_optimizer`.

:data:`DEFAULTS` are the optimizer's own constructor defaults (plus the builder's choice of
managed parameters); the config schema (:mod:`sparse_nte.config.groups.nte`) takes the defaults
of the ``nte_*`` keys from here, so no default is written twice.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, List, Mapping, Optional, Union

import torch.nn as nn

from sparse_nte.nte.model_index import weight_params
from sparse_nte.nte.optimizer import NTE
from sparse_nte.nte.options import NTE_PARAMS

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config import Config

__all__ = ["DEFAULTS", "NTESpec", "build_nte_optimizer"]

_SIGNATURE = inspect.signature(NTE.__init__).parameters

#: Defaults of the settings an experiment chooses: the NTE constructor's own (``beta``, ``eta``,
#: ``max_delta``, ``expand``, ``noise_scale``, ``fast``) and the builder's ``params`` (which
#: parameters the rule manages, :data:`~sparse_nte.nte.NTE_PARAMS`).
DEFAULTS: Mapping[str, Any] = MappingProxyType({
    **{name: _SIGNATURE[name].default
       for name in ("beta", "eta", "max_delta", "expand", "noise_scale", "fast")},
    "params": "weights",
})


@dataclass(frozen=True)
class NTESpec:
    """The settings of the NTE optimizer of one experiment (all required: the defaults live in
    the config schema, which takes them from :data:`DEFAULTS`).

    ``params``: "weights" (the weights of linear / conv layers are managed, every other
    parameter takes SGD steps with ``lr``) or "all". ``score_momentum``: momentum of the NTE
    pruning score, or None when no schedule prunes by it. ``keep_grad``: leave the gradient of
    the step's objective in ``p.grad`` (for strategies that read it; not a config key).
    """

    beta: float
    eta: float
    max_delta: float
    expand: str
    noise_scale: float
    params: str
    fast: str
    lr: float
    seed: int
    score_momentum: Optional[float]
    keep_grad: bool

    @classmethod
    def from_config(cls, config: "Config") -> "NTESpec":
        """The spec of ``config`` (a validated :class:`~sparse_nte.config.Config`; with
        ``plasticity = nte_prune`` and ``nte_prune_rule = score`` the pruning score is kept with
        momentum ``nte_prune_momentum``)."""
        if config.optimizer != "nte":
            raise ValueError(f"build_nte_optimizer: config key 'optimizer' is "
                             f"{config.optimizer!r}; it builds the optimizer for 'nte' only")
        scored = config.plasticity == "nte_prune" and config.nte_prune_rule == "score"
        return cls(beta=config.nte_beta, eta=config.nte_eta, max_delta=config.nte_max_delta,
                   expand=config.nte_expand, noise_scale=config.nte_noise_scale,
                   params=config.nte_params, fast=config.nte_fast, lr=config.lr,
                   seed=config.seed,
                   score_momentum=config.nte_prune_momentum if scored else None,
                   keep_grad=False)


def build_nte_optimizer(model: nn.Module, config: Union["Config", NTESpec]) -> NTE:
    """The NTE optimizer described by ``config`` (a :class:`~sparse_nte.config.Config`, e.g.
    from ``sparse_nte.config.config_from_dict({...})``, or an :class:`NTESpec`).

    With ``params = "weights"`` the weights of linear / conv layers are managed and every other
    trainable parameter takes plain SGD steps with ``lr``; with ``"all"`` every parameter is
    managed.
    """
    if isinstance(config, NTESpec):
        spec = config
    elif hasattr(config, "nte_beta") and hasattr(config, "optimizer"):
        spec = NTESpec.from_config(config)
    else:
        raise TypeError(f"build_nte_optimizer takes a Config (sparse_nte.config.config_from_dict("
                        f"...) validates a plain mapping) or an NTESpec, got "
                        f"{type(config).__name__}")
    if spec.params not in NTE_PARAMS:
        raise ValueError(f"NTESpec.params must be one of {NTE_PARAMS}, got {spec.params!r}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    managed = trainable if spec.params == "all" else weight_params(model)
    managed_ids = {id(p) for p in managed}
    others = [p for p in trainable if id(p) not in managed_ids]
    groups: List[dict] = [{"params": managed, "managed": True}]
    if others:
        lr = spec.lr
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"config key 'lr' must be a number > 0 (it trains the parameters the "
                             f"NTE rule does not manage with nte_params={spec.params!r}), got "
                             f"{lr!r}")
        groups.append({"params": others, "managed": False, "lr": float(lr)})
    return NTE(groups, model, beta=spec.beta, eta=spec.eta, max_delta=spec.max_delta,
               fast=spec.fast, expand=spec.expand, noise_scale=spec.noise_scale,
               score_momentum=spec.score_momentum, seed=int(spec.seed),
               keep_grad=spec.keep_grad)
