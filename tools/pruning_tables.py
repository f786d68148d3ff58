"""The tables of docs/results/data_pruning.md, made from the result files of the data-pruning
studies (``[study:pruning_*]`` of exps/exps_params.cfg), never typed by hand.

    python tools/pruning_tables.py --results-dir DIR            # print every table
    python tools/pruning_tables.py --results-dir DIR --write    # rewrite them in the doc

Each table sits in the doc between ``<!-- table:NAME -->`` and ``<!-- /table:NAME -->``;
``--write`` replaces what is between the markers and nothing else.

Per trial (one experiment, one seed; only trials with status ``done`` count, any other status
is listed under the table): ACC (final average accuracy), F (forgetting), LA (accuracy right
after learning each task), all in % (:mod:`sparse_nte.metrics`); the training time of the run,
sum over tasks of the per-task CPU seconds ``train_cpu_s`` (and wall seconds ``train_s``) the
runner records, which include the static selectors' scoring runs; the fraction of the tasks'
examples the epochs used (the selection's ``data_fraction``). Per experiment: mean ± sample sd
over its seeds. Ratios and differences against another experiment (full data, or uniform
pruning) are paired by seed: per seed ``x_e(s) / x_ref(s)`` or ``x_e(s) - x_ref(s)``, then
mean ± sd over the seeds both have, with ``k/n``: the number of seeds where the difference is
positive.

Tables:

* ``pfmnist``, ``sfmnist``: every experiment of ``pruning_pfmnist`` / ``pruning_sfmnist``;
* ``claims_pfmnist``, ``claims_sfmnist``: the anchor's claims as paired ACC differences at
  each rate (UCB - uniform, epsilon-greedy - uniform, dynamic uniform - static random, best
  dynamic - best static, full - UCB);
* ``forgetting``: full data, uniform and UCB at p = 0.5 under the conditions of the
  ``pruning_forgetting_*`` studies (dense SGD, constrained SGD, constrained NTE, replay);
* ``shipped``: shipped experiments (short versions) run with and without
  ``--set data_pruning=ucb --set data_prune_rate=0.5`` (:data:`SHIPPED`);
* ``bench``: the figures of ``bench/bench_pruning.py --json FILE`` (``--bench-json FILE``).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sparse_nte.study import adhoc_study, collect, resolve_study  # noqa: E402

CONFIG = REPO / "exps" / "exps_params.cfg"
DOC = REPO / "docs" / "results" / "data_pruning.md"

RATES = (30, 50, 70)
DYNAMIC = ("uniform", "egreedy", "ucb")
STATIC = ("random_static", "el2n", "grand", "forgetting")
LABELS = {"full": "full data", "uniform": "uniform (dynamic)", "random_static": "random (static)",
          "egreedy": "ε-greedy (dynamic)", "ucb": "UCB (dynamic)", "el2n": "EL2N (static)",
          "grand": "GraNd (static)", "forgetting": "forgetting (static)"}
FORGETTING_STUDIES = (("pruning_forgetting_dense", "dense ReLU, SGD"),
                      ("pruning_forgetting_constrained", "k-WTA + 20% connectivity + Dale, SGD"),
                      ("pruning_forgetting_constrained_nte", "k-WTA + 20% connectivity + Dale, NTE"),
                      ("pruning_forgetting_replay", "dense ReLU, SGD + replay (1000 examples)"))
#: Shipped experiments, short versions: (experiment, the overrides that shorten it).
SHIPPED: Tuple[Tuple[str, Dict[str, str]], ...] = (
    ("quickstart", {"train_subset": "5000"}),
    ("sfmnist_task", {"train_subset": "4000"}),
)
UCB_HALF = {"data_pruning": "ucb", "data_prune_rate": "0.5"}
SHIPPED_SEEDS = (0, 1, 2)


# ---------------------------------------------------------------------------------------------
# Per-trial values
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trial:
    seed: int
    acc: float
    forgetting: float
    la: float
    train_cpu: float
    train_wall: float
    data_fraction: float


def _trial(record) -> Trial:
    res = record.result
    per_task = res["stats"]["per_task"]
    m = res["metrics"]
    fractions = [t.get("selection", {}).get("data_fraction", 1.0) for t in per_task]
    return Trial(seed=record.seed, acc=100 * float(m["avg_acc"]),
                 forgetting=100 * float(m["forgetting"]), la=100 * float(m["learning_acc"]),
                 train_cpu=sum(float(t.get("train_cpu_s", math.nan)) for t in per_task),
                 train_wall=sum(float(t["train_s"]) for t in per_task),
                 data_fraction=statistics.fmean(fractions) if fractions else 1.0)


@dataclass
class Experiment:
    name: str
    trials: Dict[int, Trial]
    problems: List[str]
    #: Seeds of the experiment with no result file (never run, or not yet).
    not_run: List[int] = field(default_factory=list)


def _experiments(results) -> Dict[str, Experiment]:
    out = {}
    for e in results.experiments:
        done = {t.seed: _trial(t) for t in e.done()}
        problems = [f"{e.experiment} seed {t.seed}: {t.status}" + (f" ({t.note})" if t.note else "")
                    for t in e.trials if t.status not in ("done", "not run")]
        not_run = sorted(t.seed for t in e.trials if t.status == "not run")
        out[e.experiment] = Experiment(e.experiment, done, problems, not_run)
    return out


def study_experiments(name: str, results_dir: Path) -> Dict[str, Experiment]:
    return _experiments(collect(results_dir, resolve_study(CONFIG, name)))


# ---------------------------------------------------------------------------------------------
# Formatting
# ---------------------------------------------------------------------------------------------
def mean_sd(values: Sequence[float], digits: int = 1) -> str:
    v = [x for x in values if math.isfinite(x)]
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.{digits}f} (n = 1)"
    return f"{statistics.fmean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def paired(exp: Experiment, ref: Experiment, value: Callable[[Trial], float],
           op: Callable[[float, float], float]) -> List[float]:
    seeds = sorted(set(exp.trials) & set(ref.trials))
    return [op(value(exp.trials[s]), value(ref.trials[s])) for s in seeds]


def diff_text(d: Sequence[float]) -> str:
    if not d:
        return "–"
    return f"{mean_sd(d, 1)} ({sum(x > 0 for x in d)}/{len(d)})"


def _values(exp: Experiment, value: Callable[[Trial], float]) -> List[float]:
    return [value(t) for _, t in sorted(exp.trials.items())]


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _problems(exps: Sequence[Experiment]) -> str:
    """What the means leave out: trials that ended other than done (with their status), and
    trials that have no result file (not run)."""
    probs = [p for e in exps for p in e.problems]
    missing = [f"{e.name} (seeds {', '.join(map(str, e.not_run))})" for e in exps if e.not_run]
    out = ("\n\nNot in the means: " + "; ".join(probs) + ".") if probs else ""
    if missing:
        out += "\n\nNot run (no result file): " + "; ".join(missing) + "."
    return out


def _seeds(e: Experiment) -> str:
    return str(len(e.trials)) if e.trials else "0 (not run)"


def _name(method: str, rate: Optional[int]) -> str:
    return "prune_full" if method == "full" else f"prune_{method}_p{rate}"


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------
def main_table(exps: Mapping[str, Experiment]) -> str:
    full = exps["prune_full"]
    header = ["method", "p", "seeds", "ACC %", "F (points)", "LA %", "examples used",
              "train CPU s", "CPU time / full", "train wall s"]
    rows = []
    order = [("full", None)] + [(m, p) for m in DYNAMIC + STATIC for p in RATES]
    for method, p in order:
        e = exps[_name(method, p)]
        ratio = paired(e, full, lambda t: t.train_cpu, lambda a, b: a / b)
        rows.append([LABELS[method], "–" if p is None else f"0.{p // 10}", _seeds(e),
                     mean_sd(_values(e, lambda t: t.acc)),
                     mean_sd(_values(e, lambda t: t.forgetting)),
                     mean_sd(_values(e, lambda t: t.la)),
                     f"{statistics.fmean(_values(e, lambda t: t.data_fraction)):.2f}"
                     if e.trials else "–",
                     mean_sd(_values(e, lambda t: t.train_cpu)),
                     mean_sd(ratio, 2), mean_sd(_values(e, lambda t: t.train_wall))])
    return _table(header, rows) + _problems(list(exps.values()))


def _best(exps: Mapping[str, Experiment], methods: Sequence[str], p: int) -> Optional[str]:
    """The method with the highest mean ACC at rate ``p`` among those that have results, or
    None if none has."""
    scored = [(statistics.fmean(_values(exps[_name(m, p)], lambda t: t.acc)), m)
              for m in methods if exps[_name(m, p)].trials]
    return max(scored)[1] if scored else None


def _best_pair(exps: Mapping[str, Experiment], p: int) -> List[float]:
    dyn, sta = _best(exps, DYNAMIC, p), _best(exps, STATIC, p)
    if dyn is None or sta is None:
        return []
    return paired(exps[_name(dyn, p)], exps[_name(sta, p)], lambda t: t.acc, lambda a, b: a - b)


def _label(method: Optional[str]) -> str:
    return "–" if method is None else LABELS[method]


def claims_table(exps: Mapping[str, Experiment]) -> str:
    acc = lambda t: t.acc  # noqa: E731
    minus = lambda a, b: a - b  # noqa: E731
    comparisons: List[Tuple[str, Callable[[int], List[float]]]] = [
        ("UCB − uniform", lambda p: paired(exps[_name("ucb", p)], exps[_name("uniform", p)],
                                           acc, minus)),
        ("ε-greedy − uniform", lambda p: paired(exps[_name("egreedy", p)],
                                                exps[_name("uniform", p)], acc, minus)),
        ("uniform (dynamic) − random (static)",
         lambda p: paired(exps[_name("uniform", p)], exps[_name("random_static", p)], acc, minus)),
        ("best dynamic − best static",
         lambda p: _best_pair(exps, p)),
        ("full data − UCB", lambda p: paired(exps["prune_full"], exps[_name("ucb", p)], acc,
                                             minus)),
        ("full data − uniform", lambda p: paired(exps["prune_full"], exps[_name("uniform", p)],
                                                 acc, minus)),
    ]
    header = ["ACC difference, points (seeds > 0)"] + [f"p = 0.{p // 10}" for p in RATES]
    rows = [[label] + [diff_text(fn(p)) for p in RATES] for label, fn in comparisons]
    best = ["best dynamic / best static (by mean ACC)"] + [
        f"{_label(_best(exps, DYNAMIC, p))} / {_label(_best(exps, STATIC, p))}" for p in RATES]
    return _table(header, rows + [best])


def forgetting_table(results_dir: Path) -> str:
    header = ["network and rule", "selection", "seeds", "ACC %", "F (points)", "LA %",
              "F − F(full), points (seeds > 0)", "CPU time / full"]
    rows, seen = [], []
    for study, label in FORGETTING_STUDIES:
        exps = study_experiments(study, results_dir)
        full = exps["prune_full"]
        for name, sel in (("prune_full", "full data"), ("prune_uniform_p50", "uniform, p = 0.5"),
                          ("prune_ucb_p50", "UCB, p = 0.5")):
            e = exps[name]
            df = paired(e, full, lambda t: t.forgetting, lambda a, b: a - b)
            ratio = paired(e, full, lambda t: t.train_cpu, lambda a, b: a / b)
            rows.append([label if name == "prune_full" else "", sel, _seeds(e),
                         mean_sd(_values(e, lambda t: t.acc)),
                         mean_sd(_values(e, lambda t: t.forgetting)),
                         mean_sd(_values(e, lambda t: t.la)),
                         "–" if name == "prune_full" else diff_text(df),
                         "–" if name == "prune_full" else mean_sd(ratio, 2)])
        seen += [Experiment(f"{study}: {e.name}", e.trials, [f"{study}: {p}" for p in e.problems],
                            e.not_run) for e in exps.values()]
    return _table(header, rows) + _problems(seen)


def _times(ratios: Sequence[float]) -> str:
    return mean_sd(ratios, 2) + "x" if ratios else "–"


def shipped_table(results_dir: Path) -> str:
    header = ["experiment (short version)", "seeds", "train CPU s, full", "train CPU s, UCB p = 0.5",
              "speed-up (CPU)", "speed-up (wall)", "examples used", "ACC % full / UCB"]
    rows, seen = [], []
    for exp, short in SHIPPED:
        base = _experiments(collect(results_dir, adhoc_study(CONFIG, [exp], short,
                                                             SHIPPED_SEEDS)))[exp]
        pruned = _experiments(collect(results_dir, adhoc_study(CONFIG, [exp], {**short, **UCB_HALF},
                                                               SHIPPED_SEEDS)))[exp]
        cpu = paired(base, pruned, lambda t: t.train_cpu, lambda a, b: a / b)
        wall = paired(base, pruned, lambda t: t.train_wall, lambda a, b: a / b)
        sets = " ".join(f"{k}={v}" for k, v in short.items())
        rows.append([f"{exp}" + (f" ({sets})" if sets else ""), str(len(cpu)) if cpu else "0 (not run)",
                     mean_sd(_values(base, lambda t: t.train_cpu)),
                     mean_sd(_values(pruned, lambda t: t.train_cpu)),
                     _times(cpu), _times(wall),
                     f"{statistics.fmean(_values(pruned, lambda t: t.data_fraction)):.2f}"
                     if pruned.trials else "–",
                     f"{mean_sd(_values(base, lambda t: t.acc))} / "
                     f"{mean_sd(_values(pruned, lambda t: t.acc))}"])
        seen += [Experiment(f"{exp}", base.trials, base.problems, base.not_run),
                 Experiment(f"{exp} + UCB p = 0.5", pruned.trials, pruned.problems, pruned.not_run)]
    return _table(header, rows) + _problems(seen)


def bench_table(path: Path) -> str:
    """The figures of one ``bench_pruning.py --json`` file, one row per method and rate."""
    data = json.loads(Path(path).read_text())
    figs = {f["name"]: f for f in data["figures"]}
    header = ["method", "p", "ideal time / full (1 - p)", "measured, CPU (median)",
              "measured, wall (median)", "CPU / ideal", "goal <= 1.03"]
    rows = []
    for name, fig in figs.items():
        if not name.startswith("pruning_task_time_over_full."):
            continue
        label = name.split(".", 1)[1]
        method, rate = label.split(".", 1)
        over = figs[f"pruning_time_over_ideal.{label}"]
        ex = fig["extra"]
        rows.append([method, rate[1:], f"{ex['ideal']:.2f}", f"{fig['value']:.3f}",
                     f"{ex['wall_ratio']:.3f}", f"{over['value']:.3f}",
                     "met" if over["met"] else "not met"])
    control = figs["pruning_control_full_over_full"]
    rows.append(["none (control: a second unpruned run)", "0", "1.00", f"{control['value']:.3f}",
                 f"{statistics.median(control['extra']['wall_ratios']):.3f}", "–", "–"])
    m = data["machine"]
    ex = next(f["extra"] for f in figs.values() if "examples" in f.get("extra", {}))
    note = (f"\n\n{m['cpu']}, {m['cores']} cores, torch {m['torch']}, {m['threads']} thread, "
            f"load average {m['loadavg_1_5_15'][0]} at the start; a task of {ex['examples']} "
            f"examples x {ex['epochs']} epochs, median of {ex['repeats']} repeats; the unpruned "
            f"task took {ex['full_task_s']:.2f} s ({ex['clock']} time).")
    return _table(header, rows) + note


def tables(results_dir: Path, which: Sequence[str],
           bench_json: Optional[Path] = None) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for name in which:
        if name == "bench":
            if bench_json is None:
                raise ValueError("the bench table needs --bench-json FILE (from bench/bench_pruning.py "
                                 "--json FILE)")
            out[name] = bench_table(bench_json)
        elif name in ("pfmnist", "sfmnist"):
            out[name] = main_table(study_experiments(f"pruning_{name}", results_dir))
        elif name.startswith("claims_"):
            out[name] = claims_table(study_experiments(f"pruning_{name[7:]}", results_dir))
        elif name == "forgetting":
            out[name] = forgetting_table(results_dir)
        elif name == "shipped":
            out[name] = shipped_table(results_dir)
        else:
            raise ValueError(f"unknown table {name!r}; valid: {', '.join(TABLES)}")
    return out


TABLES = ("pfmnist", "claims_pfmnist", "sfmnist", "claims_sfmnist", "forgetting", "shipped",
          "bench")


def replace_tables(text: str, new: Mapping[str, str]) -> str:
    """``text`` with what lies between each ``<!-- table:NAME -->`` / ``<!-- /table:NAME -->``
    pair replaced by ``new[NAME]``; a name without its markers is a ValueError."""
    for name, body in new.items():
        pattern = re.compile(rf"(<!-- table:{re.escape(name)} -->\n)(?:.*?\n)?(<!-- /table:"
                             rf"{re.escape(name)} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"the doc has no <!-- table:{name} --> ... <!-- /table:{name} --> "
                             f"markers")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results-dir", type=Path, default=REPO / "results")
    parser.add_argument("--tables", default=",".join(TABLES),
                        help=f"comma list of {', '.join(TABLES)}")
    parser.add_argument("--bench-json", type=Path, default=None,
                        help="figures of bench/bench_pruning.py --json FILE (the bench table)")
    parser.add_argument("--write", action="store_true", help=f"rewrite the tables in {DOC}")
    args = parser.parse_args(argv)
    which = [t.strip() for t in args.tables.split(",") if t.strip()]
    made = tables(args.results_dir, which, args.bench_json)
    if args.write:
        DOC.write_text(replace_tables(DOC.read_text(encoding="utf-8"), made), encoding="utf-8")
        print(f"rewrote {', '.join(made)} in {DOC}")
    else:
        for name, body in made.items():
            print(f"## {name}\n\n{body}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
