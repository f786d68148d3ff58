"""Dale's law keys: every presynaptic unit is excitatory or inhibitory and keeps its sign."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "Dale's law"


@dataclass(frozen=True)
class DaleKeys:
    dale: bool = key(
        False,
        doc="Dale's law: every presynaptic unit is excitatory or inhibitory and all its outgoing weights "
            "keep its sign or are zero.")
    exc_fraction: float = key(
        0.8, interval="(0, 1]",
        doc="Fraction of excitatory presynaptic units in each constrained layer.")
    dale_input: bool = key(
        False,
        doc="Constrain the input layer too (input pixels get signs).")
    dale_kwta: str = key(
        "include", choices=("include", "exclude"),
        doc="Whether inhibitory units compete in the k-WTA (include) or the winners are chosen among "
            "excitatory units only (exclude).")


def check(r: "Resolver") -> None:
    v = r.values
    if v["dale"] and v["layer_norm"]:
        r.fail(r.conflict(f"{r.where('dale')} with {r.where('layer_norm')}: LayerNorm centres each "
                          "layer's activity, so every unit sends activity of both signs and the fixed "
                          "sign of its outgoing weights no longer makes it excitatory or inhibitory; "
                          "set layer_norm = false or dale = false", "dale", "layer_norm"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    if not v["dale"]:
        return dict.fromkeys(("exc_fraction", "dale_input", "dale_kwta"), "Dale's law is off (dale = false)")
    return {}


#: The group's keys (read by sparse_nte.config.schema).
KEYS = DaleKeys
