"""The backprop rule: follow the gradient of the objective, applied by a torch optimizer.

For a batch of B examples with per-example losses l_n (cross-entropy plus the strategies'
per-example terms, :class:`sparse_nte.seams.Objective`) and the strategies' parameter penalty R:

- additive optimizers (SGD, Adam, AdamW): ``L = (1/B) sum_n l_n + R``, one ``backward`` and one
  ``optimizer.step()``;
- optimizers that take per-example losses (NTE, :attr:`takes_example_losses`): the closure
  returns the l_n and the optimizer forms each example's own gradient; R is handed over as
  ``penalty`` (NTE treats its gradient as one more likelihood term).

Either way the gradient of the batch loss is left in ``p.grad`` when a strategy asks for it
(SI's path integral), and the per-example losses of the batch are returned for data selection.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional

import torch
import torch.nn as nn

from sparse_nte.rules.optimizers import build_optimizer, takes_example_losses
from sparse_nte.seams import Batch, BuildEnv, Objective, Rule

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config import Config

__all__ = ["BackpropRule", "build", "GUARD_SHARE_LIMIT"]

#: Share of NTE likelihood terms clamped by its guard above which a run counts as diverged: the
#: guard is a safety net for rare terms; when it binds this often the update is no longer the
#: posterior update.
GUARD_SHARE_LIMIT = 0.01


class BackpropRule(Rule):
    """Gradient of the objective through the whole network (or NTE's per-example posterior)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model = model
        self.optimizer = optimizer
        self.per_example = takes_example_losses(optimizer)
        self.keep_grad = False   # set by the learner when a strategy reads p.grad
        self._terms = 0          # likelihood terms (example x live expert) since the last check
        self._guard_seen = 0

    def step(self, batch: Batch, objective: Objective,
             before_update: Callable[[], None]) -> torch.Tensor:
        opt = self.optimizer
        if self.per_example:
            held: Dict[str, torch.Tensor] = {}

            def closure() -> torch.Tensor:
                held["losses"] = objective.example_losses(objective.forward(batch), batch)
                return held["losses"]

            before_update()
            penalty = objective.penalty if objective.has_penalty() else None
            if self.keep_grad:
                opt.keep_grad = True
            if penalty is not None:
                opt.step(closure, penalty=penalty)
            else:
                opt.step(closure)
            self._terms += len(batch) * self._experts()
            return held["losses"].detach()
        opt.zero_grad(set_to_none=True)
        losses = objective.example_losses(objective.forward(batch), batch)
        loss = losses.mean()
        penalty = objective.penalty()
        if penalty is not None:
            loss = loss + penalty
        loss.backward()
        before_update()
        opt.step()
        return losses.detach()

    def _experts(self) -> int:
        """Entries the NTE rule manages (masked ones included: an upper bound on live experts)."""
        if not hasattr(self, "_num_experts"):
            self._num_experts = sum(int(p.numel()) for p in self.optimizer.managed_params())
        return self._num_experts

    def unhealthy(self) -> Optional[str]:
        """NTE: the guard (likelihood clamped at its floor) fired on more than
        :data:`GUARD_SHARE_LIMIT` of the (example, expert) terms since the last check."""
        if not self.per_example:
            return None
        guard = int(self.optimizer.guard_count)
        fired, terms = guard - self._guard_seen, self._terms
        self._guard_seen, self._terms = guard, 0
        if terms and fired > GUARD_SHARE_LIMIT * terms:
            return (f"the NTE guard clamped {fired} of {terms} likelihood terms ({100 * fired / terms:.2g}%, "
                    f"limit {100 * GUARD_SHARE_LIMIT:g}%): beta * |gradient| >= 1 for many experts; "
                    f"lower nte_beta")
        return None

    def stats(self) -> Dict[str, Any]:
        """NTE: its guard count and ensemble totals (``nte_*``); nothing for SGD/Adam."""
        stats = getattr(self.optimizer, "stats", None)
        if not self.per_example or stats is None:
            return {}
        nte = stats()
        return {f"nte_{k}": nte[k] for k in ("guard_count", "live_experts", "dead_experts",
                                             "log_total")}

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


def build(config: "Config", env: BuildEnv) -> BackpropRule:
    """The rule of ``learning_rule = backprop`` with the optimizer of ``config.optimizer``."""
    return BackpropRule(env.model, build_optimizer(config, env.model))
