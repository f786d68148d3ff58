"""The fast-adaptation probe: after each task, how well the trained network adapts to the next.

Maddox, Tang, Moreno, Wilson & Damianou, "Fast adaptation with linearized neural networks"
(AISTATS 2021), asked inside a continual-learning trial. At the end of every task t < T - 1, with
the network theta_t trained on tasks 0..t, the probe calls
:func:`~sparse_nte.ntk.adaptation.fast_adaptation` for the next task t + 1 at each
k in ``adapt_examples_per_class`` (k labelled training examples per class of task t + 1):

(a) fine-tuning: a copy of theta_t trained by plain SGD on the k-shot set
    (``adapt_finetune_lr``, ``adapt_finetune_steps`` steps of ``adapt_finetune_batch``);
    accuracy on task t + 1 and on the old tasks 0..t (fine-tuning moves the shared weights);
(b) NTK-GP: the posterior mean f(x; theta_t) + Theta(x, X)(Theta(X, X) + sigma^2 I)^{-1}(Y - f(X))
    with the empirical NTK Theta of theta_t (in eval mode), sigma^2 = ``adapt_noise``; the network
    is unchanged, so the old tasks keep the accuracy theta_t has on them.

Every accuracy is on the full test split, the prediction being the argmax over the whole head
the task is routed to (in the class-incremental setting: over all classes, which is stricter
than the runner's classes-seen-so-far). The GP solver is ``adapt_method``
(:class:`~sparse_nte.ntk.gp.NTKGaussianProcess`: parameter space for few parameters, the formed
kernel for N C <= ``adapt_max_kernel`` rows, conjugate gradients above).

Stored per task under ``stats["per_task"][t]["adaptation"]``: the dict of ``fast_adaptation``
(``new_task``, ``old_tasks``, ``before``, ``results``: one entry per k) plus ``seconds``; an empty
dict after the last task. The probe never changes the trial: the network is copied before
fine-tuning, its mode is restored, and the global random state (dropout during fine-tuning) is
forked, so the accuracy matrix is the same with or without it. The k-shot rows and the
fine-tuning order are seeded from (``seed``, t).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from sparse_nte.ntk.adaptation import fast_adaptation
from sparse_nte.ntk.gp import METHODS
from sparse_nte.seams import BuildEnv, Probe, TaskContext

__all__ = ["AdaptationSpec", "AdaptationProbe", "build_adaptation_probe", "adaptation_enabled",
           "ADAPTATION_KEYS", "parse_examples", "adaptation_seed"]

_SEED_TAG = 0x616470   # "adp": separates the probe's draws from the trial's other seeded draws


def parse_examples(text: str) -> Tuple[int, ...]:
    """``"10, 100, 1000"`` -> (10, 100, 1000): distinct ints >= 1, in increasing order.
    Raises ValueError saying what was wrong."""
    parts = [p.strip() for p in str(text).split(",")]
    if not parts or any(not p for p in parts):
        raise ValueError(f"expected a comma-separated list of integers >= 1 (e.g. '10, 100, 1000'), "
                         f"got {text!r}")
    values = []
    for p in parts:
        if not p.lstrip("+").isdigit() or int(p) < 1:
            raise ValueError(f"expected integers >= 1 in a comma-separated list, got {p!r} in "
                             f"{text!r}")
        values.append(int(p))
    if len(set(values)) != len(values):
        raise ValueError(f"a number of examples per class is listed twice in {text!r}")
    return tuple(sorted(values))


def adaptation_seed(seed: int, task: int) -> int:
    """The seed of the adaptation measured after task ``task`` of a trial with ``seed``."""
    return int(np.random.SeedSequence((int(seed), _SEED_TAG, int(task))).generate_state(1)[0])


@dataclass(frozen=True)
class AdaptationSpec:
    """The probe's config keys (same names in the config; meaning in the module docstring).

    Attributes:
        record_adaptation: run the probe.
        adapt_examples_per_class: the k values, as text ("10, 100, 1000").
        adapt_noise: GP observation noise variance sigma^2 (> 0).
        adapt_method: GP solver: auto, parameter, kernel or function.
        adapt_max_parameters: auto solves in parameter space up to this many live parameters.
        adapt_max_kernel: auto forms the kernel up to this many rows N C.
        adapt_cg_max_iter: iteration cap of the function-space CG solve.
        adapt_finetune_lr, adapt_finetune_steps, adapt_finetune_batch: the SGD fine-tuning.
        seed: the trial's seed (key ``seed``).
    """

    record_adaptation: bool = False
    adapt_examples_per_class: str = "10, 100, 1000"
    adapt_noise: float = 0.1
    adapt_method: str = "auto"
    adapt_max_parameters: int = 4096
    adapt_max_kernel: int = 4096
    adapt_cg_max_iter: int = 1000
    adapt_finetune_lr: float = 0.01
    adapt_finetune_steps: int = 100
    adapt_finetune_batch: int = 32
    seed: int = 0

    def __post_init__(self) -> None:
        # types and ranges are the config schema's (sparse_nte.config.groups.adaptation)
        parse_examples(self.adapt_examples_per_class)
        if self.adapt_method not in METHODS:
            raise ValueError(f"AdaptationSpec: adapt_method must be one of {METHODS}, got "
                             f"{self.adapt_method!r}")

    @property
    def examples_per_class(self) -> Tuple[int, ...]:
        return parse_examples(self.adapt_examples_per_class)

    @classmethod
    def from_config(cls, config: Any) -> "AdaptationSpec":
        """Read the keys of :data:`ADAPTATION_KEYS` as attributes of ``config``; raises
        ValueError naming any missing key."""
        missing = [k for k in ADAPTATION_KEYS if not hasattr(config, k)]
        if missing:
            raise ValueError(f"adaptation probe: the config lacks the key(s) {', '.join(missing)} "
                             f"(needed: {', '.join(ADAPTATION_KEYS)})")
        return cls(**{k: getattr(config, k) for k in ADAPTATION_KEYS})


ADAPTATION_KEYS = tuple(f.name for f in fields(AdaptationSpec))


class AdaptationProbe(Probe):
    """See the module docstring. ``stats()`` after task t: the adaptation to task t + 1."""

    def __init__(self, spec: AdaptationSpec) -> None:
        if not isinstance(spec, AdaptationSpec):
            raise ValueError(f"AdaptationProbe expects an AdaptationSpec, got "
                             f"{type(spec).__name__}")
        self.spec = spec
        self._last: Dict[str, Any] = {}

    def on_task_start(self, ctx: TaskContext) -> None:
        self._last = {}

    def on_task_end(self, ctx: TaskContext) -> None:
        self._last = {}
        if not self.spec.record_adaptation or ctx.task >= ctx.num_tasks - 1:
            return
        s = self.spec
        device = torch.device(ctx.device)
        forked: List[torch.device] = [device] if device.type == "cuda" else []
        start = time.perf_counter()
        with torch.random.fork_rng(devices=forked):
            out = fast_adaptation(
                ctx.model, ctx.scenario, new_task=ctx.task + 1, old_tasks=range(ctx.task + 1),
                examples_per_class=s.examples_per_class, noise=float(s.adapt_noise),
                finetune_lr=float(s.adapt_finetune_lr), finetune_steps=s.adapt_finetune_steps,
                finetune_batch=s.adapt_finetune_batch, seed=adaptation_seed(s.seed, ctx.task),
                device=ctx.device,
                gp_options={"method": s.adapt_method, "max_parameters": s.adapt_max_parameters,
                            "max_kernel": s.adapt_max_kernel, "cg_max_iter": s.adapt_cg_max_iter})
        out["seconds"] = time.perf_counter() - start
        self._last = out

    def stats(self) -> Dict[str, Any]:
        return dict(self._last)


def adaptation_enabled(config: Any) -> bool:
    """Whether ``config`` asks for the probe (key ``record_adaptation``)."""
    return bool(AdaptationSpec.from_config(config).record_adaptation)


def build_adaptation_probe(config: Any, env: BuildEnv) -> AdaptationProbe:
    """Registry builder: ``"adaptation": (adaptation_enabled, build_adaptation_probe)`` in
    :mod:`sparse_nte.probes`."""
    return AdaptationProbe(AdaptationSpec.from_config(config))
