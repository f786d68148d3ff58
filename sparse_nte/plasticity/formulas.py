"""The schedule formulas of the papers, as plain functions of the step or task.

* RigL's drop fraction (Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020,
  eq. 1): ``f(t) = alpha / 2 * (1 + cos(pi * t / T_end))``.
* Gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune", 2017, eq. 1):
  ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3``.
* Task-wise growth: ``d_task = d_start + (d_end - d_start) * task / (num_tasks - 1)``.
* Erdős–Rényi-Kernel layer densities (Evci et al. 2020, sec. 3; Mocanu et al. 2018):
  ``d_l = eps * sum(shape_l) / prod(shape_l)``.
"""
from __future__ import annotations

import math
from typing import List, Sequence

__all__ = ["rigl_drop_fraction", "gmp_sparsity", "growth_density", "erk_densities"]


def rigl_drop_fraction(t: float, t_end: float, alpha: float) -> float:
    """RigL's cosine decay of the drop fraction (Evci et al. 2020, eq. 1):
    ``f(t) = alpha / 2 * (1 + cos(pi * t / T_end))`` for ``t <= T_end``, 0 afterwards."""
    if t_end <= 0:
        raise ValueError(f"rigl_drop_fraction: T_end must be > 0, got {t_end!r}")
    if t >= t_end:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * t / t_end))


def gmp_sparsity(t: float, s_i: float, s_f: float, t0: float, n: int, dt: float) -> float:
    """Zhu & Gupta's (2017, eq. 1) cubic sparsity schedule:
    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3`` for ``t0 <= t <= t0 + n*dt``,
    ``s_i`` before ``t0`` and ``s_f`` after ``t0 + n*dt``."""
    if n < 1 or dt <= 0:
        raise ValueError(f"gmp_sparsity: need n >= 1 and dt > 0, got n={n!r}, dt={dt!r}")
    if t <= t0:
        return float(s_i)
    if t >= t0 + n * dt:
        return float(s_f)
    return s_f + (s_i - s_f) * (1.0 - (t - t0) / (n * dt)) ** 3


def growth_density(task: int, num_tasks: int, d_start: float, d_end: float) -> float:
    """Density of task ``task`` under task-wise growth, linear in the task index:
    ``d_task = d_start + (d_end - d_start) * task / (num_tasks - 1)`` (``d_start`` if one task)."""
    if not 0 <= task < num_tasks:
        raise ValueError(f"growth_density: task {task!r} outside 0..{num_tasks - 1}")
    if num_tasks == 1:
        return float(d_start)
    return d_start + (d_end - d_start) * task / (num_tasks - 1)


def erk_densities(shapes: Sequence[Sequence[int]], density: float) -> List[float]:
    """Erdős–Rényi-Kernel layer densities (Evci et al. 2020, sec. 3; Mocanu et al. 2018 for the
    Erdős–Rényi part): ``d_l = eps * sum(shape_l) / prod(shape_l)`` — for a linear layer
    ``eps * (n_in + n_out) / (n_in * n_out)``, for a convolution
    ``eps * (c_in + c_out + k_h + k_w) / (c_in * c_out * k_h * k_w)`` — with ``eps`` chosen so
    that ``sum_l d_l * N_l = density * sum_l N_l``. A layer whose density would exceed 1 is made
    dense and ``eps`` is solved again for the others (largest first, as in RigL's code)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"erk_densities: density must be in (0, 1], got {density!r}")
    if not shapes:
        raise ValueError("erk_densities: no layers")
    numels = [math.prod(s) for s in shapes]
    raw = [sum(s) / math.prod(s) for s in shapes]
    total = sum(numels)
    dense: set = set()
    while True:
        rest = [i for i in range(len(shapes)) if i not in dense]
        budget = density * total - sum(numels[i] for i in dense)
        denom = sum(raw[i] * numels[i] for i in rest)
        if not rest or denom <= 0:
            break
        eps = budget / denom
        worst = max(rest, key=lambda i: raw[i])
        if eps * raw[worst] <= 1.0:
            return [1.0 if i in dense else eps * raw[i] for i in range(len(shapes))]
        dense.add(worst)
    return [1.0] * len(shapes)
