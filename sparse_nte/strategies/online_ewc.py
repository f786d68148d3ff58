"""Online EWC (Schwarz et al., "Progress & Compress: a scalable framework for continual
learning", ICML 2018, section 3; van de Ven & Tolias 2019).

One running Fisher, decayed by gamma, anchored at the parameters after the latest task::

    F*_k = gamma F*_{k-1} + F_k,        theta*_k = theta after task k
    R(theta) = (lambda / 2) sum_i gamma F*_{k,i} (theta_i - theta*_{k,i})^2   (while training task k+1)

gamma in [0, 1]; with gamma = 1 the old tasks' Fishers keep their full weight but, unlike EWC,
every task is anchored at the latest parameters. The Fisher F_k is computed as for EWC
(:mod:`sparse_nte.strategies.ewc`, :mod:`sparse_nte.strategies.fisher`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch

from sparse_nte.seams import BuildEnv, Strategy, TaskContext
from sparse_nte.strategies.common import (check_importance, importance_stats, tensor_bytes,
                                          trained_parameters)
from sparse_nte.strategies.ewc import _check_names, fisher_of_task
from sparse_nte.strategies.keys import KEY_DEFAULTS, check_key, read_keys

__all__ = ["OnlineEWCSpec", "OnlineEWC", "build"]


@dataclass(frozen=True)
class OnlineEWCSpec:
    """Online EWC settings (``ewc_lambda``, ``ewc_gamma``, ``ewc_fisher``,
    ``ewc_fisher_examples``)."""

    lam: float = KEY_DEFAULTS["ewc_lambda"]
    gamma: float = KEY_DEFAULTS["ewc_gamma"]
    fisher: str = KEY_DEFAULTS["ewc_fisher"]
    fisher_examples: int = KEY_DEFAULTS["ewc_fisher_examples"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", check_key("ewc_lambda", self.lam, "online EWC"))
        object.__setattr__(self, "gamma", check_key("ewc_gamma", self.gamma, "online EWC"))
        check_key("ewc_fisher", self.fisher, "online EWC")
        check_key("ewc_fisher_examples", self.fisher_examples, "online EWC")

    @classmethod
    def from_config(cls, config: Any) -> "OnlineEWCSpec":
        v = read_keys(config, ("ewc_lambda", "ewc_gamma", "ewc_fisher", "ewc_fisher_examples"))
        return cls(v["ewc_lambda"], v["ewc_gamma"], v["ewc_fisher"], v["ewc_fisher_examples"])


class OnlineEWC(Strategy):
    """Online EWC: one running, decayed Fisher around the latest parameters (module doc)."""

    uses_loss = True
    name = "online_ewc"

    def __init__(self, spec: OnlineEWCSpec, env: BuildEnv) -> None:
        self.spec = spec
        self.model = env.model
        self.params = trained_parameters(env.model)
        self.F: Optional[Dict[str, torch.Tensor]] = None
        self.anchor: Optional[Dict[str, torch.Tensor]] = None
        self.tasks = 0
        self._stats: Dict[str, Any] = {}
        self._pen_sum: Optional[torch.Tensor] = None
        self._pen_steps = 0

    def consolidate(self, fisher: Mapping[str, torch.Tensor],
                    anchor: Mapping[str, torch.Tensor]) -> None:
        """F <- gamma F + fisher; theta* <- anchor."""
        if self.F is None:
            self.F = {n: fisher[n].detach().clone() for n, _ in self.params}
            self.anchor = {n: anchor[n].detach().clone() for n, _ in self.params}
        else:
            for n, _ in self.params:
                self.F[n].mul_(self.spec.gamma).add_(fisher[n])
                self.anchor[n].copy_(anchor[n])
        self.tasks += 1

    def on_task_start(self, ctx: TaskContext) -> None:
        self._pen_sum, self._pen_steps = None, 0

    def on_task_end(self, ctx: TaskContext) -> None:
        fisher, count = fisher_of_task(ctx, self.spec.fisher, self.spec.fisher_examples, self.params)
        all_zero = check_importance("online EWC's Fisher", fisher, ctx.task)
        self.consolidate(fisher, {n: p.detach() for n, p in self.params})
        self._stats = {"fisher_examples": count, "importance_all_zero": all_zero,
                       "penalty_mean": (float(self._pen_sum) / self._pen_steps
                                        if self._pen_steps else 0.0),
                       **importance_stats("fisher", fisher),
                       **importance_stats("running_fisher", self.F),
                       "memory_bytes": self.memory_bytes(), "consolidated_tasks": self.tasks}

    def penalty(self) -> Optional[torch.Tensor]:
        if self.F is None:
            return None
        total = None
        for n, p in self.params:
            term = (self.F[n] * (p - self.anchor[n]).square()).sum()
            total = term if total is None else total + term
        out = (0.5 * self.spec.lam * self.spec.gamma) * total
        detached = out.detach()
        self._pen_sum = detached if self._pen_sum is None else self._pen_sum + detached
        self._pen_steps += 1
        return out

    def memory_bytes(self) -> int:
        if self.F is None:
            return 0
        return tensor_bytes(list(self.F.values()) + list(self.anchor.values()))

    def stats(self) -> Dict[str, Any]:
        return dict(self._stats)

    def state_dict(self) -> Dict[str, Any]:
        return {"F": None if self.F is None else {n: v.clone() for n, v in self.F.items()},
                "anchor": None if self.anchor is None else {n: v.clone() for n, v in self.anchor.items()},
                "tasks": self.tasks, "stats": dict(self._stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_names(self, state.get("F"))
        self.F = None if state["F"] is None else {n: v.clone() for n, v in state["F"].items()}
        self.anchor = (None if state["anchor"] is None
                       else {n: v.clone() for n, v in state["anchor"].items()})
        self.tasks = int(state["tasks"])
        self._stats = dict(state.get("stats", {}))


def build(config: Any, env: BuildEnv) -> OnlineEWC:
    """Registry entry ``online_ewc``."""
    return OnlineEWC(OnlineEWCSpec.from_config(config), env)
