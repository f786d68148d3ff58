"""The learner's seams: the small protocols that new learning rules, continual-learning
strategies, data selection and diagnostics plug into.

One trial, with the events each seam sees (``ctx`` is the :class:`TaskContext` of the task)::

    runner                                  learner (sparse_nte.learner.Learner)
    ------                                  ------------------------------------
    for task i:
      learner.on_task_start(ctx)            every component .on_task_start(ctx)
      for epoch e:
        rows = learner.epoch_rows(ctx, e)   selection.rows(ctx, e): which training rows (None = all)
        for batch of those rows:
          learner.train_step(batch)
              batch  = strategy.prepare(batch)                   replay: append stored examples
              losses = rule.step(batch, objective, before_update)
                  logits = objective.forward(batch)
                  l_n    = objective.example_losses(logits, batch)   CE + strategies' terms
                  R      = objective.penalty()                       strategies' parameter terms
                  before_update()          the plasticity schedule's ``after_backward(step)``
              schedule.after_step(step)                          mask updates
              strategy.after_step(batch, losses)                 SI path integral, replay buffer
              selection.observe(batch, losses)                   scores from the training loss
              probe.after_step(step)                             measures within a task (rare)
      learner.on_task_end(ctx)              strategies consolidate (EWC Fisher, LwF snapshot),
                                            probes measure (kernel drift, ...)
      evaluate, record ``learner.stats()`` (one dict per component), checkpoint
          ``learner.state_dict()`` (one entry per component)

Every seam is a :class:`Component`: the four task events, per-task statistics and a state dict
for checkpoints, all no-ops by default, so an implementation writes only what it needs. Each
seam has a registry, a plain ``dict`` of choice name -> builder in its package
(:mod:`sparse_nte.rules`, :mod:`sparse_nte.strategies`, :mod:`sparse_nte.selection`,
:mod:`sparse_nte.probes`); the config schema takes its choices from those registries. Adding a
rule or strategy is one module plus one registry line; the runner does not change.

Builders share one signature: ``build(config, env) -> Component`` with the validated
:class:`~sparse_nte.config.Config` and the :class:`BuildEnv` of the trial. A builder reads the
config's attributes through its component's typed spec (``Spec.from_config(config)``), never by
string key.

This module defines the protocols only; it imports nothing from the implementations.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:  # pragma: no cover
    from benchmarks.scenarios import Scenario

__all__ = ["Batch", "TaskContext", "BuildEnv", "Component", "Rule", "Strategy", "Selection",
           "Probe", "Objective", "OTHER_ROW", "per_example_losses"]

#: ``Batch.index`` of a row that is not a row of the current task's training set (a replayed
#: example, say).
OTHER_ROW = -1


@dataclass(frozen=True)
class Batch:
    """One training mini-batch.

    ``x`` float32 (B, C, H, W), normalised; ``y`` int64 (B,) labels in the head's output space;
    ``t`` int64 (B,) task id of every row (selects the head in the task setting); ``index``
    int64 (B,): the row of every example in the current task's training set
    (``scenario.tasks[task].train_x``), :data:`OTHER_ROW` for rows from elsewhere.
    """

    x: torch.Tensor
    y: torch.Tensor
    t: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def with_rows(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> "Batch":
        """This batch followed by extra rows from elsewhere (their index is OTHER_ROW)."""
        extra = torch.full((int(y.shape[0]),), OTHER_ROW, dtype=torch.int64, device=self.index.device)
        return replace(self, x=torch.cat([self.x, x]), y=torch.cat([self.y, y]),
                       t=torch.cat([self.t, t]), index=torch.cat([self.index, extra]))

    @property
    def own(self) -> torch.Tensor:
        """Bool (B,): rows of the current task's training set."""
        return self.index != OTHER_ROW


@dataclass(frozen=True)
class TaskContext:
    """What a component may look at during a task event."""

    task: int                    # index of the task being trained
    num_tasks: int
    scenario: "Scenario"         # benchmarks.scenarios.Scenario: every task's train/test tensors
    model: nn.Module
    device: str
    seed: int
    steps: int                   # optimizer steps this task trains for (with full data)
    epochs: int
    batch_size: int
    train_order: str = "shuffle"  # "original": every epoch uses the original project's fixed rows
    step_limit: int = 0           # > 0 (train_iters): the task stops after this many steps,
                                  # in the middle of its last epoch
    augment: str = "none"         # training-batch augmentation (benchmarks.augment)

    def train_batches(self, *, batch_size: Optional[int] = None, rows: Optional[torch.Tensor] = None,
                      shuffle: bool = False, generator: Optional[torch.Generator] = None):
        """Batches ``(x, y, t)`` of this task's training set (``rows``: a subset, in order)."""
        return self.scenario.batches(self.task, "train", batch_size=batch_size or self.batch_size,
                                     shuffle=shuffle, generator=generator, device=self.device,
                                     rows=rows)


@dataclass(frozen=True)
class BuildEnv:
    """What a builder receives besides the config."""

    model: nn.Module
    scenario: "Scenario"
    steps_per_task: Sequence[int]
    device: str = "cpu"
    optimizer: Optional[torch.optim.Optimizer] = None   # the rule's, once it exists


class Component:
    """Base of every seam: task events, per-task statistics, checkpoint state. All no-ops."""

    def on_task_start(self, ctx: TaskContext) -> None:
        """Before the first step of task ``ctx.task``."""

    def on_task_end(self, ctx: TaskContext) -> None:
        """After the last step of task ``ctx.task``, before it is evaluated."""

    def stats(self) -> Dict[str, Any]:
        """Scalars (or small lists / arrays) describing the task just trained; stored in the
        results under ``stats["per_task"][task]``. Plain data only."""
        return {}

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume exactly after the last finished task."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Inverse of :meth:`state_dict`."""

    def close(self) -> None:
        """Remove hooks this component installed."""


class Strategy(Component):
    """A continual-learning method: extra loss terms, extra examples, consolidation at task end.

    Several strategies may be active at once (the learner sums their terms). A strategy must
    never revive a masked weight or flip a Dale sign: it acts through the loss or the batch; the
    rule and the layers enforce the constraints.
    """

    #: True if the strategy adds loss terms (they need a rule that follows the objective's
    #: gradient: backprop or NTE; local rules refuse such strategies).
    uses_loss = False
    #: True if ``after_step`` reads ``p.grad``: the rule then leaves on every trained parameter
    #: the gradient of the batch loss it stepped on (NTE: of the batch-mean loss).
    needs_grad = False

    def prepare(self, batch: Batch) -> Batch:
        """The batch to train on (replay appends stored rows with ``Batch.with_rows``)."""
        return batch

    def example_loss(self, batch: Batch, logits: torch.Tensor) -> Optional[torch.Tensor]:
        """A per-example term (B,) added to every example's loss (LwF distillation), or None."""
        return None

    def penalty(self) -> Optional[torch.Tensor]:
        """A 0-dim term of the parameters added to the batch loss (EWC, SI), or None."""
        return None

    def after_step(self, batch: Batch, losses: torch.Tensor) -> None:
        """After the optimizer step, with the batch trained on and its per-example losses."""


class Selection(Component):
    """Which training examples of the current task each epoch uses (data pruning)."""

    def planned_rows(self, n: int, epochs: int) -> List[int]:
        """Examples each epoch of a task with ``n`` training examples will train on (the runner
        counts the task's optimizer steps from them, before the task starts)."""
        return [n] * epochs

    def warning(self, epochs_per_task: Sequence[int]) -> str:
        """A one-line warning when the configured selection can never act ("" if fine)."""
        return ""

    def rows(self, ctx: TaskContext, epoch: int) -> Optional[torch.Tensor]:
        """int64 rows of the task's training set for epoch ``epoch`` (None = every row). The
        runner shuffles them with the trial's (seed, task, epoch) generator."""
        return None

    def observe(self, batch: Batch, losses: torch.Tensor) -> None:
        """Per-example training losses of the rows just trained on (``batch.own`` rows)."""

    def loss_weights(self, batch: Batch) -> Optional[torch.Tensor]:
        """Float (B,) weights of the examples' losses (unbiased rescaling of a pruned epoch;
        rows from elsewhere get 1), or None for equal weights."""
        return None


class Probe(Component):
    """A per-task diagnostic: measures the model (usually in ``on_task_end``) and reports it in
    :meth:`stats` under its registry name. A probe only observes: it must leave the model's
    parameters, buffers and mode, and the global random state, as it found them, so that a
    trial's accuracies are the same with or without it."""

    def after_step(self, step: int) -> None:
        """After every optimizer step (``step``: steps taken so far in the whole run), for the
        probes that measure within a task; a no-op by default."""


class Objective:
    """The training objective of one step, assembled by the learner from the strategies:

        L = (1/B) sum_n [ CE(f(x_n), y_n) + sum_s e_s(x_n) ] + sum_s R_s(theta)

    ``example_losses`` gives the bracket per example (what NTE's per-example likelihoods and
    the data selection scores use); ``penalty`` gives sum_s R_s (None if no strategy has one).
    With a ``selection`` that weights examples, the cross-entropy of example n is multiplied by
    its weight w_n (:meth:`Selection.loss_weights`).
    """

    def __init__(self, model: nn.Module, strategies: Sequence[Strategy] = (),
                 selection: Optional[Selection] = None) -> None:
        self.model = model
        self.strategies: List[Strategy] = list(strategies)
        self.selection = selection

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.model(batch.x, batch.t)

    def example_losses(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        losses = F.cross_entropy(logits, batch.y, reduction="none")
        if self.selection is not None:
            w = self.selection.loss_weights(batch)
            if w is not None:
                losses = losses * w
        for s in self.strategies:
            extra = s.example_loss(batch, logits)
            if extra is not None:
                losses = losses + extra
        return losses

    def has_penalty(self) -> bool:
        """Some strategy may add a parameter penalty."""
        return any(s.uses_loss for s in self.strategies)

    def penalty(self) -> Optional[torch.Tensor]:
        total: Optional[torch.Tensor] = None
        for s in self.strategies:
            term = s.penalty()
            if term is not None:
                total = term if total is None else total + term
        return total


def per_example_losses(objective: Objective, batch: Batch) -> torch.Tensor:
    """Forward pass and per-example losses of ``batch`` (a convenience for rules)."""
    return objective.example_losses(objective.forward(batch), batch)


class Rule(Component, abc.ABC):
    """How weights change: a torch optimizer following the objective's gradient (backprop),
    the NTE posterior update, or a local rule that computes its own updates without
    back-propagating errors across layers.

    ``optimizer`` is the torch optimizer that applies the updates (the constraint hook and the
    plasticity schedules attach to it; it is checkpointed by the rule's state dict).
    """

    optimizer: Optional[torch.optim.Optimizer] = None

    @abc.abstractmethod
    def step(self, batch: Batch, objective: Objective,
             before_update: Callable[[], None]) -> torch.Tensor:
        """Train on ``batch``; call ``before_update()`` after the gradients exist and before the
        weights change. Returns the detached per-example losses (B,) of the batch as trained."""

    def unhealthy(self) -> Optional[str]:
        """Why training can no longer be trusted since the last call (e.g. a numerical guard
        clamped a large share of terms), or None. The runner checks it after every epoch and
        ends the trial as ``diverged`` when it is not None."""
        return None


class Builder(Protocol):
    """A registry entry: ``build(config, env) -> Component``."""

    def __call__(self, config: Any, env: BuildEnv) -> Component: ...
