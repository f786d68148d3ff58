"""Figures of results (matplotlib, Agg): one trial's accuracy matrix and curves, and a study's
accuracy-over-tasks curves with seed bands and its per-seed metrics.

Every accuracy axis is fitted to the data it shows (a 2-point drop must be visible; a fixed 0-100
axis flattens it), and shows the chance level
(:func:`sparse_nte.reporting.describe.chance_level`: ``1/m`` for task- and domain-incremental
tasks of ``m`` classes, ``1/((i+1) m)`` after task ``i`` in the class-incremental setting): a
dashed grey line when it lies within the axis, else a labelled arrow at the bottom edge pointing
down to it (the axis is not stretched to include it, which would flatten the data again).
Seed bands are mean +- one sample standard deviation over the done trials.

Figures go into a report as inline SVG (:func:`svg_markup`: text kept as text, element ids made
unique per figure) and into papers as PNG and SVG files (:func:`save_figure`).
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from sparse_nte.reporting.collect import StudyResults
from sparse_nte.reporting.describe import chance_level, diverged_text, subtitle
from sparse_nte.reporting.tables import mean_curve, metric_summary

__all__ = ["COLORS", "color_of", "fitted_limits", "seed_figure", "curves_figure", "metrics_figure",
           "svg_markup", "save_figure"]

#: One colour per experiment, in study order (matplotlib's tab10, colour-blind friendlier than jet).
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")
CHANCE_STYLE = {"color": "0.45", "ls": "--", "lw": 1.0}


def color_of(index: int) -> str:
    return COLORS[index % len(COLORS)]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fitted_limits(values: Any, lo: float = 0.0, hi: float = 100.0) -> Tuple[float, float]:
    """Axis limits around the finite ``values``: their range padded by 8% (at least 1 unit) on
    each side, clipped to ``[lo - 1, hi + 1]`` (so points at a bound stay visible); ``(lo, hi)``
    without finite values."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return lo, hi
    a, b = float(v.min()), float(v.max())
    pad = max(1.0, 0.08 * (b - a))
    return max(lo - 1.0, a - pad), min(hi + 1.0, b + pad)


def _chance_curve(config: Mapping[str, Any], tasks: int) -> np.ndarray:
    return np.array([100 * chance_level(config, i) for i in range(tasks)])


def _draw_chance(ax, x: np.ndarray, chance: np.ndarray) -> None:
    """The chance level on ``ax`` (after its y limits are set): a dashed line (a step curve in the
    class-incremental setting) where it lies within the axis, else an arrow at the bottom edge
    labelled with its value."""
    y0, y1 = ax.get_ylim()
    constant = bool(np.allclose(chance, chance[0]))
    label = f"chance ({chance[0]:.1f}%)" if constant else "chance (1/seen classes)"
    if y0 <= float(np.max(chance)) <= y1:
        if constant:
            ax.axhline(chance[0], label=label, **CHANCE_STYLE)
        else:
            ax.step(x, chance, where="mid", label=label, **CHANCE_STYLE)
        ax.set_ylim(y0, y1)
        return
    below = "" if constant else f" to {chance[-1]:.1f}%"
    ax.annotate(f"chance {chance[0]:.1f}%{below} (below the axis)", xy=(0.01, 0.0),
                xycoords="axes fraction", xytext=(0.01, 0.07), textcoords="axes fraction",
                fontsize=7, color=CHANCE_STYLE["color"],
                arrowprops={"arrowstyle": "->", "color": CHANCE_STYLE["color"]})


def seed_figure(result: Mapping[str, Any], title: str = "",
                overrides: Optional[Mapping[str, Any]] = None):
    """One trial: its accuracy matrix (one decimal per cell, colours fitted to the trained rows)
    and the accuracy of each task over time with the average of the seen tasks and the chance
    level; a subtitle names dataset, scenario, model, rule, constraints and ``overrides``."""
    plt = _plt()
    r = 100 * np.asarray(result["acc_matrix"], dtype=np.float64)
    t = r.shape[0]
    trained = int(result.get("tasks_trained", t))
    config = result.get("config", {})
    chance = _chance_curve(config, t)
    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(12, 5.2))
    vmin, vmax = fitted_limits(r[:trained])
    im = ax0.imshow(r, vmin=vmin, vmax=vmax, cmap="viridis")
    ax0.set_xlabel("evaluated on task j")
    ax0.set_ylabel("after training task i")
    ax0.set_xticks(range(t))
    ax0.set_yticks(range(t))
    if t <= 12:
        mid = (vmin + vmax) / 2
        for i in range(t):
            for j in range(t):
                if np.isfinite(r[i, j]):
                    ax0.text(j, i, f"{r[i, j]:.1f}", ha="center", va="center", fontsize=7 if t <= 8 else 6,
                             color="white" if r[i, j] < mid else "black")
    fig.colorbar(im, ax=ax0, label="accuracy (%)")
    ax0.set_title("accuracy matrix R[i, j] (%)")
    x = np.arange(t)
    shown = [r[j:trained, j] for j in range(min(trained, t))]
    for j in range(min(trained, t)):
        ax1.plot(x[j:trained], r[j:trained, j], marker="o", ms=3, label=f"task {j}")
    avg = np.array([np.nanmean(r[i, : i + 1]) for i in range(trained)]) if trained else np.array([])
    ax1.plot(x[:trained], avg, color="black", lw=2.5, label="average (seen)")
    ax1.set_ylim(*fitted_limits(np.concatenate(shown + [avg]) if shown else avg))
    _draw_chance(ax1, x, chance)
    ax1.set_xlabel("after training task i")
    ax1.set_ylabel("test accuracy (%)")
    ax1.set_xticks(range(t))
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=7, ncol=2 if t > 6 else 1, loc="best")
    ax1.set_title("accuracy on each task over time")
    m = result.get("metrics", {})
    diverged = diverged_text(result)
    if diverged:  # no scores: say what happened instead
        fig.suptitle(f"{title}   {diverged}", color="firebrick", fontsize=10, y=0.985)
    else:
        fig.suptitle(f"{title}   ACC {100 * m.get('avg_acc', float('nan')):.1f}%   "
                     f"BWT {100 * m.get('bwt', float('nan')):.1f}%   "
                     f"forgetting {100 * m.get('forgetting', float('nan')):.1f}%", y=0.985)
    fig.text(0.5, 0.905, subtitle(config, overrides), ha="center", va="center", fontsize=8,
             color="0.25")
    fig.tight_layout(rect=(0, 0, 1, 0.89))
    return fig


def curves_figure(results: StudyResults):
    """Two panels, one colour per experiment: the average accuracy on the tasks seen so far after
    each task, and the accuracy on the first task over time; mean over done trials with a
    +- 1 sd band, and the chance level."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    chances: dict = {}
    for k, e in enumerate(results.experiments):
        for ax, task in zip(axes, (None, 0)):
            got = mean_curve(e, task)
            if got is None:
                continue
            mean, sd, n = 100 * got[0], 100 * got[1], got[2]
            x = np.arange(len(mean))
            ax.plot(x, mean, color=color_of(k), marker="o", ms=3, lw=1.8,
                    label=f"{e.experiment} (n={n})")
            if n > 1:
                ax.fill_between(x, mean - sd, mean + sd, color=color_of(k), alpha=0.18, lw=0)
            if e.config:
                c = _chance_curve(e.config, len(mean))
                chances.setdefault(tuple(np.round(c, 9)), c)
    for ax, title in zip(axes, ("average accuracy on the tasks seen so far", "accuracy on task 0")):
        lines = [ln.get_ydata() for ln in ax.get_lines()]
        bands = [np.concatenate([c.get_paths()[0].vertices[:, 1]]) for c in ax.collections]
        ax.set_ylim(*fitted_limits(np.concatenate(lines + bands) if lines else []))
        for c in chances.values():
            _draw_chance(ax, np.arange(len(c)), c)
        if lines:
            ax.set_xticks(range(max(len(v) for v in lines)))
        ax.set_xlabel("after training task i")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.set_title(title, fontsize=10)
    if any(ax.get_lines() for ax in axes):
        axes[0].legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def metrics_figure(results: StudyResults, metrics: Sequence[Tuple[str, str]] = (
        ("avg_acc", "final average accuracy (%)"), ("forgetting", "forgetting (points)"))):
    """One panel per metric: every done trial's value as a dot, the mean +- sd as a bar, one
    colour per experiment."""
    plt = _plt()
    n = len(results.experiments)
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(6.0, 1.1 * n * len(metrics) + 2), 3.8))
    axes = np.atleast_1d(axes)
    for ax, (metric, label) in zip(axes, metrics):
        shown = []
        for k, e in enumerate(results.experiments):
            s = metric_summary(e, metric)
            vals = np.array([100 * v for _, v in s.values], dtype=np.float64)
            offsets = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
            ax.scatter(k + offsets, vals, s=16, color=color_of(k), zorder=3)
            if s.n:
                sd = 0.0 if s.n < 2 else 100 * s.sd
                ax.errorbar([k + 0.3], [100 * s.mean], yerr=[sd], fmt="s", ms=5, color=color_of(k),
                            capsize=3)
                shown.extend([100 * s.mean - sd, 100 * s.mean + sd])
            shown.extend(vals.tolist())
        ax.set_xticks(range(n))
        ax.set_xticklabels([e.experiment for e in results.experiments], rotation=25, ha="right",
                           fontsize=7)
        ax.set_ylabel(label, fontsize=9)
        ax.set_ylim(*fitted_limits(shown, lo=-100.0))
        if metric == "avg_acc":   # ACC is measured after the last task: its chance level then
            levels = {round(100 * chance_level(e.config, int(e.config.get("num_batch", 1)) - 1), 9)
                      for e in results.experiments if e.config}
            for c in sorted(levels):
                _draw_chance(ax, np.zeros(1), np.array([c]))
        ax.set_xlim(-0.6, n - 0.2)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(\bid="|url\(#|href="#)([^")]+)')


def svg_markup(fig, prefix: str) -> str:
    """The figure as an ``<svg>`` element to inline in HTML: text kept as ``<text>`` (selectable,
    no glyph definitions), no XML prolog, every ``id`` (and reference to it) prefixed with
    ``prefix`` so several figures can share one page. The figure is closed."""
    import matplotlib

    plt = _plt()
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": prefix}):
        fig.savefig(buf, format="svg", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    ids = set(_ID.findall(svg))
    return _REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}" if m.group(2) in ids else m.group(0),
                    svg)


def save_figure(fig, stem: os.PathLike, formats: Sequence[str] = ("png", "svg"), dpi: int = 150
                ) -> List[Path]:
    """Write ``<stem>.png`` / ``<stem>.svg`` (atomically) and close the figure."""
    from sparse_nte.results import atomic_write_bytes

    plt = _plt()
    paths = []
    for fmt in formats:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=dpi, metadata={"Date": None} if fmt == "svg" else None)
        paths.append(atomic_write_bytes(Path(f"{stem}.{fmt}"), buf.getvalue()))
    plt.close(fig)
    return paths
