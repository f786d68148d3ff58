"""Data selection: which training examples each epoch uses (the selection seam of
:mod:`sparse_nte.seams`).

:data:`SELECTORS` is the registry of config key ``data_pruning``: name -> ``build(config, env)``;
``data_pruning = none`` trains every epoch on every example.
"""
from __future__ import annotations

from typing import Callable, Dict

from sparse_nte.seams import Selection

__all__ = ["SELECTORS"]

#: name -> builder(config, env) of the selector.
SELECTORS: Dict[str, Callable[..., Selection]] = {}
