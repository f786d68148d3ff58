"""The learner: optimizer (SGD / Adam / NTE) + weight constraints + plasticity schedule, behind
the calls the runner makes (``on_task_start``, ``train_step``, ``stats``, ``history``).

- SGD and Adam minimise the batch-mean cross-entropy; NTE receives the per-example losses
  (``reduction="none"``) and forms its own per-example gradients (:mod:`sparse_nte.nte`).
- Constraints: :func:`sparse_nte.dale.constrain_optimizer` re-applies the masks and Dale signs
  right after every optimizer step, so weights read between steps already satisfy them (the
  layers also re-apply them lazily before use, see :mod:`sparse_nte.layers`).
- Plasticity: the schedule of ``config["plasticity"]`` (:mod:`sparse_nte.plasticity`), built
  before training so that ERK allocation and task-wise growth see the initial masks.
- The optimizer is built after the model with every head in it, so every head trains.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.config import Config, config_from_dict
from sparse_nte.dale import constrain_optimizer
from sparse_nte.nte import build_nte_optimizer
from sparse_nte.plasticity import build_schedule
from sparse_nte.rules.optimizers import takes_example_losses

__all__ = ["Learner", "build_optimizer", "build_learner"]


def build_optimizer(config: Mapping[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (lr, momentum, nesterov, weight_decay), ``torch.optim.Adam`` (lr,
    weight_decay) or the NTE optimizer (``nte_*`` keys), over every parameter of ``model``."""
    kind = config["optimizer"]
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=float(config["lr"]),
                               momentum=float(config["momentum"]), nesterov=bool(config["nesterov"]),
                               weight_decay=float(config["weight_decay"]))
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=float(config["lr"]),
                                weight_decay=float(config["weight_decay"]))
    if kind == "nte":
        return build_nte_optimizer(model, config)
    raise ValueError(f"config key 'optimizer' = {kind!r}; valid: sgd, adam, nte")


class Learner:
    """Trains ``model`` one batch at a time; owns the optimizer, the constraint hook and the
    plasticity schedule. ``step`` counts optimizer steps over the whole run."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Any) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = schedule
        self.step = 0
        self.multiplicative = takes_example_losses(optimizer)
        self._constraint_hook = constrain_optimizer(optimizer, model)

    def on_task_start(self, task: int) -> None:
        self.schedule.on_task_start(task)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> float:
        """One optimizer step on a batch; returns the batch-mean loss."""
        model, opt, sched = self.model, self.optimizer, self.schedule
        if self.multiplicative:
            sched.after_backward(self.step)
            losses = opt.step(lambda: F.cross_entropy(model(x, t), y, reduction="none"))
            loss = float(losses.mean())
        else:
            opt.zero_grad(set_to_none=True)
            out = F.cross_entropy(model(x, t), y)
            out.backward()
            sched.after_backward(self.step)
            opt.step()
            loss = float(out.detach())
        sched.after_step(self.step)
        self.step += 1
        return loss

    def stats(self) -> Dict[str, Any]:
        """Per-task scalars for the results: the optimizer's own stats (NTE: guard count, log
        total) and the number of steps so far."""
        out: Dict[str, Any] = {"steps": self.step}
        if self.multiplicative:
            nte = self.optimizer.stats()
            out.update({f"nte_{k}": nte[k] for k in ("guard_count", "live_experts", "dead_experts",
                                                     "log_total")})
        return out

    def history(self) -> List[dict]:
        return list(self.schedule.history)

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])


def build_learner(config: Mapping[str, Any], model: nn.Module, scenario: Any,
                  steps_per_task: Sequence[int]) -> Learner:
    if not isinstance(config, Config):   # the runner's plain dict of a resolved config
        config = config_from_dict(config)
    optimizer = build_optimizer(config, model)
    schedule = build_schedule(config, model, optimizer, list(steps_per_task), len(scenario.tasks))
    return Learner(model, optimizer, schedule)
