"""The types of a continual-learning scenario: :class:`Task` (one task's classes and tensors) and
:class:`Scenario` (the ordered tasks, the heads and how batches are drawn). How scenarios are
built, and the meaning of the labels in each setting, is in :mod:`benchmarks.scenarios`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional, Union

import numpy as np
import torch

from benchmarks.batching import check_scaling, iterate_batches

__all__ = ["Task", "Scenario", "SETTINGS"]

#: The three settings of van de Ven & Tolias (2019): how the heads map onto the tasks.
SETTINGS = ("task", "domain", "class")


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')}{tuple(t.shape)}"


@dataclass(frozen=True, eq=False)
class Task:
    """One task: its classes and its train/test tensors (see the module doc for the labels).

    ``train_x`` uint8 (N, C, H, W) (cumulative scenarios: union of tasks 0..index),
    ``train_y`` int64 (N,) already mapped to the head's output space, ``train_t`` int64 (N,)
    task id of every training example, ``test_x``/``test_y`` this task's test examples only.
    """
    index: int
    classes: tuple[int, ...]
    train_x: torch.Tensor
    train_y: torch.Tensor
    train_t: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def __post_init__(self) -> None:
        where = f"task {self.index}"
        for name, dtype, dim in (("train_x", torch.uint8, 4), ("test_x", torch.uint8, 4),
                                 ("train_y", torch.int64, 1), ("train_t", torch.int64, 1),
                                 ("test_y", torch.int64, 1)):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or value.dtype != dtype or value.dim() != dim:
                found = (_describe(value) if isinstance(value, torch.Tensor)
                         else type(value).__name__)
                raise ValueError(f"{where}: {name} must be a {str(dtype)[6:]} tensor with {dim} "
                                 f"dimension(s), got {found}")
        n = self.train_x.shape[0]
        if self.train_y.shape[0] != n or self.train_t.shape[0] != n:
            raise ValueError(f"{where}: train_x, train_y, train_t must have the same length, got "
                             f"{n}, {self.train_y.shape[0]}, {self.train_t.shape[0]}")
        if self.test_y.shape[0] != self.test_x.shape[0]:
            raise ValueError(f"{where}: test_x and test_y lengths differ ({self.test_x.shape[0]} "
                             f"vs {self.test_y.shape[0]})")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise ValueError(f"{where}: train and test images differ in shape "
                             f"({tuple(self.train_x.shape[1:])} vs {tuple(self.test_x.shape[1:])})")
        if n and (int(self.train_t.min()) < 0 or int(self.train_t.max()) > self.index):
            raise ValueError(f"{where}: train_t must lie in 0..{self.index}, got "
                             f"{int(self.train_t.min())}..{int(self.train_t.max())}")

    @property
    def num_train(self) -> int:
        return int(self.train_x.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_x.shape[0])

    def __repr__(self) -> str:
        return (f"Task(index={self.index}, classes={self.classes}, train={self.num_train}, "
                f"test={self.num_test})")


@dataclass(frozen=True, eq=False)
class Scenario:
    """An ordered list of tasks and how the model's heads map onto them (module doc).

    ``permutations`` is int64 (num_tasks, C*H*W) for permuted scenarios, else None;
    ``mean``/``std`` are the per-channel statistics of x/255 on the whole training split;
    ``input_scaling`` (one of :data:`~benchmarks.batching.SCALINGS`) says how batches are
    scaled (``standard`` uses ``mean``/``std``).
    """
    name: str
    dataset: str
    setting: str
    tasks: tuple[Task, ...]
    input_shape: tuple[int, int, int]
    num_heads: int
    head_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    permutations: Optional[torch.Tensor]
    cumulative: bool
    class_order: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    source: str = field(default="")
    input_scaling: str = "standard"

    def __post_init__(self) -> None:
        where = f"scenario {self.name!r}"
        if self.setting not in SETTINGS:
            raise ValueError(f"{where}: setting must be one of {', '.join(SETTINGS)}, got "
                             f"{self.setting!r}")
        if not self.tasks:
            raise ValueError(f"{where}: needs at least one task")
        num_tasks = len(self.tasks)
        for position, task in enumerate(self.tasks):
            if task.index != position:
                raise ValueError(f"{where}: tasks[{position}].index is {task.index}")
            if tuple(task.train_x.shape[1:]) != tuple(self.input_shape):
                raise ValueError(f"{where}: task {position} images are "
                                 f"{tuple(task.train_x.shape[1:])}, input_shape is "
                                 f"{tuple(self.input_shape)}")
        expected_heads = num_tasks if self.setting == "task" else 1
        if self.num_heads != expected_heads:
            raise ValueError(f"{where}: the {self.setting} setting has {expected_heads} head(s), "
                             f"got num_heads={self.num_heads}")
        if self.head_size < 1 or (self.setting == "class" and self.head_size % num_tasks):
            raise ValueError(f"{where}: head_size {self.head_size} must be >= 1 (and a multiple "
                             f"of the {num_tasks} tasks in the class setting)")
        channels = self.input_shape[0]
        if len(self.mean) != channels or len(self.std) != channels or min(self.std) <= 0:
            raise ValueError(f"{where}: mean/std need {channels} value(s) with std > 0, got "
                             f"{self.mean} / {self.std}")
        try:
            check_scaling(self.input_scaling, channels)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if self.permutations is not None:
            dim = int(np.prod(self.input_shape))
            if (self.permutations.dtype != torch.int64
                    or tuple(self.permutations.shape) != (num_tasks, dim)):
                raise ValueError(f"{where}: permutations must be int64 ({num_tasks}, {dim}), got "
                                 f"{_describe(self.permutations)}")
        for task in self.tasks:
            for name in ("train_y", "test_y"):
                y = getattr(task, name)
                if y.numel() and (int(y.min()) < 0 or int(y.max()) >= self.head_size):
                    raise ValueError(f"{where}: task {task.index} {name} must lie in "
                                     f"0..{self.head_size - 1}, got {int(y.min())}..{int(y.max())}")
            if not self.cumulative and task.num_train and bool((task.train_t != task.index).any()):
                raise ValueError(f"{where}: task {task.index} holds examples of other tasks but "
                                 "the scenario is not cumulative")

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    def _check_index(self, task_index: int) -> int:
        if isinstance(task_index, torch.Tensor):
            task_index = int(task_index)
        if isinstance(task_index, bool) or not isinstance(task_index, (int, np.integer)) \
                or not 0 <= task_index < self.num_tasks:
            raise ValueError(f"task index must be an int in 0..{self.num_tasks - 1}, got "
                             f"{task_index!r}")
        return int(task_index)

    def head_of(self, task_index: int) -> int:
        """The head used for task ``task_index``: the task index in the task setting, else 0."""
        task_index = self._check_index(task_index)
        return task_index if self.setting == "task" else 0

    def seen_outputs(self, task_index: int) -> torch.Tensor:
        """Output indices that tasks 0..task_index can produce: in the class setting
        ``arange((task_index + 1) * head_size / num_tasks)``, otherwise the whole head."""
        task_index = self._check_index(task_index)
        if self.setting == "class":
            return torch.arange((task_index + 1) * (self.head_size // self.num_tasks))
        return torch.arange(self.head_size)

    def batches(self, task_index: int, split: str = "train", batch_size: int = 128,
                shuffle: Optional[bool] = None, generator: Optional[torch.Generator] = None,
                device: Union[torch.device, str] = "cpu", drop_last: bool = False,
                rows: Optional[torch.Tensor] = None, with_index: bool = False
                ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Mini-batches ``(x float32 (B, C, H, W), y int64 (B,), t int64 (B,))`` of one task's
        ``split`` ("train" or "test"), scaled as ``input_scaling`` says and permuted by each
        example's task permutation, per batch. ``shuffle`` defaults to True for "train" and
        False for "test"; it draws from ``generator`` (torch's global generator when None).
        ``rows`` restricts the pass to those rows of the split, in that order, repeats allowed
        (:func:`benchmarks.original.original_train_rows`: the original project's padded epoch);
        ``with_index`` appends each batch's row numbers (see
        :func:`benchmarks.batching.iterate_batches`).
        """
        task = self.tasks[self._check_index(task_index)]
        if split == "train":
            x, y, t = task.train_x, task.train_y, task.train_t
        elif split == "test":
            x, y = task.test_x, task.test_y
            t = torch.full((task.num_test,), task.index, dtype=torch.int64)
        else:
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        return iterate_batches(x, y, t, mean=self.mean, std=self.std,
                               permutations=self.permutations, batch_size=batch_size,
                               shuffle=(split == "train") if shuffle is None else shuffle,
                               generator=generator, device=device, drop_last=drop_last,
                               rows=rows, with_index=with_index, scaling=self.input_scaling)

    def __repr__(self) -> str:
        return (f"Scenario({self.name!r}, setting={self.setting!r}, tasks={self.num_tasks}, "
                f"heads={self.num_heads}x{self.head_size}, input={self.input_shape}, "
                f"cumulative={self.cumulative})")
