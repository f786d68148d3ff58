"""Writing a study's report: the HTML page and, beside it, its exports and (on request) figures.

For a report ``<dir>/<stem>.html`` (a named study: ``<results>/<study>/report.html``; an ad-hoc
one: ``<results>/report-<names>.html`` or ``--report-file``)::

    <dir>/<stem>.html               the self-contained page (:mod:`sparse_nte.reporting.html`)
    <dir>/<stem>_accuracy.csv       every accuracy-matrix entry, long format
    <dir>/<stem>_summary.csv        one row per trial and per experiment
    <dir>/<stem>_summary.json       the same, as JSON
    <dir>/<stem>_curves.png/.svg    with plot=True: accuracy over tasks, seed bands
    <dir>/<stem>_metrics.png/.svg   with plot=True: per-seed ACC and forgetting

(formats in :mod:`sparse_nte.reporting.exports`). Every file is written atomically.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import List

from sparse_nte.reporting import exports, figures
from sparse_nte.reporting.collect import StudyResults
from sparse_nte.reporting.html import render_html
from sparse_nte.results import atomic_write_bytes

__all__ = ["write_report", "export_paths"]


def export_paths(html_path: os.PathLike) -> dict[str, Path]:
    """``{"accuracy": ..., "summary_csv": ..., "summary_json": ...}`` beside ``html_path``."""
    p = Path(html_path)
    stem = p.with_suffix("")
    return {"accuracy": Path(f"{stem}_accuracy.csv"), "summary_csv": Path(f"{stem}_summary.csv"),
            "summary_json": Path(f"{stem}_summary.json")}


def write_report(results: StudyResults, html_path: os.PathLike, *, command: str = "",
                 plot: bool = False) -> List[Path]:
    """Write the report of ``results`` to ``html_path`` with its exports beside it (and the
    study's figures as PNG and SVG with ``plot``); returns the paths written, the page first."""
    html_path = Path(html_path)
    paths = export_paths(html_path)
    written = [
        atomic_write_bytes(paths["accuracy"], exports.accuracy_csv(results).encode()),
        atomic_write_bytes(paths["summary_csv"], exports.summary_csv(results).encode()),
        atomic_write_bytes(paths["summary_json"], exports.summary_json(results).encode()),
    ]
    labels = {"accuracy matrices, long format (CSV)": paths["accuracy"].name,
              "summary, one row per trial and per experiment (CSV)": paths["summary_csv"].name,
              "summary (JSON)": paths["summary_json"].name}
    if plot and any(e.done() for e in results.experiments):
        stem = html_path.with_suffix("")
        written += figures.save_figure(figures.curves_figure(results), f"{stem}_curves")
        written += figures.save_figure(figures.metrics_figure(results), f"{stem}_metrics")
    page = render_html(results, command=command, exports=labels)
    return [atomic_write_bytes(html_path, page.encode("utf-8")), *written]
