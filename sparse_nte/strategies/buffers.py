"""Fixed-size example buffers for experience replay: which of the training examples seen so far
are kept.

* :class:`ReservoirBuffer`: Vitter's algorithm R ("Random sampling with a reservoir", ACM TOMS
  11:37, 1985), over every example offered. Example number n (1-based) fills slot n while
  n <= M; after that it draws j uniformly from {0, ..., n-1} and replaces slot j if j < M. After
  N examples every one of them is in the buffer with probability M / N, and the buffer is a
  uniform random M-subset. A batch is processed at once: one uniform draw per example
  (j = floor(u n)), and where several examples of a batch pick the same slot the last one wins,
  exactly as if they had been offered one by one.
* :class:`ClassBalancedBuffer`: class-balanced reservoir sampling (Chrysakis & Moens, "Online
  continual learning from imbalanced data", ICML 2020). A class is a (task, label) pair. While
  the buffer has room, every example is stored. When it is full, an example of class c:
  if c has fewer slots than the largest class, it replaces a random example of a largest class
  (ties between largest classes broken at random); otherwise it replaces a random member of c
  with probability m_c / n_c (m_c slots, n_c examples of c seen: algorithm R within c). Every
  class seen thus ends with floor(M / C) or ceil(M / C) slots, unless it had fewer examples,
  and within a class the kept examples are a uniform sample.

Both store the (normalised) rows as given, with their labels and task ids.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

__all__ = ["ExampleBuffer", "ReservoirBuffer", "ClassBalancedBuffer", "make_buffer"]


class ExampleBuffer:
    """Storage of up to ``capacity`` examples ``(x, y, t)``; subclasses choose the slots."""

    kind = ""

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"buffer capacity must be an int >= 1, got {capacity!r}")
        self.capacity = capacity
        self.x: Optional[torch.Tensor] = None
        self.y: Optional[torch.Tensor] = None
        self.t: Optional[torch.Tensor] = None
        self.size = 0
        self.seen = 0

    def _allocate(self, x: torch.Tensor) -> None:
        if self.x is None:
            self.x = x.new_zeros((self.capacity,) + tuple(x.shape[1:]))
            self.y = torch.zeros(self.capacity, dtype=torch.int64, device=x.device)
            self.t = torch.zeros(self.capacity, dtype=torch.int64, device=x.device)
        elif tuple(x.shape[1:]) != tuple(self.x.shape[1:]):
            raise ValueError(f"replay buffer holds examples of shape {tuple(self.x.shape[1:])}, got "
                             f"{tuple(x.shape[1:])}")

    def _write(self, slots: torch.Tensor, rows: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
               t: torch.Tensor) -> None:
        """Copy ``rows`` of the batch into ``slots`` (distinct)."""
        if slots.numel() == 0:
            return
        slots = slots.to(self.x.device)
        rows = rows.to(x.device)
        self.x.index_copy_(0, slots, x.index_select(0, rows).to(self.x.dtype))
        self.y.index_copy_(0, slots, y.index_select(0, rows).to(torch.int64))
        self.t.index_copy_(0, slots, t.index_select(0, rows).to(torch.int64))

    def add(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
            generator: torch.Generator) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def sample(self, k: int, generator: torch.Generator) -> Tuple[torch.Tensor, ...]:
        """``min(k, size)`` stored examples drawn without replacement: ``(x, y, t)``."""
        k = min(int(k), self.size)
        idx = torch.randperm(self.size, generator=generator)[:k].to(self.x.device)
        return self.x.index_select(0, idx), self.y.index_select(0, idx), self.t.index_select(0, idx)

    def memory_bytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in (self.x, self.y, self.t) if v is not None)

    def task_counts(self, num_tasks: int) -> List[int]:
        """Stored examples per task id."""
        if self.size == 0:
            return [0] * num_tasks
        return torch.bincount(self.t[: self.size].cpu(), minlength=num_tasks).tolist()

    def state_dict(self) -> Dict[str, Any]:
        n = self.size
        return {"kind": self.kind, "capacity": self.capacity, "size": n, "seen": self.seen,
                "x": None if self.x is None else self.x[:n].clone(),
                "y": None if self.y is None else self.y[:n].clone(),
                "t": None if self.t is None else self.t[:n].clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["kind"] != self.kind or int(state["capacity"]) != self.capacity:
            raise ValueError(f"replay buffer state is for a {state['kind']} buffer of "
                             f"{state['capacity']} examples, this one is {self.kind} of "
                             f"{self.capacity}")
        self.x = self.y = self.t = None
        self.size, self.seen = int(state["size"]), int(state["seen"])
        if state["x"] is not None:
            self._allocate(state["x"])
            n = self.size
            self.x[:n] = state["x"]
            self.y[:n] = state["y"]
            self.t[:n] = state["t"]


class ReservoirBuffer(ExampleBuffer):
    """A uniform sample of every example offered (algorithm R; module doc)."""

    kind = "reservoir"

    def add(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
            generator: torch.Generator) -> None:
        b = int(y.shape[0])
        if b == 0:
            return
        self._allocate(x)
        n = torch.arange(self.seen + 1, self.seen + b + 1, dtype=torch.float64)  # 1-based counts
        u = torch.rand(b, dtype=torch.float64, generator=generator)
        slot = torch.where(n <= self.capacity, n - 1, torch.floor(u * n)).to(torch.int64)
        keep = slot < self.capacity
        rows = torch.nonzero(keep).flatten()
        slots = slot[keep]
        if slots.numel():
            uniq, inverse = torch.unique(slots, return_inverse=True)
            last = torch.full((uniq.numel(),), -1, dtype=torch.int64)
            last.scatter_reduce_(0, inverse, rows, reduce="amax")
            self._write(uniq, last, x, y, t)
        self.seen += b
        self.size = min(self.capacity, self.seen)


class ClassBalancedBuffer(ExampleBuffer):
    """An equal share per (task, label) class, a uniform sample within each (module doc)."""

    kind = "class_balanced"

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self.classes: Dict[Tuple[int, int], int] = {}      # (task, label) -> class id
        self.class_seen: List[int] = []                     # examples seen per class id
        self.members: List[List[int]] = []                  # slots of each class id

    def add(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor,
            generator: torch.Generator) -> None:
        b = int(y.shape[0])
        if b == 0:
            return
        self._allocate(x)
        u = torch.rand(b, 2, dtype=torch.float64, generator=generator).tolist()
        writes: Dict[int, int] = {}                         # slot -> row (last wins)
        for i, (ti, yi) in enumerate(zip(t.tolist(), y.tolist())):
            cid = self.classes.get((ti, yi))
            if cid is None:
                cid = self.classes[(ti, yi)] = len(self.members)
                self.members.append([])
                self.class_seen.append(0)
            self.class_seen[cid] += 1
            mine = self.members[cid]
            if self.size < self.capacity:
                slot = self.size
                self.size += 1
                mine.append(slot)
                writes[slot] = i
                continue
            largest = max(len(m) for m in self.members)
            if len(mine) < largest:
                full = [k for k, m in enumerate(self.members) if len(m) == largest]
                victim = self.members[full[int(u[i][0] * len(full))]]
                pos = int(u[i][1] * len(victim))
                slot = victim[pos]
                victim[pos] = victim[-1]
                victim.pop()
                mine.append(slot)
                writes[slot] = i
            else:
                j = int(u[i][0] * self.class_seen[cid])
                if j < len(mine):
                    writes[mine[j]] = i
        self.seen += b
        if writes:
            slots = torch.tensor(list(writes.keys()), dtype=torch.int64)
            rows = torch.tensor(list(writes.values()), dtype=torch.int64)
            self._write(slots, rows, x, y, t)

    def class_sizes(self) -> Dict[Tuple[int, int], int]:
        """Slots held by every class ``(task, label)`` seen."""
        return {key: len(self.members[cid]) for key, cid in self.classes.items()}

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state.update(classes=[[k[0], k[1], cid] for k, cid in self.classes.items()],
                     class_seen=list(self.class_seen), members=[list(m) for m in self.members])
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.classes = {(int(a), int(b)): int(c) for a, b, c in state["classes"]}
        self.class_seen = [int(v) for v in state["class_seen"]]
        self.members = [[int(s) for s in m] for m in state["members"]]


def make_buffer(selection: str, capacity: int) -> ExampleBuffer:
    """The buffer of a ``replay_selection`` choice."""
    if selection == "reservoir":
        return ReservoirBuffer(capacity)
    if selection == "class_balanced":
        return ClassBalancedBuffer(capacity)
    raise ValueError(f"replay_selection = {selection!r}; valid: reservoir, class_balanced")
