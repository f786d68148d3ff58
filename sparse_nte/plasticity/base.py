"""The schedule base class: layers under plasticity, tasks and steps, the event history,
checkpoints; and :class:`StaticConnectivity` (``plasticity = none``)."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from sparse_nte.layers import SparseWeightsBase
from sparse_nte.plasticity.erk import apply_erk
from sparse_nte.plasticity.masks import nonzero_density

__all__ = ["PlasticitySchedule", "StaticConnectivity", "plastic_layers", "check_interval",
           "check_fraction", "LayerList", "StepsPerTask"]

LayerList = Sequence[Tuple[str, SparseWeightsBase]]
StepsPerTask = Union[int, Sequence[int]]


def plastic_layers(model: nn.Module) -> List[Tuple[str, SparseWeightsBase]]:
    """The ``(name, layer)`` pairs whose masks schedules change: every
    :class:`~sparse_nte.layers.SparseWeightsBase` of ``model`` in module order, except those
    inside ``model.heads`` (the output heads of :mod:`models` are dense read-outs; they are
    SparseWeights only to carry Dale's signs). Hidden layers built as plain ``nn.Linear`` /
    ``nn.Conv2d`` (dense, no Dale's law) are not plastic."""
    heads = getattr(model, "heads", None)
    skip = {id(m) for m in heads.modules()} if isinstance(heads, nn.Module) else set()
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, SparseWeightsBase) and id(m) not in skip]


class PlasticitySchedule:
    """Base class: bookkeeping of tasks and steps, the event history and checkpointing.

    Args:
        layers: ``(name, layer)`` pairs to act on (see :func:`plastic_layers`).
        optimizer: the optimizer training the layers (its state is reset where connections
            change), or None.
        steps_per_task: optimizer steps in each task (one int for all, or one per task).
        num_tasks: number of tasks.
        init_scale: magnitude of new weights under multiplicative optimizers.
        erk: re-allocate the layers' densities by :func:`apply_erk` when task 0 starts (before
            any step), keeping the total number of connections. (Not at construction, so that a
            schedule built for a run resumed from a checkpoint leaves the restored masks alone.)
        seed: seed of the schedule's own random generator (random growth, tie breaks).
    """

    kind = ""
    needs_layers = True

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 steps_per_task: StepsPerTask, num_tasks: int, init_scale: float = 1e-3,
                 erk: bool = False, seed: int = 0) -> None:
        self.layers: List[Tuple[str, SparseWeightsBase]] = list(layers)
        if not self.layers and (self.needs_layers or erk):
            raise ValueError(f"{type(self).__name__}: the model has no SparseWeights layers to "
                             f"prune or grow (plasticity needs sparse_nte.layers.SparseWeights)")
        names = [n for n, _ in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: layer names must be unique, got {names}")
        for name, layer in self.layers:
            if not isinstance(layer, SparseWeightsBase):
                raise ValueError(f"{type(self).__name__}: layer {name!r} is a "
                                 f"{type(layer).__name__}, not a SparseWeightsBase")
        if not (isinstance(num_tasks, int) and num_tasks >= 1):
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
        steps = ([steps_per_task] * num_tasks if isinstance(steps_per_task, int)
                 else list(steps_per_task))
        if len(steps) != num_tasks or not all(isinstance(s, int) and s >= 1 for s in steps):
            raise ValueError(f"steps_per_task must be an int >= 1 or {num_tasks} such ints, "
                             f"got {steps_per_task!r}")
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ValueError(f"init_scale (grow_init_scale) must be > 0, got {init_scale!r}")
        if optimizer is not None:
            trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
            missing = [n for n, layer in self.layers if id(layer.weight_param) not in trained]
            if missing:
                raise ValueError(f"{type(self).__name__}: the weights of layers {missing} are not "
                                 f"trained by the given {type(optimizer).__name__}")
            for _, layer in self.layers:   # compact layers carry its state through mask changes
                attach = getattr(layer, "attach_optimizer", None)
                if attach is not None:
                    attach(optimizer)
        self.optimizer = optimizer
        self.steps_per_task: Tuple[int, ...] = tuple(steps)
        self.num_tasks = num_tasks
        self.init_scale = float(init_scale)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.history: List[Dict[str, Any]] = []
        self.task = -1
        self._task_origin: Optional[int] = None   # global step of the task's first step
        self._next_step = 0                        # global step expected next
        self.erk = bool(erk)

    # -- driving calls ------------------------------------------------------------------------
    def on_task_start(self, task_index: int) -> None:
        """Call before the first step of every task (tasks in order, starting at 0)."""
        if not (isinstance(task_index, int) and self.task < task_index < self.num_tasks):
            raise ValueError(f"{type(self).__name__}.on_task_start({task_index!r}): tasks must "
                             f"start in increasing order within 0..{self.num_tasks - 1} "
                             f"(current task {self.task})")
        self.task = task_index
        self._task_origin = None
        if task_index == 0 and self.erk:
            layers = dict(self.layers)
            for event in apply_erk(self.layers, self.optimizer, self.generator):
                self.history.append({"schedule": "erk", "task": 0, "step": self._next_step,
                                     **event,
                                     "nonzero_density": nonzero_density(layers[event["layer"]])})
        self._task_start()

    def after_backward(self, step: int) -> None:
        """Call after ``loss.backward()`` and before ``optimizer.step()`` of global step ``step``
        (with NTE: right before ``optimizer.step(closure)``). Checks the step count; schedules
        that act between the gradient and the step do so here."""
        self._observe(step)
        self._before_optimizer_step(step)

    def after_step(self, step: int) -> None:
        """Call after ``optimizer.step()`` of global step ``step``; mask updates happen here."""
        self._observe(step)
        self._after_optimizer_step(step)
        self._next_step = step + 1

    def task_step(self, step: int) -> int:
        """Index of global step ``step`` within the current task (0 for its first step)."""
        return step - (self._task_origin if self._task_origin is not None else step)

    def close(self) -> None:
        """Remove any hooks the schedule installed."""

    # -- subclass hooks -----------------------------------------------------------------------
    def _task_start(self) -> None:
        pass

    def _before_optimizer_step(self, step: int) -> None:
        pass

    def _after_optimizer_step(self, step: int) -> None:
        pass

    # -- helpers ------------------------------------------------------------------------------
    def _observe(self, step: int) -> None:
        if self.task < 0:
            raise ValueError(f"{type(self).__name__}: call on_task_start(0) before the first step")
        if not isinstance(step, int) or step < self._next_step - 1:
            raise ValueError(f"{type(self).__name__}: step must be the global optimizer step count "
                             f"(int, non-decreasing), got {step!r} after {self._next_step - 1}")
        if self._task_origin is None:
            self._task_origin = step

    def _record(self, step: int, name: str, pruned: int, grown: int, density: float) -> None:
        layer = dict(self.layers)[name]
        self.history.append({"schedule": self.kind, "task": int(self.task), "step": int(step),
                             "layer": name, "pruned": int(pruned), "grown": int(grown),
                             "density": float(density),
                             "nonzero_density": nonzero_density(layer)})

    def _interval_event(self, step: int, interval: int, end_fraction: float) -> bool:
        done = self.task_step(step) + 1
        return done % interval == 0 and done < end_fraction * self.steps_per_task[self.task]

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume: position in the run, history, random generator."""
        return {"kind": self.kind, "task": self.task, "task_origin": self._task_origin,
                "next_step": self._next_step, "history": [dict(h) for h in self.history],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"{type(self).__name__}: state of a {state.get('kind')!r} schedule "
                             f"cannot be loaded into a {self.kind!r} schedule")
        self.task = int(state["task"])
        self._task_origin = state["task_origin"]
        self._next_step = int(state["next_step"])
        self.history = [dict(h) for h in state["history"]]
        self.generator.set_state(state["generator"])


def check_interval(interval: Any, end_fraction: Any, where: str) -> None:
    if not (isinstance(interval, int) and interval >= 1):
        raise ValueError(f"{where}: plasticity_interval must be an int >= 1, got {interval!r}")
    if not (isinstance(end_fraction, (int, float)) and 0.0 < end_fraction <= 1.0):
        raise ValueError(f"{where}: plasticity_end must be in (0, 1], got {end_fraction!r}")


def check_fraction(name: str, value: Any, where: str) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{where}: {name} must be in [0, 1], got {value!r}")


class StaticConnectivity(PlasticitySchedule):
    """``plasticity = none``: the masks never change after construction (where ``erk`` may
    re-allocate the layer densities once). The driving calls are accepted and do nothing, so a
    training loop treats every configuration alike."""

    kind = "none"
    needs_layers = False
