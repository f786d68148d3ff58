"""The learner: one learning rule, the weight constraints, one connectivity schedule, any
continual-learning strategies, one data selection and any probes, composed behind the events of
:mod:`sparse_nte.seams` (the runner calls ``on_task_start``, ``epoch_rows``, ``train_step``,
``on_task_end``, ``stats``, ``state_dict``).

- Rule (:mod:`sparse_nte.rules`, config ``learning_rule`` and ``optimizer``): computes and applies
  the updates of each batch; its optimizer is built after the model with every head in it, so
  every head trains.
- Constraints: :func:`sparse_nte.dale.constrain_optimizer` re-applies the masks and Dale signs
  right after every step of the rule's optimizer, so weights read between steps already satisfy
  them (the layers also re-apply them lazily before use, see :mod:`sparse_nte.layers`).
- Schedule (:mod:`sparse_nte.plasticity`, config ``plasticity``): built after the rule, before
  training, so that ERK allocation and task-wise growth see the initial masks.
- Strategies (:mod:`sparse_nte.strategies`, config ``strategy``), selection
  (:mod:`sparse_nte.selection`, config ``data_pruning``) and probes (:mod:`sparse_nte.probes`)
  come from their registries; none of them is known to the runner.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from sparse_nte.config.groups.strategy import names as strategy_names
from sparse_nte.dale import constrain_optimizer
from sparse_nte.plasticity import build_schedule
from sparse_nte.probes import PROBES
from sparse_nte.rules import RULES
from sparse_nte.seams import Batch, BuildEnv, Objective, Probe, Rule, Selection, Strategy, TaskContext
from sparse_nte.selection import SELECTORS
from sparse_nte.strategies import STRATEGIES

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config import Config

__all__ = ["Learner", "build_learner", "epochs_per_task"]


class Learner:
    """Trains ``model`` one batch at a time. ``step`` counts optimizer steps over the whole run."""

    def __init__(self, model: nn.Module, rule: Rule, schedule: Any,
                 strategies: Mapping[str, Strategy] = {}, selection: Optional[Selection] = None,
                 probes: Mapping[str, Probe] = {}) -> None:
        self.model = model
        self.rule = rule
        self.schedule = schedule
        self.strategies: Dict[str, Strategy] = dict(strategies)
        self.selection = selection
        self.probes: Dict[str, Probe] = dict(probes)
        self.objective = Objective(model, list(self.strategies.values()), selection)
        self.step = 0
        self.steps_per_task: List[int] = []
        self.epochs_per_task: List[int] = []
        self.warnings: List[str] = []
        if any(s.needs_grad for s in self.strategies.values()):
            rule.keep_grad = True  # type: ignore[attr-defined]
        self._constraint_hook = (constrain_optimizer(rule.optimizer, model)
                                 if rule.optimizer is not None else None)

    @property
    def optimizer(self) -> Optional[torch.optim.Optimizer]:
        return self.rule.optimizer

    def _components(self) -> List[Any]:
        sel = [self.selection] if self.selection is not None else []
        return [self.rule, *self.strategies.values(), *sel, *self.probes.values()]

    # -- events ----------------------------------------------------------------------------------
    def on_task_start(self, ctx: TaskContext) -> None:
        self.schedule.on_task_start(ctx.task)
        for c in self._components():
            c.on_task_start(ctx)

    def epoch_rows(self, ctx: TaskContext, epoch: int) -> Optional[torch.Tensor]:
        """Rows of the task's training set for ``epoch`` (None = every row)."""
        return self.selection.rows(ctx, epoch) if self.selection is not None else None

    def train_step(self, batch: Batch) -> float:
        """One step of the rule on ``batch``; returns the batch-mean loss of the rows trained."""
        for s in self.strategies.values():
            batch = s.prepare(batch)
        step = self.step
        losses = self.rule.step(batch, self.objective, lambda: self.schedule.after_backward(step))
        self.schedule.after_step(step)
        for s in self.strategies.values():
            s.after_step(batch, losses)
        if self.selection is not None:
            self.selection.observe(batch, losses)
        self.step += 1
        for p in self.probes.values():
            p.after_step(self.step)
        return float(losses.mean())

    def on_task_end(self, ctx: TaskContext) -> None:
        for c in self._components():
            c.on_task_end(ctx)

    # -- results and checkpoints --------------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        """Per-task statistics: steps so far, the rule's own (NTE: ``nte_*``), and one entry per
        strategy (under ``strategy``), the selection (``selection``) and each probe (its name)."""
        out: Dict[str, Any] = {"steps": self.step, **self.rule.stats()}
        if self.strategies:
            out["strategy"] = {n: s.stats() for n, s in self.strategies.items()}
        if self.selection is not None:
            out["selection"] = self.selection.stats()
        for name, p in self.probes.items():
            out[name] = p.stats()
        return out

    def history(self) -> List[dict]:
        return list(self.schedule.history)

    def state_dict(self) -> Dict[str, Any]:
        return {"rule": self.rule.state_dict(), "schedule": self.schedule.state_dict(),
                "step": self.step,
                "strategies": {n: s.state_dict() for n, s in self.strategies.items()},
                "selection": None if self.selection is None else self.selection.state_dict(),
                "probes": {n: p.state_dict() for n, p in self.probes.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rule.load_state_dict(state["rule"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        for n, s in self.strategies.items():
            s.load_state_dict(state["strategies"][n])
        if self.selection is not None:
            self.selection.load_state_dict(state["selection"])
        for n, p in self.probes.items():
            p.load_state_dict(state["probes"][n])

    def close(self) -> None:
        for c in self._components():
            c.close()
        self.schedule.close()
        if self._constraint_hook is not None:
            self._constraint_hook.remove()
            self._constraint_hook = None


def epochs_per_task(config: "Config", num_tasks: int,
                    train_rows: Optional[Sequence[int]] = None) -> List[int]:
    """``train_ep`` for the first task, ``train_ep_inc`` for the others; with ``train_iters``
    = S > 0, the epochs (the last one partial) that S steps take on each task's ``train_rows``
    rows: ``ceil(S / ceil(rows / mb_size))``."""
    if config.train_iters > 0:
        if train_rows is None or len(train_rows) != num_tasks:
            raise ValueError(f"train_iters = {config.train_iters}: the epochs of each task depend on "
                             f"its number of training rows; pass train_rows (one count per task, "
                             f"{num_tasks} tasks)")
        return [math.ceil(config.train_iters / max(1, math.ceil(n / config.mb_size)))
                for n in train_rows]
    return [config.train_ep if i == 0 else config.train_ep_inc for i in range(num_tasks)]


def _schedule_warning(config: "Config", steps: Sequence[int]) -> str:
    """SET, RigL and NTE pruning act every ``plasticity_interval`` steps during the first
    ``plasticity_end`` of each task: say so when no task is long enough for a single event."""
    if config.plasticity not in ("set", "rigl", "nte_prune"):
        return ""
    window = max(int(config.plasticity_end * s) for s in steps)
    if window >= config.plasticity_interval:
        return ""
    return (f"warning: plasticity = {config.plasticity} will never act: plasticity_interval = "
            f"{config.plasticity_interval} steps, but updates stop after {window} steps of the longest "
            f"task (plasticity_end = {config.plasticity_end} x {max(steps)} steps); lower "
            f"plasticity_interval")


def build_learner(config: "Config", model: nn.Module, scenario: Any, device: str = "cpu") -> Learner:
    """The learner of ``config`` for ``model`` on ``scenario``: every component from its registry.

    The optimizer steps of each task (``learner.steps_per_task``) are ``train_iters`` when it is
    set, else counted from the rows the selection will keep; ``learner.warnings`` lists settings
    that can never act."""
    train_rows = [len(task.train_y) for task in scenario.tasks]
    epochs = epochs_per_task(config, len(scenario.tasks), train_rows)
    env = BuildEnv(model=model, scenario=scenario, steps_per_task=(), device=device)
    selection = (SELECTORS[config.data_pruning](config, env) if config.data_pruning != "none"
                 else None)
    steps = []
    for n, e in zip(train_rows, epochs):
        if config.train_iters > 0:   # the config refuses data pruning with train_iters
            steps.append(config.train_iters)
            continue
        rows = selection.planned_rows(n, e) if selection is not None else [n] * e
        steps.append(sum(math.ceil(r / config.mb_size) for r in rows))
    env = replace(env, steps_per_task=tuple(steps))
    rule = RULES[config.learning_rule](config, env)
    env = replace(env, optimizer=rule.optimizer)
    schedule = build_schedule(config, model, rule.optimizer, steps, len(scenario.tasks))
    strategies = {n: STRATEGIES[n](config, env) for n in strategy_names(config.strategy)}
    probes = {n: build(config, env) for n, (enabled, build) in PROBES.items() if enabled(config)}
    learner = Learner(model, rule, schedule, strategies, selection, probes)
    learner.steps_per_task = steps
    learner.epochs_per_task = epochs
    learner.warnings = [w for w in (_schedule_warning(config, steps),
                                    selection.warning(epochs) if selection is not None else "") if w]
    return learner
