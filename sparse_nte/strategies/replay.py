"""Experience replay with a fixed-size buffer (e.g. Rolnick et al., "Experience replay for
continual learning", NeurIPS 2019; Chaudhry et al., "On tiny episodic memories in continual
learning", 2019).

Every training example of the current task that the model trains on is offered to a buffer of
``replay_buffer`` examples (:mod:`sparse_nte.strategies.buffers`: reservoir sampling over every
example seen, or class-balanced selection). Each training batch B is extended with
``replay_batch`` examples drawn uniformly without replacement from the buffer (fewer while it
holds fewer), with their own labels and task ids (so in the task setting they go through their
own task's head)::

    L = (1 / (|B| + |R|)) sum_{n in B u R} loss_n        (the batch mean over both)

The replayed rows are drawn before the batch's own rows are offered to the buffer, so a batch
never replays itself. Random draws come from a generator seeded per task from
``SeedSequence(seed, spawn_key=(TAG, task))``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch

from sparse_nte.seams import Batch, BuildEnv, Strategy, TaskContext
from sparse_nte.strategies.buffers import ExampleBuffer, make_buffer
from sparse_nte.strategies.common import task_generator
from sparse_nte.strategies.keys import KEY_DEFAULTS, check_key, read_keys

__all__ = ["ReplaySpec", "Replay", "build", "TAG"]

#: Spawn-key tag of the replay generators.
TAG = 103


@dataclass(frozen=True)
class ReplaySpec:
    """Replay settings (config keys ``replay_buffer``, ``replay_batch``, ``replay_selection``)."""

    buffer: int = KEY_DEFAULTS["replay_buffer"]
    batch: int = KEY_DEFAULTS["replay_batch"]
    selection: str = KEY_DEFAULTS["replay_selection"]

    def __post_init__(self) -> None:
        check_key("replay_buffer", self.buffer, "replay")
        check_key("replay_batch", self.batch, "replay")
        check_key("replay_selection", self.selection, "replay")

    @classmethod
    def from_config(cls, config: Any) -> "ReplaySpec":
        v = read_keys(config, ("replay_buffer", "replay_batch", "replay_selection"))
        return cls(v["replay_buffer"], v["replay_batch"], v["replay_selection"])


class Replay(Strategy):
    """Experience replay (module doc)."""

    name = "replay"

    def __init__(self, spec: ReplaySpec, env: BuildEnv) -> None:
        self.spec = spec
        self.num_tasks = env.scenario.num_tasks
        self.buffer: ExampleBuffer = make_buffer(spec.selection, spec.buffer)
        self.generator: Optional[torch.Generator] = None
        self._replayed = 0
        self._stats: Dict[str, Any] = {}

    def on_task_start(self, ctx: TaskContext) -> None:
        self.generator = task_generator(ctx.seed, ctx.task, TAG)
        self._replayed = 0

    def _need_start(self) -> torch.Generator:
        if self.generator is None:
            raise RuntimeError("replay used before on_task_start: the learner must start the task")
        return self.generator

    def prepare(self, batch: Batch) -> Batch:
        gen = self._need_start()
        if self.buffer.size == 0:
            return batch
        x, y, t = self.buffer.sample(self.spec.batch, gen)
        self._replayed += int(y.shape[0])
        return batch.with_rows(x.to(batch.x.device), y.to(batch.y.device), t.to(batch.t.device))

    def after_step(self, batch: Batch, losses: torch.Tensor) -> None:
        gen = self._need_start()
        own = batch.own
        if bool(own.all()):
            self.buffer.add(batch.x, batch.y, batch.t, gen)
        else:
            rows = torch.nonzero(own).flatten()
            self.buffer.add(batch.x[rows], batch.y[rows], batch.t[rows], gen)

    def on_task_end(self, ctx: TaskContext) -> None:
        self._stats = {"buffer_size": self.buffer.size, "examples_seen": self.buffer.seen,
                       "replayed_rows": self._replayed,
                       "buffer_per_task": self.buffer.task_counts(self.num_tasks),
                       "memory_bytes": self.buffer.memory_bytes()}
        sizes = getattr(self.buffer, "class_sizes", None)
        if sizes is not None:
            per_class = list(sizes().values())
            self._stats.update(classes=len(per_class), class_min=min(per_class, default=0),
                               class_max=max(per_class, default=0))

    def stats(self) -> Dict[str, Any]:
        return dict(self._stats)

    def state_dict(self) -> Dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "stats": dict(self._stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self._stats = dict(state.get("stats", {}))


def build(config: Any, env: BuildEnv) -> Replay:
    """Registry entry ``replay``."""
    return Replay(ReplaySpec.from_config(config), env)
