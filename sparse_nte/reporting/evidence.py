"""Why a network forgets: per-trial evidence read from a result's activity statistics.

Forgetting ``F`` with a high learning accuracy ``LA`` (the mean of ``R[j, j]``) means each task is
learned and then overwritten; a low ``LA`` means the constraints stop the network from learning
at all. Which one it is, and how much the tasks share the hidden units, is read from the last
task's evaluation statistics (:func:`sparse_nte.stats.activity_stats`, recorded with
``record_stats = True``):

* ``overlap``: the mean, over pairs of distinct tasks ``a != b`` and over hidden layers, of the
  usage overlap ``sum_u p_u q_u / sqrt(sum_u p_u^2 sum_u q_u^2)`` of the tasks' unit-usage vectors
  ``p`` (task a) and ``q`` (task b), each the fraction of a task's test examples on which unit
  ``u`` is active. 1 means the tasks use the same units in the same proportions (k-WTA then
  protects nothing); 0 means disjoint units.
* ``silent``: the fraction of hidden units active on no example of any task (units a k-WTA
  layer with boosting should keep near 0).
* ``units_per_task``: the mean over tasks of the fraction of hidden units active on at least one
  of the task's examples.

All three are NaN for a result without activity statistics (``record_stats = False``, a
linearized network, a diverged trial). Works on plain result dicts (no torch needed).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping

import numpy as np

from sparse_nte.reporting.collect import StudyResults
from sparse_nte.reporting.tables import summarise

__all__ = ["EVIDENCE", "trial_evidence", "evidence_rows"]

#: (key, column label, long name), in the order tables show them.
EVIDENCE = (
    ("overlap", "overlap", "mean unit-usage overlap between distinct tasks"),
    ("silent", "silent units", "fraction of hidden units active on no task"),
    ("units_per_task", "units / task", "fraction of hidden units a task uses"),
)


def trial_evidence(result: Mapping[str, Any]) -> Dict[str, float]:
    """The evidence of one result (NaN where the result has no activity statistics)."""
    nan = float("nan")
    out = {k: nan for k, _, _ in EVIDENCE}
    per_task = (result.get("stats") or {}).get("per_task") or []
    activity = per_task[-1].get("activity") if per_task else None
    if not activity:
        return out
    overlaps: List[float] = []
    silent: List[float] = []
    used: List[float] = []
    for layer in activity.values():
        usage = np.asarray(layer.get("unit_active_fraction", []), dtype=np.float64)
        if usage.ndim != 2 or usage.size == 0:
            continue
        t = usage.shape[0]
        ov = np.asarray(layer.get("overlap", np.full((t, t), np.nan)), dtype=np.float64)
        if t > 1:
            off = ov[~np.eye(t, dtype=bool)]
            overlaps.append(float(np.nanmean(off)) if np.isfinite(off).any() else nan)
        silent.append(float((usage.max(axis=0) == 0).mean()))
        used.append(float((usage > 0).mean(axis=1).mean()))
    for key, values in (("overlap", overlaps), ("silent", silent), ("units_per_task", used)):
        finite = [v for v in values if math.isfinite(v)]
        if finite:
            out[key] = float(np.mean(finite))
    return out


def evidence_rows(results: StudyResults) -> List[Dict[str, Any]]:
    """One dict per experiment: each evidence key's mean and ``<key>_sd`` over its done trials."""
    rows = []
    for e in results.experiments:
        row: Dict[str, Any] = {"experiment": e.experiment, "n": len(e.done())}
        per_trial = [trial_evidence(t.result or {}) for t in e.done()]
        for k, _, _ in EVIDENCE:
            mean, sd, _ = summarise([p[k] for p in per_trial])
            row[k], row[f"{k}_sd"] = mean, sd
        rows.append(row)
    return rows
