"""Neural tangent kernel keys: the per-task NTK probe and training the linearized network
(sparse_nte.ntk; Jacot et al. 2018; Maddox et al. 2021, "Fast adaptation with linearized neural
networks"; the gradient alignment of Benjamin, Pehle & Daruwalla's NTE demonstration)."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key
from sparse_nte.ntk.probe import SPLITS, NTKProbeSpec, align_batch_problem

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "neural tangent kernel"

_DEFAULT = {f.name: f.default for f in fields(NTKProbeSpec)}   # the probe's own defaults


@dataclass(frozen=True)
class NTKKeys:
    record_ntk: bool = key(
        _DEFAULT["record_ntk"],
        doc="Run the NTK probe after every task: gradient alignment with initialisation (the NTE "
            "demo's measure), kernel drift, centred kernel alignment and effective rank of every seen "
            "task's probe set, stored under stats per_task[t] ntk (accuracies are unchanged).")
    ntk_probe_size: int = key(
        _DEFAULT["ntk_probe_size"], interval="[2, inf)",
        doc="Examples per task in the probe set (cost grows as tasks seen x size^2).")
    ntk_align_batch: int = key(
        _DEFAULT["ntk_align_batch"], interval="[1, inf)",
        doc="Probe-set examples used for the gradient alignment (24 in the NTE demo); at most "
            "ntk_probe_size.")
    ntk_probe_split: str = key(
        _DEFAULT["ntk_probe_split"], choices=SPLITS,
        doc="Split of each task the probe sets come from.")
    ntk_probe_every: int = key(
        _DEFAULT["ntk_probe_every"], interval="[0, inf)",
        doc="Also measure the task being trained (gradient alignment, kernel drift) at its start "
            "and every this many optimizer steps within it, stored under ntk within_task; 0 = "
            "only at task ends.")
    linearize: bool = key(
        False,
        doc="Train the linearized network f(x; theta0) + J(x; theta0)(theta - theta0) (one "
            "forward-mode JVP per pass) instead of the network: the lazy regime in which the NTE "
            "experts are exactly fixed. Masks and Dale signs are kept.")


def check(r: "Resolver") -> None:
    v = r.values
    problem = align_batch_problem(v["ntk_align_batch"], v["ntk_probe_size"])
    if v["record_ntk"] and problem:
        r.fail(r.conflict(problem, "ntk_align_batch", "ntk_probe_size"))
    if v["linearize"] and v["plasticity"] != "none":
        r.fail(r.conflict(f"{r.where('linearize')} fixes the expansion point theta0, but "
                          f"{r.where('plasticity')} changes which connections exist during training; "
                          f"use plasticity = none", "linearize", "plasticity"))
    if v["linearize"] and v["learning_rule"] != "backprop":
        r.fail(r.conflict(f"{r.where('linearize')} needs learning_rule = backprop (a local rule "
                          f"reads each layer's own activity, which the linearized network does not "
                          f"have)", "linearize", "learning_rule"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    if not v["record_ntk"]:
        out.update(dict.fromkeys(("ntk_probe_size", "ntk_align_batch", "ntk_probe_split",
                                  "ntk_probe_every"),
                                 "the NTK probe is off (record_ntk = false)"))
    if v["linearize"]:
        out["sparse_exec"] = "the linearized network computes its layers by a JVP, not the sparse path"
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = NTKKeys
