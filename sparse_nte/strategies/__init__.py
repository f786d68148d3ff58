"""Continual-learning strategies (the strategy seam of :mod:`sparse_nte.seams`).

:data:`STRATEGIES` is the registry of config key ``strategy``: name -> ``build(config, env)``.
``strategy = none`` means no strategy; several may be listed (``strategy = replay, ewc``) where
:func:`check_combination` allows it.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

from sparse_nte.seams import Strategy

__all__ = ["STRATEGIES", "check_combination"]

#: name -> builder(config, env) of the strategy.
STRATEGIES: Dict[str, Callable[..., Strategy]] = {}


def check_combination(names: Sequence[str]) -> Optional[str]:
    """None if the strategies ``names`` may be used together, else why not (one line)."""
    return None
