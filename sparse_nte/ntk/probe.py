"""The per-task NTK probe: kernel and gradient diagnostics after every task of a trial.

At the start of task 0 the probe fixes, for every task s, a probe set X_s of ``ntk_probe_size``
examples of that task (rows drawn without replacement with a generator seeded from
(``seed``, task), from the ``ntk_probe_split`` split), and records theta_0 (a
:func:`~sparse_nte.ntk.params.snapshot`) and the kernel K_0(X_s) of every task at theta_0.
At the end of task t it measures, for every seen task s <= t, with the model in eval mode
(:mod:`sparse_nte.ntk.diagnostics` for the definitions):

* ``grad_alignment[s]``: alignment of the per-example cross-entropy gradients on the first
  ``ntk_align_batch`` examples of X_s at theta_t and at theta_0 (the NTE demo's measure);
* ``kernel_drift[s]`` = ||K_t(X_s) - K_0(X_s)||_F / ||K_0(X_s)||_F;
* ``cka_init[s]`` = CKA(K_t(X_s), K_0(X_s)) and ``cka_learned[s]`` = CKA(K_t(X_s), K_s(X_s)),
  the centred alignment of the current kernel with the kernel at initialisation and with the
  kernel the task was learned with (K_s: measured at the end of task s; 1 for s = t). CKA
  compares kernels on the same examples, so the kernels aligned are those of different moments
  of the run (after different tasks) on one task's probe set;
* ``effective_rank[s]`` of K_t(X_s), and ``effective_rank_init[s]`` of K_0(X_s);
* ``kernel_mean_diag[s]``: mean of diag K_t(X_s) (the kernel's scale).

Within a task (``ntk_probe_every`` = n > 0), the probe also measures the task being trained at
its start and after every n-th optimizer step of it: ``within_task = {"step": [...],
"grad_alignment": [...], "kernel_drift": [...]}`` (steps counted from the start of the task; the
alignment and drift of that task's probe set, as above). This is how the NTE demo watches the
alignment fall during training (it evaluates every 20 steps); it costs two per-example gradient
passes over ``ntk_align_batch`` examples and one probe-set kernel per measurement.

K is the trace NTK (summed over the outputs, N x N) over the live parameters, each example
routed to its own task's head. The probe never changes the model: buffers are copied, the mode
is restored, no global random generator is used (a trial's accuracies are the same with or
without it). :meth:`stats` returns plain data (floats and lists), stored by the learner under
``stats["per_task"][t]["ntk"]``.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from sparse_nte.ntk.diagnostics import (centered_kernel_alignment, effective_rank,
                                        gradient_alignment, kernel_drift)
from sparse_nte.ntk.features import DEFAULT_BUDGET
from sparse_nte.ntk.kernels import empirical_ntk
from sparse_nte.ntk.params import ParameterPoint, snapshot
from sparse_nte.seams import BuildEnv, Probe, TaskContext

__all__ = ["NTKProbeSpec", "NTKProbe", "build_ntk_probe", "ntk_probe_enabled", "NTK_PROBE_KEYS",
           "SPLITS", "align_batch_problem"]

SPLITS = ("train", "test")
_SEED_TAG = 0x6E746B   # "ntk": separates the probe's stream from the trial's other seeded draws


@dataclass(frozen=True)
class NTKProbeSpec:
    """The probe's config keys (same names in the config).

    Attributes:
        record_ntk: run the probe (False: the probe does nothing and records nothing).
        ntk_probe_size: examples per task in its probe set (int >= 2; fewer if the split has
            fewer). Cost grows as (tasks seen) x size^2 per task end.
        ntk_align_batch: examples of each probe set used for the gradient alignment (int >= 1,
            at most ntk_probe_size; 24 as in the NTE demo).
        ntk_probe_split: "train" or "test": which split of each task the probe sets come from.
        seed: the trial's seed (key ``seed``).
        ntk_probe_every: also measure the current task every this many optimizer steps within
            it (int >= 0; 0 = only at task ends).
    """

    record_ntk: bool = False
    ntk_probe_size: int = 64
    ntk_align_batch: int = 24
    ntk_probe_split: str = "train"
    seed: int = 0
    ntk_probe_every: int = 0

    def __post_init__(self) -> None:
        # types and ranges are the config schema's (sparse_nte.config.groups.ntk); the relation
        # between two keys is stated here, once, and reported by the schema with its location
        problem = align_batch_problem(self.ntk_align_batch, self.ntk_probe_size)
        if problem:
            raise ValueError(problem)

    @classmethod
    def from_config(cls, config: Any) -> "NTKProbeSpec":
        """Read the keys of :data:`NTK_PROBE_KEYS` as attributes of ``config`` (a resolved
        Config); raises ValueError naming any missing key."""
        missing = [k for k in NTK_PROBE_KEYS if not hasattr(config, k)]
        if missing:
            raise ValueError(f"NTK probe: the config lacks the key(s) {', '.join(missing)} "
                             f"(needed: {', '.join(NTK_PROBE_KEYS)})")
        return cls(**{k: getattr(config, k) for k in NTK_PROBE_KEYS})


NTK_PROBE_KEYS = tuple(f.name for f in fields(NTKProbeSpec))


def align_batch_problem(align_batch: int, probe_size: int) -> str:
    """Why ``ntk_align_batch`` and ``ntk_probe_size`` conflict ("" if they do not)."""
    if align_batch > probe_size:
        return (f"config keys 'ntk_align_batch' ({align_batch}) and 'ntk_probe_size' ({probe_size}) "
                f"conflict: the alignment batch is taken from the probe set, so it must not be larger")
    return ""


def probe_rows(seed: int, task: int, available: int, size: int) -> torch.Tensor:
    """The probe set's rows of task ``task``: the first min(size, available) entries of a
    permutation drawn from SeedSequence((seed, "ntk", task)), in increasing order."""
    state = np.random.SeedSequence((seed, _SEED_TAG, task)).generate_state(2, dtype=np.uint32)
    g = torch.Generator().manual_seed((int(state[1]) << 32) | int(state[0]))
    rows = torch.randperm(available, generator=g)[:min(size, available)]
    return rows.sort().values


class NTKProbe(Probe):
    """See the module docstring. ``stats()`` after task t: the measures of that task end."""

    def __init__(self, spec: NTKProbeSpec, budget: int = DEFAULT_BUDGET) -> None:
        if not isinstance(spec, NTKProbeSpec):
            raise ValueError(f"NTKProbe expects an NTKProbeSpec, got {type(spec).__name__}")
        self.spec = spec
        self.budget = budget
        self._rows: Optional[List[torch.Tensor]] = None
        self._data: Dict[int, tuple] = {}
        self._theta0: Optional[ParameterPoint] = None
        self._k0: List[torch.Tensor] = []
        self._learned: Dict[int, torch.Tensor] = {}
        self._last: Dict[str, Any] = {}
        self._ctx: Optional[TaskContext] = None          # the task being trained (within-task)
        self._task_steps = 0
        self._within: Dict[str, List[float]] = {}

    # -- data -----------------------------------------------------------------------------------
    def _probe_set(self, ctx: TaskContext, task: int) -> tuple:
        if task not in self._data:
            rows = self._rows[task].to(torch.int64)
            x, y, t = next(iter(ctx.scenario.batches(
                task, self.spec.ntk_probe_split, batch_size=max(1, len(rows)), shuffle=False,
                device=ctx.device, rows=rows)))
            self._data[task] = (x, y, t)
        return self._data[task]

    def _kernel(self, model: nn.Module, ctx: TaskContext, task: int) -> torch.Tensor:
        x, _, t = self._probe_set(ctx, task)
        return empirical_ntk(model, x, t1=t, mode="trace", budget=self.budget).detach()

    # -- events ---------------------------------------------------------------------------------
    def on_task_start(self, ctx: TaskContext) -> None:
        if not self.spec.record_ntk:
            return
        if self._rows is None:
            self._initialise(ctx)
        if self.spec.ntk_probe_every > 0:
            self._ctx, self._task_steps = ctx, 0
            self._within = {"step": [], "grad_alignment": [], "kernel_drift": []}
            self._measure_within()

    def after_step(self, step: int) -> None:
        if self._ctx is None:
            return
        self._task_steps += 1
        if self._task_steps % self.spec.ntk_probe_every == 0:
            self._measure_within()

    def _measure_within(self) -> None:
        ctx, model = self._ctx, self._ctx.model
        was_training = model.training
        model.eval()
        try:
            task, b = ctx.task, self.spec.ntk_align_batch
            x, y, t = self._probe_set(ctx, task)
            align = gradient_alignment(model, x[:b], y[:b], t=t[:b], reference=self._theta0,
                                       budget=self.budget).value
            drift = kernel_drift(self._kernel(model, ctx, task), self._k0[task])
        finally:
            model.train(was_training)
        self._within["step"].append(self._task_steps)
        self._within["grad_alignment"].append(align)
        self._within["kernel_drift"].append(drift)

    def _initialise(self, ctx: TaskContext) -> None:
        if ctx.task != 0:
            raise ValueError(f"NTKProbe: first called at the start of task {ctx.task} without a "
                             f"saved state; it fixes theta_0 and the probe sets at the start of "
                             f"task 0 (restore its state_dict when resuming)")
        split = self.spec.ntk_probe_split
        self._rows = []
        for task in range(ctx.num_tasks):
            info = ctx.scenario.tasks[task]
            available = info.num_train if split == "train" else info.num_test
            if available < 2:
                raise ValueError(f"NTKProbe: task {task} has {available} {split} example(s); a "
                                 f"probe set needs at least 2 (set ntk_probe_split)")
            self._rows.append(probe_rows(self.spec.seed, task, available,
                                         self.spec.ntk_probe_size))
        model = ctx.model
        was_training = model.training
        model.eval()
        try:
            self._theta0 = snapshot(model)
            self._k0 = [self._kernel(model, ctx, s) for s in range(ctx.num_tasks)]
        finally:
            model.train(was_training)

    def on_task_end(self, ctx: TaskContext) -> None:
        if not self.spec.record_ntk:
            return
        if self._rows is None:
            raise ValueError("NTKProbe.on_task_end before on_task_start of task 0")
        model = ctx.model
        was_training = model.training
        model.eval()
        try:
            self._last = self._measure(model, ctx)
        finally:
            model.train(was_training)
        if self._ctx is not None:
            self._last["within_task"] = {k: list(v) for k, v in self._within.items()}
            self._ctx = None

    def _measure(self, model: nn.Module, ctx: TaskContext) -> Dict[str, Any]:
        t_now = ctx.task
        seen = list(range(t_now + 1))
        kernels = [self._kernel(model, ctx, s) for s in seen]
        self._learned[t_now] = kernels[t_now].clone()
        out: Dict[str, Any] = {"task": t_now, "seen": seen,
                               "probe_size": [int(len(self._rows[s])) for s in seen]}
        out["kernel_drift"] = [kernel_drift(k, self._k0[s]) for s, k in zip(seen, kernels)]
        out["cka_init"] = [centered_kernel_alignment(k, self._k0[s]) for s, k in zip(seen, kernels)]
        out["cka_learned"] = [centered_kernel_alignment(k, self._learned[s])
                              for s, k in zip(seen, kernels)]
        out["effective_rank"] = [effective_rank(k) for k in kernels]
        out["effective_rank_init"] = [effective_rank(self._k0[s]) for s in seen]
        out["kernel_mean_diag"] = [float(k.diagonal().double().mean()) for k in kernels]
        align = []
        b = self.spec.ntk_align_batch
        for s in seen:
            x, y, t = self._probe_set(ctx, s)
            align.append(gradient_alignment(model, x[:b], y[:b], t=t[:b], reference=self._theta0,
                                            budget=self.budget).value)
        out["grad_alignment"] = align
        return out

    # -- results and checkpoints -------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                for k, v in self._last.items()}

    def state_dict(self) -> Dict[str, Any]:
        if self._rows is None:
            return {}
        p = self._theta0
        return {"rows": [r.clone() for r in self._rows],
                "theta0": {"params": p.params, "buffers": p.buffers, "keep": p.keep},
                "k0": list(self._k0), "learned": dict(self._learned), "last": self.stats()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not state:
            return
        self._rows = [torch.as_tensor(r) for r in state["rows"]]
        p = state["theta0"]
        self._theta0 = ParameterPoint(dict(p["params"]), dict(p["buffers"]), dict(p["keep"]))
        self._k0 = list(state["k0"])
        self._learned = {int(k): v for k, v in state["learned"].items()}
        self._last = dict(state["last"])
        self._data = {}


def ntk_probe_enabled(config: Any) -> bool:
    """Whether ``config`` asks for the probe (key ``record_ntk``): the registry's ``enabled``."""
    return bool(NTKProbeSpec.from_config(config).record_ntk)


def build_ntk_probe(config: Any, env: BuildEnv) -> NTKProbe:
    """Registry builder (``build(config, env)``): the probe described by ``config``.

    Registry entry (:mod:`sparse_nte.probes`): ``"ntk": (ntk_probe_enabled, build_ntk_probe)``.
    """
    return NTKProbe(NTKProbeSpec.from_config(config))
