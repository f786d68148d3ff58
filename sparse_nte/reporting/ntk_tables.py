"""Markdown tables of the NTK probes' results: fast adaptation, gradient alignment within a task,
kernel drift across tasks, with the accuracy metrics beside them.

Every number comes from the result files of a study (:func:`sparse_nte.study.collect`); only
``done`` trials enter a mean, and every cell is ``mean ± sd`` over the seeds (sample standard
deviation, n - 1; ``n`` is given per row). Per seed, a quantity measured at several moments of
a trial is first averaged over them (e.g. the adaptation to tasks 1..T-1), so the sd is over
seeds, not over moments. Works on plain result dicts (no torch).

Tables (each only if some trial recorded what it needs):

* :func:`adaptation_table`: per experiment and k, the accuracy on the new task of fine-tuning and
  of the NTK-GP, their difference (GP - FT, with the number of (seed, transition) pairs where the
  GP is higher), and the mean accuracy on the old tasks after fine-tuning and with the GP (the
  latter is the trained network's own); ``before`` is the new task's accuracy before adapting.
* :func:`within_task_table`: gradient alignment with theta_0 (and kernel drift) of the task being
  trained at chosen steps of task 0.
* :func:`kernel_table`: after the last task, for task 0's probe set: kernel drift from theta_0,
  CKA with the kernel task 0 was learned with, gradient alignment, effective rank; and the
  trial's final average accuracy and forgetting.
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Callable, List, Mapping, Optional, Sequence

__all__ = ["mean_sd", "adaptation_table", "within_task_table", "kernel_table", "ntk_markdown"]


def mean_sd(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``"12.34 ± 0.56"`` (sample sd), ``"12.34"`` for one value, ``"n/a"`` for none."""
    vals = [float(v) * scale for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.fmean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)]


def _done(results: Any):
    """(experiment name, [result dicts of its done trials]) in study order."""
    return [(e.experiment, [t.result for t in e.done()]) for e in results.experiments]


def _per_task(result: Mapping[str, Any]) -> List[Mapping[str, Any]]:
    return list(result.get("stats", {}).get("per_task", []))


def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


# -- fast adaptation ------------------------------------------------------------------------------
def adaptation_table(results: Any) -> str:
    """Fast adaptation, accuracies in % (module docstring)."""
    rows = []
    for name, done in _done(results):
        entries = [[t["adaptation"] for t in _per_task(r) if t.get("adaptation")] for r in done]
        entries = [e for e in entries if e]
        if not entries:
            continue
        ks = sorted({x["k"] for seed in entries for a in seed for x in a["results"]})
        for k in ks:
            def at(a: Mapping[str, Any]) -> Optional[Mapping[str, Any]]:
                return next((x for x in a["results"] if x["k"] == k), None)

            def per_seed(get: Callable[[Mapping[str, Any]], float]) -> List[float]:
                out = []
                for seed in entries:
                    vals = [get(at(a)) for a in seed if at(a) is not None]
                    if vals:
                        out.append(_mean(vals))
                return out

            ft_new = per_seed(lambda x: x["finetune"]["new"])
            gp_new = per_seed(lambda x: x["gp"]["new"])
            ft_old = per_seed(lambda x: _mean(x["finetune"]["old"]))
            gp_old = per_seed(lambda x: _mean(x["gp"]["old"]))
            before = [_mean([a["before"]["new"] for a in seed if at(a) is not None])
                      for seed in entries if any(at(a) is not None for a in seed)]
            pairs = [(at(a)["gp"]["new"], at(a)["finetune"]["new"])
                     for seed in entries for a in seed if at(a) is not None]
            wins = sum(g > f for g, f in pairs)
            rows.append([name, str(k), str(len(gp_new)), mean_sd(before, 100),
                         mean_sd(ft_new, 100), mean_sd(gp_new, 100),
                         mean_sd([g - f for g, f in zip(gp_new, ft_new)], 100),
                         f"{wins}/{len(pairs)}", mean_sd(ft_old, 100), mean_sd(gp_old, 100)])
    if not rows:
        return ""
    head = ["experiment", "k/class", "n", "new: before", "new: FT", "new: GP", "GP - FT",
            "GP > FT", "old: FT", "old: GP"]
    note = ("Accuracy (%) on the next task (new) and the mean over the tasks already learned "
            "(old), averaged per seed over the transitions t -> t+1, then mean ± sd over n seeds. "
            "FT: fine-tuned copy; GP: NTK-GP posterior mean (the network itself is unchanged, so "
            "its old-task accuracy is the trained network's). GP > FT: (seed, transition) pairs "
            "where the GP is more accurate on the new task.")
    return "\n".join(_table(head, rows) + ["", note])


# -- within a task --------------------------------------------------------------------------------
def within_task_table(results: Any, steps: Optional[Sequence[int]] = None, task: int = 0,
                      measure: str = "grad_alignment") -> str:
    """``measure`` (grad_alignment or kernel_drift) of task ``task`` at ``steps`` into it
    (default: every step measured in the first trial found)."""
    rows, found_steps = [], None
    for name, done in _done(results):
        curves = []
        for r in done:
            pt = _per_task(r)
            within = pt[task].get("ntk", {}).get("within_task") if len(pt) > task else None
            if within:
                curves.append(dict(zip(within["step"], within[measure])))
        if not curves:
            continue
        if found_steps is None:
            found_steps = list(steps) if steps is not None else sorted(curves[0])
        cells = [mean_sd([c[s] for c in curves if s in c], 1.0, 3) for s in found_steps]
        acc = [float(r["acc_matrix"][task][task]) for r in done]
        rows.append([name, str(len(curves)), *cells, mean_sd(acc, 100)])
    if not rows:
        return ""
    head = ["experiment", "n", *[f"step {s}" for s in found_steps], f"task {task} acc (%)"]
    what = ("gradient alignment with theta_0" if measure == "grad_alignment"
            else "kernel drift ||K - K_0||_F / ||K_0||_F")
    note = (f"{what} of task {task}'s probe set at the given optimizer steps into task {task} "
            f"(mean ± sd over n seeds); last column: test accuracy on task {task} after it.")
    return "\n".join(_table(head, rows) + ["", note])


# -- across tasks ---------------------------------------------------------------------------------
def kernel_table(results: Any, task: int = 0) -> str:
    """Task ``task``'s kernel measures after the last task, with the accuracy metrics."""
    rows = []
    for name, done in _done(results):
        last = [(_per_task(r)[-1].get("ntk"), r) for r in done if _per_task(r)]
        last = [(n, r) for n, r in last if n and task in n.get("seen", [])]
        if not last:
            continue
        def col(key: str) -> List[float]:
            return [n[key][n["seen"].index(task)] for n, _ in last]
        drift_first = [(_per_task(r)[task].get("ntk") or {}).get("kernel_drift", [math.nan])[task]
                       for _, r in last]
        rows.append([name, str(len(last)), mean_sd(drift_first, 1.0, 3),
                     mean_sd(col("kernel_drift"), 1.0, 3), mean_sd(col("cka_learned"), 1.0, 3),
                     mean_sd(col("grad_alignment"), 1.0, 3), mean_sd(col("effective_rank"), 1.0, 1),
                     mean_sd([r["metrics"]["avg_acc"] for _, r in last], 100),
                     mean_sd([r["metrics"]["forgetting"] for _, r in last], 100)])
    if not rows:
        return ""
    head = ["experiment", "n", f"drift after task {task}", "drift at end", "CKA with learned",
            "grad alignment", "eff. rank", "ACC (%)", "forgetting (pts)"]
    note = (f"Task {task}'s probe set: kernel drift ||K - K_0||_F / ||K_0||_F right after task "
            f"{task} and after the last task; CKA of the final kernel with the one task {task} was "
            f"learned with; gradient alignment with theta_0 and effective rank of the final "
            f"kernel. ACC: final average accuracy; forgetting: mean drop from each task's best "
            f"accuracy (mean ± sd over n seeds).")
    return "\n".join(_table(head, rows) + ["", note])


def ntk_markdown(results: Any, steps: Optional[Sequence[int]] = None) -> str:
    """Every table the study's results support, separated by blank lines."""
    parts = [adaptation_table(results), within_task_table(results, steps),
             within_task_table(results, steps, measure="kernel_drift"), kernel_table(results)]
    return "\n\n".join(p for p in parts if p) or "(no NTK probe results in these trials)"
