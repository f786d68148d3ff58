"""The numbers of a study report, as plain rows (no formatting, no HTML).

Metrics (:mod:`sparse_nte.metrics`, fractions in [0, 1] as the result files store them): final
average accuracy ACC, forgetting F, backward transfer BWT, forward transfer FWT and learning
accuracy LA. Per experiment, over its ``done`` trials only (diverged, failed and missing trials
are counted, never averaged)::

    mean = (1/n) sum_s x_s,     sd = sqrt( sum_s (x_s - mean)^2 / (n - 1) )   (sample sd; NaN if n < 2)

Accuracy matrices are averaged entry-wise over the same trials. Layer statistics come from the
last entry of ``stats["per_task"]`` (the state after the last trained task); violation counts are
the maximum over every task of every trial with a result, diverged ones included (they must be 0).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sparse_nte.reporting.collect import ExperimentRecords, StudyResults, TrialRecord

__all__ = ["METRICS", "Summary", "summarise", "metric_summary", "trial_rows", "experiment_rows",
           "config_rows", "mean_matrix", "mean_curve", "weight_layer_rows", "activity_rows",
           "nte_rows", "versions_rows"]

#: (key in result["metrics"], column label, long name), in the order tables show them.
METRICS: Tuple[Tuple[str, str, str], ...] = (
    ("avg_acc", "ACC", "final average accuracy"),
    ("forgetting", "F", "forgetting"),
    ("bwt", "BWT", "backward transfer"),
    ("fwt", "FWT", "forward transfer"),
    ("learning_acc", "LA", "learning accuracy"),
)


@dataclass(frozen=True)
class Summary:
    """Mean and sample standard deviation of ``n`` finite values (NaN when undefined)."""

    mean: float
    sd: float
    n: int
    values: Tuple[Tuple[int, float], ...] = ()   # (seed, value) of every done trial


def summarise(values: Sequence[float]) -> Tuple[float, float, int]:
    """(mean, sample sd, n) of the finite ``values``; NaN mean without any, NaN sd below two."""
    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    n = int(v.size)
    mean = float(v.mean()) if n else float("nan")
    sd = float(v.std(ddof=1)) if n >= 2 else float("nan")
    return mean, sd, n


def metric_summary(exp: ExperimentRecords, metric: str) -> Summary:
    pairs = tuple((t.seed, t.metrics.get(metric, float("nan"))) for t in exp.done())
    mean, sd, n = summarise([v for _, v in pairs])
    return Summary(mean, sd, n, pairs)


def trial_rows(results: StudyResults) -> List[Dict[str, Any]]:
    """One dict per trial: experiment, folder, seed, status, each metric (NaN without a result),
    elapsed_s, tasks_trained, note."""
    rows = []
    for e in results.experiments:
        for t in e.trials:
            m = t.metrics
            res = t.result or {}
            rows.append({"experiment": e.experiment, "folder": e.folder, "seed": t.seed,
                         "status": t.status,
                         **{k: m.get(k, float("nan")) for k, _, _ in METRICS},
                         "elapsed_s": float(res.get("elapsed_s", float("nan"))),
                         "tasks_trained": res.get("tasks_trained"), "note": t.note})
    return rows


def experiment_rows(results: StudyResults) -> List[Dict[str, Any]]:
    """One dict per experiment: n (done trials), diverged, other (every other status), each metric's
    mean and ``<metric>_sd``, mean elapsed_s."""
    rows = []
    for e in results.experiments:
        row: Dict[str, Any] = {"experiment": e.experiment, "folder": e.folder, "n": len(e.done()),
                               "diverged": e.count("diverged"),
                               "other": len(e.trials) - len(e.done()) - e.count("diverged")}
        for k, _, _ in METRICS:
            s = metric_summary(e, k)
            row[k], row[f"{k}_sd"] = s.mean, s.sd
        row["elapsed_s"] = summarise([float(t.result.get("elapsed_s", float("nan"))) for t in e.done()])[0]
        rows.append(row)
    return rows


def config_rows(results: StudyResults) -> List[Tuple[str, List[Any], bool]]:
    """``(key, [value per experiment], differs)`` for every config key (schema order; ``name``
    and ``seed`` left out: the experiments and seeds are shown elsewhere)."""
    from sparse_nte.reporting.describe import full_config

    configs = [full_config(e.config) if e.config else {} for e in results.experiments]
    keys: List[str] = []
    for c in configs:
        keys.extend(k for k in c if k not in keys and k not in ("name", "seed"))
    rows = []
    missing = object()
    for k in keys:
        values = [c.get(k, missing) for c in configs]
        shown = ["" if v is missing else v for v in values]
        rows.append((k, shown, len({repr(v) for v in values}) > 1))
    return rows


def _matrices(trials: Sequence[TrialRecord]) -> List[np.ndarray]:
    return [np.asarray(t.result["acc_matrix"], dtype=np.float64) for t in trials]


def mean_matrix(exp: ExperimentRecords) -> Optional[np.ndarray]:
    """Entry-wise mean of the accuracy matrices of the done trials (None without any, or when
    their shapes differ, which a valid study cannot produce)."""
    mats = _matrices(exp.done())
    if not mats or len({m.shape for m in mats}) > 1:
        return None
    return np.mean(np.stack(mats), axis=0)


def mean_curve(exp: ExperimentRecords, task: Optional[int] = None
               ) -> Optional[Tuple[np.ndarray, np.ndarray, int]]:
    """(mean, sd, n) over done trials, after each task i, of the average accuracy on the tasks
    seen so far (``task = None``: ``mean_j<=i R[i, j]``) or of the accuracy on one task
    (``R[i, task]``, from ``i = task`` on; NaN before). None without done trials."""
    mats = _matrices(exp.done())
    if not mats or len({m.shape for m in mats}) > 1:
        return None
    curves = []
    for r in mats:
        t = r.shape[0]
        if task is None:
            curves.append(np.array([r[i, : i + 1].mean() for i in range(t)]))
        else:
            curves.append(np.array([r[i, task] if i >= task else np.nan for i in range(t)]))
    c = np.stack(curves)
    sd = c.std(axis=0, ddof=1) if len(c) > 1 else np.full(c.shape[1], np.nan)
    return c.mean(axis=0), sd, len(c)


def _last_stats(t: TrialRecord) -> Optional[dict]:
    per_task = (t.result or {}).get("stats", {}).get("per_task") or []
    return per_task[-1] if per_task else None


def _mean(values: Sequence[Optional[float]]) -> float:
    return summarise([float(v) for v in values if v is not None])[0]


def weight_layer_rows(exp: ExperimentRecords) -> List[Dict[str, Any]]:
    """Per weight layer (empty when no trial recorded ``layers``): shape, density, mask density,
    excitatory fraction, dead synapses (means over done trials after their last task) and the
    largest mask- and sign-violation counts over every task of every trial with a result."""
    last = [s for s in (_last_stats(t) for t in exp.done()) if s and "layers" in s]
    every = [s for t in exp.with_result() for s in (t.result.get("stats", {}).get("per_task") or [])
             if "layers" in s]
    names: List[str] = []
    for s in every:
        names.extend(n for n in s["layers"] if n not in names)
    rows = []
    for name in names:
        mine = [s["layers"][name] for s in last if name in s["layers"]]
        all_of = [s["layers"][name] for s in every if name in s["layers"]]
        rows.append({
            "layer": name, "shape": "x".join(str(v) for v in all_of[0].get("shape", ())),
            "density": _mean([m.get("density") for m in mine]),
            "mask_density": _mean([m.get("mask_density") for m in mine]),
            "exc_fraction": _mean([m.get("exc_fraction") for m in mine]),
            "dead": _mean([m.get("dead") for m in mine]),
            "mask_violations": max(int(m.get("mask_violations", 0)) for m in all_of),
            "sign_violations": max(int(m.get("sign_violations", 0)) for m in all_of),
            "dale": any(bool(m.get("dale")) for m in all_of),
        })
    return rows


def activity_rows(exp: ExperimentRecords) -> List[Dict[str, Any]]:
    """Per hidden layer (empty without ``activity`` stats): the fraction of units active on each
    seen task's test set after the last task (mean over done trials, one value per task), their
    mean, the same among excitatory and inhibitory units (``active_exc``/``active_inh``, NaN
    without Dale's law), and the k-WTA duty-cycle entropy over its maximum (mean)."""
    last = [s for s in (_last_stats(t) for t in exp.done()) if s and "activity" in s]
    if not last:
        return []
    rows = []
    for name in last[0]["activity"]:
        per_task = [np.asarray(s["activity"][name]["active_fraction"], dtype=np.float64)
                    for s in last if name in s.get("activity", {})]
        if len({p.shape for p in per_task}) > 1:
            continue
        mean = np.mean(np.stack(per_task), axis=0)
        ent = [v for s in last for k, v in s.get("kwinners", {}).items()
               if k.startswith(name + ".") and v.get("max_entropy")]
        ratio = _mean([v["entropy"] / v["max_entropy"] for v in ent]) if ent else float("nan")
        by_sign = {}
        for sign in ("exc", "inh"):     # NaN without Dale's law
            vals = [float(np.nanmean(s["activity"][name][f"active_fraction_{sign}"])) for s in last
                    if f"active_fraction_{sign}" in s["activity"].get(name, {})
                    and np.isfinite(s["activity"][name][f"active_fraction_{sign}"]).any()]
            by_sign[sign] = summarise(vals)[0]
        rows.append({"layer": name, "active_per_task": mean, "active_mean": float(mean.mean()),
                     "active_exc": by_sign["exc"], "active_inh": by_sign["inh"],
                     "entropy_ratio": ratio})
    return rows


def nte_rows(exp: ExperimentRecords) -> List[Dict[str, Any]]:
    """Per trial with a result and NTE statistics: seed, status, the guard count (likelihood
    terms clamped, cumulative) after each task, and the dead experts after the last task."""
    rows = []
    for t in exp.with_result():
        per_task = t.result.get("stats", {}).get("per_task") or []
        if not any("nte_guard_count" in s for s in per_task):
            continue
        rows.append({"seed": t.seed, "status": t.status,
                     "guard": [int(s.get("nte_guard_count", 0)) for s in per_task],
                     "dead_experts": per_task[-1].get("nte_dead_experts"),
                     "live_experts": per_task[-1].get("nte_live_experts")})
    return rows


def versions_rows(results: StudyResults) -> List[Tuple[Dict[str, str], List[str]]]:
    """Distinct ``versions`` dicts of the results, each with the trials (``"folder seed k"``)
    that have it."""
    out: List[Tuple[Dict[str, str], List[str]]] = []
    for t in results.all_trials():
        if t.result is None:
            continue
        v = {str(k): str(x) for k, x in (t.result.get("versions") or {}).items()}
        for known, who in out:
            if known == v:
                who.append(f"{t.folder} seed {t.seed}")
                break
        else:
            out.append((v, [f"{t.folder} seed {t.seed}"]))
    return out
