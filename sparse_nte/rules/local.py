"""What the local learning rules (HSIC bottleneck, IB-Hebbian) share: the torch optimizer that
applies their updates, the check that no strategy needs a loss gradient, per-task statistics
and the reading of typed specs from the config.

The rules compute an update for every parameter, place it in ``p.grad`` and call
``optimizer.step()``: the optimizer turns it into a step exactly as it would a gradient (SGD,
Adam, AdamW; Loshchilov & Hutter 2019 for the decoupled weight decay), so the constraint hook
(:func:`sparse_nte.dale.constrain_optimizer`) and the plasticity schedules attach to it as they do
for backprop. A parameter without an update (``grad`` None) is left untouched by the step,
weight decay included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from sparse_nte.seams import Objective, Rule

__all__ = ["LocalOptimizerSpec", "build_local_optimizer", "LocalRule", "read_keys",
           "check_number", "check_int", "check_choice", "check_bool", "LOCAL_OPTIMIZERS"]

#: Optimizers a local rule can step (NTE forms its own per-example updates and cannot).
LOCAL_OPTIMIZERS = ("sgd", "adam", "adamw")


# -- typed reading of config keys ---------------------------------------------------------------
def read_keys(config: Any, names: Sequence[str], where: str) -> Dict[str, Any]:
    """``{name: config.name}``; ValueError naming every missing key."""
    missing = [n for n in names if not hasattr(config, n)]
    if missing:
        raise ValueError(f"{where}: the config lacks the key(s) {', '.join(missing)} "
                         f"(needed: {', '.join(names)})")
    return {n: getattr(config, n) for n in names}


def check_number(key: str, value: Any, low: float, high: float = float("inf"), *,
                 low_open: bool = False, high_open: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok:
        ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        rng = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"config key {key!r} = {value!r} is invalid; it must be a number in {rng}")
    return float(value)


def check_int(key: str, value: Any, low: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        raise ValueError(f"config key {key!r} = {value!r} is invalid; it must be an int >= {low}")
    return int(value)


def check_choice(key: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"config key {key!r} = {value!r} is invalid; valid: {', '.join(choices)}")
    return str(value)


def check_bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"config key {key!r} = {value!r} is invalid; it must be a bool")
    return value


# -- the optimizer ------------------------------------------------------------------------------
@dataclass(frozen=True)
class LocalOptimizerSpec:
    """The torch optimizer a local rule steps (config keys ``optimizer``, ``lr``,
    ``weight_decay``, ``momentum``, ``nesterov``, ``adam_beta2``).

    ``adamw`` is ``torch.optim.AdamW`` (decoupled weight decay; the optimizer of Daruwalla &
    Lipasti's experiments, there with beta2 = 0.99); ``adam`` adds the weight decay to the
    update before the moments (L2), as ``torch.optim.Adam``. ``fused`` (config key
    ``fused_optimizer``): torch's fused update, one pass over each parameter (the same
    arithmetic up to rounding; for a per-sample rule on wide layers the unfused update's
    temporaries cost more than the rule itself).
    """

    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    momentum: float = 0.0
    nesterov: bool = False
    adam_beta2: float = 0.999
    fused: bool = False

    def __post_init__(self) -> None:
        check_choice("optimizer", self.optimizer, LOCAL_OPTIMIZERS)
        check_number("lr", self.lr, 0.0, low_open=True)
        check_number("weight_decay", self.weight_decay, 0.0)
        check_number("momentum", self.momentum, 0.0, 1.0)
        check_bool("nesterov", self.nesterov)
        check_number("adam_beta2", self.adam_beta2, 0.0, 1.0, low_open=True)
        check_bool("fused_optimizer", self.fused)
        if self.nesterov and self.momentum == 0 and self.optimizer == "sgd":
            raise ValueError("config key 'nesterov' = True needs momentum > 0 with optimizer = sgd")

    @classmethod
    def from_config(cls, config: Any) -> "LocalOptimizerSpec":
        if getattr(config, "optimizer", None) == "nte":
            raise ValueError("config key 'optimizer' = 'nte' cannot step a local learning rule "
                             "(learning_rule = hsic or ib_hebbian); valid: "
                             f"{', '.join(LOCAL_OPTIMIZERS)}")
        v = read_keys(config, ("optimizer", "lr", "weight_decay", "momentum", "nesterov",
                               "adam_beta2", "fused_optimizer"), "local learning rule")
        v["fused"] = v.pop("fused_optimizer")
        return cls(**v)


def build_local_optimizer(spec: LocalOptimizerSpec, params: Iterable[Any],
                          fused: Optional[bool] = None) -> torch.optim.Optimizer:
    """The optimizer of ``spec`` over ``params``: parameters, or torch parameter groups (dicts
    with ``params`` and options such as their own ``lr``); parameters that do not require a
    gradient are left out. ``fused`` (default ``spec.fused``): torch's fused implementation
    (one pass over each tensor; the same arithmetic up to rounding, ~3x faster on large
    stacked tensors on CPU)."""
    from sparse_nte.rules.optimizers import FusedSGD

    fused = spec.fused if fused is None else bool(fused)
    items = list(params)
    if items and isinstance(items[0], dict):
        groups: List[Any] = [dict(g, params=[p for p in g["params"] if p.requires_grad])
                             for g in items]
        groups = [g for g in groups if g["params"]]
    else:
        groups = [p for p in items if p.requires_grad]
    if spec.optimizer == "sgd":
        kwargs = dict(lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                      weight_decay=spec.weight_decay)
        return FusedSGD(groups, **kwargs) if fused else torch.optim.SGD(groups, **kwargs)
    extra = {"fused": True} if fused else {}
    betas = (0.9, spec.adam_beta2)
    if spec.optimizer == "adam":
        return torch.optim.Adam(groups, lr=spec.lr, betas=betas, weight_decay=spec.weight_decay,
                                **extra)
    return torch.optim.AdamW(groups, lr=spec.lr, betas=betas, weight_decay=spec.weight_decay,
                             **extra)


# -- the common rule ----------------------------------------------------------------------------
class LocalRule(Rule):
    """Base of the local rules: the optimizer, the strategy check and per-task means.

    Statistics are means over the updates of the task so far (reset at every task start);
    :meth:`_add` accumulates one value (a float or a list of per-layer floats).
    """

    name = "local"

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"{type(self).__name__}: optimizer must be a torch.optim.Optimizer, "
                             f"got {type(optimizer).__name__}")
        self.model = model
        self.optimizer = optimizer
        self._sums: Dict[str, Any] = {}
        self._counts: Dict[str, int] = {}

    # -- strategies ----------------------------------------------------------------------------
    def check_objective(self, objective: Objective) -> None:
        """Raise ValueError if a strategy of ``objective`` adds loss terms (EWC, SI, LwF): a
        local rule never follows the gradient of the objective, so those terms would be
        silently ignored."""
        bad = [type(s).__name__ for s in objective.strategies
               if getattr(s, "uses_loss", False) or getattr(s, "needs_grad", False)]
        if bad:
            raise ValueError(f"learning_rule = {self.name} computes layer-local updates and cannot "
                             f"follow the loss terms or gradients of the strategies "
                             f"{', '.join(bad)}; use learning_rule = backprop with them, or "
                             f"strategies that only change the batch (replay)")

    # -- statistics ----------------------------------------------------------------------------
    def _add(self, name: str, value: Any) -> None:
        if isinstance(value, (list, tuple)):
            value = [float(v) for v in value]
            old = self._sums.get(name)
            self._sums[name] = value if old is None else [a + b for a, b in zip(old, value)]
        else:
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
        self._counts[name] = self._counts.get(name, 0) + 1

    def _count(self, name: str, n: int = 1) -> None:
        self._sums[name] = self._sums.get(name, 0) + int(n)
        self._counts[name] = -1          # a count, not a mean

    def stats(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {}
        for name, total in self._sums.items():
            n = self._counts[name]
            if n < 0:
                out[name] = int(total)
            elif isinstance(total, list):
                out[name] = [v / n for v in total]
            else:
                out[name] = total / n
        return out

    def _reset_stats(self) -> None:
        self._sums, self._counts = {}, {}

    def _stats_state(self) -> Dict[str, Any]:
        return {"sums": {k: (list(v) if isinstance(v, list) else v) for k, v in self._sums.items()},
                "counts": dict(self._counts)}

    def _load_stats_state(self, state: Mapping[str, Any]) -> None:
        self._sums = {k: (list(v) if isinstance(v, list) else v) for k, v in state["sums"].items()}
        self._counts = dict(state["counts"])

    @staticmethod
    def _call(before_update: Callable[[], None]) -> None:
        if before_update is not None:
            before_update()
