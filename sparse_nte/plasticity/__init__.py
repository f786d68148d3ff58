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
* New weights start at ``sign * init_scale`` (``sign`` the presynaptic Dale sign, else a seeded
  random sign) under multiplicative optimizers (NTE: a weight at exactly 0 can never move
  multiplicatively) and, for :class:`TaskwiseGrowth`, under every optimizer (a weight grown at 0
  into a unit that never wins its k-WTA gets no gradient and would stay 0). SET and RigL under
  additive optimizers (SGD, Adam) start them at 0 (RigL: "initialized to zero", Evci et al.
  2020, sec. 3).
* Every change of a layer is one atomic mask update (new weights written, then
  :meth:`~sparse_nte.layers.SparseWeightsBase.set_zero_mask`), followed by
  :func:`sparse_nte.optim_state.reset_positions` for the pruned and grown positions.
  A weight pruned in an event is never regrown in the same event. Ties in a ranking are broken
  at random (seeded), never by position.
* Every event appends one plain dict per layer to :attr:`PlasticitySchedule.history`:
  ``{"schedule", "task", "step", "layer", "pruned", "grown", "density", "nonzero_density"}``,
  ``density`` the mask density (allowed positions / all) and ``nonzero_density`` the fraction
  of weights not exactly 0 right after the event (at most ``density``). The runner also stores
  both for every weight layer after every task (``stats["per_task"][k]["connectivity"]``).

The runner drives a schedule with three calls per step and one per task (``step`` = number of
optimizer steps taken in the whole run before this one, starting at 0)::

    schedule = build_schedule(config, model, optimizer, steps_per_task, num_tasks)   # a Config
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

Modules: ``formulas`` (the papers' schedule formulas), ``ranking`` (k per row, best or random,
seeded ties), ``masks`` (live connections and the atomic mask update), ``erk``, ``dense_gradient``
(RigL's dense gradient), ``base`` (the schedule base class, :class:`StaticConnectivity`),
``rewiring`` (SET, RigL), ``gmp``, ``growth``, ``nte_pruning`` and ``build``
(:class:`PlasticitySpec`, :func:`build_schedule`, :data:`SCHEDULES`).
"""
from sparse_nte.plasticity.base import PlasticitySchedule, StaticConnectivity, plastic_layers
from sparse_nte.plasticity.build import SCHEDULES, PlasticitySpec, build_schedule
from sparse_nte.plasticity.dense_gradient import DenseGradient
from sparse_nte.plasticity.erk import apply_erk, erk_layer_densities
from sparse_nte.plasticity.formulas import (erk_densities, gmp_sparsity, growth_density,
                                            rigl_drop_fraction)
from sparse_nte.plasticity.gmp import GradualMagnitudePruning
from sparse_nte.plasticity.growth import TaskwiseGrowth
from sparse_nte.plasticity.masks import is_multiplicative, live_counts
from sparse_nte.plasticity.nte_pruning import NTEPosteriorPruning
from sparse_nte.plasticity.rewiring import SET, RigL

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
    "PlasticitySpec",
    "SCHEDULES",
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
