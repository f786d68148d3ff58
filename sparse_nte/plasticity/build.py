"""The schedule of an experiment: :data:`SCHEDULES` (the choices of ``config.plasticity``),
:class:`PlasticitySpec` (what the config says) and :func:`build_schedule`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

import torch
import torch.nn as nn

from sparse_nte.plasticity.base import (PlasticitySchedule, StaticConnectivity, StepsPerTask,
                                       plastic_layers)
from sparse_nte.plasticity.gmp import GradualMagnitudePruning
from sparse_nte.plasticity.growth import TaskwiseGrowth
from sparse_nte.plasticity.nte_pruning import NTEPosteriorPruning
from sparse_nte.plasticity.rewiring import SET, RigL

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config import Config

__all__ = ["SCHEDULES", "PlasticitySpec", "build_schedule"]

#: The schedules of ``config.plasticity``: name -> class.
SCHEDULES: Dict[str, type] = {"none": StaticConnectivity, "set": SET, "rigl": RigL,
                              "gmp": GradualMagnitudePruning, "grow": TaskwiseGrowth,
                              "nte_prune": NTEPosteriorPruning}
# The schedule's generator is seeded with seed + this offset: a stream of its own, so that
# switching plasticity on does not change the draws of masks, weights or batches.
_SEED_OFFSET = 0x5E7


@dataclass(frozen=True)
class PlasticitySpec:
    """The connectivity schedule of one experiment (the keys of the plasticity group of the
    config schema, :mod:`sparse_nte.config.groups.plasticity`, which documents each and holds
    the defaults). ``kind`` is ``config.plasticity``; ``interval`` and ``end_fraction`` are
    ``plasticity_interval`` and ``plasticity_end``; ``init_scale`` is ``grow_init_scale``."""

    kind: str
    interval: int
    end_fraction: float
    set_zeta: float
    rigl_alpha: float
    erk: bool
    gmp_final_sparsity: float
    gmp_start: int
    gmp_n: int
    grow_start_density: float
    grow_end_density: float
    grow_old_lr: float
    init_scale: float
    nte_prune_rule: str
    nte_prune_rate: float
    nte_prune_z: float
    seed: int

    @classmethod
    def from_config(cls, config: "Config") -> "PlasticitySpec":
        """The spec of a validated :class:`~sparse_nte.config.Config`."""
        return cls(kind=config.plasticity, interval=config.plasticity_interval,
                   end_fraction=config.plasticity_end, set_zeta=config.set_zeta,
                   rigl_alpha=config.rigl_alpha, erk=config.erk,
                   gmp_final_sparsity=config.gmp_final_sparsity, gmp_start=config.gmp_start,
                   gmp_n=config.gmp_n, grow_start_density=config.grow_start_density,
                   grow_end_density=config.grow_end_density, grow_old_lr=config.grow_old_lr,
                   init_scale=config.grow_init_scale, nte_prune_rule=config.nte_prune_rule,
                   nte_prune_rate=config.nte_prune_rate, nte_prune_z=config.nte_prune_z,
                   seed=config.seed)


def build_schedule(config: Union["Config", PlasticitySpec], model: nn.Module,
                   optimizer: Optional[torch.optim.Optimizer], steps_per_task: StepsPerTask,
                   num_tasks: int) -> PlasticitySchedule:
    """The schedule selected by ``config.plasticity`` (a :class:`~sparse_nte.config.Config`,
    e.g. from ``sparse_nte.config.config_from_dict({...})``, or a :class:`PlasticitySpec`) for
    the plastic layers of ``model`` (:func:`plastic_layers`); :class:`StaticConnectivity` for
    ``plasticity = none``.

    ``erk`` re-allocates the layer densities by ERK when task 0 starts, for every kind.
    ``steps_per_task`` is the number of optimizer steps of each task (one int, or one per
    task). The schedule's random generator is seeded from ``seed`` (a stream of its own).
    """
    if isinstance(config, PlasticitySpec):
        spec = config
    elif hasattr(config, "plasticity") and hasattr(config, "grow_init_scale"):
        spec = PlasticitySpec.from_config(config)
    else:
        raise TypeError(f"build_schedule takes a Config (sparse_nte.config.config_from_dict(...) "
                        f"validates a plain mapping) or a PlasticitySpec, got "
                        f"{type(config).__name__}")
    if spec.kind not in SCHEDULES:
        raise ValueError(f"plasticity = {spec.kind!r}; valid: {', '.join(SCHEDULES)}")
    common: Dict[str, Any] = dict(steps_per_task=steps_per_task, num_tasks=num_tasks,
                                  init_scale=spec.init_scale, erk=bool(spec.erk),
                                  seed=int(spec.seed) + _SEED_OFFSET)
    layers = plastic_layers(model)
    kind = spec.kind
    if kind == "none":
        return StaticConnectivity(layers, optimizer, **common)
    if kind == "set":
        return SET(layers, optimizer, zeta=spec.set_zeta, interval=spec.interval,
                   end_fraction=spec.end_fraction, **common)
    if kind == "rigl":
        return RigL(layers, optimizer, alpha=spec.rigl_alpha, interval=spec.interval,
                    end_fraction=spec.end_fraction, **common)
    if kind == "gmp":
        return GradualMagnitudePruning(
            layers, optimizer, final_sparsity=spec.gmp_final_sparsity, start=spec.gmp_start,
            n=spec.gmp_n, interval=spec.interval, **common)
    if kind == "grow":
        return TaskwiseGrowth(
            layers, optimizer, start_density=spec.grow_start_density,
            end_density=spec.grow_end_density, old_lr=spec.grow_old_lr, **common)
    return NTEPosteriorPruning(
        layers, optimizer, rule=spec.nte_prune_rule, rate=spec.nte_prune_rate,
        z=spec.nte_prune_z, interval=spec.interval, end_fraction=spec.end_fraction, **common)
