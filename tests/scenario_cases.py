"""A stand-in for benchmarks.Scenario with only the attributes models use (no data), shared by
the model, local-rule and NTK tests; each test module sets its own sizes by subclassing."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FakeScenario:
    """Stand-in with the attributes of benchmarks.Scenario that models use."""
    setting: str = "task"
    num_tasks: int = 3
    input_shape: tuple = (1, 12, 12)
    head_size: int = 2
    name: str = "fake"

    @property
    def tasks(self):
        return tuple(range(self.num_tasks))

    @property
    def num_heads(self):
        return self.num_tasks if self.setting == "task" else 1

    def head_of(self, task_index):
        return task_index if self.setting == "task" else 0
