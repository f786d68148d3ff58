"""Training and evaluation time of the original sparse-dynamic-synapses MLPs, against the
machine's own matmul limit, through the runner's real code path.

Networks (the experiments of ``exps/exps_params.cfg``, on permuted Fashion-MNIST read from
/usr/share/datasets/fashion-mnist, one epoch per task, batch 128):

    mlp1x4000_dense      [MLP_1Layer]         784-4000-10 ReLU, dropout 0.5, SGD Nesterov + wd
    mlp1x4000_kwta       [MLP_1LayerSparse]   the same with k-WTA (k = 4 of 4000, boosted)
    mlp1x4000_kwta_w10   [MLP_1LayerSparse]   with weight_sparsity_fc = 0.1 (90% of weights zero)
    mlp2x1000_dense      [DEFAULT]            784-1000-1000-10 ReLU, plain SGD
    mlp1x4000_dense_fused, mlp1x4000_kwta_fused: the first two with fused_optimizer = true
                         (training figures only)

Figures, per network (one line each; ratios of times measured in this run):

* ``train_over_6pn_bound``: training epoch time / (6 x weights x examples / GEMM rate), the
  issue's matmul bound, with the rate measured on the network's own layer shapes in this run
  (forward, weight-gradient and input-gradient products). Goal for the dense 1x4000: <= 1.1x.
* ``train_over_gemm_bound``: the same epoch / the time of the products a step cannot avoid
  (the above without the first layer's input gradient, which is never computed): the strict
  bound; the gap to it is everything that is not a GEMM (activations, dropout, k-WTA, optimizer,
  data, the loop).
* ``eval_task_over_train``: evaluating one task's test set (10000 images; the mean over the
  tasks of the runner's evaluation below) / training one task (one epoch of 60000 images).
  Goal < 10%.
* ``eval_all_over_train.T10`` / ``.T50``: the runner's evaluation after a task, i.e. all T
  tasks' test sets (``runner._evaluate_all``), / training one task. It grows linearly with T by
  construction (T x 10000 forward passes against 60000 training examples).
* ``stats_activity_over_train.T10`` (``--stats`` networks; default the dense 1x4000): the
  hidden-activity statistics the runner records after a task with ``record_stats = True`` (a
  second forward pass over the seen tasks' test sets), after the last of 10 tasks, / training
  one task.

Method. The training epoch is the runner's ``_train_task`` on a task of ``--batches`` x 128
examples (``train_subset``; tasks 0, 1, 2, ... in turn, the first a warm-up), timed
``--repeats`` times interleaved with a replay of the same steps' GEMMs
(:func:`common.gemm_bound`); ratios are taken per repeat, then the median, and the epoch of
60000 examples is extrapolated from the slice by example count. Evaluation times are single
runs over the full test sets (``--quick`` times one task and multiplies by T; without
``--t50`` for a network, its T = 50 figure is 50 x its one-task time). With one thread the
times are process CPU times (see :mod:`common`).

    python bench/bench_training.py [--threads 1] [--repeats 5] [--batches 60] [--quick]
                                   [--networks a,b] [--t50 all|none|<network>,...]
                                   [--stats all|none|<network>,...] [--skip-eval] [--json out]
"""
from __future__ import annotations

import argparse
import json
import dataclasses
import math
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (Figure, Sample, gemm_bound, interleaved, machine, median_ratio,  # noqa: E402
                    pin_threads, primary, timed)

from benchmarks import build_scenario  # noqa: E402
from models import build_model  # noqa: E402
from sparse_nte import runner  # noqa: E402
from sparse_nte.config import Config, load_config  # noqa: E402
from sparse_nte.learner import build_learner  # noqa: E402
from sparse_nte.seams import TaskContext  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
EXPERIMENTS = REPO / "exps" / "exps_params.cfg"
EPOCH_EXAMPLES = 60000
TEST_EXAMPLES = 10000

#: name -> (section of exps_params.cfg, overrides)
NETWORKS: Dict[str, tuple[str, Dict[str, Any]]] = {
    "mlp1x4000_dense": ("MLP_1Layer", {}),
    "mlp1x4000_kwta": ("MLP_1LayerSparse", {}),
    "mlp1x4000_kwta_w10": ("MLP_1LayerSparse", {"weight_sparsity_fc": 0.1}),
    "mlp2x1000_dense": ("DEFAULT", {}),
    "mlp1x4000_dense_fused": ("MLP_1Layer", {"fused_optimizer": True}),
    "mlp1x4000_kwta_fused": ("MLP_1LayerSparse", {"fused_optimizer": True}),
}
#: Networks measured for training only (their evaluation is the same as their unfused twin's).
TRAIN_ONLY = ("mlp1x4000_dense_fused", "mlp1x4000_kwta_fused")
GOALS = {("train_over_6pn_bound", "mlp1x4000_dense"): 1.1,
         ("train_over_6pn_bound", "mlp1x4000_kwta"): 1.2,
         ("train_over_6pn_bound", "mlp1x4000_dense_fused"): 1.1,
         ("train_over_6pn_bound", "mlp1x4000_kwta_fused"): 1.2}
DEFAULT_T50 = DEFAULT_STATS = "mlp1x4000_dense"   # the others: 50 x one task; no stats figure
EVAL_GOAL = 10.0   # percent


def network_config(name: str, num_tasks: int, subset: Optional[int]) -> Config:
    """The resolved config of network ``name`` on permuted Fashion-MNIST with ``num_tasks``
    tasks of one epoch each (``subset`` training examples per task, None = all)."""
    section, extra = NETWORKS[name]
    overrides = {"dataset": "fashion_mnist", "mnist_mode": "permutations", "num_batch": num_tasks,
                 "train_ep": 1, "train_ep_inc": 1, "seed": 0, **extra}
    if subset:
        overrides["train_subset"] = subset
    return dataclasses.replace(load_config(EXPERIMENTS, section, overrides), name=name)


def _selected(network: str, option: str) -> bool:
    return option == "all" or network in option.split(",")


def figure_names(network: str, stats: str = DEFAULT_STATS) -> List[str]:
    """The figures this script reports for ``network`` (unless ``--skip-eval``) with the
    ``--stats`` option ``stats``."""
    names = [f"train_over_6pn_bound.{network}", f"train_over_gemm_bound.{network}"]
    if network in TRAIN_ONLY:
        return names
    names += [f"eval_task_over_train.{network}", f"eval_all_over_train.T10.{network}",
              f"eval_all_over_train.T50.{network}"]
    if _selected(network, stats) and network_config(network, 10, None).record_stats:
        names.append(f"stats_activity_over_train.T10.{network}")
    return names


def build(cfg: Config):
    """Scenario, model and learner of a trial, built as ``runner.run_trial`` builds them."""
    scenario = build_scenario(
        dataset=cfg.dataset, mode=cfg.mnist_mode, num_tasks=cfg.num_batch,
        setting=cfg.scenario, cumulative=cfg.cumul, seed=cfg.seed,
        permute_first=cfg.permute_first, class_order=cfg.class_order,
        data_root=cfg.data_root or None, train_subset=cfg.train_subset or None,
        download=False, progress=False, input_scaling=cfg.input_scaling,
        permutation_rng=cfg.permutation_rng)
    model = build_model(cfg, scenario)
    learner = build_learner(cfg, model, scenario)
    return scenario, model, learner


def linear_shapes(cfg: Config, scenario) -> List[tuple[int, int]]:
    """(in, out) of the linear layers one example passes through: hidden layers, one head."""
    n_in = int(math.prod(scenario.input_shape))
    units, layers = cfg.hidden_units, cfg.hidden_layers
    shapes = [(n_in if i == 0 else units, units) for i in range(layers)]
    return shapes + [(units, int(scenario.head_size))]


def measure_network(name: str, args, clock: str) -> List[Figure]:
    cfg = network_config(name, 10, args.batches * 128)
    scenario, model, learner = build(cfg)
    n_train = len(scenario.tasks[0].train_y)
    steps = math.ceil(n_train / cfg.mb_size)
    sizes = [min(cfg.mb_size, n_train - s * cfg.mb_size) for s in range(steps)]
    shapes = linear_shapes(cfg, scenario)
    bound = gemm_bound(shapes, sizes)
    bounds: List[Any] = []

    next_task = iter(range(scenario.num_tasks))   # tasks start in order, as in a trial

    def train() -> None:
        task = next(next_task)
        ctx = TaskContext(task=task, num_tasks=scenario.num_tasks, scenario=scenario, model=model,
                          device="cpu", seed=cfg.seed, steps=steps, epochs=1, batch_size=cfg.mb_size)
        runner._train_task(learner, ctx, progress=False)

    def replay() -> None:
        bounds.append(bound())

    train_s, _ = interleaved([train, replay], args.repeats, warmup=1)
    bounds = bounds[1:]                      # drop the warm-up round
    all_three = [b.all_three for b in bounds]
    needed = [b.needed for b in bounds]
    rate = statistics.median(b.rate(clock) for b in bounds)
    epoch_scale = EPOCH_EXAMPLES / n_train
    epoch = statistics.median(getattr(s, clock) for s in train_s) * epoch_scale
    weights = sum(i * o for i, o in shapes)
    sparse_note = (" (dense-equivalent bound: the 90%-sparse layer is compared with the dense "
                   "products)" if cfg.weight_sparsity_fc < 1 else "")
    common = (f"epoch {epoch:.1f} s extrapolated from {args.repeats} x {steps} batches; GEMM rate "
              f"{rate / 1e9:.0f} GFLOP/s on the layer shapes; {clock} time{sparse_note}")
    extra = {"epoch_s": epoch, "gemm_rate_flops": rate, "weights": weights, "batches": steps,
             "repeats": args.repeats, "clock": clock,
             "train_s": [s.__dict__ for s in train_s],
             "bound_6pn_s": [s.__dict__ for s in all_three],
             "bound_gemm_s": [s.__dict__ for s in needed],
             "wall_ratio": median_ratio(train_s, all_three, "wall")}
    figures = [
        Figure(f"train_over_6pn_bound.{name}", median_ratio(train_s, all_three, clock), "x",
               common, GOALS.get(("train_over_6pn_bound", name)), extra),
        Figure(f"train_over_gemm_bound.{name}", median_ratio(train_s, needed, clock), "x",
               "strict bound: the GEMMs a step needs (no input gradient of the first layer)",
               None, {"wall_ratio": median_ratio(train_s, needed, "wall")}),
    ]
    if not args.skip_eval and name not in TRAIN_ONLY:
        figures += measure_eval(name, cfg, scenario, model, epoch, args, clock)
    return figures


def _eval_times(model, scenario, after: int, tasks: Sequence[int]) -> List[Sample]:
    return [timed(lambda j=j: runner.evaluate(model, scenario, j, after, "cpu")) for j in tasks]


def measure_eval(name: str, cfg: dict, scenario, model, epoch: float, args,
                 clock: str) -> List[Figure]:
    from sparse_nte import stats as model_stats

    T = scenario.num_tasks
    model.eval()
    figures = []
    if args.quick:
        one = getattr(_eval_times(model, scenario, T - 1, [0])[0], clock)
        all10, how, which = one * T, f"quick: {T} x one task", "task 0 alone (quick)"
    else:
        s = timed(lambda: runner._evaluate_all(model, scenario, T - 1, "cpu"))
        all10, how = getattr(s, clock), f"measured: runner._evaluate_all over {T} tasks"
        one, which = all10 / T, f"mean over the {T} tasks"
    figures.append(Figure(
        f"eval_task_over_train.{name}", 100 * one / epoch, "%",
        f"one task's {TEST_EXAMPLES} test images {one:.2f} s ({which}) vs one epoch of "
        f"{EPOCH_EXAMPLES} training images {epoch:.1f} s", EVAL_GOAL, {"eval_task_s": one}))
    figures.append(Figure(
        f"eval_all_over_train.T{T}.{name}", 100 * all10 / epoch, "%",
        f"{how}, {all10:.1f} s; linear in T by construction", None,
        {"eval_all_s": all10, "method": how}))

    if _selected(name, args.t50) and not args.quick:
        cfg50 = network_config(name, 50, args.batches * 128)
        scenario50, model50, _ = build(cfg50)
        model50.load_state_dict(model.state_dict())
        model50.eval()
        s = timed(lambda: runner._evaluate_all(model50, scenario50, 49, "cpu"))
        all50, how50 = getattr(s, clock), "measured: runner._evaluate_all over 50 tasks"
    else:
        all50 = one * 50
        how50 = "50 x the measured one-task evaluation" + (" (quick)" if args.quick else "")
    figures.append(Figure(
        f"eval_all_over_train.T50.{name}", 100 * all50 / epoch, "%",
        f"{how50}, {all50:.1f} s; linear in T by construction", None,
        {"eval_all_s": all50, "method": how50}))

    if _selected(name, args.stats) and cfg.record_stats:
        last = T - 1 if not args.quick else 0
        s = timed(lambda: model_stats.model_stats(model, scenario, last, device="cpu"))
        figures.append(Figure(
            f"stats_activity_over_train.T{T}.{name}", 100 * getattr(s, clock) / epoch, "%",
            f"record_stats after task {last + 1} of {T} ({last + 1} test sets)"
            + (" (quick: after the first task)" if args.quick else ""), None,
            {"stats_s": getattr(s, clock)}))
    model.train()
    return figures


def main(argv: Optional[Sequence[str]] = None) -> List[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", type=int, default=60, help="batches of 128 per timed epoch")
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--t50", default=DEFAULT_T50,
                        help="networks whose 50-task evaluation is measured in full ('all', "
                             "'none' or a comma list; default: the dense 1x4000); the others "
                             "report 50 x their measured one-task evaluation")
    parser.add_argument("--stats", default=DEFAULT_STATS,
                        help="networks whose record_stats activity pass is timed ('all', 'none' "
                             "or a comma list; default: the dense 1x4000)")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny slices, 1 repeat")
    parser.add_argument("--skip-eval", action="store_true", help="training figures only")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.batches = 1, 3
    if not 1 <= args.repeats <= 9:
        parser.error("--repeats must be in 1..9 (each repeat trains the next of 10 tasks after "
                     "one warm-up task)")
    threads = pin_threads(args.threads)
    clock = primary(threads)
    names = [n.strip() for n in args.networks.split(",") if n.strip()]
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        parser.error(f"unknown network(s) {unknown}; valid: {', '.join(NETWORKS)}")
    print(f"# training/evaluation vs matmul bound: torch {torch.__version__}, {threads} thread(s), "
          f"{clock} time, {args.repeats} repeats of {args.batches} batches", flush=True)
    figures: List[Figure] = []
    for name in names:
        for fig in measure_network(name, args, clock):
            print(fig.line(), flush=True)
            figures.append(fig)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine(threads),
                                         "figures": [f.to_json() for f in figures]}, indent=1))
    return figures


if __name__ == "__main__":
    main()
