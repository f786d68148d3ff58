"""The NTE optimizer's options: the allowed choices and the check of numeric settings.

The config schema (:mod:`sparse_nte.config.groups.nte`) takes its choices from here and its
defaults from the optimizer's constructor (:data:`sparse_nte.nte.DEFAULTS`).
"""
from __future__ import annotations

import math
from typing import Any, Dict

__all__ = ["FAST_MODES", "EXPANSIONS", "NTE_PARAMS", "check_number", "check_group"]

#: ``fast`` setting -> most series terms allowed per linear layer (0 = always exact). Both "auto"
#: and "on" use the series only where its truncation error is provably below ``fast_tol``;
#: "on" allows up to 32 terms (fewer exact fallbacks, more matrix products), "auto" up to 8.
FAST_MODES: Dict[str, int] = {"off": 0, "auto": 8, "on": 32}
#: Expansion points: "origin" (theta0 = 0) or "init" (theta0 = initial weights - small noise).
EXPANSIONS = ("origin", "init")
#: Which parameters :func:`~sparse_nte.nte.build_nte_optimizer` manages: the weights of linear /
#: conv layers (the rest take SGD steps), or all.
NTE_PARAMS = ("weights", "all")


def check_number(name: str, value: Any, *, positive: bool = True,
                 allow_zero: bool = False) -> float:
    """``value`` as a float, or ValueError unless it is a finite number (> 0 with ``positive``,
    >= 0 with ``allow_zero`` too)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"NTE: {name} must be a finite number, got {value!r}")
    if positive and not (value > 0 or (allow_zero and value == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"NTE: {name} must be {bound}, got {value!r}")
    return float(value)


def check_group(group: dict, index: int) -> None:
    """Check (and normalise to float) the options of param group number ``index``: ``beta``,
    ``eta``, ``max_delta`` > 0, ``fast`` in :data:`FAST_MODES`, ``managed`` a bool, and a
    learning rate ``lr`` >= 0 for a group the rule does not manage (it takes SGD steps)."""
    for key in ("beta", "eta", "max_delta"):
        group[key] = check_number(f"{key} (param group {index})", group[key])
    if group["fast"] not in FAST_MODES:
        raise ValueError(f"NTE: fast must be one of {sorted(FAST_MODES)}, got {group['fast']!r}")
    if not isinstance(group["managed"], bool):
        raise ValueError(f"NTE: managed must be a bool, got {group['managed']!r}")
    if not group["managed"]:
        if group["lr"] is None:
            raise ValueError("NTE: a param group with managed=False takes plain SGD steps and "
                             "needs a learning rate: pass lr=... (>= 0)")
        group["lr"] = check_number("lr", group["lr"], allow_zero=True)
