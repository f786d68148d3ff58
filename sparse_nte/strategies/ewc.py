"""Elastic weight consolidation (Kirkpatrick et al., "Overcoming catastrophic forgetting in
neural networks", PNAS 114:3521, 2017).

After task k the diagonal Fisher F_k of that task's training examples
(:mod:`sparse_nte.strategies.fisher`) and the parameters theta*_k are kept; while training the
later tasks the loss gets the penalty::

    R(theta) = (lambda / 2) sum_k sum_i F_{k,i} (theta_i - theta*_{k,i})^2          (1)

one quadratic per finished task, as in the paper (the "offline" EWC of van de Ven & Tolias).

Storage. A sum of quadratics in theta_i is one quadratic, so (1) is kept exactly in constant
memory (two parameter-sized tensors, whatever the number of tasks)::

    sum_k F_k (theta - theta*_k)^2 = A (theta - mu)^2 + c,
    A = sum_k F_k,   mu = sum_k F_k theta*_k / A   (mu = the latest theta* where A = 0)

updated after each task with F, theta* as A' = A + F, mu' = (A mu + F theta*) / A' and
c' = c + sum_i (A_i F_i / A'_i) (mu_i - theta*_i)^2 (the combination of two quadratics; no
cancellation). Penalty and gradient, lambda A (theta - mu), are those of (1).

Fisher: ``ewc_fisher`` = true (labels sampled from the model, the default) or empirical;
at most ``ewc_fisher_examples`` examples of the task's training set (0 = all; in cumulative
scenarios that set is the union of tasks 0..k), a subset drawn from
``SeedSequence(seed, spawn_key=(TAG, task))``. Masked weights get F = 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import torch

from sparse_nte.seams import BuildEnv, Strategy, TaskContext
from sparse_nte.strategies.common import (check_importance, importance_stats, task_generator,
                                          tensor_bytes, trained_parameters)
from sparse_nte.strategies.fisher import diagonal_fisher, fisher_labels
from sparse_nte.strategies.keys import KEY_DEFAULTS, check_key, read_keys

__all__ = ["EWCSpec", "EWC", "build", "fisher_of_task", "TAG"]

#: Spawn-key tag of the generators of the Fisher (example subset, sampled labels).
TAG = 101
#: Examples per forward pass of the Fisher computation.
FISHER_BATCH = 256


@dataclass(frozen=True)
class EWCSpec:
    """EWC settings (config keys ``ewc_lambda``, ``ewc_fisher``, ``ewc_fisher_examples``)."""

    lam: float = KEY_DEFAULTS["ewc_lambda"]
    fisher: str = KEY_DEFAULTS["ewc_fisher"]
    fisher_examples: int = KEY_DEFAULTS["ewc_fisher_examples"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "lam", check_key("ewc_lambda", self.lam, "EWC"))
        check_key("ewc_fisher", self.fisher, "EWC")
        check_key("ewc_fisher_examples", self.fisher_examples, "EWC")

    @classmethod
    def from_config(cls, config: Any) -> "EWCSpec":
        v = read_keys(config, ("ewc_lambda", "ewc_fisher", "ewc_fisher_examples"))
        return cls(v["ewc_lambda"], v["ewc_fisher"], v["ewc_fisher_examples"])


def fisher_of_task(ctx: TaskContext, kind: str, examples: int,
                   params) -> tuple[Dict[str, torch.Tensor], int]:
    """The diagonal Fisher of ``params`` on task ``ctx.task``'s training examples (all, or a
    seeded random subset of ``examples`` of them)."""
    gen = task_generator(ctx.seed, ctx.task, TAG)
    n = ctx.scenario.tasks[ctx.task].num_train
    rows = None
    if 0 < examples < n:
        rows = torch.randperm(n, generator=gen)[:examples].sort().values
    batches = ctx.train_batches(batch_size=FISHER_BATCH, rows=rows, shuffle=False)
    return diagonal_fisher(ctx.model, batches, fisher_labels(kind, gen), params=params)


class EWC(Strategy):
    """EWC with one quadratic penalty per finished task, kept as one quadratic (module doc)."""

    uses_loss = True
    name = "ewc"

    def __init__(self, spec: EWCSpec, env: BuildEnv) -> None:
        self.spec = spec
        self.model = env.model
        self.params = trained_parameters(env.model)
        self.A: Optional[Dict[str, torch.Tensor]] = None
        self.mu: Optional[Dict[str, torch.Tensor]] = None
        self.const = 0.0
        self.tasks = 0
        self._stats: Dict[str, Any] = {}
        self._pen_sum: Optional[torch.Tensor] = None
        self._pen_steps = 0

    # -- consolidation ------------------------------------------------------------------------
    def consolidate(self, fisher: Mapping[str, torch.Tensor],
                    anchor: Mapping[str, torch.Tensor]) -> None:
        """Add the quadratic of one task: Fisher ``fisher`` around ``anchor`` (by parameter name)."""
        if self.A is None:
            self.A = {n: fisher[n].detach().clone() for n, _ in self.params}
            self.mu = {n: anchor[n].detach().clone() for n, _ in self.params}
        else:
            extra = 0.0
            for n, _ in self.params:
                a, f = self.A[n].double(), fisher[n].double()
                m, s = self.mu[n].double(), anchor[n].detach().double()
                total = a + f
                safe = torch.where(total > 0, total, torch.ones_like(total))
                extra += float((a * f / safe * (m - s).square()).sum())
                mu = torch.where(total > 0, (a * m + f * s) / safe, s)
                self.A[n].copy_(total)
                self.mu[n].copy_(mu)
            self.const += extra
        self.tasks += 1

    def on_task_start(self, ctx: TaskContext) -> None:
        self._pen_sum, self._pen_steps = None, 0

    def on_task_end(self, ctx: TaskContext) -> None:
        fisher, count = fisher_of_task(ctx, self.spec.fisher, self.spec.fisher_examples, self.params)
        all_zero = check_importance(f"{type(self).__name__}'s Fisher", fisher, ctx.task)
        anchor = {n: p.detach() for n, p in self.params}
        self.consolidate(fisher, anchor)
        self._stats = {"fisher_examples": count, "importance_all_zero": all_zero,
                       "penalty_mean": (float(self._pen_sum) / self._pen_steps
                                        if self._pen_steps else 0.0),
                       **importance_stats("fisher", fisher),
                       "memory_bytes": self.memory_bytes(), "consolidated_tasks": self.tasks}

    # -- loss -----------------------------------------------------------------------------------
    def penalty(self) -> Optional[torch.Tensor]:
        if self.A is None:
            return None
        total = None
        for n, p in self.params:
            term = (self.A[n] * (p - self.mu[n]).square()).sum()
            total = term if total is None else total + term
        out = (0.5 * self.spec.lam) * (total + self.const)
        detached = out.detach()
        self._pen_sum = detached if self._pen_sum is None else self._pen_sum + detached
        self._pen_steps += 1
        return out

    # -- reporting and checkpoints ------------------------------------------------------------
    def memory_bytes(self) -> int:
        if self.A is None:
            return 0
        return tensor_bytes(list(self.A.values()) + list(self.mu.values()))

    def stats(self) -> Dict[str, Any]:
        return dict(self._stats)

    def state_dict(self) -> Dict[str, Any]:
        return {"A": None if self.A is None else {n: v.clone() for n, v in self.A.items()},
                "mu": None if self.mu is None else {n: v.clone() for n, v in self.mu.items()},
                "const": self.const, "tasks": self.tasks, "stats": dict(self._stats)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _check_names(self, state.get("A"))
        self.A = None if state["A"] is None else {n: v.clone() for n, v in state["A"].items()}
        self.mu = None if state["mu"] is None else {n: v.clone() for n, v in state["mu"].items()}
        self.const = float(state["const"])
        self.tasks = int(state["tasks"])
        self._stats = dict(state.get("stats", {}))


def _check_names(strategy: Any, named: Optional[Mapping[str, torch.Tensor]]) -> None:
    if named is None:
        return
    mine = {n: tuple(p.shape) for n, p in strategy.params}
    theirs = {n: tuple(v.shape) for n, v in named.items()}
    if mine != theirs:
        raise ValueError(f"{type(strategy).__name__}.load_state_dict: the saved state is for "
                         f"parameters {sorted(theirs)} with other names or shapes than this "
                         f"model's {sorted(mine)}")


def build(config: Any, env: BuildEnv) -> EWC:
    """Registry entry ``ewc``."""
    return EWC(EWCSpec.from_config(config), env)
