"""Connection growth and pruning schedules that keep sparsity, Dale's law and optimizer state
consistent.

A schedule owns the masks (``zero_mask``) of the :class:`~sparse_nte.layers.SparseWeightsBase`
layers of a model (:func:`plastic_layers`: all but the output heads) and changes them at
documented moments of training:

* :class:`SET` (Mocanu et al., "Scalable training of artificial neural networks with adaptive
  sparse connectivity inspired by network science", Nature Communications 2018): every
  ``interval`` steps drop the fraction ``zeta`` of live weights closest to zero, positives and
  negatives separately, and regrow as many at random empty positions.
* :class:`RigL` (Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020): drop
  the smallest magnitudes, grow where the dense gradient is largest, with the drop fraction
  ``f(t) = alpha / 2 * (1 + cos(pi * t / T_end))``.
* :class:`GradualMagnitudePruning` (Zhu & Gupta, "To prune, or not to prune", 2017):
  ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3`` at ``t = t0 + dt, ..., t0 + n*dt``.
* :class:`TaskwiseGrowth`: at every new task grow the density from ``d_start`` towards
  ``d_end``; connections are owned by the task that created them (PackNet-style ownership,
  Mallya & Lazebnik 2018) and those of earlier tasks learn with a learning-rate factor
  (0 = frozen).
* :class:`NTEPosteriorPruning`: the posterior pruning rules of :mod:`sparse_nte.nte_prune`.
* :class:`StaticConnectivity` (``plasticity = none``): no change after the start.

With ``erk`` every schedule first re-allocates the layer densities by the Erdős–Rényi-Kernel
rule (:func:`apply_erk`) when task 0 starts.

Rules the schedules keep (and the tests check):

* Counts are kept per output unit: every unit (row of the weight viewed as
  ``(out_units, fan_in)``) has ``round(density * fan_in)`` live inputs after a
  density-changing event, as :class:`~sparse_nte.layers.SparseWeights` draws them at
  construction; drop-and-regrow events (SET, RigL) keep each unit's count unchanged. "Density"
  of a layer is live (unmasked) weights / all weights, so after an event it is exactly
  ``round(density * fan_in) / fan_in``. (NTE pruning is the exception: its rules act on the
  layer's posterior as a whole.)
* Dale's law: drop and grow happen separately among the excitatory and the inhibitory inputs
  of each unit, so the number of live E and I synapses of every unit is unchanged by SET/RigL;
  density changes split the unit's new count between E and I in the unit's current proportion
  (nearest integer). Growth creates only weights of the presynaptic sign, and RigL scores an
  empty position by the gradient that would move it in that sign, ``max(0, -s * g)``.
* New weights start at 0 under additive optimizers (SGD, Adam) and at ``sign * init_scale``
  under multiplicative ones (NTE: a weight at exactly 0 can never move multiplicatively).
* Every change of a layer is one atomic mask update (new weights written, then
  :meth:`~sparse_nte.layers.SparseWeightsBase.set_zero_mask`), followed by
  :func:`sparse_nte.optim_state.reset_positions` for the pruned and grown positions.
  A weight pruned in an event is never regrown in the same event. Ties in a ranking are broken
  at random (seeded), never by position.
* Every event appends one plain dict per layer to :attr:`PlasticitySchedule.history`:
  ``{"schedule", "task", "step", "layer", "pruned", "grown", "density"}``.

The runner drives a schedule with three calls per step and one per task (``step`` = number of
optimizer steps taken in the whole run before this one, starting at 0)::

    schedule = build_schedule(config, model, optimizer, steps_per_task, num_tasks)
    for task in range(num_tasks):
        schedule.on_task_start(task)
        for x, y, t in batches:
            optimizer.zero_grad()
            criterion(model(x, t), y).backward()
            schedule.after_backward(step)          # before optimizer.step(); checks `step`
            optimizer.step()
            schedule.after_step(step)              # mask updates happen here
            step += 1

With the NTE optimizer, whose ``step(closure)`` runs the forward and backward passes itself,
call ``schedule.after_backward(step)`` right before ``optimizer.step(closure)``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from sparse_nte.layers import SparseWeightsBase
from sparse_nte.optim_state import reset_positions

__all__ = [
    "PlasticitySchedule",
    "SET",
    "RigL",
    "GradualMagnitudePruning",
    "TaskwiseGrowth",
    "NTEPosteriorPruning",
    "StaticConnectivity",
    "DenseGradient",
    "build_schedule",
    "plastic_layers",
    "rigl_drop_fraction",
    "gmp_sparsity",
    "growth_density",
    "erk_densities",
    "apply_erk",
    "erk_layer_densities",
    "is_multiplicative",
    "live_counts",
]

LayerList = Sequence[Tuple[str, SparseWeightsBase]]
StepsPerTask = Union[int, Sequence[int]]


# ---------------------------------------------------------------------------------------------
# Schedule formulas
# ---------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------
# Mask surgery
# ---------------------------------------------------------------------------------------------
def is_multiplicative(optimizer: Optional[torch.optim.Optimizer], param: torch.Tensor) -> bool:
    """True if ``optimizer`` updates ``param`` multiplicatively (a weight at 0 cannot move).

    An optimizer declares it with an attribute ``multiplicative``: a bool, or a callable taking
    the parameter (for optimizers that treat some parameters additively). The NTE optimizer
    (:class:`sparse_nte.nte.NTE`) is multiplicative for the parameters it manages
    (``managed_params()``); the others take plain SGD steps. Stock optimizers are additive.
    """
    if optimizer is None:
        return False
    flag = getattr(optimizer, "multiplicative", None)
    if flag is not None:
        return bool(flag(param)) if callable(flag) else bool(flag)
    if _is_nte(optimizer):
        return any(p is param for p in optimizer.managed_params())
    return False


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1)


def live_counts(layer: SparseWeightsBase) -> torch.Tensor:
    """Number of live (unmasked) inputs of every output unit, int64 ``(out_units,)``."""
    return (~_rows(layer.zero_mask)).sum(dim=1)


def _density(layer: SparseWeightsBase) -> float:
    return float((~layer.zero_mask).sum().item()) / layer.zero_mask.numel()


def _exc_columns(layer: SparseWeightsBase) -> Optional[torch.Tensor]:
    """(fan_in,) bool, True at the inputs of a unit that come from excitatory units; None
    without Dale's law. The same for every output unit (a column property)."""
    s = layer.sign_tensor()
    if s is None:
        return None
    return s.expand((1,) + tuple(layer.weight.shape[1:])).reshape(-1) > 0


def _sign_groups(layer: SparseWeightsBase) -> List[Optional[torch.Tensor]]:
    """The input groups drop and grow are balanced within, as column index tensors: [E, I]
    with Dale's law, [None] (all inputs) without."""
    exc = _exc_columns(layer)
    if exc is None:
        return [None]
    return [torch.nonzero(exc).flatten(), torch.nonzero(~exc).flatten()]


def _top_k(scores: torch.Tensor, k: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per row ``r`` the ``k[r]`` largest ``scores`` (``-inf`` marks positions that must not be
    chosen; the caller guarantees enough finite ones). Exact ties at the selection threshold are
    broken uniformly at random, so that e.g. inputs whose gradient is exactly 0 everywhere are
    not chosen by column order. Returns a bool mask of the scores' shape."""
    rows, cols = scores.shape
    selected = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    k = k.to(device=scores.device, dtype=torch.long)
    kmax = int(k.max().item()) if rows else 0
    if kmax == 0:
        return selected
    if kmax > cols or bool((k < 0).any()):
        raise ValueError(f"internal: cannot choose {kmax} of {cols} positions")
    kk = min(kmax + 1, cols)              # one more than needed, to see ties at the boundary
    vals, idx = scores.topk(kk, dim=1, sorted=True)
    take = torch.arange(kk, device=scores.device).unsqueeze(0) < k.unsqueeze(1)
    if not bool(torch.isfinite(vals.masked_fill(~take, 0.0)).all()):
        raise ValueError("plasticity: cannot rank connections: a layer has non-finite weights "
                         "or gradients (has the training diverged?)")
    selected.scatter_(1, idx, take)
    active = k > 0
    thr = vals.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    nxt = vals.gather(1, k.clamp(max=kk - 1).unsqueeze(1)).squeeze(1)
    tied = active & (k < kk) & (nxt == thr)
    if bool(tied.any()):                  # rows where the k-th value recurs beyond rank k
        r = torch.nonzero(tied).flatten()
        s, t = scores[r], thr[r].unsqueeze(1)
        above, tie = s > t, s == t
        need = k[r] - above.sum(dim=1)
        keys = torch.rand(s.shape, generator=generator).to(s.device).masked_fill(~tie, -1.0)
        pick = keys.topk(int(need.max().item()), dim=1).indices
        chosen = torch.zeros_like(tie).scatter_(
            1, pick, torch.arange(pick.shape[1], device=s.device).unsqueeze(0) < need.unsqueeze(1))
        selected[r] = above | (chosen & tie)
    return selected


def _random_per_row(eligible: torch.Tensor, k: torch.Tensor,
                    generator: torch.Generator) -> torch.Tensor:
    """Per row ``r`` a uniformly random set of ``k[r]`` eligible positions (bool mask).

    Draws columns uniformly with replacement and keeps the first ``k[r]`` distinct eligible ones
    of each row, which is sequential sampling without replacement from the eligible set, hence
    uniform over its ``k``-subsets; it touches ``O(k / p)`` entries per row (p = eligible
    fraction) instead of sorting the row. Rows that draw too few fall back to random keys.
    """
    rows, cols = eligible.shape
    dev = eligible.device
    selected = torch.zeros(rows, cols, dtype=torch.bool, device=dev)
    k = k.to(device=dev, dtype=torch.long)
    if rows == 0 or int(k.max().item()) == 0:
        return selected
    n_eligible = eligible.sum(dim=1)
    if bool((k > n_eligible).any()):
        raise ValueError("internal: asked for more positions than are eligible")
    active = k > 0
    p = float(n_eligible[active].min().item()) / cols
    draws_per_row = int(math.ceil(1.5 * int(k.max().item()) / p)) + 16
    todo = active
    if draws_per_row < cols:
        draws = torch.randint(0, cols, (rows, draws_per_row), generator=generator).to(dev)
        ok = eligible.gather(1, draws)
        ordered, order = draws.sort(dim=1, stable=True)
        first_sorted = torch.ones_like(ok)
        first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        first = torch.zeros_like(ok).scatter_(1, order, first_sorted)
        valid = ok & first
        take = valid & (valid.cumsum(dim=1) <= k.unsqueeze(1))
        r, j = torch.nonzero(take, as_tuple=True)
        selected[r, draws[r, j]] = True
        todo = take.sum(dim=1) < k
    if bool(todo.any()):
        r = torch.nonzero(todo).flatten()
        keys = torch.rand(len(r), cols, generator=generator).to(dev)
        selected[r] = _top_k(keys.masked_fill(~eligible[r], -math.inf), k[r], generator)
    return selected


def _in_columns(sub: torch.Tensor, cols: Optional[torch.Tensor], shape: torch.Size) -> torch.Tensor:
    """Spread a selection made on the column subset ``cols`` back to the full rows."""
    if cols is None:
        return sub
    out = torch.zeros(shape, dtype=torch.bool, device=sub.device)
    r, j = torch.nonzero(sub, as_tuple=True)
    out[r, cols[j]] = True
    return out


def _grow(live: torch.Tensor, k: torch.Tensor, cols: Optional[torch.Tensor],
          scores: Optional[torch.Tensor], generator: torch.Generator) -> torch.Tensor:
    """``k[r]`` empty positions of every row among the columns ``cols`` (all if None): those
    with the largest ``scores``, or uniformly random ones with ``scores=None``."""
    empty = ~live if cols is None else ~live.index_select(1, cols)
    if scores is None:
        sub = _random_per_row(empty, k, generator)
    else:
        s = scores if cols is None else scores.index_select(1, cols)
        sub = _top_k(s.masked_fill(~empty, -math.inf), k, generator)
    return _in_columns(sub, cols, live.shape)


class _Live:
    """The live weights of a layer in compact form: ``idx[r, j]`` is the column of the j-th live
    input of unit r (``valid`` marks real entries when units have different counts), ``w`` their
    values. Selections among live weights work on these (units x live) matrices."""

    def __init__(self, layer: SparseWeightsBase) -> None:
        self.weight = _rows(layer.weight.detach())
        self.live = ~_rows(layer.zero_mask)
        rows, self.fan_in = self.live.shape
        counts = self.live.sum(dim=1)
        nmax = int(counts.max().item()) if rows else 0
        r, c = torch.nonzero(self.live, as_tuple=True)
        if bool((counts == nmax).all()):
            self.idx = c.view(rows, nmax)
            self.valid = torch.ones(rows, nmax, dtype=torch.bool, device=c.device)
        else:
            pos = torch.arange(len(r), device=c.device) - (counts.cumsum(0) - counts)[r]
            self.idx = torch.zeros(rows, nmax, dtype=torch.long, device=c.device)
            self.valid = torch.zeros(rows, nmax, dtype=torch.bool, device=c.device)
            self.idx[r, pos] = c
            self.valid[r, pos] = True
        self.w = self.weight.gather(1, self.idx)
        exc = _exc_columns(layer)
        self.exc = None if exc is None else exc[self.idx] & self.valid   # live E inputs
        self.exc_cols = exc

    def groups(self) -> List[Tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """(live members in compact form, columns) of each sign group."""
        if self.exc is None:
            return [(self.valid, None)]
        return [(self.exc, torch.nonzero(self.exc_cols).flatten()),
                (self.valid & ~self.exc, torch.nonzero(~self.exc_cols).flatten())]

    def drop_smallest(self, members: torch.Tensor, k: torch.Tensor,
                      generator: torch.Generator) -> torch.Tensor:
        """Full-size mask of the ``k[r]`` smallest-magnitude weights among ``members``."""
        sub = _top_k((-self.w.abs()).masked_fill(~members, -math.inf), k, generator)
        out = torch.zeros_like(self.live)
        r, j = torch.nonzero(sub, as_tuple=True)
        out[r, self.idx[r, j]] = True
        return out


def _random_signs(shape: torch.Size, generator: torch.Generator,
                  device: torch.device) -> torch.Tensor:
    return torch.randint(0, 2, tuple(shape), generator=generator).to(device).mul_(2).sub_(1)


def _commit(layer: SparseWeightsBase, optimizer: Optional[torch.optim.Optimizer],
            new_live: torch.Tensor, init_sign: Optional[torch.Tensor], init_scale: float,
            generator: torch.Generator,
            new_values: Optional[torch.Tensor] = None) -> Tuple[int, int, float]:
    """Apply a new live mask (rows x fan_in) to ``layer`` as one update and reset the optimizer
    state at the changed positions. Returns (pruned, grown, density).

    Grown weights start at 0, or at ``sign * init_scale`` when the optimizer is multiplicative,
    where ``sign`` is the presynaptic sign with Dale's law, else ``init_sign`` where it is
    non-zero and a random sign elsewhere. ``new_values`` (rows x fan_in) overrides the start
    values (used by ERK).
    """
    w = layer.weight
    old_live = ~_rows(layer.zero_mask)
    grown = new_live & ~old_live
    pruned = old_live & ~new_live
    n_grown, n_pruned = int(grown.sum().item()), int(pruned.sum().item())
    if n_grown == 0 and n_pruned == 0:
        return 0, 0, _density(layer)
    with torch.no_grad():
        if n_grown:
            if new_values is not None:
                start = new_values
            elif is_multiplicative(optimizer, w):
                dale = layer.sign_tensor()
                if dale is not None:
                    sign = _rows(dale.expand_as(w))
                else:
                    sign = _rows(_random_signs(w.shape, generator, w.device)).to(w.dtype)
                    if init_sign is not None:
                        sign = torch.where(init_sign != 0, init_sign.to(w.dtype), sign)
                start = sign.to(w.dtype) * init_scale
            else:
                start = torch.zeros((), dtype=w.dtype, device=w.device)
            start = start.reshape(w.shape) if start.dim() else start
            w.copy_(torch.where(grown.view(w.shape), start, w))
        layer.set_zero_mask((~new_live).view(w.shape))
    density = _density(layer)
    layer.sparsity = 1.0 - density
    if optimizer is not None:
        reset_positions(optimizer, w, (grown | pruned).view(w.shape))
    return n_pruned, n_grown, density


def _drop_regrow(layer: SparseWeightsBase, fraction: float, grow_scores: Optional[torch.Tensor],
                 generator: torch.Generator,
                 by_value_sign: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Drop ``round(fraction * n)`` smallest-magnitude live weights of every unit and sign group
    and grow as many at the empty positions of the same group with the largest ``grow_scores``
    (uniformly random ones with ``grow_scores=None``). Returns (new_live, grown). Drops are
    capped by the group's empty positions so that every unit keeps its count exactly.

    ``by_value_sign`` (SET without Dale's law): count positive and negative weights separately
    for the drop (Mocanu et al. 2018) and grow anywhere in the row.
    """
    lv = _Live(layer)
    live = lv.live
    if lv.exc is None and by_value_sign:
        n_empty = lv.fan_in - lv.valid.sum(dim=1)
        pos, neg = lv.valid & (lv.w >= 0), lv.valid & (lv.w < 0)
        k_pos = torch.round(fraction * pos.sum(dim=1)).long().minimum(n_empty)
        k_neg = torch.round(fraction * neg.sum(dim=1)).long().minimum(n_empty - k_pos)
        dropped = lv.drop_smallest(pos, k_pos, generator) | lv.drop_smallest(neg, k_neg, generator)
        grown = _grow(live, k_pos + k_neg, None, grow_scores, generator)
    else:
        dropped = torch.zeros_like(live)
        grown = torch.zeros_like(live)
        for members, cols in lv.groups():
            n_cols = lv.fan_in if cols is None else len(cols)
            n = members.sum(dim=1)
            k = torch.round(fraction * n).long().minimum(n_cols - n)
            dropped |= lv.drop_smallest(members, k, generator)
            grown |= _grow(live, k, cols, grow_scores, generator)
    return (live & ~dropped) | grown, grown


def _resize(layer: SparseWeightsBase, density: float, grow: bool,
            generator: torch.Generator, allow_drop: bool = True) -> torch.Tensor:
    """New live mask giving every unit ``round(density * fan_in)`` live inputs: units above the
    target lose their smallest-magnitude weights, units below gain uniformly random empty
    positions (with ``grow=False`` units below the target keep their count; with
    ``allow_drop=False`` units above it keep theirs). With Dale's law the unit's new count is
    split between E and I in its current proportion (nearest integer; by the E fraction of its
    inputs if it had none)."""
    lv = _Live(layer)
    live = lv.live
    rows, fan_in = live.shape
    target = int(round(density * fan_in))
    groups = lv.groups()
    if lv.exc is None:
        targets = [torch.full((rows,), target, dtype=torch.long, device=live.device)]
    else:
        n_live = lv.valid.sum(dim=1)
        e_live = lv.exc.sum(dim=1)
        n_exc_cols = int(lv.exc_cols.sum().item())
        share = torch.where(n_live > 0, e_live.double() / n_live.clamp(min=1).double(),
                            torch.full_like(n_live, n_exc_cols, dtype=torch.double) / fan_in)
        e_t = torch.round(target * share).long().clamp(min=max(0, target - (fan_in - n_exc_cols)),
                                                        max=n_exc_cols)
        targets = [e_t, target - e_t]
    new_live = live.clone()
    for (members, cols), t in zip(groups, targets):
        current = members.sum(dim=1)
        if allow_drop:
            new_live &= ~lv.drop_smallest(members, (current - t).clamp(min=0), generator)
        if grow:
            new_live |= _grow(live, (t - current).clamp(min=0), cols, None, generator)
    return new_live


# ---------------------------------------------------------------------------------------------
# Layers under plasticity
# ---------------------------------------------------------------------------------------------
def plastic_layers(model: nn.Module) -> List[Tuple[str, SparseWeightsBase]]:
    """The ``(name, layer)`` pairs whose masks schedules change: every
    :class:`~sparse_nte.layers.SparseWeightsBase` of ``model`` in module order, except those
    inside ``model.heads`` (the output heads of :mod:`models` are dense read-outs; they are
    SparseWeights only to carry Dale's signs). Hidden layers built as plain ``nn.Linear`` /
    ``nn.Conv2d`` (dense, no Dale's law) are not plastic."""
    heads = getattr(model, "heads", None)
    skip = {id(m) for m in heads.modules()} if isinstance(heads, nn.Module) else set()
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, SparseWeightsBase) and id(m) not in skip]


def erk_layer_densities(layers: LayerList) -> List[float]:
    """The densities :func:`apply_erk` gives ``layers``: the ERK allocation of their current
    total density, rounded to whole inputs per unit, ``round(d_l * fan_in) / fan_in``."""
    shapes = [tuple(layer.weight.shape) for _, layer in layers]
    live_total = sum(int((~layer.zero_mask).sum().item()) for _, layer in layers)
    total = sum(layer.zero_mask.numel() for _, layer in layers)
    fans = [layer.weight[0].numel() for _, layer in layers]
    return [round(d * f) / f for d, f in zip(erk_densities(shapes, live_total / total), fans)]


def apply_erk(layers: LayerList, optimizer: Optional[torch.optim.Optimizer],
              generator: torch.Generator) -> List[Dict[str, Any]]:
    """Re-allocate the live weights of ``layers`` by :func:`erk_densities`, keeping their total
    (up to one weight per unit of rounding; see :func:`erk_layer_densities`). Run before
    training.

    Where a layer gets denser, its new weights are drawn by resampling its own live weights
    (the same sign group with Dale's law, so the builder's initial distribution and E/I scaling
    are kept); then every live weight of the layer is scaled by ``sqrt(d_old / d_new)`` so that
    the fan-in-normalised variance ``Var(w) * fan_in * density`` of the initialisation is
    unchanged. Returns one event dict per layer (``pruned``, ``grown``, ``density``).
    """
    targets = erk_layer_densities(layers)
    events = []
    for (name, layer), d_new in zip(layers, targets):
        d_old = _density(layer)
        w = _rows(layer.weight.detach())
        new_live = _resize(layer, d_new, True, generator)
        live = ~_rows(layer.zero_mask)
        values = torch.zeros_like(w)
        exc = _exc_columns(layer)
        for g in ([None] if exc is None else [exc, ~exc]):
            pool = w[live if g is None else live & g]
            if pool.numel() == 0:
                continue
            pick = torch.randint(0, pool.numel(), w.shape, generator=generator).to(w.device)
            values = pool[pick] if g is None else torch.where(g, pool[pick], values)
        pruned, grown, density = _commit(layer, optimizer, new_live, None, 0.0, generator,
                                         new_values=values)
        if density > 0:
            with torch.no_grad():
                layer.weight.mul_(math.sqrt(d_old / density))
        events.append({"layer": name, "pruned": pruned, "grown": grown, "density": density})
    return events


def _is_nte(optimizer: Optional[torch.optim.Optimizer]) -> bool:
    from sparse_nte.nte import NTE  # local import: nte imports layers, not plasticity

    return isinstance(optimizer, NTE)


def _is_batched(t: torch.Tensor) -> bool:
    """True for a tensor seen inside vmap (e.g. a batched backward pass of the NTE optimizer)."""
    try:
        return bool(torch._C._functorch.is_batchedtensor(t))
    except AttributeError:  # pragma: no cover - older torch
        return False


class DenseGradient:
    """The dense loss gradient of a sparse layer's weight, from its input and output gradient.

    For a linear layer ``y = x W^T + b``: ``dL/dW = sum_b delta_b^T x_b`` with
    ``delta = dL/dy`` (leading dimensions of ``x`` are flattened into the batch); for a
    convolution ``torch.nn.grad.conv2d_weight(x, W.shape, delta, ...)``. Unlike ``W.grad`` it
    is not masked, and it does not need the optimizer to form weight gradients. Input and
    output gradient are captured (by a forward hook on the layer and a tensor hook on its
    output) only while :meth:`arm` is on, and only the first backward pass through each call is
    used (later passes through the same graph, e.g. batched per-example passes, are ignored).
    Gradients of several forward calls in one step add up.
    """

    def __init__(self, layer: SparseWeightsBase) -> None:
        m = layer.module
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"DenseGradient supports Conv2d with numeric zero padding, got "
                                 f"padding={m.padding!r}, padding_mode={m.padding_mode!r}")
        elif not isinstance(m, nn.Linear):
            raise ValueError(f"DenseGradient supports Linear and Conv2d layers, got "
                             f"{type(m).__name__}")
        self.layer = layer
        self.armed = False
        self.grad: Optional[torch.Tensor] = None
        self._handle = layer.register_forward_hook(self._on_forward)

    def arm(self, on: bool) -> None:
        """Start (or stop) capturing; clears the gradient captured so far."""
        self.armed = bool(on)
        self.grad = None

    def close(self) -> None:
        self._handle.remove()

    def _on_forward(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not (self.armed and torch.is_grad_enabled() and isinstance(output, torch.Tensor)
                and output.requires_grad):
            return
        x = args[0].detach()
        used = [False]

        def on_grad(delta: torch.Tensor) -> None:
            if used[0] or _is_batched(delta):
                return
            used[0] = True
            self._add(x, delta.detach())

        output.register_hook(on_grad)

    def _add(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        m = self.layer.module
        if isinstance(m, nn.Conv2d):
            g = torch.nn.grad.conv2d_weight(x, m.weight.shape, delta, m.stride, m.padding,
                                            m.dilation, m.groups)
        else:
            g = delta.reshape(-1, delta.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        self.grad = g if self.grad is None else self.grad.add_(g)


# ---------------------------------------------------------------------------------------------
# Schedules
# ---------------------------------------------------------------------------------------------
class PlasticitySchedule:
    """Base class: bookkeeping of tasks and steps, the event history and checkpointing.

    Args:
        layers: ``(name, layer)`` pairs to act on (see :func:`plastic_layers`).
        optimizer: the optimizer training the layers (its state is reset where connections
            change), or None.
        steps_per_task: optimizer steps in each task (one int for all, or one per task).
        num_tasks: number of tasks.
        init_scale: magnitude of new weights under multiplicative optimizers.
        erk: re-allocate the layers' densities by :func:`apply_erk` when task 0 starts (before
            any step), keeping the total number of connections. (Not at construction, so that a
            schedule built for a run resumed from a checkpoint leaves the restored masks alone.)
        seed: seed of the schedule's own random generator (random growth, tie breaks).
    """

    kind = ""
    needs_layers = True

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 steps_per_task: StepsPerTask, num_tasks: int, init_scale: float = 1e-3,
                 erk: bool = False, seed: int = 0) -> None:
        self.layers: List[Tuple[str, SparseWeightsBase]] = list(layers)
        if not self.layers and (self.needs_layers or erk):
            raise ValueError(f"{type(self).__name__}: the model has no SparseWeights layers to "
                             f"prune or grow (plasticity needs sparse_nte.layers.SparseWeights)")
        names = [n for n, _ in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: layer names must be unique, got {names}")
        for name, layer in self.layers:
            if not isinstance(layer, SparseWeightsBase):
                raise ValueError(f"{type(self).__name__}: layer {name!r} is a "
                                 f"{type(layer).__name__}, not a SparseWeightsBase")
        if not (isinstance(num_tasks, int) and num_tasks >= 1):
            raise ValueError(f"num_tasks must be an int >= 1, got {num_tasks!r}")
        steps = ([steps_per_task] * num_tasks if isinstance(steps_per_task, int)
                 else list(steps_per_task))
        if len(steps) != num_tasks or not all(isinstance(s, int) and s >= 1 for s in steps):
            raise ValueError(f"steps_per_task must be an int >= 1 or {num_tasks} such ints, "
                             f"got {steps_per_task!r}")
        if not (isinstance(init_scale, (int, float)) and init_scale > 0):
            raise ValueError(f"init_scale (grow_init_scale) must be > 0, got {init_scale!r}")
        if optimizer is not None:
            trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
            missing = [n for n, l in self.layers if id(l.weight) not in trained]
            if missing:
                raise ValueError(f"{type(self).__name__}: the weights of layers {missing} are not "
                                 f"trained by the given {type(optimizer).__name__}")
        self.optimizer = optimizer
        self.steps_per_task: Tuple[int, ...] = tuple(steps)
        self.num_tasks = num_tasks
        self.init_scale = float(init_scale)
        self.generator = torch.Generator().manual_seed(int(seed))
        self.history: List[Dict[str, Any]] = []
        self.task = -1
        self._task_origin: Optional[int] = None   # global step of the task's first step
        self._next_step = 0                        # global step expected next
        self.erk = bool(erk)

    # -- driving calls ------------------------------------------------------------------------
    def on_task_start(self, task_index: int) -> None:
        """Call before the first step of every task (tasks in order, starting at 0)."""
        if not (isinstance(task_index, int) and self.task < task_index < self.num_tasks):
            raise ValueError(f"{type(self).__name__}.on_task_start({task_index!r}): tasks must "
                             f"start in increasing order within 0..{self.num_tasks - 1} "
                             f"(current task {self.task})")
        self.task = task_index
        self._task_origin = None
        if task_index == 0 and self.erk:
            for event in apply_erk(self.layers, self.optimizer, self.generator):
                self.history.append({"schedule": "erk", "task": 0, "step": self._next_step,
                                     **event})
        self._task_start()

    def after_backward(self, step: int) -> None:
        """Call after ``loss.backward()`` and before ``optimizer.step()`` of global step ``step``
        (with NTE: right before ``optimizer.step(closure)``). Checks the step count; schedules
        that act between the gradient and the step do so here."""
        self._observe(step)
        self._before_optimizer_step(step)

    def after_step(self, step: int) -> None:
        """Call after ``optimizer.step()`` of global step ``step``; mask updates happen here."""
        self._observe(step)
        self._after_optimizer_step(step)
        self._next_step = step + 1

    def task_step(self, step: int) -> int:
        """Index of global step ``step`` within the current task (0 for its first step)."""
        return step - (self._task_origin if self._task_origin is not None else step)

    def close(self) -> None:
        """Remove any hooks the schedule installed."""

    # -- subclass hooks -----------------------------------------------------------------------
    def _task_start(self) -> None:
        pass

    def _before_optimizer_step(self, step: int) -> None:
        pass

    def _after_optimizer_step(self, step: int) -> None:
        pass

    # -- helpers ------------------------------------------------------------------------------
    def _observe(self, step: int) -> None:
        if self.task < 0:
            raise ValueError(f"{type(self).__name__}: call on_task_start(0) before the first step")
        if not isinstance(step, int) or step < self._next_step - 1:
            raise ValueError(f"{type(self).__name__}: step must be the global optimizer step count "
                             f"(int, non-decreasing), got {step!r} after {self._next_step - 1}")
        if self._task_origin is None:
            self._task_origin = step

    def _record(self, step: int, name: str, pruned: int, grown: int, density: float) -> None:
        self.history.append({"schedule": self.kind, "task": int(self.task), "step": int(step),
                             "layer": name, "pruned": int(pruned), "grown": int(grown),
                             "density": float(density)})

    def _interval_event(self, step: int, interval: int, end_fraction: float) -> bool:
        done = self.task_step(step) + 1
        return done % interval == 0 and done < end_fraction * self.steps_per_task[self.task]

    # -- checkpointing ------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to resume: position in the run, history, random generator."""
        return {"kind": self.kind, "task": self.task, "task_origin": self._task_origin,
                "next_step": self._next_step, "history": [dict(h) for h in self.history],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"{type(self).__name__}: state of a {state.get('kind')!r} schedule "
                             f"cannot be loaded into a {self.kind!r} schedule")
        self.task = int(state["task"])
        self._task_origin = state["task_origin"]
        self._next_step = int(state["next_step"])
        self.history = [dict(h) for h in state["history"]]
        self.generator.set_state(state["generator"])


def _check_interval(interval: Any, end_fraction: Any, where: str) -> None:
    if not (isinstance(interval, int) and interval >= 1):
        raise ValueError(f"{where}: plasticity_interval must be an int >= 1, got {interval!r}")
    if not (isinstance(end_fraction, (int, float)) and 0.0 < end_fraction <= 1.0):
        raise ValueError(f"{where}: plasticity_end must be in (0, 1], got {end_fraction!r}")


def _check_fraction(name: str, value: Any, where: str) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"{where}: {name} must be in [0, 1], got {value!r}")


class SET(PlasticitySchedule):
    """Sparse Evolutionary Training (Mocanu et al. 2018).

    Every ``interval`` steps of a task, while ``t < end_fraction * steps_in_task``: in every
    unit, drop ``round(zeta * n_pos)`` of the smallest positive and ``round(zeta * n_neg)`` of the
    negative weights closest to zero (with Dale's law: of the E and of the I inputs), and regrow
    as many at uniformly random empty positions (of the same group with Dale's law).
    """

    kind = "set"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 zeta: float = 0.3, interval: int = 100, end_fraction: float = 0.75,
                 **kwargs: Any) -> None:
        _check_fraction("set_zeta", zeta, "SET")
        _check_interval(interval, end_fraction, "SET")
        super().__init__(layers, optimizer, **kwargs)
        self.zeta, self.interval, self.end_fraction = float(zeta), interval, float(end_fraction)

    def _after_optimizer_step(self, step: int) -> None:
        if not self._interval_event(step, self.interval, self.end_fraction):
            return
        for name, layer in self.layers:
            new_live, _ = _drop_regrow(layer, self.zeta, None, self.generator, by_value_sign=True)
            self._record(step, name, *_commit(layer, self.optimizer, new_live, None,
                                              self.init_scale, self.generator))


class RigL(PlasticitySchedule):
    """Rigging the Lottery (Evci et al. 2020).

    Every ``interval`` steps of a task while ``t < T_end = end_fraction * steps_in_task``: in
    every unit (and sign group with Dale's law) drop the fraction
    ``f(t) = alpha / 2 * (1 + cos(pi * t / T_end))`` of live weights with the smallest magnitude
    and grow as many at the empty positions with the largest dense-gradient score — ``|g|``
    without Dale's law, ``max(0, -s * g)`` with presynaptic sign ``s`` (only a gradient that
    pushes the weight in its allowed sign can grow it). ``t`` counts steps within the task, so
    the cosine restarts at every task.

    The dense gradient ``g`` is the loss gradient at every position, masked or not, of the step
    the update follows. :class:`~sparse_nte.layers.SparseWeights` zeroes the masked entries of
    ``.grad`` (and the NTE optimizer does not form weight gradients at all), so it is computed
    from the layer's input ``x`` and the gradient ``delta`` at its output, captured by hooks on
    the steps that end with an update only: ``g = sum_b delta_b^T x_b`` for a linear layer,
    ``torch.nn.grad.conv2d_weight`` for a convolution (see :class:`DenseGradient`).
    """

    kind = "rigl"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 alpha: float = 0.3, interval: int = 100, end_fraction: float = 0.75,
                 **kwargs: Any) -> None:
        _check_fraction("rigl_alpha", alpha, "RigL")
        _check_interval(interval, end_fraction, "RigL")
        super().__init__(layers, optimizer, **kwargs)
        self.alpha, self.interval, self.end_fraction = float(alpha), interval, float(end_fraction)
        self._captures = [DenseGradient(layer) for _, layer in self.layers]

    def close(self) -> None:
        for c in self._captures:
            c.close()

    def _arm(self, next_done: int) -> None:
        """Capture dense gradients during the step that makes ``next_done`` steps in the task."""
        t_end = self.end_fraction * self.steps_per_task[self.task]
        armed = next_done % self.interval == 0 and next_done < t_end
        for c in self._captures:
            c.arm(armed)

    def _task_start(self) -> None:
        self._arm(1)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self.task >= 0:   # resume capturing if the next step ends with an update
            origin = self._task_origin if self._task_origin is not None else self._next_step
            self._arm(self._next_step - origin + 1)

    def drop_fraction(self, done: int) -> float:
        """f(t) for a task-step count ``t = done``."""
        return rigl_drop_fraction(done, self.end_fraction * self.steps_per_task[self.task],
                                  self.alpha)

    def _after_optimizer_step(self, step: int) -> None:
        done = self.task_step(step) + 1
        if self._interval_event(step, self.interval, self.end_fraction):
            fraction = self.drop_fraction(done)
            for i, (name, layer) in enumerate(self.layers):
                g = self._captures[i].grad
                if g is None:
                    raise RuntimeError(
                        f"RigL: no gradient reached the output of layer {name!r} during step "
                        f"{step}; RigL needs a backward pass through the layer on every update "
                        f"step (call on_task_start/after_backward/after_step in order)")
                g = _rows(g)
                exc = _exc_columns(layer)
                if exc is None:
                    scores = g.abs()
                    init_sign = -torch.sign(g)     # the direction gradient descent moves
                else:
                    sign = torch.where(exc, 1.0, -1.0).to(g.dtype)
                    scores = (-sign * g).clamp(min=0)
                    init_sign = None
                new_live, _ = _drop_regrow(layer, fraction, scores, self.generator,
                                           by_value_sign=False)
                self._record(step, name, *_commit(layer, self.optimizer, new_live, init_sign,
                                                  self.init_scale, self.generator))
        self._arm(done + 1)


class GradualMagnitudePruning(PlasticitySchedule):
    """Gradual magnitude pruning (Zhu & Gupta 2017).

    At global steps ``t = t0 + j * dt`` (``j = 1..n``, ``t`` = optimizer steps done in the whole
    run) every layer is pruned by magnitude to sparsity
    ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt))**3``, where ``s_i`` is the layer's
    sparsity at the start (so layers of different initial sparsity converge to the same
    ``s_f``). With ``erk`` the initial and the final densities are both ERK allocations (``s_f``
    then is the final sparsity of all layers together). Pruned connections are never regrown.
    """

    kind = "gmp"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 final_sparsity: float, start: int = 0, n: int = 10, interval: int = 100,
                 **kwargs: Any) -> None:
        if not (isinstance(final_sparsity, (int, float)) and 0.0 <= final_sparsity < 1.0):
            raise ValueError(f"GMP: gmp_final_sparsity must be in [0, 1), got {final_sparsity!r}")
        if not (isinstance(start, int) and start >= 0):
            raise ValueError(f"GMP: gmp_start must be an int >= 0, got {start!r}")
        if not (isinstance(n, int) and n >= 1):
            raise ValueError(f"GMP: gmp_n must be an int >= 1, got {n!r}")
        _check_interval(interval, 1.0, "GMP")
        super().__init__(layers, optimizer, **kwargs)
        total = sum(self.steps_per_task)
        if start + n * interval > total:
            raise ValueError(f"GMP: the last pruning step gmp_start + gmp_n * plasticity_interval "
                             f"= {start} + {n} * {interval} = {start + n * interval} lies beyond "
                             f"the run's {total} steps; lower gmp_n or plasticity_interval")
        if self.erk:   # ERK allocates the densities when task 0 starts, and the final ones
            shapes = [tuple(layer.weight.shape) for _, layer in self.layers]
            self.initial_sparsity = [1.0 - d for d in erk_layer_densities(self.layers)]
            self.final_sparsity = [1.0 - d for d in erk_densities(shapes, 1.0 - final_sparsity)]
        else:
            self.initial_sparsity = [1.0 - _density(layer) for _, layer in self.layers]
            self.final_sparsity = [float(final_sparsity)] * len(self.layers)
        too_dense = [(name, round(s_i, 6)) for (name, _), s_i, s_f
                     in zip(self.layers, self.initial_sparsity, self.final_sparsity)
                     if s_i > s_f + 1e-12]
        if too_dense:
            raise ValueError(f"GMP: gmp_final_sparsity={final_sparsity} is below the initial "
                             f"sparsity of layers {too_dense}; pruning cannot lower sparsity")
        self.start, self.n, self.interval = start, n, interval

    def target_sparsity(self, layer_index: int, t: int) -> float:
        """s_t of layer ``layer_index`` after ``t`` optimizer steps of the run."""
        return gmp_sparsity(t, self.initial_sparsity[layer_index], self.final_sparsity[layer_index],
                            self.start, self.n, self.interval)

    def _after_optimizer_step(self, step: int) -> None:
        t = step + 1
        j, rem = divmod(t - self.start, self.interval)
        if rem != 0 or not 1 <= j <= self.n:
            return
        for i, (name, layer) in enumerate(self.layers):
            density = 1.0 - self.target_sparsity(i, t)
            new_live = _resize(layer, density, False, self.generator)
            self._record(step, name, *_commit(layer, self.optimizer, new_live, None,
                                              self.init_scale, self.generator))


class TaskwiseGrowth(PlasticitySchedule):
    """Connections grow from task to task; old ones are protected.

    At the start of task ``k`` every layer grows, at uniformly random empty positions, to
    density ``d_k = d_start + (d_end - d_start) * k / (num_tasks - 1)`` (at task 0 the layers
    are brought to ``d_start``, pruning by magnitude if they are denser; with ``erk`` the layer
    densities are the ERK allocation of ``d_k``). ``owner`` records, per
    layer, the task that created each live connection (-1 = empty), as PackNet's ownership masks
    (Mallya & Lazebnik 2018).

    During task ``k`` the connections owned by tasks ``< k`` learn with the learning-rate factor
    ``old_lr``: every optimizer step is followed by ``w = w_before + old_lr * (w_after -
    w_before)`` at those positions. This scales the optimizer's actual update, so it is an exact
    per-weight learning-rate factor for SGD (with momentum and weight decay), Adam and AdamW —
    scaling the gradient would not be, since Adam is invariant to the gradient's scale.
    ``old_lr = 0`` freezes them exactly; the optimizer state (e.g. momentum) at frozen positions
    keeps evolving but is never applied. Biases are not protected. The protection is part of
    the optimizer step itself (step pre- and post-hooks registered on the optimizer, removed by
    :meth:`close`), so it holds however the step is called; the hooks run before any
    registered later, e.g. :func:`sparse_nte.dale.constrain_optimizer`'s projection.

    Multiplicative optimizers: the factor scales the log-magnitude step. Under NTE the experts'
    log-magnitudes are blended, ``l = l_before + old_lr * (l_after - l_before)``, and the weight
    is rewritten as ``theta0 + s * exp(l)``; frozen experts keep ``l`` and ``w`` exactly. NTE
    renormalises the total magnitude of ALL experts to Z at each step and the protected ones
    are then set back, so the total drifts from Z by what the protected experts would have
    gained or lost; the next step renormalises again. Other multiplicative optimizers get
    ``|w| = |w_before|**(1 - old_lr) * |w_after|**old_lr`` and a reset of their state there.
    """

    kind = "grow"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 start_density: float, end_density: float, old_lr: float = 1.0,
                 **kwargs: Any) -> None:
        for key, v in (("grow_start_density", start_density), ("grow_end_density", end_density)):
            if not (isinstance(v, (int, float)) and 0.0 < v <= 1.0):
                raise ValueError(f"TaskwiseGrowth: {key} must be in (0, 1], got {v!r}")
        if end_density < start_density:
            raise ValueError(f"TaskwiseGrowth: grow_end_density={end_density} is below "
                             f"grow_start_density={start_density}; growth never removes connections "
                             f"(use plasticity = gmp to prune)")
        _check_fraction("grow_old_lr", old_lr, "TaskwiseGrowth")
        if old_lr < 1.0 and optimizer is None:
            raise ValueError("TaskwiseGrowth: grow_old_lr < 1 scales the optimizer's steps; pass "
                             "the optimizer")
        super().__init__(layers, optimizer, **kwargs)
        self.start_density, self.end_density = float(start_density), float(end_density)
        self.old_lr = float(old_lr)
        self.owner: Dict[str, torch.Tensor] = {
            name: torch.where(layer.zero_mask, -1, 0).to(torch.int16) for name, layer in self.layers}
        self._multiplicative = [is_multiplicative(optimizer, layer.weight)
                                for _, layer in self.layers]
        # NTE experts w = theta0 + s exp(l): protection acts on their log-magnitudes l
        self._nte = [_is_nte(optimizer) and "log_magnitude" in optimizer.state.get(layer.weight, {})
                     for _, layer in self.layers]
        self._log_before: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        # (s, theta0) of the protected NTE experts: fixed during a task (only a plasticity
        # event changes them, and growth has events only at task starts)
        self._expert_const: List[Optional[tuple]] = [None] * len(self.layers)
        self._protected: List[Optional[torch.Tensor]] = [None] * len(self.layers)   # bool masks
        self._protected_idx: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._before: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._handles = []
        if self.old_lr < 1.0:
            self._handles = [optimizer.register_step_pre_hook(self._record_old),
                             optimizer.register_step_post_hook(self._protect_old)]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def density_of_task(self, task: int) -> List[float]:
        """Target density of every layer during task ``task``."""
        d = growth_density(task, self.num_tasks, self.start_density, self.end_density)
        if self.erk:
            return erk_densities([tuple(layer.weight.shape) for _, layer in self.layers], d)
        return [d] * len(self.layers)

    def _set_protected(self) -> None:
        """Positions owned by earlier tasks, as a mask and as flat indices."""
        for i, (name, _) in enumerate(self.layers):
            owner = self.owner[name]
            protected = (owner >= 0) & (owner < self.task) if self.task > 0 else None
            self._protected[i] = protected
            self._protected_idx[i] = (None if protected is None
                                      else torch.nonzero(protected.reshape(-1)).flatten())
            self._before[i] = self._log_before[i] = self._expert_const[i] = None

    def _task_start(self) -> None:
        densities = self.density_of_task(self.task)
        for i, (name, layer) in enumerate(self.layers):
            new_live = _resize(layer, densities[i], True, self.generator,
                               allow_drop=self.task == 0)
            result = _commit(layer, self.optimizer, new_live, None, self.init_scale, self.generator)
            owner = self.owner[name]
            owner.masked_fill_(layer.zero_mask, -1)
            owner.masked_fill_(~layer.zero_mask & (owner < 0), self.task)
            self._record(self._next_step, name, *result)
        self._set_protected()

    def _record_old(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """Step pre-hook: record the protected weights (and NTE log-magnitudes). Frozen ones
        (``old_lr = 0``) cannot change during the task, so they are recorded once per task (or
        once after a checkpoint is loaded), at its first step."""
        for i, (_, layer) in enumerate(self.layers):
            idx = self._protected_idx[i]
            if idx is None or (self.old_lr == 0.0 and self._before[i] is not None):
                continue
            w = layer.module.weight   # not .weight: reading it must not re-apply constraints
            self._before[i] = w.detach().reshape(-1).index_select(0, idx)
            if self._nte[i]:
                log = self.optimizer.state[w]["log_magnitude"]
                self._log_before[i] = log.reshape(-1).index_select(0, idx)

    def _protect_old(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """Step post-hook: scale the step of the protected weights by ``old_lr``."""
        f = self.old_lr
        for i, (name, layer) in enumerate(self.layers):
            idx = self._protected_idx[i]
            before = self._before[i]
            if idx is None or before is None:
                continue
            w = layer.module.weight
            nte = self._nte[i]
            with torch.no_grad():
                flat = w.detach().view(-1) if w.is_contiguous() else w.detach().reshape(-1)
                log = self.optimizer.state[w]["log_magnitude"].view(-1) if nte else None
                if f == 0.0:
                    kept = before
                    if nte:
                        log.index_copy_(0, idx, self._log_before[i])
                elif nte:   # scale the log-magnitude step of the experts
                    kept = self._blend_nte(i, w, log, idx, self._log_before[i], f)
                else:
                    after = flat.index_select(0, idx)
                    if self._multiplicative[i]:   # scale the log-magnitude step
                        geo = torch.sign(after) * before.abs().pow(1 - f) * after.abs().pow(f)
                        kept = torch.where(after * before > 0, geo, before + f * (after - before))
                    else:
                        kept = after.sub_(before).mul_(f).add_(before)
                if w.is_contiguous():
                    flat.index_copy_(0, idx, kept)   # shares w's version counter
                else:
                    w.copy_(flat.index_copy(0, idx, kept).view_as(w))
            if self._multiplicative[i] and not nte and self.optimizer is not None:
                reset_positions(self.optimizer, w, self._protected[i])
            if f != 0.0:
                self._before[i] = self._log_before[i] = None

    def _blend_nte(self, i: int, w: torch.Tensor, log: torch.Tensor, idx: torch.Tensor,
                   log_before: torch.Tensor, f: float) -> torch.Tensor:
        """l = l_before + f (l_after - l_before) at ``idx`` (dead experts, l = -inf, stay
        dead), written into the flat log-magnitudes ``log``; returns theta0 + s exp(l) there."""
        if self._expert_const[i] is None:
            st = self.optimizer.state[w]
            sign = st["sign"].reshape(-1).index_select(0, idx).to(log.dtype)
            theta0 = st["theta0"].reshape(-1).index_select(0, idx) if "theta0" in st else None
            self._expert_const[i] = (sign, theta0)
        sign, theta0 = self._expert_const[i]
        blended = log.index_select(0, idx).sub_(log_before).mul_(f).add_(log_before)
        blended.nan_to_num_(nan=-math.inf, neginf=-math.inf)   # -inf - -inf: dead expert
        log.index_copy_(0, idx, blended)
        kept = blended.exp().mul_(sign)
        if theta0 is not None:
            kept.add_(theta0)
        return kept.to(w.dtype)

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["owner"] = {name: t.clone() for name, t in self.owner.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        for name, t in state["owner"].items():
            self.owner[name].copy_(t)
        self._set_protected()


class StaticConnectivity(PlasticitySchedule):
    """``plasticity = none``: the masks never change after construction (where ``erk`` may
    re-allocate the layer densities once). The driving calls are accepted and do nothing, so a
    training loop treats every configuration alike."""

    kind = "none"
    needs_layers = False


class NTEPosteriorPruning(PlasticitySchedule):
    """Posterior pruning of the NTE ensemble (:mod:`sparse_nte.nte_prune`) as a schedule.

    Every ``interval`` steps of a task while ``t < end_fraction * steps_in_task``, every layer
    loses the experts :func:`sparse_nte.nte_prune.prune_mask` selects: with ``rule="magnitude"``
    the ``round(rate * n_live)`` smallest posterior weights of the layer, with ``rule="score"``
    those whose running score ``v = m v + (1 - m) g s`` is at least ``mean + z * std`` over the
    layer's live experts. The rules act on the layer's posterior as a whole, so unlike the other
    schedules they keep neither equal counts per unit nor the E/I split (Dale signs are kept:
    pruning only removes weights). Pruned connections never return; the NTE normaliser Z is
    unchanged, so the surviving experts are renormalised to the same total at the next step.
    Needs the :class:`~sparse_nte.nte.NTE` optimizer managing every layer's weight (and built
    with ``score_momentum`` for the score rule).
    """

    kind = "nte_prune"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 rule: str = "magnitude", rate: float = 0.01, z: float = 2.33,
                 interval: int = 100, end_fraction: float = 0.75, **kwargs: Any) -> None:
        from sparse_nte.nte import NTE
        from sparse_nte.nte_prune import PRUNE_RULES

        if not isinstance(optimizer, NTE):
            raise ValueError(f"NTEPosteriorPruning: plasticity = nte_prune needs optimizer = nte "
                             f"(it prunes by the experts' posterior), got "
                             f"{type(optimizer).__name__}")
        if rule not in PRUNE_RULES:
            raise ValueError(f"NTEPosteriorPruning: nte_prune_rule must be one of {PRUNE_RULES}, "
                             f"got {rule!r}")
        if not (isinstance(rate, (int, float)) and 0.0 < rate < 1.0):
            raise ValueError(f"NTEPosteriorPruning: nte_prune_rate must be in (0, 1), got {rate!r}")
        if not (isinstance(z, (int, float)) and math.isfinite(z) and z > 0):
            raise ValueError(f"NTEPosteriorPruning: nte_prune_z must be > 0, got {z!r}")
        if rule == "score" and optimizer.score_momentum is None:
            raise ValueError("NTEPosteriorPruning: nte_prune_rule = score needs the NTE optimizer "
                             "built with score_momentum = nte_prune_momentum (build_nte_optimizer "
                             "does so for plasticity = nte_prune)")
        _check_interval(interval, end_fraction, "NTEPosteriorPruning")
        super().__init__(layers, optimizer, **kwargs)
        managed = {id(p) for p in optimizer.managed_params()}
        unmanaged = [name for name, layer in self.layers if id(layer.weight) not in managed]
        if unmanaged:
            raise ValueError(f"NTEPosteriorPruning: the NTE optimizer does not manage the weights "
                             f"of layers {unmanaged}; there is no posterior to prune them by")
        self.rule, self.rate, self.z = rule, float(rate), float(z)
        self.interval, self.end_fraction = interval, float(end_fraction)

    def _after_optimizer_step(self, step: int) -> None:
        if not self._interval_event(step, self.interval, self.end_fraction):
            return
        from sparse_nte.nte_prune import prune_mask

        for name, layer in self.layers:
            remove = prune_mask(layer, self.optimizer, self.rule, self.rate, self.z)
            new_live = _rows(~layer.zero_mask & ~remove)
            self._record(step, name, *_commit(layer, self.optimizer, new_live, None,
                                              self.init_scale, self.generator))


# ---------------------------------------------------------------------------------------------
# Construction from the config
# ---------------------------------------------------------------------------------------------
#: The schedules of ``config.plasticity``: name -> class.
SCHEDULES: Dict[str, type] = {"none": StaticConnectivity, "set": SET, "rigl": RigL,
                              "gmp": GradualMagnitudePruning, "grow": TaskwiseGrowth,
                              "nte_prune": NTEPosteriorPruning}
_KINDS = tuple(SCHEDULES)
# The schedule's generator is seeded with seed + this offset: a stream of its own, so that
# switching plasticity on does not change the draws of masks, weights or batches.
_SEED_OFFSET = 0x5E7


def _key(config: Mapping[str, Any], key: str, kind: str) -> Any:
    if key not in config:
        raise ValueError(f"config key {key!r} is required by plasticity = {kind!r} (resolve the "
                         f"experiment through sparse_nte.config, which fills in defaults)")
    return config[key]


def build_schedule(config: Mapping[str, Any], model: nn.Module,
                   optimizer: Optional[torch.optim.Optimizer], steps_per_task: StepsPerTask,
                   num_tasks: int) -> PlasticitySchedule:
    """The schedule selected by ``config["plasticity"]`` for the plastic layers of ``model``
    (see :func:`plastic_layers`); :class:`StaticConnectivity` for ``plasticity = none``.

    ``erk = true`` re-allocates the layer densities by ERK when the schedule is built, for
    every kind (build the schedule before training). ``steps_per_task`` is the number of
    optimizer steps of each task (one int, or one per task). Keys read (:mod:`sparse_nte.config`):
    ``plasticity``, ``plasticity_interval``, ``plasticity_end``, ``set_zeta``, ``rigl_alpha``,
    ``erk``, ``gmp_final_sparsity``, ``gmp_start``, ``gmp_n``, ``grow_start_density``,
    ``grow_end_density``, ``grow_old_lr``, ``grow_init_scale``, ``nte_prune_*`` and ``seed``.
    """
    kind = config.get("plasticity", "none")
    if kind not in _KINDS:
        raise ValueError(f"config key 'plasticity' = {kind!r}; valid: {', '.join(_KINDS)}")
    common = dict(steps_per_task=steps_per_task, num_tasks=num_tasks,
                  init_scale=_key(config, "grow_init_scale", kind),
                  erk=bool(config.get("erk", False)),
                  seed=int(config.get("seed", 0)) + _SEED_OFFSET)
    layers = plastic_layers(model)
    interval = lambda: _key(config, "plasticity_interval", kind)  # noqa: E731
    end = lambda: _key(config, "plasticity_end", kind)  # noqa: E731
    if kind == "none":
        return StaticConnectivity(layers, optimizer, **common)
    if kind == "set":
        return SET(layers, optimizer, zeta=_key(config, "set_zeta", kind), interval=interval(),
                   end_fraction=end(), **common)
    if kind == "rigl":
        return RigL(layers, optimizer, alpha=_key(config, "rigl_alpha", kind), interval=interval(),
                    end_fraction=end(), **common)
    if kind == "gmp":
        return GradualMagnitudePruning(
            layers, optimizer, final_sparsity=_key(config, "gmp_final_sparsity", kind),
            start=_key(config, "gmp_start", kind), n=_key(config, "gmp_n", kind),
            interval=interval(), **common)
    if kind == "grow":
        return TaskwiseGrowth(
            layers, optimizer, start_density=_key(config, "grow_start_density", kind),
            end_density=_key(config, "grow_end_density", kind),
            old_lr=_key(config, "grow_old_lr", kind), **common)
    return NTEPosteriorPruning(
        layers, optimizer, rule=_key(config, "nte_prune_rule", kind),
        rate=_key(config, "nte_prune_rate", kind), z=_key(config, "nte_prune_z", kind),
        interval=interval(), end_fraction=end(), **common)
