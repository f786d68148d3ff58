"""Keys of the learning rules without backprop (sparse_nte.rules): the IB-Hebbian rule with a
working memory (Daruwalla & Lipasti 2024, Front. Comput. Neurosci. 18:1240348), its reservoir,
and the HSIC bottleneck (Ma, Lewis & Kleijn 2020, AAAI). Defaults are the rules' own (the
reference code's MNIST settings), read from their specs."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key
from sparse_nte.rules.hsic import HSICSpec
from sparse_nte.rules.ib_hebbian import SIGNALS, IBHebbianSpec
from sparse_nte.rules.reservoir import ReservoirSpec

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "learning without backprop"

_IB = {f.name: f.default for f in fields(IBHebbianSpec)}
_HSIC = {f.name: f.default for f in fields(HSICSpec)}
_RES = {f.name: f.default for f in fields(ReservoirSpec)}


@dataclass(frozen=True)
class LocalRuleKeys:
    ib_window: int = key(
        _IB["window"], interval="[2, inf)",
        doc="ib_hebbian: N, samples in the working memory (a sliding window moving one sample per "
            "update; the reference's config 6, its plots 8).")
    ib_gamma: float = key(
        _IB["gamma"], interval="[0, inf)",
        doc="ib_hebbian: gamma of the layer objective HSIC(x, z) - gamma HSIC(y, z).")
    ib_sigma_x: float = key(
        _IB["sigma_x"], interval="(0, inf)", doc="ib_hebbian: kernel width of the inputs (times sqrt(dim)).")
    ib_sigma_y: float = key(
        _IB["sigma_y"], interval="(0, inf)", doc="ib_hebbian: kernel width of the one-hot labels.")
    ib_sigma_z: float = key(
        _IB["sigma_z"], interval="(0, inf)", doc="ib_hebbian: kernel width of each layer's output.")
    ib_signal: str = key(
        _IB["signal"], choices=SIGNALS,
        doc="ib_hebbian: the layer-wise modulatory signal computed exactly from the window, or "
            "learned by a reservoir from the newest sample (reservoir_* keys).")
    ib_prefix_bug: bool = key(
        _IB["prefix_bug"],
        doc="ib_hebbian: the signal of the reference code released before 2024-10-22 (its first "
            "term was identically zero); the published figures were made with it.")
    reservoir_size: int = key(_RES["size"], interval="[1, inf)", doc="Reservoir units.")
    reservoir_gain: float = key(_RES["gain"], interval="[0, inf)", doc="Reservoir gain g of the recurrent weights.")
    reservoir_density: float = key(_RES["density"], interval="(0, 1]",
                                   doc="Fraction of non-zero recurrent weights.")
    reservoir_tau: float = key(_RES["tau"], interval="(0, inf)", doc="Reservoir time constant (s).")
    reservoir_dt: float = key(_RES["dt"], interval="(0, inf)", doc="Integration step (s), <= reservoir_tau.")
    reservoir_steps: int = key(_RES["steps"], interval="[1, inf)", doc="Time steps per sample.")
    reservoir_lr: float = key(_RES["lr"], interval="[0, inf)", doc="LMS learning rate of the readout.")
    hsic_beta: float = key(
        _HSIC["beta"], interval="[0, inf)",
        doc="hsic: beta of the layer loss nHSIC(Z, X) - beta nHSIC(Z, Y).")
    hsic_sigma: float = key(
        _HSIC["sigma"], interval="(0, inf)", doc="hsic: kernel width (times sqrt(dim)).")
    hsic_epsilon: float = key(
        _HSIC["epsilon"], interval="(0, inf)", doc="hsic: regulariser of the normalised HSIC.")
    hsic_head_lr: float = key(
        _HSIC["head_lr"], interval="[0, inf)",
        doc="hsic: learning rate of the output heads, trained online by cross-entropy (the format "
            "step; the reference trains its output layer with SGD lr 5e-3); 0 = `lr`.")


def check(r: "Resolver") -> None:
    v = r.values
    if v["learning_rule"] != "backprop" and v["optimizer"] == "nte":
        r.fail(r.conflict(f"{r.where('optimizer')} takes per-example losses and cannot apply the "
                          f"updates of {r.where('learning_rule')}; use sgd, adam or adamw",
                          "optimizer", "learning_rule"))
    if v["ib_signal"] == "reservoir" and v["reservoir_dt"] > v["reservoir_tau"]:
        r.fail(r.conflict(f"{r.where('reservoir_dt')} exceeds {r.where('reservoir_tau')}: the Euler "
                          f"step would overshoot", "reservoir_dt", "reservoir_tau"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    rule = v["learning_rule"]
    names = [f.name for f in fields(LocalRuleKeys)]
    if rule != "ib_hebbian":
        out.update({k: f"learning_rule = {rule}, not ib_hebbian" for k in names
                    if k.startswith(("ib_", "reservoir_"))})
    elif v["ib_signal"] != "reservoir":
        out.update({k: "ib_signal = exact (the reservoir is used by ib_signal = reservoir)"
                    for k in names if k.startswith("reservoir_")})
    if rule != "hsic":
        out.update({k: f"learning_rule = {rule}, not hsic" for k in names if k.startswith("hsic_")})
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = LocalRuleKeys
