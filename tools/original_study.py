"""The measurements of docs/original_study.md, from result files.

Two subcommands::

    python tools/original_study.py ties --results-dir R [--tasks 3] [--seed 0]
    python tools/original_study.py tables --results-dir R --original O [--ties T/ties.json] \
        [--loo L] [--write docs/original_study.md docs/results/original_study.md]

``ties`` runs the toolkit's ``MLP_1LayerSparse`` (k-WTA, k = 4 of 4000) on permuted Fashion-MNIST
for ``--tasks`` tasks and counts, in every row that reaches the k-WTA (training and evaluation
separately), with ``b = x * exp(-beta d)`` the boosted values the toolkit ranks:

* ties at the threshold: rows whose k-th and (k+1)-th largest ``b`` are equal (nupic.torch's
  ``topk`` keeps exactly k winners there, the toolkit every tied unit);
* other winners: rows without such a tie whose k winners differ from those of nupic.torch's
  formula ``x * exp((k / n - d) beta)``, computed as nupic.torch computes it in float32 (the
  two differ by the positive factor ``exp(beta k / n)`` in exact arithmetic; in float32 the
  products can round differently).

It writes ``R/ties.json`` (and the trial's own result under ``R/ties_MLP_1LayerSparse/``).

``tables`` prints (or, with ``--write``, replaces in each document) the generated blocks between
``<!-- generated:NAME -->`` and ``<!-- /generated:NAME -->``: ``reproduction`` (the original code's
runs beside the toolkit's 5 seeds of study ``original_pfmnist``, read from ``R``), ``early`` (the
same over the first tasks, where interrupted original-code runs count too), ``inflation``
(the original's padded evaluation against the exact accuracy, in the same runs), ``ties`` and
``loo`` (dense ``MLP_1Layer``, seed 0, 3 tasks, on the original protocol and with one of its keys
set back, run by ``run_exps.py --name MLP_1Layer --set dataset=fashion_mnist --set num_batch=3
--set KEY=VALUE --seeds 0`` into ``L/KEY_VALUE``). Metrics are those of
:func:`sparse_nte.metrics.continual_metrics`, for the toolkit's matrices and the original's alike.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sparse_nte.metrics import continual_metrics  # noqa: E402

CONFIG = REPO / "exps" / "exps_params.cfg"
STUDY = "original_pfmnist"
#: The original code's single published run on permuted Fashion-MNIST (unseeded, exact accuracy):
#: final average accuracy, mean forgetting over tasks 1-9, mean accuracy right after learning, %.
ANCHOR = {"MLP_1Layer": (34.73, 54.5, 83.78), "MLP_1LayerSparse": (55.07, 26.4, 78.82)}
LABEL = {"MLP_1Layer": "dense ReLU (`MLP_1Layer`)", "MLP_1LayerSparse": "k-WTA (`MLP_1LayerSparse`)"}
ORIGINAL_FILE = {"MLP_1Layer": "dense_seed*.json", "MLP_1LayerSparse": "kwta_seed*.json"}
MEASURES = ("final average accuracy", "mean forgetting, tasks 1-9", "accuracy right after learning")


# -- metrics ------------------------------------------------------------------------------------
def measures(acc: Any, tasks: Optional[int] = None) -> tuple[float, float, float]:
    """(final average accuracy, forgetting, mean R[j, j]) in % of the first ``tasks`` rows and
    columns of an accuracy matrix."""
    r = np.asarray(acc, dtype=np.float64)
    if tasks is not None:
        r = r[:tasks, :tasks]
    m = continual_metrics(r)
    return 100 * m["avg_acc"], 100 * m["forgetting"], 100 * float(np.mean(m["plasticity"]))


def mean_sd(values: Sequence[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.2f}" if values else "-"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def welch(a: Sequence[float], b: Sequence[float]) -> str:
    """mean(a) - mean(b), its standard error and Welch's two-sided p (scipy, when installed)."""
    d = statistics.mean(a) - statistics.mean(b)
    se = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
    try:
        from scipy.stats import ttest_ind
        p = f", Welch p = {ttest_ind(a, b, equal_var=False).pvalue:.2f}"
    except ImportError:   # pragma: no cover - scipy is optional
        p = ""
    return f"{d:+.2f} ± {se:.2f} (se){p}"


# -- inputs -------------------------------------------------------------------------------------
def toolkit_runs(results_dir: Path) -> Dict[str, Dict[int, np.ndarray]]:
    """Accuracy matrices of the done trials of study ``original_pfmnist`` in ``results_dir``."""
    from sparse_nte.study import collect, resolve_study

    study = collect(results_dir, resolve_study(CONFIG, STUDY))
    out = {}
    for e in study.experiments:
        out[e.experiment] = {t.seed: np.asarray(t.result["acc_matrix"]) for t in e.done()}
        if not out[e.experiment]:
            raise SystemExit(f"{results_dir}: no finished trial of {e.experiment} for study {STUDY} "
                             f"(run: python run_exps.py --study {STUDY} --results-dir {results_dir})")
    return out


def original_runs(folder: Path) -> Dict[str, List[dict]]:
    """The JSON files of tools/run_original_code.py in ``folder``, by experiment."""
    return {e: [json.loads(p.read_text()) for p in sorted(folder.glob(pattern))]
            for e, pattern in ORIGINAL_FILE.items()}


_TASK_LINE = re.compile(r"^task (\d+): exact((?: [0-9.]+)+)$", re.M)


def log_rows(text: str) -> List[List[float]]:
    """The rows ``task i: exact a_0 ... a_9`` that tools/run_original_code.py prints after every
    task, in order (they must be tasks 0, 1, ...)."""
    rows = []
    for m in _TASK_LINE.finditer(text):
        if int(m.group(1)) != len(rows):
            raise ValueError(f"task {m.group(1)} follows {len(rows)} rows; expected task {len(rows)}")
        rows.append([float(v) for v in m.group(2).split()])
    return rows


def interrupted_runs(folder: Path) -> Dict[str, List[dict]]:
    """Runs of tools/run_original_code.py in ``folder`` that ended before their JSON file was
    written (a log ``NAME.log`` without ``NAME.json``): the rows of their log, by experiment."""
    out: Dict[str, List[dict]] = {}
    for e, pattern in ORIGINAL_FILE.items():
        out[e] = []
        for log in sorted(folder.glob(pattern.replace(".json", ".log"))):
            if log.with_suffix(".json").exists():
                continue
            rows = log_rows(log.read_text())
            if rows:
                out[e].append({"seed": int(log.stem.rsplit("seed", 1)[1]), "acc_exact": rows})
    return out


# -- blocks -------------------------------------------------------------------------------------
def reproduction(toolkit: Dict[str, Dict[int, np.ndarray]], original: Dict[str, List[dict]]) -> str:
    lines = ["| network | measure (%) | original code: published run (1, unseeded) | original code: "
             "runs here | original code: all runs | toolkit: 5 seeds | toolkit - original (all) |",
             "|---|---|---|---|---|---|---|"]
    for e in ("MLP_1LayerSparse", "MLP_1Layer"):
        mine = [measures(a) for _, a in sorted(toolkit[e].items())]
        theirs = [measures(r["acc_exact"]) for r in original[e]]
        seeds = ", ".join(str(r["seed"]) for r in original[e])
        for i, name in enumerate(MEASURES):
            t = [m[i] for m in mine]
            o = [m[i] for m in theirs]
            both = [ANCHOR[e][i]] + o
            here = (f"{mean_sd(o)} (n = {len(o)}, torch seeds {seeds}: "
                    f"{', '.join(f'{v:.1f}' for v in o)})" if o else "not run")
            lines.append(f"| {LABEL[e]} | {name} | {ANCHOR[e][i]:.2f} | {here} | "
                         f"{mean_sd(both)} (n = {len(both)}) | {mean_sd(t)} (range "
                         f"{min(t):.1f}-{max(t):.1f}) | {welch(t, both) if len(both) > 1 else '-'} |")
    return "\n".join(lines)


def early(toolkit: Dict[str, Dict[int, np.ndarray]], original: Dict[str, List[dict]],
          interrupted: Dict[str, List[dict]]) -> str:
    """The three measures over the first K tasks (the K x K block of every accuracy matrix), K the
    fewest tasks an interrupted original-code run finished: every original-code run counts."""
    k = min((len(r["acc_exact"]) for runs in interrupted.values() for r in runs), default=None)
    if k is None:
        return "(no interrupted run of the original code: every run is in the 10-task table)"
    lines = [f"| network | measure over the first {k} tasks (%) | original code: runs here | "
             f"toolkit: 5 seeds | toolkit - original |", "|---|---|---|---|---|"]
    for e in ("MLP_1LayerSparse", "MLP_1Layer"):
        runs = sorted(original[e] + interrupted[e], key=lambda r: r["seed"])
        if not runs:
            continue
        mine = [measures(a, k) for _, a in sorted(toolkit[e].items())]
        theirs = [measures(np.asarray(r["acc_exact"])[:k, :k]) for r in runs]
        seeds = ", ".join(str(r["seed"]) + ("" if len(r["acc_exact"]) > k else f" (stopped after task {k - 1})")
                          for r in runs)
        for i, name in enumerate(MEASURES):
            name = name.replace("tasks 1-9", f"tasks 1-{k - 1}")
            t, o = [m[i] for m in mine], [m[i] for m in theirs]
            lines.append(f"| {LABEL[e]} | {name} | {mean_sd(o)} (n = {len(o)}, torch seeds {seeds}: "
                         f"{', '.join(f'{v:.1f}' for v in o)}) | {mean_sd(t)} (range {min(t):.1f}-{max(t):.1f}) | "
                         f"{welch(t, o) if len(o) > 1 else f'{statistics.mean(t) - o[0]:+.2f}'} |")
    return "\n".join(lines)


def inflation(original: Dict[str, List[dict]]) -> str:
    lines = ["| run | final average accuracy, exact (%) | the original's figure: padded / 10,000 (%) "
             "| difference (points) | mean difference over all 55 seen entries (points) |",
             "|---|---|---|---|---|"]
    for e, runs in original.items():
        for r in runs:
            exact, padded = np.asarray(r["acc_exact"]), np.asarray(r["acc_padded"])
            seen = np.tril(np.ones_like(exact, dtype=bool))
            fe, fp = 100 * exact[-1].mean(), 100 * padded[-1].mean()
            lines.append(f"| {LABEL[e]}, torch seed {r['seed']} | {fe:.2f} | {fp:.2f} | {fp - fe:+.2f} | "
                         f"{100 * float((padded - exact)[seen].mean()):+.2f} |")
    return "\n".join(lines)


def ties_block(ties: dict) -> str:
    lines = [f"`MLP_1LayerSparse`, k = {ties['k']} of {ties['n']}, permuted Fashion-MNIST, "
             f"{ties['tasks']} tasks x 2 epochs, seed {ties['seed']} "
             f"(`python tools/original_study.py ties --tasks {ties['tasks']} --seed {ties['seed']}`):",
             "",
             "| pass | rows through the k-WTA | ties at the k-th value | rows where nupic.torch's "
             "float32 formula picks other winners |", "|---|---|---|---|"]
    for mode in ("train", "eval"):
        c = ties[mode]
        lines.append(f"| {'training' if mode == 'train' else 'evaluation'} | {c['rows']:,} | "
                     f"{c['ties']:,} | {c['nupic_differs']:,} ({100 * c['nupic_differs'] / c['rows']:.4f}%) |")
    return "\n".join(lines)


#: The leave-one-out variants: one original-protocol key set back to the toolkit's earlier default.
LOO_VARIANTS = (("input_scaling", "standard"), ("train_order", "shuffle"),
                ("permutation_rng", "seeded"))
LOO_TASKS = 3


def loo_command(key: str, value: str, loo_dir: Path) -> str:
    """The command that writes the leave-one-out run ``key = value`` where :func:`loo` reads it."""
    return (f"python run_exps.py --name MLP_1Layer --set dataset=fashion_mnist --set num_batch={LOO_TASKS} "
            f"--set {key}={value} --seeds 0 --threads 1 --results-dir {loo_dir}/{key}_{value}")


def loo(toolkit_dir: Path, loo_dir: Path) -> str:
    """Leave-one-out runs of the dense network, seed 0, the first LOO_TASKS tasks: the original
    protocol (the first LOO_TASKS rows and columns of study ``original_pfmnist``'s seed-0 run,
    which are those of a LOO_TASKS-task run: every task's data, permutation and epoch order
    depend on the task alone) and each variant of LOO_VARIANTS, read from
    ``loo_dir/KEY_VALUE/MLP_1Layer*/seed0.pkl`` (see :func:`loo_command`)."""
    import pickle

    from sparse_nte.study import collect, resolve_study

    study = collect(toolkit_dir, resolve_study(CONFIG, STUDY))
    (dense,) = [e for e in study.experiments if e.experiment == "MLP_1Layer"]
    base = [t.result for t in dense.done() if t.seed == 0]
    if not base:
        raise SystemExit(f"{toolkit_dir}: study {STUDY} has no finished MLP_1Layer seed 0")
    runs = [("original protocol, seed 0", base[0])]
    for key, value in LOO_VARIANTS:
        found = sorted((loo_dir / f"{key}_{value}").glob("MLP_1Layer*/seed0.pkl"))
        res = None
        if found:
            path = found[0]
            with open(path, "rb") as f:
                res = pickle.load(f)
            cfg = res["config"]
            if cfg[key] != value or int(cfg["num_batch"]) != LOO_TASKS or int(cfg["seed"]) != 0:
                raise SystemExit(f"{path}: expected {key} = {value}, num_batch = {LOO_TASKS}, seed 0; got "
                                 f"{key} = {cfg[key]}, num_batch = {cfg['num_batch']}, seed {cfg['seed']}")
        runs.append((f"`{key} = {value}`, seed 0", res if res is not None else loo_command(key, value, Path("L"))))
    spread = [measures(t.result["acc_matrix"], LOO_TASKS) for t in dense.done()]
    rows = [f"| original protocol, seeds {', '.join(str(t.seed) for t in dense.done())} (mean ± sd) | "
            f"done | {LOO_TASKS} | " + " | ".join(mean_sd([m[i] for m in spread]) for i in range(3)) + " | |"]
    for name, res in runs:
        if isinstance(res, str):
            rows.append(f"| {name} | not finished (no result file; run `{res}`) | | | | | |")
            continue
        k = min(int(res["tasks_trained"]), LOO_TASKS)
        losses = [t["train_loss_last_epoch"] for t in res["stats"]["per_task"]][:k]
        v = measures(res["acc_matrix"], k)
        rows.append(f"| {name} | {res.get('status') or 'done'} | {k} | {v[0]:.1f} | {v[1]:.1f} | "
                    f"{v[2]:.1f} | {max(losses):.3g} |")
    return "\n".join(["| MLP_1Layer | status | tasks | final average accuracy (%) | "
                      "forgetting (%) | right after learning (%) | largest last-epoch loss |",
                      "|---|---|---|---|---|---|---|"] + rows)


def replace_blocks(text: str, blocks: Dict[str, str]) -> str:
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"the document has no <!-- generated:{name} --> ... "
                             f"<!-- /generated:{name} --> block")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


# -- ties run -----------------------------------------------------------------------------------
def compare_winners(x: Any, duty_cycle: Any, k: int, boost_strength: Any) -> tuple[Any, Any]:
    """Per row of ``x`` (batch, n): whether the k-th and (k+1)-th largest of the toolkit's
    boosted values ``x * exp(-beta d)`` are equal (a tie at the threshold), and, in rows without
    such a tie, whether nupic.torch's formula ``x * exp((k / n - d) beta)`` (f453d54,
    functions/k_winners.py, in float32 as it computes it; ``boost_strength`` the layer's buffer)
    selects other k winners."""
    import torch

    from sparse_nte.layers.functional import boost_activations

    beta = float(boost_strength)
    top = boost_activations(x, duty_cycle, beta).topk(k + 1, dim=1)
    tie = top.values[:, k - 1] == top.values[:, k]
    factors = torch.exp((float(k) / x.shape[1] - duty_cycle) * boost_strength)
    theirs = (x * factors).topk(k, dim=1).indices.sort(dim=1).values
    ours = top.indices[:, :k].sort(dim=1).values
    return tie, (theirs != ours).any(dim=1) & ~tie


def count_ties(results_dir: Path, tasks: int, seed: int, data_root: Optional[str]) -> dict:
    import torch

    import sparse_nte.runner as runner
    from sparse_nte.config import load_config
    from sparse_nte.layers import KWinners

    torch.set_num_threads(1)
    overrides = {"dataset": "fashion_mnist", "num_batch": str(tasks), "seed": str(seed)}
    if data_root:
        overrides["data_root"] = data_root
    config = load_config(CONFIG, "MLP_1LayerSparse", overrides)
    counts = {m: {"rows": 0, "ties": 0, "nupic_differs": 0} for m in ("train", "eval")}
    shape = {}

    def hook(module: Any, args: tuple) -> None:
        x = args[0].detach()
        k = module.k if module.training else module.k_inference
        tie, differs = compare_winners(x, module.duty_cycle, k, module.boost_strength)
        c = counts["train" if module.training else "eval"]
        c["rows"] += x.shape[0]
        c["ties"] += int(tie.sum())
        c["nupic_differs"] += int(differs.sum())
        shape.update(n=x.shape[1], k=module.k)

    import models   # run_trial imports models.build_model when it runs

    build = models.build_model

    def build_with_counter(cfg: Any, scenario: Any) -> Any:
        model = build(cfg, scenario)
        for m in model.modules():
            if isinstance(m, KWinners):
                m.register_forward_pre_hook(hook)
        return model

    models.build_model = build_with_counter
    try:
        runner.run_trial(config.to_dict(), results_dir, folder="ties_MLP_1LayerSparse",
                         progress=False, overwrite=True, log=print)
    finally:
        models.build_model = build
    return {"experiment": "MLP_1LayerSparse", "dataset": "fashion_mnist", "tasks": tasks,
            "seed": seed, **shape, **counts}


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("ties", help="count k-WTA ties in a run of MLP_1LayerSparse")
    t.add_argument("--results-dir", type=Path, required=True)
    t.add_argument("--tasks", type=int, default=3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--data-root", default=None)
    g = sub.add_parser("tables", help="the generated blocks of docs/original_study.md")
    g.add_argument("--results-dir", type=Path, required=True,
                   help=f"results of study {STUDY} (run_exps.py --study {STUDY})")
    g.add_argument("--original", type=Path, required=True,
                   help="folder of tools/run_original_code.py's JSON files (kwta_seed*.json, dense_seed*.json)")
    g.add_argument("--ties", type=Path, default=None, help="the JSON file written by `ties`")
    g.add_argument("--loo", type=Path, default=None,
                   help="folder of the leave-one-out runs, one results folder KEY_VALUE per variant")
    g.add_argument("--write", type=Path, nargs="+", default=None,
                   help="replace, in each of these documents, the generated blocks it contains")
    args = ap.parse_args(argv)
    if args.command == "ties":
        if args.tasks < 2:
            ap.error(f"--tasks must be >= 2 (the section's train_ep_inc needs a second task), "
                     f"got {args.tasks}")
        out = count_ties(args.results_dir, args.tasks, args.seed, args.data_root)
        path = args.results_dir / "ties.json"
        path.write_text(json.dumps(out, indent=1))
        print(json.dumps(out))
        return 0
    toolkit, original = toolkit_runs(args.results_dir), original_runs(args.original)
    blocks = {"reproduction": reproduction(toolkit, original),
              "early": early(toolkit, original, interrupted_runs(args.original)),
              "inflation": inflation(original)}
    blocks["ties"] = (ties_block(json.loads(args.ties.read_text())) if args.ties is not None else
                      "Not counted: no ties file was given (`--ties`). It is written by "
                      "`python tools/original_study.py ties --tasks 2 --seed 0 --results-dir T`, "
                      "a 2-task run of `MLP_1LayerSparse` (about a fifth of a full run).")
    if args.loo is not None:
        blocks["loo"] = loo(args.results_dir, args.loo)
    if args.write is None:
        for name, body in blocks.items():
            print(f"<!-- generated:{name} -->\n{body}\n<!-- /generated:{name} -->\n")
        return 0
    for doc in args.write:
        text = doc.read_text()
        present = {n: b for n, b in blocks.items() if f"<!-- generated:{n} -->" in text}
        wanted = set(re.findall(r"<!-- generated:(\w+) -->", text))
        if wanted - set(blocks):
            raise SystemExit(f"{doc}: no input for block(s) {', '.join(sorted(wanted - set(blocks)))} "
                             f"(--loo)")
        doc.write_text(replace_blocks(text, present))
        print(f"updated {', '.join(present)} in {doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
