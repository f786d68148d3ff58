"""NTE keys: the Neural Tangent Ensemble optimizer (Benjamin, Pehle & Daruwalla, NeurIPS 2024).

The defaults are the optimizer's own (:data:`sparse_nte.nte.DEFAULTS`, from the constructor of
:class:`sparse_nte.nte.NTE`), the choices its registries; neither is written here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparse_nte.config.fields import key

from sparse_nte.nte import DEFAULTS, EXPANSIONS, FAST_MODES, NTE_PARAMS

TITLE = "NTE optimizer"


@dataclass(frozen=True)
class NTEKeys:
    nte_beta: float = key(
        DEFAULTS["beta"], interval="(0, inf)",
        doc="Inverse temperature beta of each expert's likelihood 1 - beta * sign(w) * dl_n/dw of "
            "example n.")
    nte_eta: float = key(
        DEFAULTS["eta"], interval="(0, inf)",
        doc="Exponent eta of the likelihood: log-weights change by eta * sum_n log(1 - beta * sign(w) * "
            "dl_n/dw); 1 = the Bayesian posterior.")
    nte_max_delta: float = key(
        DEFAULTS["max_delta"], interval="(0, inf)",
        doc="Largest magnitude an expert weight may reach after renormalisation.")
    nte_expand: str = key(
        DEFAULTS["expand"], choices=EXPANSIONS,
        doc="Ensemble weights are the weights (origin: expansion around 0, signs fixed) or their change "
            "from initialisation (init).")
    nte_noise_scale: float = key(
        DEFAULTS["noise_scale"], interval="(0, inf)",
        doc="nte_expand = init: ensemble weights start at nte_noise_scale * N(0, 1).")
    nte_params: str = key(
        DEFAULTS["params"], choices=NTE_PARAMS,
        doc="Parameters NTE manages: weights (of linear and conv layers; the others, e.g. biases, take "
            "plain SGD steps with lr) or all.")
    nte_fast: str = key(
        DEFAULTS["fast"], choices=tuple(FAST_MODES),
        doc="Power-series fast path for the per-example likelihoods: auto, on, off.")


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    if v["optimizer"] != "nte":
        return dict.fromkeys(("nte_beta", "nte_eta", "nte_max_delta", "nte_expand", "nte_noise_scale",
                              "nte_params", "nte_fast"), f"optimizer = {v['optimizer']}, not nte")
    out = {}
    if v["nte_expand"] == "origin":
        out["nte_noise_scale"] = "nte_expand = origin (the noise scale is used by nte_expand = init)"
    if v["nte_params"] == "all":
        out["lr"] = "optimizer = nte with nte_params = all manages every parameter (no SGD part)"
    out.update(dict.fromkeys(("momentum", "nesterov", "weight_decay"),
                             "optimizer = nte: the parameters it does not manage take plain SGD steps "
                             "with lr"))
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = NTEKeys
