"""Plasticity keys: connection growth and pruning schedules (sparse_nte.plasticity).

Derived values (:func:`derive`): with ``plasticity = grow`` the first task's density is
``grow_start_density``, so ``weight_sparsity_fc`` (and ``weight_sparsity_conv`` with ``cnn``) are
set to it: under growth they are the STARTING density. Task k runs at
``d_k = d_start + (d_end - d_start) * k / (num_batch - 1)``; the runner stores the densities
reached after every task (mask and non-zero, per layer and in total) in
``stats["per_task"][k]["connectivity"]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key
from sparse_nte.config.groups.connectivity import sparse_at_start
from sparse_nte.nte_prune import PRUNE_RULES
from sparse_nte.plasticity import SCHEDULES

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "plasticity"

#: Schedule parameters: key -> the schedules that read it.
USERS: dict[str, tuple[str, ...]] = {
    "plasticity_interval": ("set", "rigl", "gmp", "nte_prune"),
    "plasticity_end": ("set", "rigl", "nte_prune"),
    "set_zeta": ("set",), "rigl_alpha": ("rigl",),
    "gmp_final_sparsity": ("gmp",), "gmp_start": ("gmp",), "gmp_n": ("gmp",),
    "grow_start_density": ("grow",), "grow_end_density": ("grow",), "grow_old_lr": ("grow",),
    "nte_prune_rule": ("nte_prune",), "nte_prune_rate": ("nte_prune",),
    "nte_prune_momentum": ("nte_prune",), "nte_prune_z": ("nte_prune",),
}


@dataclass(frozen=True)
class PlasticityKeys:
    plasticity: str = key(
        "none", choices=tuple(SCHEDULES),
        doc="Connectivity schedule: none, set (Mocanu et al. 2018), rigl (Evci et al. 2020), gmp "
            "(gradual magnitude pruning, Zhu & Gupta 2017), grow (density grows from task to task), "
            "nte_prune (NTE pruning; needs optimizer = nte).")
    plasticity_interval: int = key(
        100, interval="[1, inf)",
        doc="Optimizer steps between connectivity updates (set, rigl, gmp: delta_t, nte_prune).")
    plasticity_end: float = key(
        0.75, interval="(0, 1]",
        doc="Fraction of each task's steps after which connectivity is frozen (set, rigl, nte_prune).")
    set_zeta: float = key(
        0.3, interval="(0, 1)",
        doc="SET: fraction zeta of each layer's connections with the smallest |w| removed at every "
            "update, and as many regrown at random.")
    rigl_alpha: float = key(
        0.3, interval="(0, 1)",
        doc="RigL: drop fraction alpha/2 * (1 + cos(pi * t / T_end)) of smallest-|w| connections, "
            "regrown where |gradient| is largest.")
    gmp_final_sparsity: float = key(
        0.9, interval="(0, 1)",
        doc="GMP: fraction of ZEROS s_f reached; s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * "
            "delta_t))^3.")
    gmp_start: int = key(
        0, interval="[0, inf)",
        doc="GMP: step t0 of the first pruning event.")
    gmp_n: int = key(
        10, interval="[1, inf)",
        doc="GMP: number n of pruning events.")
    grow_start_density: float = key(
        0.1, interval="(0, 1]",
        doc="grow: density of every sparse hidden layer on the first task (sets weight_sparsity_fc/conv, "
            "which then name the starting density); task k has d_start + (d_end - d_start) k / "
            "(num_batch - 1).")
    grow_end_density: float = key(
        0.5, interval="(0, 1]",
        doc="grow: density reached on the last task (linear in between).")
    grow_old_lr: float = key(
        0.1, interval="[0, 1]",
        doc="grow: learning-rate factor of connections owned by earlier tasks (0 = frozen, 1 = no "
            "protection).")
    grow_init_scale: float = key(
        1e-3, interval="(0, inf)",
        doc="Magnitude of newly grown weights, signed by the presynaptic unit's Dale sign (a seeded "
            "random sign without Dale's law): plasticity = grow under every optimizer; set and rigl "
            "under optimizer = nte only (under additive optimizers their regrown weights start at 0, "
            "as RigL's).")
    nte_prune_rule: str = key(
        "magnitude", choices=PRUNE_RULES,
        doc="nte_prune: remove the nte_prune_rate fraction of smallest magnitudes (magnitude) or the "
            "experts whose running score of grad * sign is >= mean + nte_prune_z * std (score).")
    nte_prune_rate: float = key(
        0.01, interval="(0, 1)",
        doc="nte_prune, magnitude rule: fraction of a layer's live connections pruned per event.")
    nte_prune_momentum: float = key(
        0.99, interval="[0, 1)",
        doc="nte_prune, score rule: momentum m of the score v <- m v + (1 - m) grad * sign.")
    nte_prune_z: float = key(
        2.33, interval="(0, inf)",
        doc="nte_prune, score rule: z threshold of the running score (2.33 = one-sided 1%).")


def derive(r: "Resolver") -> None:
    """``plasticity = grow``: ``weight_sparsity_fc`` (and ``_conv`` with ``cnn``) =
    ``grow_start_density``; a different value written in the experiment's own section or with
    ``--set`` is an error."""
    v = r.values
    if v["plasticity"] != "grow":
        return
    start = v["grow_start_density"]
    for name in ("weight_sparsity_fc", "weight_sparsity_conv"):
        if name == "weight_sparsity_conv" and not v["cnn"]:
            continue
        if r.explicit(name) and v[name] != start:
            r.fail(r.error(name, f"{name} = {r.show(name)} contradicts plasticity = grow, whose "
                                 f"first-task density is {r.where('grow_start_density')}; remove {name} "
                                 f"or make it equal"))
        v[name] = start


def check(r: "Resolver") -> None:
    v, w = r.values, r.where
    p = v["plasticity"]
    if p == "nte_prune" and v["optimizer"] != "nte":
        r.fail(r.conflict(f"{w('plasticity')} prunes by the NTE posterior and needs optimizer = nte, "
                          f"but {w('optimizer')}", "plasticity", "optimizer"))
    if p in ("gmp", "nte_prune") and not (sparse_at_start(v) or v["dale"]):
        r.fail(r.conflict(f"{w('plasticity')} prunes SparseWeights layers, but every hidden layer is "
                          f"dense and sign-free ({w('weight_sparsity_fc')}), so the model builds plain "
                          f"torch layers; start below density 1 (e.g. weight_sparsity_fc = 0.99)",
                          "plasticity", "weight_sparsity_fc"))
    if p in ("set", "rigl") and not sparse_at_start(v):
        r.fail(r.conflict(f"{w('plasticity')} rewires a sparse network at constant density, but every "
                          f"layer is dense ({w('weight_sparsity_fc')}); set weight_sparsity_fc < 1",
                          "plasticity", "weight_sparsity_fc"))
    if p == "gmp":
        s_f = v["gmp_final_sparsity"]
        layers = ["weight_sparsity_fc"] + (["weight_sparsity_conv"] if v["cnn"] else [])
        for name in layers:
            if 1.0 - v[name] > s_f + 1e-12:
                r.fail(r.conflict(f"{w('gmp_final_sparsity')} is below the starting sparsity "
                                  f"1 - {name} = {1.0 - v[name]:.4g} ({w(name)}); GMP only prunes",
                                  "gmp_final_sparsity", name))
        if all(abs((1.0 - v[name]) - s_f) <= 1e-12 for name in layers):
            r.fail(r.conflict(f"{w('gmp_final_sparsity')} equals the starting sparsity "
                              f"(1 - weight_sparsity_fc), so GMP would never prune",
                              "gmp_final_sparsity", *layers))
    if p == "grow":
        if v["grow_end_density"] <= v["grow_start_density"]:
            r.fail(r.conflict(f"{w('grow_end_density')} must exceed {w('grow_start_density')}; for a "
                              f"fixed density use plasticity = none with weight_sparsity_fc",
                              "grow_end_density", "grow_start_density"))
        if v["num_batch"] < 2:
            r.fail(r.conflict(f"{w('plasticity')} grows connections from task to task and needs "
                              f"num_batch >= 2, but {w('num_batch')}", "plasticity", "num_batch"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    p = v["plasticity"]
    out = {k: f"plasticity = {p} does not use it (used by: {', '.join(by)})"
           for k, by in USERS.items() if p not in by}
    if p == "nte_prune" and v["nte_prune_rule"] == "magnitude":
        out.update(dict.fromkeys(("nte_prune_momentum", "nte_prune_z"),
                                 "nte_prune_rule = magnitude (used by the score rule)"))
    if p == "nte_prune" and v["nte_prune_rule"] == "score":
        out["nte_prune_rate"] = ("nte_prune_rule = score prunes by its z threshold (the rate is used by "
                                 "the magnitude rule)")
    if not (p == "grow" or (v["optimizer"] == "nte" and p in ("set", "rigl"))):
        out["grow_init_scale"] = ("it sizes the weights grown by plasticity = grow (any optimizer), or "
                                  "by set and rigl under optimizer = nte; here no weight is grown, or "
                                  "grown weights start at 0")
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = PlasticityKeys
