"""Synaptic intelligence (Zenke, Poole & Ganguli, "Continual learning through synaptic
intelligence", ICML 2017).

Every parameter accumulates, at EVERY optimizer step s of task k, its contribution to the
decrease of the loss along the path the parameters actually took::

    omega_i += -g_i(s) * Delta theta_i(s)        Delta theta(s) = theta after step s - theta before

and at the end of the task::

    Omega_i += omega_i / ((theta_i(end of k) - theta_i(start of k))^2 + xi),   omega <- 0
    theta*  = theta(end of k)

The loss of the later tasks gets ``R(theta) = c sum_i Omega_i (theta_i - theta*_i)^2``.

g is the gradient of the loss WITHOUT SI's own penalty, as in the authors' code
(``unreg_grads`` in ganguli-lab/pathint): the rule leaves on ``p.grad`` the gradient of the
objective it stepped on (batch loss + penalty, ``needs_grad``), and SI removes its own term,
g = p.grad - 2 c Omega (theta_before - theta*). Delta theta is the change of the stored
parameters, read after the step, so it includes the projection onto masks and Dale signs.
Masked weights get Omega = 0. Omega may be negative where a parameter moved against its
gradient (momentum, constraints); it is kept as the paper defines it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch

from sparse_nte.seams import Batch, BuildEnv, Strategy, TaskContext
from sparse_nte.strategies.common import (check_importance, importance_stats, tensor_bytes,
                                          trained_parameters, zero_masked)
from sparse_nte.strategies.ewc import _check_names
from sparse_nte.strategies.keys import KEY_DEFAULTS, check_key, read_keys

__all__ = ["SISpec", "SI", "build"]


@dataclass(frozen=True)
class SISpec:
    """SI settings (config keys ``si_c``, ``si_xi``)."""

    c: float = KEY_DEFAULTS["si_c"]
    xi: float = KEY_DEFAULTS["si_xi"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "c", check_key("si_c", self.c, "SI"))
        object.__setattr__(self, "xi", check_key("si_xi", self.xi, "SI"))

    @classmethod
    def from_config(cls, config: Any) -> "SISpec":
        v = read_keys(config, ("si_c", "si_xi"))
        return cls(v["si_c"], v["si_xi"])


class SI(Strategy):
    """Synaptic intelligence (module doc)."""

    uses_loss = True
    needs_grad = True
    name = "si"

    def __init__(self, spec: SISpec, env: BuildEnv) -> None:
        self.spec = spec
        self.model = env.model
        self.params = trained_parameters(env.model)
        self.Omega: Optional[Dict[str, torch.Tensor]] = None
        self.anchor: Optional[Dict[str, torch.Tensor]] = None
        self.tasks = 0
        self._omega: Optional[Dict[str, torch.Tensor]] = None   # path integral of the task
        self._prev: Optional[Dict[str, torch.Tensor]] = None    # parameters before the step
        self._start: Optional[Dict[str, torch.Tensor]] = None   # parameters at task start
        self._steps = 0
        self._stats: Dict[str, Any] = {}

    def on_task_start(self, ctx: TaskContext) -> None:
        self._omega = {n: torch.zeros_like(p) for n, p in self.params}
        self._prev = {n: p.detach().clone() for n, p in self.params}
        self._start = {n: p.detach().clone() for n, p in self.params}
        self._steps = 0

    def after_step(self, batch: Batch, losses: torch.Tensor) -> None:
        if self._omega is None:
            raise RuntimeError("SI.after_step before on_task_start: the learner must start the "
                               "task first")
        c = self.spec.c
        with torch.no_grad():
            for n, p in self.params:
                prev = self._prev[n]
                delta = p.detach() - prev
                g = p.grad
                if g is None:
                    if bool(delta.any()):
                        raise RuntimeError(
                            f"SI: parameter '{n}' changed in a step but has no gradient (p.grad is "
                            f"None); SI needs the rule to leave the gradient of the loss it stepped "
                            f"on in p.grad (Strategy.needs_grad)")
                    continue
                if self.Omega is not None and c > 0:
                    g = g - (2.0 * c) * self.Omega[n] * (prev - self.anchor[n])
                self._omega[n].addcmul_(g, delta, value=-1.0)
                prev.copy_(p.detach())
        self._steps += 1

    def on_task_end(self, ctx: TaskContext) -> None:
        if self._omega is None:
            raise RuntimeError("SI.on_task_end before on_task_start")
        new = {}
        with torch.no_grad():
            for n, p in self.params:
                change = p.detach() - self._start[n]
                new[n] = self._omega[n] / (change.square() + self.spec.xi)
        zero_masked(self.model, new)
        all_zero = check_importance("SI's importance Omega", new, ctx.task)
        path = sum(float(v.double().sum()) for v in self._omega.values())
        negative = sum(int((v < 0).sum()) for v in new.values()) / max(1, sum(v.numel() for v in new.values()))
        if self.Omega is None:
            self.Omega = new
        else:
            for n in new:
                self.Omega[n].add_(new[n])
        self.anchor = {n: p.detach().clone() for n, p in self.params}
        self.tasks += 1
        memory = self.memory_bytes()
        self._stats = {"importance_all_zero": all_zero, "steps": self._steps,
                       "path_integral_sum": path, "omega_negative_fraction": negative,
                       **importance_stats("omega", new), **importance_stats("Omega", self.Omega),
                       "memory_bytes": memory, "consolidated_tasks": self.tasks}
        self._omega = self._prev = self._start = None

    def penalty(self) -> Optional[torch.Tensor]:
        if self.Omega is None:
            return None
        total = None
        for n, p in self.params:
            term = (self.Omega[n] * (p - self.anchor[n]).square()).sum()
            total = term if total is None else total + term
        return self.spec.c * total

    def memory_bytes(self) -> int:
        """Bytes of Omega, theta* and the per-task buffers (omega, parameters before the step and
        at the start of the task) while a task trains."""
        held = []
        for d in (self.Omega, self.anchor, self._omega, self._prev, self._start):
            if d is not None:
                held.extend(d.values())
        return tensor_bytes(held)

    def stats(self) -> Dict[str, Any]:
        return dict(self._stats)

    def state_dict(self) -> Dict[str, Any]:
        return {"Omega": None if self.Omega is None else {n: v.clone() for n, v in self.Omega.items()},
                "anchor": None if self.anchor is None else {n: v.clone() for n, v in self.anchor.items()},
                "tasks": self.tasks, "stats": dict(self._stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_names(self, state.get("Omega"))
        self.Omega = None if state["Omega"] is None else {n: v.clone() for n, v in state["Omega"].items()}
        self.anchor = (None if state["anchor"] is None
                       else {n: v.clone() for n, v in state["anchor"].items()})
        self.tasks = int(state["tasks"])
        self._stats = dict(state.get("stats", {}))
        self._omega = self._prev = self._start = None


def build(config: Any, env: BuildEnv) -> SI:
    """Registry entry ``si``."""
    return SI(SISpec.from_config(config), env)
