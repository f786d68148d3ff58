"""Continual-learning strategy keys (sparse_nte.strategies: EWC, online EWC, SI, LwF, replay).

The strategies own their keys' defaults, ranges and meaning (:data:`STRATEGY_KEYS`, with the
values of van de Ven & Tolias 2019); this group declares them as Config fields from that table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key
from sparse_nte.strategies import STRATEGIES, STRATEGY_KEYS, check_combination, keys_used

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "continual-learning strategy"

_TABLE = {k.name: k for k in STRATEGY_KEYS}


def names(value: str) -> list[str]:
    """The strategies of a ``strategy`` value (``"none"`` -> [])."""
    return [] if value == "none" else [n.strip() for n in value.split(",")]


def _k(name: str) -> Any:
    """The Config field of strategy key ``name``, from the strategies' own table."""
    row = _TABLE[name]
    used = ", ".join(row.used_by)
    return key(row.default, choices=row.choices, interval=row.interval(), doc=f"({used}) {row.doc}")


@dataclass(frozen=True)
class StrategyKeys:
    strategy: str = key(
        "none", choices=tuple(STRATEGIES), multi=True,
        doc="Continual-learning method(s), comma-separated, or none: ewc (Kirkpatrick et al. 2017), "
            "online_ewc (Schwarz et al. 2018), si (Zenke et al. 2017), lwf (Li & Hoiem 2016), replay "
            "(experience replay with a fixed buffer). Combinable: replay and lwf with one penalty "
            "method.")
    ewc_lambda: float = _k("ewc_lambda")
    ewc_gamma: float = _k("ewc_gamma")
    ewc_fisher: str = _k("ewc_fisher")
    ewc_fisher_examples: int = _k("ewc_fisher_examples")
    si_c: float = _k("si_c")
    si_xi: float = _k("si_xi")
    lwf_alpha: float = _k("lwf_alpha")
    lwf_temperature: float = _k("lwf_temperature")
    replay_buffer: int = _k("replay_buffer")
    replay_batch: int = _k("replay_batch")
    replay_selection: str = _k("replay_selection")


def check(r: "Resolver") -> None:
    chosen = names(r.values["strategy"])
    why = check_combination(chosen) if chosen else None
    if why:
        r.fail(r.error("strategy", f"strategy = {r.show('strategy')} cannot be used: {why}"))
    if chosen and r.values["learning_rule"] != "backprop":
        loss_based = [n for n in chosen if n != "replay"]
        if loss_based:
            r.fail(r.conflict(f"{', '.join(loss_based)} add loss terms, which need a rule that follows "
                              f"the loss gradient (learning_rule = backprop), but "
                              f"{r.where('learning_rule')}; replay works with any rule",
                              "strategy", "learning_rule"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    chosen = names(v["strategy"])
    used = set(keys_used(chosen))
    return {k.name: f"strategy = {v['strategy']} does not use it (used by: {', '.join(k.used_by)})"
            for k in STRATEGY_KEYS if k.name not in used}


#: The group's keys (read by sparse_nte.config.schema).
KEYS = StrategyKeys
