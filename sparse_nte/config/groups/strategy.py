"""Continual-learning strategy keys (sparse_nte.strategies)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key
from sparse_nte.strategies import STRATEGIES, check_combination

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "continual-learning strategy"


def names(value: str) -> list[str]:
    """The strategies of a ``strategy`` value (``"none"`` -> [])."""
    return [] if value == "none" else [n.strip() for n in value.split(",")]


@dataclass(frozen=True)
class StrategyKeys:
    strategy: str = key(
        "none", choices=tuple(STRATEGIES), multi=True,
        doc="Continual-learning method(s), comma-separated, or none.")


def check(r: "Resolver") -> None:
    chosen = names(r.values["strategy"])
    why = check_combination(chosen) if len(chosen) > 1 else None
    if why:
        r.fail(r.error("strategy", f"strategy = {r.show('strategy')} cannot be combined: {why}"))


#: The group's keys (read by sparse_nte.config.schema).
KEYS = StrategyKeys
