"""Learning rules: how weights change (the rule seam of :mod:`sparse_nte.seams`).

:data:`RULES` is the registry of config key ``learning_rule``: name -> ``build(config, env)``.
Adding a rule is one module plus one line here.
"""
from __future__ import annotations

from typing import Callable, Dict

from sparse_nte.rules import backprop
from sparse_nte.rules.hsic import build_hsic
from sparse_nte.rules.ib_hebbian import build_ib_hebbian
from sparse_nte.seams import Rule

__all__ = ["RULES"]

#: name -> builder(config, env) of the rule.
RULES: Dict[str, Callable[..., Rule]] = {
    "backprop": backprop.build,
    "hsic": build_hsic,
    "ib_hebbian": build_ib_hebbian,
}
