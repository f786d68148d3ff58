"""Tidy exports of a study's results: summary tables (Markdown, CSV, JSON) and the long-format
CSV of every accuracy-matrix entry.

Numbers in CSV and JSON are the result files' own values at full precision (``repr`` of the
float): accuracies and metrics are fractions in [0, 1], times in seconds. Undefined values (NaN:
a diverged trial's metrics, FWT/BWT with one task, the sd of one seed) are empty CSV cells (read
as NaN by pandas and NA by R) and ``null`` in JSON. Markdown shows percentages.

Summary CSV (``run_exps.py --summary ... --format csv``; ``<report>_summary.csv``), one row per
trial (``level = trial``) then one per experiment (``level = experiment``)::

    level, experiment, folder, seed, status, n, diverged, other,
    avg_acc, avg_acc_sd, forgetting, forgetting_sd, bwt, bwt_sd, fwt, fwt_sd,
    learning_acc, learning_acc_sd, elapsed_s, tasks_trained, note

Trial rows have seed, status, tasks_trained, note and the trial's metrics; experiment rows have
``n`` (done trials, the only ones averaged), ``diverged``, ``other`` (failed, interrupted, not
run, unreadable or another configuration's), the means and the sample sds (``*_sd``).

Long accuracy CSV (``<report>_accuracy.csv``), one row per accuracy-matrix entry of every trial
with a result (done or diverged)::

    experiment, folder, seed, after_task, task, accuracy, seen, status

``accuracy`` is ``R[after_task, task]``: test accuracy on ``task`` after training tasks
``0..after_task`` (``seen`` is ``task <= after_task``; entries of tasks not trained yet are the
forward-transfer inputs; rows a diverged trial never reached are empty). In pandas:
``pd.read_csv(path)``; in R: ``read.csv(path)``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Dict, List, Sequence

import numpy as np

from sparse_nte.reporting.collect import StudyResults
from sparse_nte.reporting.tables import METRICS, experiment_rows, trial_rows

__all__ = ["SUMMARY_COLUMNS", "ACCURACY_COLUMNS", "summary_csv", "summary_json", "summary_markdown",
           "accuracy_csv", "accuracy_rows", "FORMATS", "render_summary"]

SUMMARY_COLUMNS = ("level", "experiment", "folder", "seed", "status", "n", "diverged", "other",
                   *[c for k, _, _ in METRICS for c in (k, f"{k}_sd")],
                   "elapsed_s", "tasks_trained", "note")
ACCURACY_COLUMNS = ("experiment", "folder", "seed", "after_task", "task", "accuracy", "seen", "status")
FORMATS = ("markdown", "csv", "json")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(float(v)) else repr(float(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return str(v)


def _json_value(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def _summary_dicts(results: StudyResults) -> tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    return trial_rows(results), experiment_rows(results)


def _csv_text(columns: Sequence[str], rows: Sequence[Dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def summary_csv(results: StudyResults) -> str:
    """The summary CSV (see the module docstring)."""
    trials, exps = _summary_dicts(results)
    rows = [{"level": "trial", **r} for r in trials] + [{"level": "experiment", **r} for r in exps]
    return _csv_text(SUMMARY_COLUMNS, rows)


def summary_json(results: StudyResults) -> str:
    """``{"study", "question", "units", "trials": [...], "experiments": [...]}`` (NaN -> null)."""
    trials, exps = _summary_dicts(results)
    doc = {"study": results.name, "question": results.question,
           "units": "metrics and accuracies are fractions in [0, 1]; elapsed_s in seconds",
           "trials": [{k: _json_value(v) for k, v in r.items()} for r in trials],
           "experiments": [{k: _json_value(v) for k, v in r.items()} for r in exps],
           "problems": list(results.problems)}
    return json.dumps(doc, indent=1, allow_nan=False) + "\n"


def _pct(x: float, sd: float = float("nan"), n: int = 1) -> str:
    if not math.isfinite(x):
        return "n/a"
    if n >= 2 and math.isfinite(sd):
        return f"{100 * x:.2f} ± {100 * sd:.2f}"
    return f"{100 * x:.2f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def summary_markdown(results: StudyResults) -> str:
    """Two Markdown tables: one row per experiment (mean ± sd over done seeds, n), then one per
    trial; metrics in %."""
    trials, exps = _summary_dicts(results)
    labels = [lab for _, lab, _ in METRICS]
    head = ["experiment", "n", "diverged", "other", *labels, "time (min)"]
    rows = [[e["experiment"], str(e["n"]), str(e["diverged"]), str(e["other"]),
             *[_pct(e[k], e[f"{k}_sd"], e["n"]) for k, _, _ in METRICS],
             "n/a" if not math.isfinite(e["elapsed_s"]) else f"{e['elapsed_s'] / 60:.1f}"] for e in exps]
    out = _md_table(head, rows)
    out.append("")
    trows = [[t["experiment"], str(t["seed"]), t["status"], *[_pct(t[k]) for k, _, _ in METRICS],
              t["note"]] for t in trials]
    out += _md_table(["experiment", "seed", "status", *labels, "note"], trows)
    out.append("Metrics in % (mean ± sample sd over done seeds; n = done seeds): ACC final average "
               "accuracy, F forgetting, BWT backward transfer, FWT forward transfer, LA learning "
               "accuracy. Diverged and other trials are counted, never averaged.")
    out += list(results.problems)
    return "\n".join(out)


def render_summary(results: StudyResults, fmt: str) -> str:
    """The summary in ``fmt`` (one of :data:`FORMATS`)."""
    if fmt == "markdown":
        return summary_markdown(results)
    if fmt == "csv":
        return summary_csv(results)
    if fmt == "json":
        return summary_json(results)
    raise ValueError(f"unknown summary format {fmt!r}; choose one of {', '.join(FORMATS)}")


def accuracy_rows(results: StudyResults) -> List[Dict[str, Any]]:
    """The long-format rows (see the module docstring)."""
    rows = []
    for e in results.experiments:
        for t in e.with_result():
            r = np.asarray(t.result["acc_matrix"], dtype=np.float64)
            for i in range(r.shape[0]):
                for j in range(r.shape[1]):
                    rows.append({"experiment": e.experiment, "folder": e.folder, "seed": t.seed,
                                 "after_task": i, "task": j, "accuracy": float(r[i, j]),
                                 "seen": j <= i, "status": t.status})
    return rows


def accuracy_csv(results: StudyResults) -> str:
    """The long-format accuracy CSV (see the module docstring)."""
    return _csv_text(ACCURACY_COLUMNS, accuracy_rows(results))
