"""Tables and figures from result pickles: ``run_exps.py --summary`` and ``--plot``.

Studies (several experiments x seeds), their HTML report and tidy exports are in
:mod:`sparse_nte.reporting`; the per-seed figure is drawn there (:mod:`sparse_nte.reporting.figures`).

Works on the plain result dicts (see :mod:`sparse_nte.results`), so it also works on pickles
copied to a machine without torch.

A result stands only for its configuration: the rows of a table are results folders (an
experiment, ``<name>``, and each of its variants, ``<name>+<overrides>``), and a folder holding
results of several configurations is split into one row per configuration, never pooled.
Diverged trials are counted and listed with where they diverged, never averaged; their plots
say DIVERGED in the title. Unreadable result files are named and skipped.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from sparse_nte.errors import ResultsError
from sparse_nte.identity import describe_differences, differences
from sparse_nte.reporting.describe import diverged_text
from sparse_nte.results import PathLike, load_result

__all__ = ["collect", "summary_table", "plot_result", "plot_experiment", "group_by_config",
           "experiment_folders", "diverged_text", "overrides_of_folder"]

SUMMARY_METRICS = ("avg_acc", "forgetting", "learning_acc", "bwt", "fwt")


def collect(results_dir: PathLike, exp: str, problems: Optional[List[str]] = None) -> Dict[int, dict]:
    """Results in one results folder (an experiment or a variant), by seed (empty if none).

    A file that cannot be read is skipped and described in ``problems`` (when given) instead of
    stopping the whole report."""
    folder = Path(results_dir) / exp
    out = {}
    for p in sorted(folder.glob("seed*.pkl")):
        try:
            seed = int(p.stem[len("seed"):])
        except ValueError:
            continue
        try:
            res = load_result(p)
            if "acc_matrix" not in res or "metrics" not in res:
                raise ResultsError(f"{p} is not a result of this toolkit (no acc_matrix/metrics)")
            out[seed] = res
        except ResultsError as exc:
            if problems is None:
                raise
            problems.append(f"skipped {exc}")
    return out


def experiment_folders(results_dir: PathLike, exp: str) -> List[str]:
    """The results folders of ``exp`` that exist: the experiment's own and those of its variants
    (``exp+...``, runs with ``--set`` overrides), in name order. A variant's folder name (it
    contains ``+``) stands for itself alone."""
    root = Path(results_dir)
    if "+" in exp:
        return [exp] if (root / exp).is_dir() else []
    try:
        variants = sorted(p.name for p in root.glob(f"{_glob_escape(exp)}+*") if p.is_dir())
    except OSError:
        variants = []
    return ([exp] if (root / exp).is_dir() else []) + variants


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _variant_note(results_dir: PathLike, folder: str) -> str:
    """For a variant folder named by a hash, what its ``variant.json`` says it changes."""
    if not re.fullmatch(r".+\+[0-9a-f]{10}", folder):
        return ""
    try:
        info = json.loads((Path(results_dir) / folder / "variant.json").read_text())
        changes = ", ".join(f"{k}={v}" for k, v in info["differs_in"].items())
        return f"{folder}: {info['experiment']} with {changes}"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return ""


def group_by_config(runs: Dict[int, dict]) -> List[Dict[int, dict]]:
    """Split results by configuration: the seeds of one group share every key that defines what
    a trial computes (so their metrics may be pooled); more than one group means the folder
    holds results of different configurations (e.g. the experiment file changed between runs)."""
    groups: List[Dict[int, dict]] = []
    for seed, res in sorted(runs.items()):
        for g in groups:
            if not differences(next(iter(g.values())).get("config", {}), res.get("config", {})):
                g[seed] = res
                break
        else:
            groups.append({seed: res})
    return groups


def _mean_std(values: Sequence[float]) -> str:
    v = np.array([x for x in values if not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return f"{100 * v[0]:.2f}"
    return f"{100 * v.mean():.2f} ± {100 * v.std(ddof=1):.2f}"


def summary_table(results_dir: PathLike, exps: Sequence[str]) -> str:
    """A Markdown table: one row per experiment (per configuration, if a folder holds several),
    metrics in percent as mean ± std over the finished seeds (sample standard deviation), the
    number of seeds, diverged trials and the mean wall time. Unreadable files and results of
    different configurations are named below the table, never pooled."""
    header = ["experiment", "seeds", "diverged"] + list(SUMMARY_METRICS) + ["time (min)"]
    rows: List[List[str]] = []
    notes: List[str] = []
    for exp in exps:
        res = collect(results_dir, exp, notes)
        if not res:
            rows.append([exp, "0", "0"] + ["n/a"] * (len(SUMMARY_METRICS) + 1))
            notes.append(f"{exp}: no results in {Path(results_dir) / exp}")
            continue
        groups = group_by_config(res)
        for k, group in enumerate(groups):
            label = exp if len(groups) == 1 else f"{exp} (configuration {k + 1} of {len(groups)})"
            if k > 0:
                first = next(iter(groups[0].values())).get("config", {})
                diff = differences(first, next(iter(group.values())).get("config", {}))
                notes.append(f"{label}: seeds {sorted(group)} differ from seeds {sorted(groups[0])} in "
                             f"{describe_differences(diff)}; not pooled")
            done = [r for r in group.values() if r.get("status", "done") == "done"]
            diverged = len(group) - len(done)
            cells = [_mean_std([r["metrics"].get(m, float("nan")) for r in done]) for m in SUMMARY_METRICS]
            minutes = np.mean([r.get("elapsed_s", float("nan")) for r in done]) / 60 if done else float("nan")
            rows.append([label, str(len(done)), str(diverged)] + cells
                        + [f"{minutes:.1f}" if minutes == minutes else "n/a"])
            notes += [f"{label}: seed {seed} {diverged_text(r) or r.get('status')}"
                      for seed, r in group.items() if r.get("status", "done") != "done"]
        note = _variant_note(results_dir, exp)
        if note:
            notes.append(note)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    out.append("Metrics in % (mean ± sample std over finished seeds): average accuracy after the "
               "last task, forgetting, just-learned (learning) accuracy, backward transfer, forward "
               "transfer. Diverged trials are counted, never averaged.")
    out += notes
    return "\n".join(out)


def plot_result(result: dict, out_png: PathLike, title: str = "",
                overrides: Optional[Mapping[str, Any]] = None) -> Path:
    """Accuracy-matrix heatmap and per-task accuracy curves of one run, saved as PNG: axes fitted
    to the data with the chance level shown, one decimal per cell, and a subtitle naming the
    dataset, scenario, model, rule, constraints and ``overrides``
    (:func:`sparse_nte.reporting.figures.seed_figure`)."""
    from sparse_nte.reporting.figures import save_figure, seed_figure

    out_png = Path(out_png)
    fmt = out_png.suffix[1:] or "png"     # another suffix (.pdf, .svg) picks that format
    return save_figure(seed_figure(result, title, overrides), out_png.with_suffix(""), formats=(fmt,),
                       dpi=120)[0]


def overrides_of_folder(exp: str, results_dir: Optional[PathLike] = None) -> Dict[str, Any]:
    """The overrides a variant folder stands for (``"quickstart+lr=0.2+num_batch=3"`` ->
    ``{"lr": "0.2", "num_batch": "3"}``); for a hashed name, the folder's ``variant.json`` when
    ``results_dir`` is given (else ``{"variant": "<hash>"}``); ``{}`` for an experiment's own
    folder (:func:`sparse_nte.identity.folder_name`)."""
    parts = exp.split("+")[1:]
    if not parts:
        return {}
    if len(parts) == 1 and "=" not in parts[0]:
        if results_dir is not None:
            import json

            from sparse_nte.results import variant_path
            try:
                stored = json.loads(variant_path(results_dir, exp).read_text())
                return dict(stored["differs_in"])
            except (OSError, ValueError):
                pass
        return {"variant": parts[0]}
    return dict(p.split("=", 1) for p in parts if "=" in p)


def plot_experiment(results_dir: PathLike, exp: str, problems: Optional[List[str]] = None,
                    overrides: Optional[Mapping[str, Any]] = None) -> List[Path]:
    """One PNG per result (finished or diverged), ``<results_dir>/<exp>/seed<k>.png``, its
    subtitle naming ``overrides`` (default: what the folder stands for,
    :func:`overrides_of_folder`). Unreadable result files, and figures that cannot be written,
    are skipped and described in ``problems`` (when given; else the first one raises
    ResultsError)."""
    paths = []
    if overrides is None:
        overrides = overrides_of_folder(exp, results_dir)
    for seed, res in collect(results_dir, exp, problems).items():
        png = Path(results_dir) / exp / f"seed{seed}.png"
        try:
            paths.append(plot_result(res, png, f"{exp} (seed {seed})", overrides))
        except OSError as exc:
            from sparse_nte.results import os_error_text

            error = ResultsError(f"cannot write the figure {png}: {os_error_text(exc)}")
            if problems is None:
                raise error from None
            problems.append(f"skipped {error}")
    return paths
