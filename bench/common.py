"""Shared helpers of the benchmark scripts: thread pinning, interleaved timing, the GEMM
(matmul) bound of an MLP training step, figures printed one per line, and the machine's
description.

Clocks. Every timing records both the wall clock (``time.perf_counter``) and the CPU time of
the process (``time.process_time``). With one thread they agree on an idle machine; on a shared
machine the CPU time leaves out the time the process waited for a core, so ratios of CPU
times are the stable figure there. :func:`primary` picks CPU time with one thread and wall time
with more (CPU time sums over threads, so it would hide poor parallel scaling).

Interleaving. :func:`interleaved` runs every function once per repeat, in turn, so that load
from other processes hits all of them alike, and ratios are taken per repeat before the median.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

__all__ = [
    "Sample", "pin_threads", "timed", "interleaved", "median_ratio", "primary", "machine",
    "Figure", "GemmBound", "gemm_bound",
]


@dataclass(frozen=True)
class Sample:
    """One timed run: wall seconds and process CPU seconds."""
    wall: float
    cpu: float


def pin_threads(threads: int) -> int:
    """Set torch's intra-op thread count (and, for child processes, the OpenMP/MKL variables);
    return the count in effect."""
    if not (isinstance(threads, int) and threads >= 1):
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    return torch.get_num_threads()


def timed(fn: Callable[[], Any]) -> Sample:
    """Run ``fn`` once and return its wall and CPU time."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return Sample(time.perf_counter() - w0, time.process_time() - c0)


def interleaved(fns: Sequence[Callable[[], Any]], repeats: int, warmup: int = 1
                ) -> List[List[Sample]]:
    """``samples[i][r]``: repeat ``r`` of ``fns[i]``; the functions run in turn in every repeat
    after ``warmup`` untimed rounds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: List[List[Sample]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            samples[i].append(timed(fn))
    return samples


def primary(threads: int) -> str:
    """The clock ratios are read from: ``"cpu"`` with one thread, ``"wall"`` otherwise."""
    return "cpu" if threads == 1 else "wall"


def median_ratio(num: Sequence[Sample], den: Sequence[Sample], clock: str,
                 num_scale: float = 1.0, den_scale: float = 1.0) -> float:
    """Median over repeats of ``(num_scale * num[r]) / (den_scale * den[r])`` on ``clock``."""
    if len(num) != len(den) or not num:
        raise ValueError("median_ratio needs two equally long, non-empty lists of samples")
    return statistics.median(num_scale * getattr(a, clock) / (den_scale * getattr(b, clock))
                             for a, b in zip(num, den))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine(threads: int) -> Dict[str, Any]:
    """What the figures were measured on: CPU model, cores, torch version, threads, load."""
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_1_5_15": [round(v, 2) for v in load],
    }


@dataclass
class Figure:
    """One reported figure. ``value`` is a ratio (``unit`` "x") or a percentage (``unit`` "%");
    ``goal`` is an upper bound the value should not exceed, or with ``at_least`` a lower bound
    it should reach (a speed-up); None when the issue sets none."""
    name: str
    value: float
    unit: str
    detail: str = ""
    goal: Optional[float] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    at_least: bool = False

    @property
    def met(self) -> Optional[bool]:
        if self.goal is None or not math.isfinite(self.value):
            return None
        return self.value >= self.goal if self.at_least else self.value <= self.goal

    def line(self) -> str:
        if self.unit == "%":
            value = f"{self.value:.2f}%" if abs(self.value) < 10 else f"{self.value:.1f}%"
        else:
            value = f"{self.value:.2f}x"
        goal = ""
        if self.goal is not None:
            bound = f"{self.goal:g}%" if self.unit == "%" else f"{self.goal:g}x"
            goal = (f" [goal {'>=' if self.at_least else '<='} {bound}: "
                    f"{'met' if self.met else 'NOT met'}]")
        return f"{self.name}: {value}{goal}" + (f" ({self.detail})" if self.detail else "")

    def to_json(self) -> Dict[str, Any]:
        out = asdict(self)
        out["met"] = self.met
        return out


@dataclass(frozen=True)
class GemmBound:
    """GEMM times of one training step of an MLP (forward, weight-gradient and input-gradient
    products of every layer), from :func:`gemm_bound`.

    ``all_three`` is the time of 6 x weights x batch FLOPs, i.e. the issue's bound
    ``6 * parameters * examples / GEMM rate`` at the rate measured on the layer shapes used;
    ``needed`` leaves out the input gradient of the first layer, which training never computes
    (the strict bound: the products a training step cannot avoid).
    """
    all_three: Sample
    needed: Sample
    flops: float          # 6 * weights * batch of one step, summed over the batches replayed

    def rate(self, clock: str) -> float:
        """FLOP/s of the replayed products on ``clock``."""
        return self.flops / getattr(self.all_three, clock)


def gemm_bound(layers: Sequence[tuple[int, int]], batches: Sequence[int]
               ) -> Callable[[], GemmBound]:
    """A function that replays the matrix products of training steps of an MLP with
    ``layers`` = [(in, out), ...] in forward order, one step per entry of ``batches`` (rows per
    step), and returns their time.

    Per layer and step: ``addmm(b, x, W^T)`` (forward, as ``F.linear``), ``g^T x`` (weight
    gradient) and ``g W`` (input gradient), on float32 operands laid out as autograd has them,
    outputs allocated per call as in a real step. Operands are made once, outside the timing.
    """
    gen = torch.Generator().manual_seed(0)
    sizes = sorted(set(batches))
    ops = {}
    for b in sizes:
        ops[b] = [(torch.randn(b, i, generator=gen), torch.randn(o, i, generator=gen),
                   torch.randn(o, generator=gen), torch.randn(b, o, generator=gen))
                  for i, o in layers]
    weights = sum(i * o for i, o in layers)
    flops = float(sum(6 * weights * b for b in batches))

    def run() -> GemmBound:
        first_dx_wall = first_dx_cpu = 0.0
        w0, c0 = time.perf_counter(), time.process_time()
        for b in batches:
            step = ops[b]
            for x, w, bias, _ in step:
                torch.addmm(bias, x, w.t())
            for index in range(len(step) - 1, -1, -1):
                x, w, _, g = step[index]
                torch.mm(g.t(), x)
                if index == 0:
                    s = timed(lambda: torch.mm(g, w))
                    first_dx_wall += s.wall
                    first_dx_cpu += s.cpu
                else:
                    torch.mm(g, w)
        total = Sample(time.perf_counter() - w0, time.process_time() - c0)
        return GemmBound(total, Sample(total.wall - first_dx_wall, total.cpu - first_dx_cpu),
                         flops)

    return run
