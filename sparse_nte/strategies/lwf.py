"""Learning without forgetting (Li & Hoiem, "Learning without forgetting", ECCV 2016 / TPAMI
2017), with the distillation of Hinton, Vinyals & Dean (2015).

After each task the model is frozen (a copy in eval mode: no dropout, inference k-WTA). While
training a later task every example's loss gets the distillation term::

    e(x) = alpha T^2 KL( softmax(z_old(x) / T) || softmax(z_new(x) / T) )

over the outputs of the tasks learned before (z_old from the frozen copy, z_new from the model
being trained, on the same input: the new task's examples, and replayed ones when replay is on).
The factor T^2 keeps the gradient's scale independent of T (Hinton et al.). Which outputs are
distilled depends on the scenario's setting (van de Ven & Tolias 2019, "Three scenarios"):

* task: one head per task. For every previous task j, head j applied to the example's features
  (the input of the heads in the current forward pass) against the frozen model's head j; the
  term is the mean over the previous heads (so alpha does not scale with the number of tasks).
* domain: the shared head's outputs, all of them.
* class: the shared head's outputs of the classes seen before, ``scenario.seen_outputs(k - 1)``
  while training task k (the outputs of the new classes have no old counterpart).

The task setting needs a model with ``heads`` (one module per head, called on the features of
the rows routed to it) and ``head_of_task`` (the head of every task), as :class:`models.Net`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.seams import Batch, BuildEnv, Strategy, TaskContext
from sparse_nte.strategies.common import frozen_copy, tensor_bytes
from sparse_nte.strategies.keys import KEY_DEFAULTS, check_key, read_keys

__all__ = ["LwFSpec", "LwF", "build", "distillation"]


@dataclass(frozen=True)
class LwFSpec:
    """LwF settings (config keys ``lwf_alpha``, ``lwf_temperature``)."""

    alpha: float = KEY_DEFAULTS["lwf_alpha"]
    temperature: float = KEY_DEFAULTS["lwf_temperature"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "alpha", check_key("lwf_alpha", self.alpha, "LwF"))
        object.__setattr__(self, "temperature", check_key("lwf_temperature", self.temperature, "LwF"))

    @classmethod
    def from_config(cls, config: Any) -> "LwFSpec":
        v = read_keys(config, ("lwf_alpha", "lwf_temperature"))
        return cls(v["lwf_alpha"], v["lwf_temperature"])


def distillation(new: torch.Tensor, old: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-example ``T^2 KL(softmax(old / T) || softmax(new / T))``, shape (B,)."""
    log_p_old = F.log_softmax(old / temperature, dim=1)
    log_p_new = F.log_softmax(new / temperature, dim=1)
    return (temperature ** 2) * (log_p_old.exp() * (log_p_old - log_p_new)).sum(dim=1)


def _route_rows(head_of_rows: torch.Tensor, calls: List[Tuple[int, torch.Tensor]]) -> torch.Tensor:
    """The head inputs of every row, assembled from the calls of the heads in one forward pass
    (a head called on all rows, or each head on the rows routed to it)."""
    b = int(head_of_rows.shape[0])
    if len(calls) == 1 and calls[0][1].shape[0] == b:
        return calls[0][1]
    width = calls[0][1].shape[1:]
    out = calls[0][1].new_zeros((b,) + tuple(width))
    seen = 0
    for k, h in calls:
        rows = torch.nonzero(head_of_rows == k).flatten()
        if rows.numel() != h.shape[0]:
            raise ValueError(f"LwF: head {k} was called on {h.shape[0]} rows but {rows.numel()} rows "
                             f"of the batch are routed to it; the model must route rows by "
                             f"head_of_task[t]")
        out = out.index_copy(0, rows, h)
        seen += rows.numel()
    if seen != b:
        raise ValueError(f"LwF: the heads were called on {seen} of the batch's {b} rows")
    return out


class LwF(Strategy):
    """Learning without forgetting (module doc)."""

    uses_loss = True
    name = "lwf"

    def __init__(self, spec: LwFSpec, env: BuildEnv) -> None:
        self.spec = spec
        self.model = env.model
        self.scenario = env.scenario
        self.setting = env.scenario.setting
        if self.setting == "task" and env.scenario.num_tasks > 1:
            if not (isinstance(getattr(env.model, "heads", None), nn.ModuleList)
                    and isinstance(getattr(env.model, "head_of_task", None), torch.Tensor)):
                raise ValueError(f"LwF in the task setting distils every previous task's head, so "
                                 f"the model needs `heads` (nn.ModuleList) and `head_of_task` (as "
                                 f"models.Net); {type(env.model).__name__} has not")
        self.prev: Optional[nn.Module] = None
        self.learned = 0               # tasks the frozen copy has learned
        self._calls: List[Tuple[int, torch.Tensor]] = []
        self._own_call = False
        self._handles: list = []
        self._sum: Optional[torch.Tensor] = None
        self._count = 0
        self._stats: Dict[str, Any] = {}

    # -- head inputs of the training forward pass (task setting) -------------------------------
    def _install(self) -> None:
        self._remove()
        self._handles.append(self.model.register_forward_pre_hook(self._clear))
        for k, head in enumerate(self.model.heads):
            self._handles.append(head.register_forward_pre_hook(self._recorder(k)))

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._calls = []

    def _clear(self, module: nn.Module, args: tuple) -> None:
        self._calls = []

    def _recorder(self, k: int):
        def record(module: nn.Module, args: tuple) -> None:
            if not self._own_call:
                self._calls.append((k, args[0]))
        return record

    def _old_heads(self) -> List[int]:
        heads = self.model.head_of_task[: self.learned].tolist()
        return sorted(set(int(h) for h in heads))

    # -- events ----------------------------------------------------------------------------------
    def on_task_start(self, ctx: TaskContext) -> None:
        self._sum, self._count = None, 0
        if self.prev is not None and self.setting == "task":
            self._install()

    def on_task_end(self, ctx: TaskContext) -> None:
        self._remove()
        mean = float(self._sum) / self._count if self._count else 0.0
        distilled = self.learned if self.prev is not None else 0
        self.prev = frozen_copy(self.model)
        self.learned = ctx.task + 1
        self._stats = {"distill_mean": mean, "distilled_tasks": distilled,
                       "memory_bytes": self.memory_bytes()}

    def close(self) -> None:
        self._remove()

    # -- the distillation term -------------------------------------------------------------------
    def _outputs(self, batch: Batch, logits: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """(new, old) output pairs to distil."""
        prev = self.prev
        if self.setting == "task":
            if not self._calls:
                raise RuntimeError("LwF: no head was called since the last forward pass of the "
                                   "model; example_loss must follow the forward pass of its batch")
            features = _route_rows(self.model.head_of_task[batch.t], self._calls)
            self._calls = []
            heads = self._old_heads()
            with torch.no_grad():
                old_t = torch.full_like(batch.t, int(torch.nonzero(prev.head_of_task == heads[0])[0]))
                grabbed: List[torch.Tensor] = []
                handle = prev.heads[heads[0]].register_forward_pre_hook(
                    lambda m, a: grabbed.append(a[0]))
                try:
                    prev(batch.x, old_t)
                finally:
                    handle.remove()
                old_features = grabbed[0]
                olds = [prev.heads[k](old_features) for k in heads]
            self._own_call = True
            try:
                news = [self.model.heads[k](features) for k in heads]
            finally:
                self._own_call = False
            return list(zip(news, olds))
        with torch.no_grad():
            old = prev(batch.x, batch.t)
        if self.setting == "class":
            seen = self.scenario.seen_outputs(self.learned - 1).to(logits.device)
            return [(logits.index_select(1, seen), old.index_select(1, seen))]
        return [(logits, old)]

    def example_loss(self, batch: Batch, logits: torch.Tensor) -> Optional[torch.Tensor]:
        if self.prev is None or self.spec.alpha == 0:
            return None
        pairs = self._outputs(batch, logits)
        total = None
        for new, old in pairs:
            term = distillation(new, old, self.spec.temperature)
            total = term if total is None else total + term
        out = total * (self.spec.alpha / len(pairs))
        detached = out.detach().sum()
        self._sum = detached if self._sum is None else self._sum + detached
        self._count += int(out.shape[0])
        return out

    # -- reporting and checkpoints ---------------------------------------------------------------
    def memory_bytes(self) -> int:
        if self.prev is None:
            return 0
        return tensor_bytes(list(self.prev.parameters()) + list(self.prev.buffers()))

    def stats(self) -> Dict[str, Any]:
        return dict(self._stats)

    def state_dict(self) -> Dict[str, Any]:
        return {"prev": None if self.prev is None else copy.deepcopy(self.prev.state_dict()),
                "learned": self.learned, "stats": dict(self._stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._remove()
        if state["prev"] is None:
            self.prev = None
        else:
            self.prev = frozen_copy(self.model)
            self.prev.load_state_dict(state["prev"])
        self.learned = int(state["learned"])
        self._stats = dict(state.get("stats", {}))


def build(config: Any, env: BuildEnv) -> LwF:
    """Registry entry ``lwf``."""
    return LwF(LwFSpec.from_config(config), env)
