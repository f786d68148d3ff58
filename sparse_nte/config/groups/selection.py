"""Data-selection keys: which training examples each epoch uses (sparse_nte.selection; Raju,
Daruwalla & Lipasti 2021, "Accelerating deep learning with dynamic data pruning", arXiv
2111.12621)."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key
from sparse_nte.selection import CHOICES
from sparse_nte.selection.spec import DYNAMIC, STATIC, relation_problems

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "data selection"


@dataclass(frozen=True)
class SelectionKeys:
    data_pruning: str = key(
        "none", choices=CHOICES,
        doc="Which training examples each epoch uses: none (all), uniform (k at random), "
            "epsilon_greedy / ucb (by the running loss of each example; Raju et al. 2021), el2n / "
            "grand (Paul et al. 2021) or forgetting (Toneva et al. 2019) scores computed on a copy of "
            "the model at the start of each task.")
    data_prune_rate: float = key(
        0.5, interval="[0, 1)",
        doc="Pruning rate p: a pruned epoch trains on k = floor((1 - p) N) of the task's N examples.")
    data_prune_every: int = key(
        1, interval="[1, inf)",
        doc="Epochs between two selections (uniform, epsilon_greedy, ucb); the kept set stays in "
            "between.")
    data_prune_start: int = key(
        0, interval="[0, inf)",
        doc="First pruned epoch of each task (epochs before it use every example).")
    data_prune_end: int = key(
        0, interval="[0, inf)",
        doc="First epoch of each task back on every example; 0 = prune to the last epoch.")
    data_prune_epsilon: float = key(
        0.1, interval="[0, 1]",
        doc="epsilon_greedy: floor(eps k) of the kept examples are drawn uniformly from those not "
            "taken greedily.")
    data_prune_ucb_c: float = key(
        1.0, interval="[0, inf)",
        doc="ucb: score s = mu + c v of the loss average mu and its variance v.")
    data_prune_ema: float = key(
        0.8, interval="(0, 1]",
        doc="epsilon_greedy, ucb: alpha of the running averages mu <- (1 - alpha) mu + alpha loss.")
    data_prune_rescale: bool = key(
        False,
        doc="Weight each kept example's loss by 1 / pi (pi: the probability it was kept), an unbiased "
            "estimate of the full epoch's loss (uniform, epsilon_greedy; InfoBatch, Qin et al. 2024).")
    data_prune_score_epochs: int = key(
        2, interval="[0, inf)",
        doc="el2n, grand, forgetting: SGD epochs a copy of the model trains on the task before it is "
            "scored (forgetting counts transitions over them, >= 2).")
    data_prune_score_repeats: int = key(
        1, interval="[1, inf)",
        doc="el2n, grand, forgetting: independent scoring runs whose scores are averaged.")
    data_prune_score_lr: float = key(
        0.01, interval="(0, inf)",
        doc="el2n, grand, forgetting: SGD learning rate of the scoring copy.")


def check(r: "Resolver") -> None:
    spec = SimpleNamespace(**{k: r.values[k] for k in (f for f in SelectionKeys.__dataclass_fields__)})
    for k, message in relation_problems(spec):
        r.fail(r.conflict(message, k, "data_pruning"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    method = v["data_pruning"]
    if method == "none":
        return {k: "data_pruning = none" for k in SelectionKeys.__dataclass_fields__
                if k != "data_pruning"}
    out: dict[str, str] = {}
    if method not in DYNAMIC:
        out["data_prune_ema"] = f"data_pruning = {method} keeps no running loss (used by epsilon_greedy, ucb)"
    if method != "epsilon_greedy":
        out["data_prune_epsilon"] = f"data_pruning = {method}, not epsilon_greedy"
    if method != "ucb":
        out["data_prune_ucb_c"] = f"data_pruning = {method}, not ucb"
    if method in STATIC:
        out["data_prune_every"] = f"data_pruning = {method} chooses once per task from fixed scores"
    else:
        for k in ("data_prune_score_epochs", "data_prune_score_repeats", "data_prune_score_lr"):
            out[k] = f"data_pruning = {method} needs no scoring run (used by el2n, grand, forgetting)"
    return out  # data_prune_rescale with a deterministic selector: a contradiction (check)


#: The group's keys (read by sparse_nte.config.schema).
KEYS = SelectionKeys
