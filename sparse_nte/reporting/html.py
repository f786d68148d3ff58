"""One self-contained HTML page per study: no script, no network (inline CSS and SVG only), so
it can be mailed, archived next to a paper, or opened offline years later.

Sections: the question and a summary (final average accuracy, forgetting, BWT, FWT, learning
accuracy as mean ± sample sd over done seeds, n, and every trial's values with its status);
accuracy over tasks with seed bands (one colour per experiment, chance level drawn); mean
accuracy matrices; per-layer density, E/I fractions, violation counts and activity; NTE guard
counts; the configurations side by side with the keys that differ highlighted; provenance
(commands, versions, git commits).

Every number cell carries its exact value in a ``data-`` attribute (``data-value`` for one trial;
``data-mean``, ``data-sd``, ``data-n`` for an experiment), so tools and tests can compare the
page with the result files without parsing the rounded text. Percentages are shown with two
decimals in tables and one in matrix cells.
"""
from __future__ import annotations

import datetime
import html
import math
from typing import Any, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from sparse_nte.reporting import figures, tables
from sparse_nte.reporting.collect import ExperimentRecords, StudyResults
from sparse_nte.reporting.describe import describe, overrides_text

__all__ = ["render_html", "pct", "matrix_cell"]

CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #d9dce1; --bg: #fff; --hl: #fff3c4; --bad: #b3261e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: var(--fg); background: var(--bg); margin: 0 auto; padding: 1.5em 2em 4em;
       max-width: 1280px; }
h1 { font-size: 1.6em; margin: 0 0 .2em; }
h2 { font-size: 1.25em; margin: 2em 0 .6em; border-bottom: 1px solid var(--line); padding-bottom: .2em; }
h3 { font-size: 1.05em; margin: 1.4em 0 .4em; }
.question { font-size: 1.15em; margin: .3em 0 .6em; }
.meta, .note, figcaption { color: var(--muted); font-size: .92em; }
nav a { margin-right: 1em; }
code, pre { font: 12.5px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
pre { background: #f6f8fa; padding: .7em 1em; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; margin: .4em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f4f6; font-weight: 600; }
td.num, th.num { text-align: right; white-space: nowrap; }
tr.differs td, tr.differs th { background: var(--hl); }
.swatch { display: inline-block; width: .9em; height: .9em; border-radius: 2px; margin-right: .4em;
          vertical-align: -.1em; }
.status { font-weight: 600; }
.status-done { color: #1e7d32; }
.status-diverged, .status-failed, .status-unreadable, .status-other-configuration { color: var(--bad); }
.status-interrupted, .status-not-run { color: #8a5a00; }
.alert { border-left: 4px solid var(--bad); background: #fdecea; padding: .5em 1em; margin: 1em 0; }
figure { margin: .8em 0 1.4em; }
figure svg { max-width: 100%; height: auto; display: block; }
.matrices { display: flex; flex-wrap: wrap; gap: 1.5em; }
table.matrix td { text-align: center; min-width: 3.2em; border: 1px solid #fff; }
table.matrix th { text-align: center; }
.scroll { overflow-x: auto; }
td.exp { white-space: nowrap; }
code.folder { font-size: .82em; color: var(--muted); white-space: normal; word-break: break-all; }
details > summary { cursor: pointer; color: var(--muted); margin: .4em 0; }
"""


def pct(x: Optional[float], digits: int = 2) -> str:
    """``0.81234 -> "81.23"``; ``"n/a"`` for None or NaN."""
    if x is None or not math.isfinite(float(x)):
        return "n/a"
    return f"{100 * float(x):.{digits}f}"


def _mean_sd(s: tables.Summary) -> str:
    if s.n == 0:
        return "n/a"
    return pct(s.mean) if s.n < 2 else f"{pct(s.mean)} ± {pct(s.sd)}"


def _attr(x: Any) -> str:
    if isinstance(x, float) or isinstance(x, np.floating):
        return repr(float(x)) if math.isfinite(float(x)) else "nan"
    return html.escape(str(x), quote=True)


def _e(x: Any) -> str:
    return html.escape(str(x))


def _status(status: str) -> str:
    return f'<span class="status status-{status.replace(" ", "-")}">{_e(status)}</span>'


def matrix_cell(value: float, lo: float, hi: float) -> str:
    """A ``<td>`` of a heat-map table: the accuracy with one decimal on a viridis background
    scaled to ``[lo, hi]`` (percent), its exact value (fraction) in ``data-value``."""
    import matplotlib

    if not math.isfinite(value):
        return '<td class="empty" data-value="nan"></td>'
    v = 100 * value
    t = 0.0 if hi <= lo else min(max((v - lo) / (hi - lo), 0.0), 1.0)
    r, g, b, _ = matplotlib.colormaps["viridis"](t)
    fg = "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "#fff"
    bg = "#%02x%02x%02x" % (round(255 * r), round(255 * g), round(255 * b))
    return f'<td style="background:{bg};color:{fg}" data-value="{_attr(value)}">{v:.1f}</td>'


def _table(head: Sequence[str], rows: Iterable[str], cls: str = "", num: Iterable[int] = ()) -> str:
    """A table; the header cells of the columns ``num`` are right-aligned like their numbers."""
    num = set(num)
    ths = "".join(f'<th{" class=num" if i in num else ""}>{_e(h)}</th>' for i, h in enumerate(head))
    return (f'<div class="scroll"><table class="{cls}"><thead><tr>{ths}</tr></thead><tbody>'
            + "".join(rows) + "</tbody></table></div>")


def _exp_label(k: int, e: ExperimentRecords) -> str:
    return f'<span class="swatch" style="background:{figures.color_of(k)}"></span>{_e(e.experiment)}'


def _others(e: ExperimentRecords) -> int:
    """Trials neither done nor diverged: failed, interrupted, not run, unreadable, another's."""
    return len(e.trials) - len(e.done()) - e.count("diverged")


def _summary(results: StudyResults) -> str:
    rows = []
    for k, e in enumerate(results.experiments):
        cells = [f'<td class="exp">{_exp_label(k, e)}<br><code class="folder">{_e(e.folder)}</code></td>',
                 f'<td class="num" data-count="n">{len(e.done())}</td>',
                 f'<td class="num" data-count="diverged">{e.count("diverged")}</td>',
                 f'<td class="num" data-count="other">{_others(e)}</td>']
        for m, _, _ in tables.METRICS:
            s = tables.metric_summary(e, m)
            cells.append(f'<td class="num" data-exp="{_attr(e.experiment)}" data-metric="{m}" '
                         f'data-mean="{_attr(s.mean)}" data-sd="{_attr(s.sd)}" data-n="{s.n}">'
                         f"{_mean_sd(s)}</td>")
        done = e.done()
        minutes = tables.summarise([float(t.result.get("elapsed_s", float("nan"))) for t in done])[0] / 60
        cells.append(f'<td class="num">{"n/a" if not math.isfinite(minutes) else f"{minutes:.1f}"}</td>')
        rows.append(f'<tr data-exp="{_attr(e.experiment)}">' + "".join(cells) + "</tr>")
    head = ["experiment (results folder)", "n", "diverged", "other",
            *[lab for _, lab, _ in tables.METRICS], "min/trial"]
    return _table(head, rows, "summary", num=range(1, len(head)))


def _trials(results: StudyResults) -> str:
    rows = []
    for k, e in enumerate(results.experiments):
        for t in e.trials:
            m = t.metrics
            cells = [f'<td class="exp">{_exp_label(k, e)}</td>', f'<td class="num">{t.seed}</td>',
                     f"<td>{_status(t.status)}</td>"]
            for key, _, _ in tables.METRICS:
                v = m.get(key, float("nan"))
                cells.append(f'<td class="num" data-exp="{_attr(e.experiment)}" data-seed="{t.seed}" '
                             f'data-metric="{key}" data-value="{_attr(v)}">{pct(v)}</td>')
            cells.append(f'<td class="note">{_e(t.note)}</td>')
            rows.append(f'<tr data-status="{_attr(t.status)}">' + "".join(cells) + "</tr>")
    head = ["experiment", "seed", "status", *[lab for _, lab, _ in tables.METRICS], "note"]
    return _table(head, rows, "trials", num=[1, *range(3, len(head) - 1)])


def _matrices(results: StudyResults) -> str:
    blocks = []
    for k, e in enumerate(results.experiments):
        r = tables.mean_matrix(e)
        if r is None:
            blocks.append(f"<figure><h3>{_exp_label(k, e)}</h3><p class=note>no finished trial</p></figure>")
            continue
        lo, hi = figures.fitted_limits(100 * r)
        t = r.shape[0]
        head = "<tr><th>after \\ on</th>" + "".join(f"<th>{j}</th>" for j in range(t)) + "</tr>"
        body = "".join(f"<tr><th>{i}</th>" + "".join(matrix_cell(float(r[i, j]), lo, hi) for j in range(t))
                       + "</tr>" for i in range(t))
        blocks.append(f'<figure class="matrix-figure"><h3>{_exp_label(k, e)}</h3>'
                      f'<table class="matrix" data-exp="{_attr(e.experiment)}"><thead>{head}</thead>'
                      f"<tbody>{body}</tbody></table><figcaption>mean of {len(e.done())} done trial(s); "
                      f"row i: after training task i; column j: test accuracy (%) on task j"
                      f"</figcaption></figure>")
    return '<div class="matrices">' + "".join(blocks) + "</div>"


def _num(x: Any, fmt: str = "{:.3f}") -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return fmt.format(x)


def _layers(results: StudyResults) -> str:
    out = []
    for k, e in enumerate(results.experiments):
        out.append(f"<h3>{_exp_label(k, e)}</h3>")
        wl = tables.weight_layer_rows(e)
        if not wl:
            out.append("<p class=note>no layer statistics (record_stats = false, or no finished trial)</p>")
            continue
        rows = [f'<tr data-layer="{_attr(r["layer"])}"><td><code>{_e(r["layer"])}</code></td>'
                f'<td>{_e(r["shape"])}</td>'
                f'<td class="num">{_num(r["density"])}</td><td class="num">{_num(r["mask_density"])}</td>'
                f'<td class="num">{_num(r["exc_fraction"])}</td><td class="num">{_num(r["dead"])}</td>'
                f'<td class="num" data-violations="mask">{r["mask_violations"]}</td>'
                f'<td class="num" data-violations="sign">{r["sign_violations"]}</td></tr>' for r in wl]
        out.append(_table(["weight layer", "shape", "density", "mask density", "E fraction", "dead",
                           "mask violations", "sign violations"], rows, "layers", num=range(2, 8)))
        act = tables.activity_rows(e)
        if act:
            rows = [f'<tr><td><code>{_e(a["layer"])}</code></td><td class="num">{pct(a["active_mean"])}</td>'
                    f'<td class="num">{" ".join(pct(v, 1) for v in a["active_per_task"])}</td>'
                    f'<td class="num">{pct(a["active_exc"])} / {pct(a["active_inh"])}</td>'
                    f'<td class="num">{_num(a["entropy_ratio"])}</td></tr>' for a in act]
            out.append(_table(["hidden layer", "active units (%)", "per seen task (%)",
                               "active E / I units (%)", "duty-cycle entropy / max"], rows, "activity",
                              num=range(1, 5)))
    out.append("<p class=note>Density, mask density, E fraction (excitatory presynaptic units) and dead "
               "synapses: mean over done trials after their last task. Violation counts: the largest over "
               "every task of every trial with a result (diverged ones included); they must be 0. Active "
               "units: fraction of units active on the test set of each seen task, after the last task, "
               "before dropout; E / I: among excitatory / inhibitory units (Dale's law only).</p>")
    return "".join(out)


def _nte(results: StudyResults) -> str:
    out = []
    for k, e in enumerate(results.experiments):
        rows = tables.nte_rows(e)
        if not rows:
            continue
        body = [f'<tr><td class="num">{r["seed"]}</td><td>{_status(r["status"])}</td>'
                f'<td class="num" data-guard="{r["guard"][-1] if r["guard"] else 0}">'
                f'{" ".join(str(g) for g in r["guard"])}</td>'
                f'<td class="num">{_num(r["dead_experts"], "{}")}</td>'
                f'<td class="num">{_num(r["live_experts"], "{}")}</td></tr>'
                for r in rows]
        out.append(f"<h3>{_exp_label(k, e)}</h3>" + _table(
            ["seed", "status", "guard count after each task (cumulative)", "dead experts", "live experts"],
            body, "nte", num=[0, 2, 3, 4]))
    if not out:
        return ""
    return ("<h2 id=nte>NTE guard counts</h2><p class=note>Likelihood terms clamped by the NTE guard "
            "(1 - beta s g below its floor); a count that grows fast means the step is too large for "
            "the posterior update to be trusted.</p>" + "".join(out))


def _configs(results: StudyResults) -> str:
    rows = tables.config_rows(results)
    differing = [k for k, _, d in rows if d]
    head = ["key", *[e.experiment for e in results.experiments]]

    def tr(key: str, values: Sequence[Any], differs: bool) -> str:
        cells = "".join(f"<td>{_e(_show(v))}</td>" for v in values)
        return (f'<tr class="{"differs" if differs else "same"}" data-key="{key}"><th><code>{key}</code>'
                f"</th>{cells}</tr>")

    desc = "".join(f"<li>{_exp_label(k, e)}: {_e(_describe(e))}; overrides: "
                   f"{_e(overrides_text(e.variant))}</li>" for k, e in enumerate(results.experiments))
    return (f"<ul>{desc}</ul><p>Keys that differ (highlighted): "
            f"{', '.join(f'<code>{k}</code>' for k in differing) or 'none'}.</p>"
            + _table(head, [tr(*r) for r in rows if r[2]], "configs differing")
            + f"<details><summary>All {len(rows)} keys, side by side</summary>"
            + _table(head, [tr(*r) for r in rows], "configs all") + "</details>")


def _describe(e: ExperimentRecords) -> str:
    if not e.config:
        return "configuration unknown"
    d = describe(e.config)
    return f"{d['dataset']} ({d['scenario']}); {d['model']}; {d['rule']}; constraints: {d['constraints']}"


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return "(empty)" if v == "" else str(v)


def _provenance(results: StudyResults, command: str, exports: Mapping[str, str]) -> str:
    import sparse_nte
    from sparse_nte.results import git_commit

    cmds = "\n".join(results.commands) or "(not recorded)"
    vrows = []
    for v, who in tables.versions_rows(results):
        items = "".join(f"<li><code>{_e(k)}</code>: {_e(x)}</li>" for k, x in v.items())
        vrows.append(f"<tr><td><ul>{items}</ul></td><td>{_e(', '.join(who))}</td></tr>")
    commits = {v.get("git_commit", "unknown") for v, _ in tables.versions_rows(results)}
    warn = (f'<p class="alert">The results come from {len(commits)} different commits.</p>'
            if len(commits) > 1 else "")
    links = "".join(f'<li><a href="{_attr(href)}">{_e(label)}</a></li>' for label, href in exports.items())
    return (f"<p>Experiment file: <code>{_e(results.file or '(none)')}</code>; results directory: "
            f"<code>{_e(results.results_dir)}</code>.</p>"
            f"<p>Commands that run these trials (each runs only what is missing):</p><pre>{_e(cmds)}</pre>"
            f"<p>This report was written by:</p><pre>{_e(command)}</pre>"
            f"<p class=meta>sparse_nte {_e(sparse_nte.__version__)}, commit {_e(git_commit())}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}.</p>"
            + (f"<p>Exports (beside this file):</p><ul>{links}</ul>" if links else "")
            + warn + (_table(["versions", "trials"], vrows, "versions") if vrows else
                      "<p class=note>no results, so no versions</p>"))


def render_html(results: StudyResults, *, command: str = "",
                exports: Optional[Mapping[str, str]] = None) -> str:
    """The report page of ``results`` (a :class:`~sparse_nte.reporting.collect.StudyResults`).
    ``command`` is the command line that wrote it; ``exports`` maps labels to the relative paths
    of the files written beside it (linked from the page)."""
    names = ", ".join(e.experiment for e in results.experiments)
    title = f"Study {results.name}" if results.named else f"Report: {names}"
    trials = results.all_trials()
    counts = {s: sum(t.status == s for t in trials) for s in dict.fromkeys(t.status for t in trials)}
    seeds = sorted({t.seed for t in trials})
    alert = ""
    bad = {s: n for s, n in counts.items() if s != "done"}
    if bad:
        alert = ('<p class="alert">' + ", ".join(f"{n} trial(s) {s}" for s, n in bad.items())
                 + ": shown as such below and never averaged.</p>")
    has_results = any(e.done() for e in results.experiments)
    parts: List[str] = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)} — sparse_nte</title><style>{CSS}</style></head><body>",
        f"<header><h1>{_e(title)}</h1>",
        f'<p class="question">{_e(results.question)}</p>' if results.question else "",
        f"<p class=meta>{len(results.experiments)} experiment(s), seeds "
        f"{_e(', '.join(map(str, seeds)) or 'none')}, "
        f"{len(trials)} trial(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".</p>",
        alert, "</header>",
        '<nav><a href="#summary">Summary</a><a href="#curves">Accuracy over tasks</a>'
        '<a href="#matrices">Accuracy matrices</a><a href="#layers">Layers</a>'
        '<a href="#configs">Configurations</a><a href="#provenance">Provenance</a></nav>',
        "<h2 id=summary>Summary</h2>",
        "<p class=note>Metrics in %: mean ± sample sd over the done trials (n); ACC final average "
        "accuracy, F forgetting, BWT backward transfer, FWT forward transfer, LA learning accuracy "
        "(accuracy on each task right after learning it).</p>",
        _summary(results),
    ]
    if has_results:
        parts.append('<figure id="fig-metrics">' + figures.svg_markup(figures.metrics_figure(results), "m")
                     + "<figcaption>Every done trial (dots) and mean ± sd (squares).</figcaption></figure>")
    parts += ["<h3>Trials</h3>", _trials(results), "<h2 id=curves>Accuracy over tasks</h2>"]
    if has_results:
        parts.append('<figure id="fig-curves">' + figures.svg_markup(figures.curves_figure(results), "c")
                     + "<figcaption>Mean over done trials, band ± 1 sd; dashed: chance level."
                       "</figcaption></figure>")
    else:
        parts.append("<p class=note>no finished trial yet</p>")
    parts += ["<h2 id=matrices>Accuracy matrices</h2>", _matrices(results),
              "<h2 id=layers>Layers: connectivity, Dale's law, activity</h2>", _layers(results),
              _nte(results), "<h2 id=configs>Configurations</h2>", _configs(results)]
    if results.problems:
        items = "".join(f"<li>{_e(p)}</li>" for p in results.problems)
        parts.append(f"<h3>Problems</h3><ul>{items}</ul>")
    parts += ["<h2 id=provenance>Provenance</h2>", _provenance(results, command, exports or {}),
              "</body></html>"]
    return "\n".join(p for p in parts if p)
