"""Activity sparsity keys: k-winner-take-all activations (Ahmad & Scheinkman 2019, "How can
we be so dense?", arXiv 1903.11257; nupic.torch's KWinners)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key
from sparse_nte.config.groups.model import fc_widths

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "activity sparsity (k-WTA)"


@dataclass(frozen=True)
class KWTAKeys:
    sparsify: bool = key(
        False,
        doc="k-winner-take-all activations instead of ReLU in the hidden layers (Ahmad & Scheinkman "
            "2019).")
    percent_on_fc: float = key(
        0.1, interval="(0, 1]",
        doc="Fraction of winners in each hidden fc layer: k = round(n * percent_on_fc), at least 1. "
            "Alias: `percent_on`.")
    percent_on_conv: float = key(
        0.1, interval="(0, 1]",
        doc="Fraction of winners in each conv layer's output (KWinners2d).")
    k_inference_factor: float = key(
        1.5, interval="(0, inf)",
        doc="Winners at inference: min(n, int(k * k_inference_factor)).")
    boost_strength: float = key(
        1.0, interval="[0, inf)",
        doc="Boost strength beta: winners are chosen on x_i * exp(-beta * d_i), d_i the duty cycle of "
            "unit i; 0 = no boosting.")
    boost_strength_factor: float = key(
        1.0, interval="[0, 1]",
        doc="beta <- beta * boost_strength_factor after every epoch (update_boost_strength).")
    duty_cycle_period: int = key(
        1000, interval="[1, inf)",
        doc="Window (in examples) of the duty-cycle running average.")


def check(r: "Resolver") -> None:
    v = r.values
    # k-WTA needs at least one winner in each hidden fc layer (k as in sparse_nte.layers.KWinners)
    widths = fc_widths(v)
    n = min(widths) if widths else 0
    if widths and v["sparsify"] and round(n * v["percent_on_fc"]) < 1:
        size = "hidden_units" if not v["hidden_widths"] else "the narrowest of hidden_widths"
        r.fail(r.conflict(f"k = round({size} * percent_on_fc) = round({n} * "
                          f"{v['percent_on_fc']}) = 0 winners; percent_on_fc must exceed "
                          f"{0.5 / n:.4g}", "percent_on_fc",
                          "hidden_widths" if v["hidden_widths"] else "hidden_units"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    if not v["sparsify"]:
        return dict.fromkeys(("percent_on_fc", "percent_on_conv", "k_inference_factor",
                              "boost_strength", "boost_strength_factor", "duty_cycle_period",
                              "dale_kwta"), "k-WTA is off (sparsify = false)")
    if v["boost_strength"] == 0:
        return {"boost_strength_factor": "boost_strength = 0, so there is no boost to decay"}
    return {}


#: The group's keys (read by sparse_nte.config.schema).
KEYS = KWTAKeys
