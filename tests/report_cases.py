"""A study whose result files hold every status a report must show, written without training:
done trials, a diverged one (NaN metrics, rows it never reached), a failed one (a log ending with
a traceback), an interrupted one (a checkpoint), an unreadable file and another configuration's
result. Used by test_reporting.py and test_report_browser.py."""
from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np

from sparse_nte.metrics import continual_metrics
from sparse_nte.results import checkpoint_path, log_path, result_path, save_result
from sparse_nte.study import resolve_study

CFG = """
[DEFAULT]
dataset = mnist
num_batch = 3
hidden_units = 16
hidden_layers = 1
record_stats = True

[alpha]
description = k-WTA
sparsify = True
percent_on_fc = 0.25

[beta]
description = NTE with Dale's law
optimizer = nte
dale = True

[gamma]
description = dense
weight_decay = 0.0001

[study:demo]
question = Which one forgets least?
experiments = alpha, beta, gamma
seeds = 0-3
lr = 0.02
"""

#: What each trial becomes: (experiment, seed) -> status.
PLAN = {("alpha", s): "done" for s in range(4)}
PLAN.update({("beta", 0): "done", ("beta", 1): "diverged", ("beta", 2): "failed",
             ("beta", 3): "interrupted", ("gamma", 0): "done", ("gamma", 1): "done",
             ("gamma", 2): "unreadable", ("gamma", 3): "other configuration"})
VERSIONS = {"python": "3.11.7", "torch": "2.13.0+cpu", "numpy": "2.4.6", "sparse_nte": "0.1.0",
            "git_commit": "0123456789abcdef0123456789abcdef01234567"}


def _stats(tasks: int, rng: np.random.Generator, dale: bool, nte: bool) -> dict:
    per_task = []
    guard = 0
    for i in range(tasks):
        guard += int(rng.integers(0, 5)) if nte else 0
        layers = {
            "blocks.0.layer": {"shape": (16, 784), "num_weights": 16 * 784, "density": 1.0,
                               "mask_density": 1.0, "mask_violations": 0, "sign_violations": 0,
                               "dale": False, "dead": 0.0, "exc_fraction": None},
            "heads.0": {"shape": (10, 16), "num_weights": 160, "density": float(rng.uniform(0.9, 1)),
                        "mask_density": 1.0, "mask_violations": 0, "sign_violations": 0, "dale": dale,
                        "dead": 0.0, "exc_fraction": 0.8125 if dale else None},
        }
        entry = {"task": i, "train_s": 0.1, "eval_s": 0.01, "steps": 10 * (i + 1), "layers": layers,
                 "sign_violations": 0, "mask_violations": 0,
                 "kwinners": {"blocks.0.activation": {"entropy": 3.5, "max_entropy": 4.0, "n": 16,
                                                      "k": 4, "winners": 4}},
                 "activity": {"blocks.0": {"active_fraction": rng.uniform(0.2, 0.3, i + 1),
                                           "active_fraction_exc": (rng.uniform(0.1, 0.2, i + 1) if dale
                                                                   else np.full(i + 1, np.nan)),
                                           "active_fraction_inh": (rng.uniform(0.3, 0.4, i + 1) if dale
                                                                   else np.full(i + 1, np.nan)),
                                           "unit_active_fraction": rng.uniform(0, 1, (i + 1, 16)),
                                           "overlap": np.eye(i + 1)}}}
        if nte:
            entry.update({"nte_guard_count": guard, "nte_live_experts": 12704, "nte_dead_experts": 3})
        per_task.append(entry)
    return {"per_task": per_task, "history": []}


def make_result(config: dict, seed: int, status: str = "done") -> dict:
    """A plausible result dict of ``config`` (status done or diverged), from a seeded generator."""
    rng = np.random.default_rng([seed, sum(map(ord, config["name"]))])
    t = int(config["num_batch"])
    acc = np.clip(rng.uniform(0.55, 0.99, (t, t)), 0, 1)
    base = rng.uniform(0.05, 0.15, t)
    trained = t
    if status == "diverged":
        trained = 1
        acc[trained:] = np.nan
        metrics = {k: float("nan") for k in ("avg_acc", "bwt", "forgetting", "fwt", "learning_acc")}
        metrics.update(plasticity=np.full(t, np.nan), avg_acc_curve=np.full(t, np.nan))
    else:
        metrics = continual_metrics(acc, random_init_acc=base)
    res = {"config": dict(config), "status": status, "acc_matrix": acc, "random_init_acc": base,
           "metrics": metrics,
           "stats": _stats(trained, rng, config.get("dale", False), config.get("optimizer") == "nte"),
           "versions": dict(VERSIONS), "elapsed_s": float(rng.uniform(10, 20)),
           "tasks_trained": trained, "data_folder": "/nowhere"}
    if status == "diverged":
        res["diverged"] = {"task": 1, "epoch": 0, "step": 7, "reason": "the training loss is nan"}
    return res


def write_case(root: Path):
    """Write the experiment file and the results; returns (config path, results dir, study)."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "exps.cfg"
    cfg.write_text(CFG)
    results = root / "results"
    study = resolve_study(cfg, "demo")
    for spec in study.trials:
        status = PLAN[(spec.name, spec.seed)]
        config = spec.config.to_dict()
        folder, seed = spec.folder, spec.seed
        if status in ("done", "diverged"):
            save_result(result_path(results, folder, seed), make_result(config, seed, status))
        elif status == "failed":
            log = log_path(results, folder, seed)
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text(f"[pid 1] starting {folder} seed {seed}\nTraceback (most recent call last):\n"
                           f'  File "x.py", line 1\nbenchmarks.errors.DatasetNotFoundError: no mnist files\n')
        elif status == "interrupted":
            path = checkpoint_path(results, folder, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"not read by reports")
        elif status == "unreadable":
            path = result_path(results, folder, seed)
            path.write_bytes(pickle.dumps(make_result(config, seed))[:40])
        elif status == "other configuration":
            other = dict(config, lr=0.5)
            save_result(result_path(results, folder, seed), make_result(other, seed))
    return cfg, results, study


def expected_summary(results: Path, study) -> dict:
    """experiment -> metric -> (mean, sd, n) from the done trials' files, with the statistics
    module (an implementation independent of the toolkit's)."""
    import statistics

    out = {}
    for e in study.experiments:
        done = [pickle.loads(result_path(results, study.folders[e], s).read_bytes())
                for (name, s), st in PLAN.items() if name == e and st == "done"]
        out[e] = {}
        for m in ("avg_acc", "forgetting", "bwt", "fwt", "learning_acc"):
            vals = [r["metrics"][m] for r in done if math.isfinite(r["metrics"][m])]
            out[e][m] = (statistics.fmean(vals) if vals else float("nan"),
                         statistics.stdev(vals) if len(vals) > 1 else float("nan"), len(vals))
    return out
