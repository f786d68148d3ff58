"""Time of a task trained with data pruning against the same task trained on every example, in
the same process, through the runner's own task loop: does dynamic pruning at rate p cost
(1 - p) of the unpruned time, and how much does the selection add on top?

Goal (the data-pruning issue): time(p) <= (1 - p) x time(full) x 1.03, i.e. training time in
proportion to the examples kept plus at most 3% overhead, for uniform and UCB pruning at
p = 0.3, 0.5, 0.7, one thread.

Setting (the data-pruning studies' protocol, ``[study:pruning_pfmnist]``): permuted
Fashion-MNIST read from /usr/share/datasets/fashion-mnist, a 784-400-10 ReLU MLP, SGD (lr 0.01,
momentum 0.9, batch 128), ``--examples`` training examples per task (default 12800 = 100 batches, so
that k = (1 - p) n is a whole number of batches at every rate) and ``--epochs`` epochs per task,
every epoch pruned (``data_prune_start = 0``); the experiment sections ``prune_full`` and
``prune_<method>_p<rate>`` of exps/exps_params.cfg with those overrides.

Method. Every variant (the unpruned run, a second unpruned run as a control, and each
method x rate) has its own model and learner, built as ``runner.run_trial`` builds them, all
from the same initial weights and the same scenario. One warm-up task, then ``--repeats``
rounds; in round r every variant trains task r + 1 with ``runner._train_task`` (epochs, the
selection's ``rows``/``observe``/``loss_weights``, the runner's batching and per-epoch checks,
the task's start and end events), timed; the variants' order is rotated from round to round so
that drifts of the machine's load fall on all of them alike. Per round the ratio
``time(variant) / time(full)`` is taken, then the median over rounds. With one thread the
times are process CPU times (see :mod:`common`): on a shared machine they leave out the time the
process waits for a core; the wall-clock ratios are kept in the JSON extras.

Figures (one line each):

* ``pruning_task_time_over_full.<method>.p<rate>``: time(pruned task) / time(full task), beside
  the ideal (1 - p) (exactly the ratio of examples, hence of full batches, here);
* ``pruning_time_over_ideal.<method>.p<rate>``: the same divided by (1 - p); goal <= 1.03x
  (what the selection, and the per-epoch work that does not shrink with the data, add);
* ``pruning_control_full_over_full``: the second unpruned run over the first, the measurement's
  own spread (no goal; a value far from 1.00x says the machine was too noisy to resolve 3%).

    python bench/bench_pruning.py [--threads 1] [--repeats 5] [--examples 12800] [--epochs 3]
                                  [--methods uniform,ucb] [--rates 0.3,0.5,0.7] [--quick]
                                  [--json out]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Figure, Sample, machine, pin_threads, primary, timed  # noqa: E402

from benchmarks import build_scenario  # noqa: E402
from models import build_model  # noqa: E402
from sparse_nte import runner  # noqa: E402
from sparse_nte.config import Config, load_config  # noqa: E402
from sparse_nte.learner import Learner, build_learner  # noqa: E402
from sparse_nte.seams import TaskContext  # noqa: E402
from sparse_nte.selection.spec import keep_count  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "exps" / "exps_params.cfg"
GOAL = 1.03
METHODS = ("uniform", "ucb")
RATES = (0.3, 0.5, 0.7)
#: The protocol of the data-pruning studies (one hidden layer of 400 units, SGD lr 0.01 with
#: momentum 0.9).
PROTOCOL = {"dataset": "fashion_mnist", "mnist_mode": "permutations", "hidden_layers": 1,
            "hidden_units": 400, "lr": 0.01, "momentum": 0.9, "seed": 0, "record_stats": False}


def rate_label(rate: float) -> str:
    """0.3 -> "p0.3" (the figures' spelling)."""
    return f"p{rate:g}"


def figure_names(methods: Sequence[str] = METHODS, rates: Sequence[float] = RATES) -> List[str]:
    """The figures this script reports (run_all checks that none is missing)."""
    names = [f"pruning_{kind}.{m}.{rate_label(p)}" for m in methods for p in rates
             for kind in ("task_time_over_full", "time_over_ideal")]
    return names + ["pruning_control_full_over_full"]


def variant_config(method: str, rate: float, num_tasks: int, examples: int, epochs: int) -> Config:
    """The resolved config of one variant (``method = "none"``: every example)."""
    overrides: Dict[str, Any] = {**PROTOCOL, "num_batch": num_tasks, "train_subset": examples,
                                 "train_ep": epochs, "train_ep_inc": epochs}
    if method != "none":
        overrides.update(data_pruning=method, data_prune_rate=rate)
    return load_config(EXPERIMENTS, "prune_full", {k: str(v) for k, v in overrides.items()})


@dataclass
class Variant:
    """One model + learner trained task after task."""
    label: str
    method: str
    rate: float
    config: Config
    model: torch.nn.Module
    learner: Learner
    samples: List[Sample]

    def train(self, scenario, task: int) -> Sample:
        cfg = self.config
        ctx = TaskContext(task=task, num_tasks=scenario.num_tasks, scenario=scenario,
                          model=self.model, device="cpu", seed=cfg.seed,
                          steps=self.learner.steps_per_task[task],
                          epochs=self.learner.epochs_per_task[task], batch_size=cfg.mb_size,
                          train_order=cfg.train_order)
        return timed(lambda: runner._train_task(self.learner, ctx, progress=False))


def build_variants(methods: Sequence[str], rates: Sequence[float], num_tasks: int, examples: int,
                   epochs: int):
    """The scenario (shared) and every variant, all from the same initial weights."""
    full = variant_config("none", 0.0, num_tasks, examples, epochs)
    scenario = build_scenario(
        dataset=full.dataset, mode=full.mnist_mode, num_tasks=full.num_batch,
        setting=full.scenario, cumulative=full.cumul, seed=full.seed,
        permute_first=full.permute_first, class_order=full.class_order,
        data_root=full.data_root or None, train_subset=full.train_subset or None,
        download=False, progress=False, input_scaling=full.input_scaling,
        permutation_rng=full.permutation_rng)
    specs = [("full", "none", 0.0), ("control", "none", 0.0)]
    specs += [(f"{m}.{rate_label(p)}", m, p) for m in methods for p in rates]
    variants = []
    for label, method, rate in specs:
        cfg = variant_config(method, rate, num_tasks, examples, epochs)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, scenario)
        variants.append(Variant(label, method, rate, cfg, model, build_learner(cfg, model, scenario),
                                []))
    return scenario, variants


def measure(args: argparse.Namespace, clock: str) -> List[Figure]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    scenario, variants = build_variants(methods, rates, args.repeats + 1, args.examples,
                                        args.epochs)
    n = len(scenario.tasks[0].train_y)
    for v in variants:                                   # warm-up: task 0, untimed
        v.train(scenario, 0)
    for r in range(args.repeats):
        shift = r % len(variants)
        for v in variants[shift:] + variants[:shift]:
            v.samples.append(v.train(scenario, r + 1))
    by_label = {v.label: v for v in variants}
    full = by_label["full"].samples

    def ratios(v: Variant, which: str) -> List[float]:
        return [getattr(a, which) / getattr(b, which) for a, b in zip(v.samples, full)]

    full_med = statistics.median(getattr(s, clock) for s in full)
    print(f"# full task ({n} examples x {args.epochs} epochs, 784-400-10 MLP, SGD): "
          f"{full_med:.2f} s {clock} time (median of {args.repeats})", flush=True)
    figures: List[Figure] = []
    for v in variants[2:]:
        ratio = statistics.median(ratios(v, clock))
        k = keep_count(n, v.rate)
        ideal = k / n
        sel = v.learner.selection.stats() if v.learner.selection is not None else {}
        extra = {"ratios": ratios(v, clock), "wall_ratios": ratios(v, "wall"),
                 "wall_ratio": statistics.median(ratios(v, "wall")), "ideal": ideal,
                 "examples": n, "kept": k, "epochs": args.epochs, "repeats": args.repeats,
                 "clock": clock, "full_task_s": full_med,
                 "last_task_select_s": sel.get("select_s"), "last_task_score_s": sel.get("score_s")}
        figures.append(Figure(
            f"pruning_task_time_over_full.{v.label}", ratio, "x",
            f"{v.method} keeping {k} of {n} examples in each of {args.epochs} epochs; ideal "
            f"1 - p = {ideal:.2f}x; {clock} time", None, extra))
        figures.append(Figure(
            f"pruning_time_over_ideal.{v.label}", ratio / ideal, "x",
            "(time pruned / time full) / (1 - p): the selection's and the per-epoch overhead",
            GOAL, {"ratio": ratio, "ideal": ideal}))
    control = by_label["control"]
    figures.append(Figure(
        "pruning_control_full_over_full", statistics.median(ratios(control, clock)), "x",
        "a second unpruned run over the first: the measurement's spread",
        None, {"ratios": ratios(control, clock), "wall_ratios": ratios(control, "wall")}))
    return figures


def main(argv: Optional[Sequence[str]] = None) -> List[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--examples", type=int, default=12800,
                        help="training examples per task (default 12800 = 100 batches of 128)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per task")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--rates", default=",".join(f"{p:g}" for p in RATES))
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 1280 examples x 2 epochs, 1 repeat (not for quoting)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.examples, args.epochs = 1, 1280, 2
    if not 1 <= args.repeats <= 20:
        parser.error("--repeats must be in 1..20")
    if args.examples < 128 or args.epochs < 1:
        parser.error("--examples must be >= 128 and --epochs >= 1")
    threads = pin_threads(args.threads)
    clock = primary(threads)
    print(f"# data pruning: time of a pruned task / the unpruned task, torch {torch.__version__}, "
          f"{threads} thread(s), {clock} time, {args.repeats} repeats", flush=True)
    figures = measure(args, clock)
    for fig in figures:
        print(fig.line(), flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(threads),
                                         "figures": [f.to_json() for f in figures]}, indent=1))
    return figures


if __name__ == "__main__":
    main()
