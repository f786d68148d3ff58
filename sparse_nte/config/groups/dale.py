"""Dale's law keys: every presynaptic unit is excitatory or inhibitory and keeps its sign."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparse_nte.config.fields import key

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


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    if not v["dale"]:
        return dict.fromkeys(("exc_fraction", "dale_input", "dale_kwta"), "Dale's law is off (dale = false)")
    return {}


#: The group's keys (read by sparse_nte.config.schema).
KEYS = DaleKeys
