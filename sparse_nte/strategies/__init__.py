"""Continual-learning strategies: the baselines continual-learning papers compare with, as
:class:`sparse_nte.seams.Strategy` implementations, one module each.

=============  ==========================================================  =====================
name           what it adds                                                module
=============  ==========================================================  =====================
ewc            (lambda/2) sum_k sum_i F_{k,i} (theta_i - theta*_{k,i})^2    :mod:`.ewc`
online_ewc     (lambda/2) sum_i gamma F*_i (theta_i - theta*_i)^2,          :mod:`.online_ewc`
               F* <- gamma F* + F_k
si             c sum_i Omega_i (theta_i - theta*_i)^2, Omega from the       :mod:`.si`
               path integral of the loss
lwf            alpha T^2 KL(p_old^T || p_new^T) per example                 :mod:`.lwf`
replay         stored examples appended to every batch                      :mod:`.replay`
=============  ==========================================================  =====================

The config key ``strategy`` is a comma-separated list of these names, or ``none`` (no
strategy; the learner handles it, so it is not in :data:`STRATEGIES`). The other keys are in
:mod:`sparse_nte.strategies.keys`.

Combinations (:func:`check_combination`). Replay and LwF act through the data (extra rows, a
per-example term), EWC, online EWC and SI through a penalty on the parameters; one method of
each kind combines meaningfully (replay + EWC, replay + SI, replay + LwF, LwF + EWC, LwF + SI,
replay + LwF + SI, ...). Refused:

* ``ewc`` with ``online_ewc``: two forms of the same penalty, the second counting every task's
  Fisher again.
* ``si`` with ``ewc`` or ``online_ewc``: two parameter-importance penalties anchored at the end
  of each task. SI's importance is the path integral of the gradient of the loss without its own
  penalty; an EWC penalty in that gradient would be credited to SI's importance (SI would
  measure how hard EWC pulls, not how much the task needed a weight), and the two strengths
  would no longer have their papers' meaning.
* a name twice, ``none`` together with a strategy, unknown names.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sparse_nte.seams import BuildEnv, Strategy
from sparse_nte.strategies import ewc, lwf, online_ewc, replay, si
from sparse_nte.strategies.common import ZeroImportanceWarning
from sparse_nte.strategies.keys import (FISHER_KINDS, KEY_DEFAULTS, REPLAY_SELECTIONS,
                                        STRATEGY_KEYS, StrategyKey)

__all__ = ["STRATEGIES", "NONE", "check_combination", "parse_strategies", "build_strategies",
           "keys_used", "STRATEGY_KEYS", "StrategyKey", "KEY_DEFAULTS", "FISHER_KINDS",
           "REPLAY_SELECTIONS", "ZeroImportanceWarning"]

#: The value of ``strategy`` meaning no strategy.
NONE = "none"

#: name -> ``build(config, env) -> Strategy``.
STRATEGIES: Dict[str, Callable[[Any, BuildEnv], Strategy]] = {
    "ewc": ewc.build,
    "online_ewc": online_ewc.build,
    "si": si.build,
    "lwf": lwf.build,
    "replay": replay.build,
}

_REFUSED: Tuple[Tuple[frozenset, str], ...] = (
    (frozenset({"ewc", "online_ewc"}),
     "ewc and online_ewc are two forms of the same penalty (the second would count every task's "
     "Fisher again); choose one"),
    (frozenset({"si", "ewc"}),
     "si and ewc are both parameter-importance penalties: EWC's pull would enter SI's path "
     "integral and be credited to SI's importance; choose one (each combines with replay and lwf)"),
    (frozenset({"si", "online_ewc"}),
     "si and online_ewc are both parameter-importance penalties: online EWC's pull would enter "
     "SI's path integral and be credited to SI's importance; choose one (each combines with "
     "replay and lwf)"),
)


def parse_strategies(text: str) -> Tuple[str, ...]:
    """The names in a ``strategy`` value (comma-separated, spaces ignored); ``none`` -> ()."""
    if not isinstance(text, str):
        raise ValueError(f"strategy must be a comma-separated list of names, got {text!r}")
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    reason = check_combination(names)
    if reason is not None:
        raise ValueError(f"strategy = {text!r}: {reason}")
    return () if names == (NONE,) else names


def check_combination(names: Sequence[str]) -> Optional[str]:
    """None if the strategies ``names`` may be used together, else a one-line reason."""
    names = list(names)
    if not names:
        return f"no strategy named; use '{NONE}' for none"
    unknown = [n for n in names if n != NONE and n not in STRATEGIES]
    if unknown:
        return (f"unknown strateg{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                f"valid: {NONE}, {', '.join(STRATEGIES)}")
    if NONE in names and len(names) > 1:
        return f"'{NONE}' means no strategy and cannot be combined with {', '.join(n for n in names if n != NONE)}"
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"{', '.join(twice)} named more than once"
    chosen = set(names)
    for pair, reason in _REFUSED:
        if pair <= chosen:
            return reason
    return None


def keys_used(names: Sequence[str]) -> Tuple[str, ...]:
    """The config keys read by the strategies ``names`` (the others have no effect)."""
    return tuple(k.name for k in STRATEGY_KEYS if set(k.used_by) & set(names))


def build_strategies(config: Any, env: BuildEnv) -> List[Strategy]:
    """The strategies of ``config.strategy``, in the order named."""
    return [STRATEGIES[n](config, env) for n in parse_strategies(config.strategy)]
