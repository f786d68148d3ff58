"""The config keys of the continual-learning strategies: type, default, allowed values and
meaning, in one table (:data:`STRATEGY_KEYS`) that the strategies' specs and the config schema
both read.

Defaults follow van de Ven & Tolias, "Three scenarios for continual learning" (2019,
arXiv:1904.07734) and the values the current version of their code (GMvandeVen/continual-learning,
``params/param_values.py``, 2022 onwards) sets for the toolkit's default benchmark, permuted MNIST:

====================  =========================  ===============================================
key                   default                    source
====================  =========================  ===============================================
ewc_lambda            100                        permuted MNIST, task / domain setting
ewc_gamma             1.0                        their online-EWC default (no decay)
ewc_fisher            true                       the Fisher of Kirkpatrick et al. (2017)
ewc_fisher_examples   0 (the whole task)         their ``fisher_n = None``
si_c                  10                         permuted MNIST, task / domain setting
si_xi                 0.1                        their damping ``epsilon``
lwf_alpha             1.0                        distillation and new-task terms weighted alike
lwf_temperature       2.0                        their ``KD_temp``
replay_buffer         1000                       100 per class on split MNIST, 10 per class on
                                                 permuted MNIST's 100 classes: 1000 either way
replay_batch          128                        as many replayed rows as the default mb_size
replay_selection      reservoir                  Vitter's algorithm R
====================  =========================  ===============================================

The regularisation strengths depend strongly on the benchmark and setting. The values their code
uses elsewhere (same penalty definitions and Fisher normalisation as here)::

    split MNIST     task:   ewc_lambda 1e5,  si_c 10
                    domain: ewc_lambda 1e10, si_c 5e4
                    class:  ewc_lambda 1e9,  si_c 5e3
    permuted MNIST  class:  ewc_lambda 100,  si_c 5

The 2019 version of that file (``param_values.py``, the code behind the paper's table) sets, for
permuted MNIST: EWC lambda 500 and SI c 5 (task and domain setting), online EWC lambda 500 with
gamma 0.8 (task) and lambda 1000 with gamma 0.9 (domain); the shipped ``pmnist_vdv_*`` experiments
(domain setting) use these (docs/results/baselines.md).
Their online EWC has its own strength (``--o-lambda``); here both read ``ewc_lambda``.

Their issue #10 reports that the strengths recommended in the paper are often orders of
magnitude too small; tune them (a sweep over powers of 10) before comparing methods.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Tuple

__all__ = ["StrategyKey", "STRATEGY_KEYS", "KEY_DEFAULTS", "FISHER_KINDS", "REPLAY_SELECTIONS",
           "check_key", "read_keys"]

#: Labels a Fisher can be computed with (:mod:`sparse_nte.strategies.fisher`).
FISHER_KINDS: Tuple[str, ...] = ("true", "empirical")
#: How the replay buffer chooses the examples it keeps (:mod:`sparse_nte.strategies.buffers`).
REPLAY_SELECTIONS: Tuple[str, ...] = ("reservoir", "class_balanced")


@dataclass(frozen=True)
class StrategyKey:
    """One config key: ``low``/``high`` bound numbers (``low_open``: the bound is excluded),
    ``choices`` the values of a text key; ``used_by`` the strategies that read it."""

    name: str
    type: type
    default: Any
    doc: str
    used_by: Tuple[str, ...]
    low: Optional[float] = None
    high: float = math.inf
    low_open: bool = False
    choices: Optional[Tuple[str, ...]] = None

    def interval(self) -> Optional[str]:
        """The allowed numbers as an interval (``"[0, inf)"``), or None for a text key."""
        if self.low is None:
            return None
        high = "inf)" if math.isinf(self.high) else f"{self.high:g}]"
        return f"{'(' if self.low_open else '['}{self.low:g}, {high}"


STRATEGY_KEYS: Tuple[StrategyKey, ...] = (
    StrategyKey(
        "ewc_lambda", float, 100.0, used_by=("ewc", "online_ewc"), low=0.0,
        doc="EWC / online EWC strength lambda of the penalty (lambda / 2) sum_i F_i (theta_i - "
            "theta*_i)^2 (F: mean of the squared per-example gradients). Strongly benchmark-"
            "dependent (split MNIST: 1e5 task, 1e10 domain, 1e9 class setting)."),
    StrategyKey(
        "ewc_gamma", float, 1.0, used_by=("online_ewc",), low=0.0, high=1.0, low_open=True,
        doc="Online EWC decay gamma in (0, 1]: the running Fisher F <- gamma F + F_task, and the penalty "
            "uses gamma F (Schwarz et al. 2018); 1 = no decay."),
    StrategyKey(
        "ewc_fisher", str, "true", used_by=("ewc", "online_ewc"), choices=FISHER_KINDS,
        doc="Labels of the Fisher: true (one label per example sampled from the model's "
            "predictive distribution: the Fisher information, Kirkpatrick et al. 2017) or "
            "empirical (the training labels; not the Fisher in general, Kunstner et al. 2019)."),
    StrategyKey(
        "ewc_fisher_examples", int, 0, used_by=("ewc", "online_ewc"), low=0.0,
        doc="Training examples of a task the Fisher is computed on (a random subset drawn with "
            "`seed`); 0 = all of them."),
    StrategyKey(
        "si_c", float, 10.0, used_by=("si",), low=0.0,
        doc="SI strength c of the penalty c sum_i Omega_i (theta_i - theta*_i)^2 (Zenke et al. "
            "2017). Strongly benchmark-dependent (split MNIST: 10 task, 5e4 domain, 5e3 class)."),
    StrategyKey(
        "si_xi", float, 0.1, used_by=("si",), low=0.0, low_open=True,
        doc="SI damping xi > 0 of Omega += omega / (Delta_theta^2 + xi)."),
    StrategyKey(
        "lwf_alpha", float, 1.0, used_by=("lwf",), low=0.0,
        doc="LwF weight alpha of the distillation term alpha T^2 KL(p_old^T || p_new^T) added to "
            "every example's loss (Li & Hoiem 2016)."),
    StrategyKey(
        "lwf_temperature", float, 2.0, used_by=("lwf",), low=0.0, low_open=True,
        doc="LwF softmax temperature T > 0 of the distilled outputs."),
    StrategyKey(
        "replay_buffer", int, 1000, used_by=("replay",), low=1.0,
        doc="Replay: training examples kept in total (over all tasks)."),
    StrategyKey(
        "replay_batch", int, 128, used_by=("replay",), low=1.0,
        doc="Replay: stored examples appended to every training batch (fewer while the buffer "
            "holds fewer)."),
    StrategyKey(
        "replay_selection", str, "reservoir", used_by=("replay",), choices=REPLAY_SELECTIONS,
        doc="Which examples the buffer keeps: reservoir (a uniform sample of every training "
            "example seen, Vitter's algorithm R) or class_balanced (an equal share per class, a "
            "uniform sample within each class; classes are (task, label) pairs)."),
)

#: ``{key: default}``.
KEY_DEFAULTS: Mapping[str, Any] = {k.name: k.default for k in STRATEGY_KEYS}
_BY_NAME: Mapping[str, StrategyKey] = {k.name: k for k in STRATEGY_KEYS}


def check_key(name: str, value: Any, where: str = "") -> Any:
    """Return ``value`` (ints accepted for floats, as float) if it is valid for key ``name``,
    else raise ValueError saying what was wrong, where, and what would be valid."""
    spec = _BY_NAME[name]
    place = f"{where}: " if where else ""
    if spec.choices is not None:
        if value not in spec.choices:
            raise ValueError(f"{place}{name} = {value!r} is not valid; choose one of "
                             f"{', '.join(spec.choices)}")
        return value
    if spec.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"{place}{name} = {value!r} must be {'an integer' if spec.type is int else 'a number'} "
                         f"in {spec.interval()}")
    value = spec.type(value)
    low_ok = value > spec.low if spec.low_open else value >= spec.low
    if not (low_ok and value <= spec.high and not math.isnan(value)):
        raise ValueError(f"{place}{name} = {value!r} is out of range; valid: "
                         f"{'integer' if spec.type is int else 'number'} in {spec.interval()}")
    return value


def read_keys(config: Any, names: Tuple[str, ...]) -> dict:
    """``{name: config.name}`` for the given keys (attribute access on the resolved config).

    Raises ValueError naming the keys the config lacks (the config schema must declare them)."""
    missing = [n for n in names if not hasattr(config, n)]
    if missing:
        raise ValueError(f"the config has no attribute(s) {', '.join(missing)}: the strategy keys "
                         f"must be declared in the config schema (see "
                         f"sparse_nte.strategies.keys.STRATEGY_KEYS)")
    return {n: getattr(config, n) for n in names}
