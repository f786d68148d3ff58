"""Tables and figures from result pickles: ``run_exps.py --summary`` and ``--plot``.

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
import os
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from sparse_nte.errors import ResultsError
from sparse_nte.identity import describe_differences, differences
from sparse_nte.results import load_result

__all__ = ["collect", "summary_table", "plot_result", "plot_experiment", "group_by_config",
           "experiment_folders", "diverged_text"]

SUMMARY_METRICS = ("avg_acc", "forgetting", "learning_acc", "bwt", "fwt")


def collect(results_dir: os.PathLike, exp: str, problems: Optional[List[str]] = None) -> Dict[int, dict]:
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


def experiment_folders(results_dir: os.PathLike, exp: str) -> List[str]:
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


def diverged_text(result: dict) -> str:
    """``"DIVERGED at task 0, epoch 1, step 37: the training loss is nan"`` for a diverged
    result, else ``""``."""
    if result.get("status", "done") != "diverged":
        return ""
    d = result.get("diverged") or {}
    if not d:
        return "DIVERGED"
    return f"DIVERGED at task {d.get('task')}, epoch {d.get('epoch')}, step {d.get('step')}: {d.get('reason')}"


def _variant_note(results_dir: os.PathLike, folder: str) -> str:
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


def summary_table(results_dir: os.PathLike, exps: Sequence[str]) -> str:
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


def plot_result(result: dict, out_png: os.PathLike, title: str = "") -> Path:
    """Accuracy-matrix heatmap and per-task accuracy curves of one run, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r = np.asarray(result["acc_matrix"], dtype=float)
    t = r.shape[0]
    trained = int(result.get("tasks_trained", t))
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.4))
    shown = np.where(np.isnan(r), np.nan, 100 * r)
    im = ax0.imshow(shown, vmin=0, vmax=100, cmap="viridis")
    ax0.set_xlabel("evaluated on task j")
    ax0.set_ylabel("after training task i")
    ax0.set_xticks(range(t))
    ax0.set_yticks(range(t))
    if t <= 12:
        for i in range(t):
            for j in range(t):
                if not np.isnan(shown[i, j]):
                    ax0.text(j, i, f"{shown[i, j]:.0f}", ha="center", va="center", fontsize=7,
                             color="white" if shown[i, j] < 60 else "black")
    fig.colorbar(im, ax=ax0, label="accuracy (%)")
    ax0.set_title("accuracy matrix R[i, j]")
    x = np.arange(trained)
    for j in range(t):
        if j < trained:
            ax1.plot(x[j:], 100 * r[j:trained, j], marker="o", ms=3, label=f"task {j}")
    avg = [100 * np.nanmean(r[i, : i + 1]) for i in range(trained)]
    ax1.plot(x, avg, color="black", lw=2.5, label="average (seen)")
    ax1.set_xlabel("after training task i")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_ylim(0, 100)
    ax1.set_xticks(range(t))
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2 if t > 6 else 1, loc="lower left")
    ax1.set_title("forgetting: accuracy on each task over time")
    m = result.get("metrics", {})
    diverged = diverged_text(result)
    if diverged:  # no scores: say what happened instead
        fig.suptitle(f"{title}   {diverged}", color="firebrick", fontsize=10)
    elif title or m:
        fig.suptitle(f"{title}   ACC {100 * m.get('avg_acc', float('nan')):.1f}%   "
                     f"BWT {100 * m.get('bwt', float('nan')):.1f}%   "
                     f"forgetting {100 * m.get('forgetting', float('nan')):.1f}%")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def plot_experiment(results_dir: os.PathLike, exp: str,
                    problems: Optional[List[str]] = None) -> List[Path]:
    """One PNG per result (finished or diverged), ``<results_dir>/<exp>/seed<k>.png``. Unreadable
    result files, and figures that cannot be written, are skipped and described in ``problems``
    (when given; else the first one raises ResultsError)."""
    paths = []
    for seed, res in collect(results_dir, exp, problems).items():
        png = Path(results_dir) / exp / f"seed{seed}.png"
        try:
            paths.append(plot_result(res, png, f"{exp} (seed {seed})"))
        except OSError as exc:
            from sparse_nte.results import os_error_text

            error = ResultsError(f"cannot write the figure {png}: {os_error_text(exc)}")
            if problems is None:
                raise error from None
            problems.append(f"skipped {error}")
    return paths
