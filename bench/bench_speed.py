"""Sparse networks at the cost of their live connections, and evaluation at the forward bound:
the figures of the speed issue, each a ratio of times measured in this run (interleaved
repeats, medians; process CPU time with one thread, see :mod:`common`).

Sections:

  layer  one sparse linear layer, forward + backward (input and weight gradients), batch 128:
         masked-dense (sparse_exec = off) time / compact (only the live weights stored and
         trained) time, 784 -> 4000 and 4000 -> 4000 at 2, 5, 10, 20% density.
         Goals (784 -> 4000): >= 6x at 2%, >= 4x at 5%.
  mlp    training step of the k-WTA 784-4000-10 MLP of [MLP_1LayerSparse] (k = 4 of 4000,
         boosted, dropout 0.5, SGD Nesterov + weight decay, batch 128) through the learner:
         masked-dense / auto (compact) at 10% and 5% density; also with dropout_draws =
         active. Goals: >= 3x at 10%, >= 5x at 5%.
  eval   the runner's evaluation of all 10 seen tasks (record_stats folded in) per example /
         the forward GEMM bound (2 x weights x examples / GEMM rate on the layer shapes at the
         evaluation batch, dense-equivalent for sparse networks); and the sparse network's
         evaluation / the dense one's. Goals: <= 1.2x; sparse <= dense.
  run    whole 10-task runs of [MLP_1LayerSparse] at 10% connectivity, masked-dense / auto
         (train_subset = --subset examples per task, 2 epochs per task as the experiment; the
         evaluation on the full test sets), goal >= 2.5x; and the share of a run spent
         evaluating with the default settings, extrapolated to the full 60000-example tasks of
         the original project's run (training time scales with the examples), for [MLP_1Layer]
         and [MLP_1LayerSparse] (the original: 21% and 26%); goal < 12%.
  step   where the time of the dense 784-4000-10 training step goes (forward / backward
         products, optimizer update with and without fused_optimizer, dropout, the rest), in %
         of the step.

    python bench/bench_speed.py [--sections layer,mlp,eval,run,step] [--repeats 5]
                                [--subset 6000] [--json out] [--quick]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Figure, interleaved, machine, median_ratio, pin_threads, primary  # noqa: E402

import bench_training as bt  # noqa: E402
from sparse_nte.layers import SparseWeights  # noqa: E402
from sparse_nte.seams import Batch, TaskContext  # noqa: E402

SECTIONS = ("layer", "mlp", "eval", "run", "step")
DENSITIES = (0.02, 0.05, 0.10, 0.20)
LAYER_GOALS = {0.02: 6.0, 0.05: 4.0}
MLP_GOALS = {0.10: 3.0, 0.05: 5.0}
FULL_TASK = 60000


# ---------------------------------------------------------------------------------------------
def _layer(n_in: int, n_out: int, density: float, mode: str) -> SparseWeights:
    g = torch.Generator().manual_seed(0)
    return SparseWeights(nn.Linear(n_in, n_out), sparsity=1.0 - density, generator=g,
                         sparse_exec=mode)


def section_layer(args, clock: str) -> List[Figure]:
    figures = []
    batch = 128
    for n_in, n_out in ((784, 4000), (4000, 4000)):
        for d in DENSITIES:
            dense, compact = _layer(n_in, n_out, d, "off"), _layer(n_in, n_out, d, "compact")
            x = torch.randn(batch, n_in, requires_grad=True)
            gy = torch.randn(batch, n_out)

            def step(layer=None):
                def run():
                    for p in layer.parameters():
                        p.grad = None
                    x.grad = None
                    layer(x).backward(gy)
                return run

            a, b = interleaved([step(dense), step(compact)], args.repeats)
            ratio = median_ratio(a, b, clock)
            goal = LAYER_GOALS.get(d) if n_in == 784 else None
            figures.append(Figure(
                f"layer_speedup.{n_in}x{n_out}.density_{d:.2f}", ratio, "x",
                f"masked-dense {statistics.median(s.cpu for s in a) * 1e3:.2f} ms / compact "
                f"{statistics.median(s.cpu for s in b) * 1e3:.2f} ms, forward + both gradients, "
                f"batch {batch}", goal, at_least=True))
    return figures


# ---------------------------------------------------------------------------------------------
def _learner_step(section: str, extra: Dict[str, Any]):
    """A train_step closure of the real learner for an experiment of exps_params.cfg."""
    bt.NETWORKS["_speed"] = (section, extra)
    cfg = bt.network_config("_speed", 10, 1280)
    scenario, model, learner = bt.build(cfg)
    ctx = TaskContext(task=0, num_tasks=10, scenario=scenario, model=model, device="cpu",
                      seed=0, steps=10, epochs=1, batch_size=cfg.mb_size)
    learner.on_task_start(ctx)
    model.train()
    gen = torch.Generator().manual_seed(0)
    batches = [Batch(*b) for b in scenario.batches(0, "train", batch_size=cfg.mb_size,
                                                    shuffle=True, generator=gen,
                                                    with_index=True)]

    state = {"i": 0}

    def step() -> None:
        learner.train_step(batches[state["i"] % len(batches)])
        state["i"] += 1
    step.scenario = scenario   # type: ignore[attr-defined]
    return step, model, cfg


def section_mlp(args, clock: str) -> List[Figure]:
    figures = []
    for d in (0.10, 0.05):
        variants = [("off", "all"), ("auto", "all"), ("auto", "active")]
        steps = [_learner_step("MLP_1LayerSparse", {"weight_sparsity_fc": d, "sparse_exec": m,
                                                    "dropout_draws": dd})[0]
                 for m, dd in variants]
        s = interleaved(steps, args.repeats * 3, warmup=3)
        ms = [statistics.median(getattr(x, clock) for x in v) * 1e3 for v in s]
        figures.append(Figure(
            f"mlp_step_speedup.density_{d:.2f}", median_ratio(s[0], s[1], clock), "x",
            f"k-WTA MLP 784-4000-10 ([MLP_1LayerSparse]), learner step: masked-dense "
            f"{ms[0]:.1f} ms / compact {ms[1]:.1f} ms (default settings)", MLP_GOALS[d],
            at_least=True))
        figures.append(Figure(
            f"mlp_step_speedup_active_dropout.density_{d:.2f}",
            median_ratio(s[0], s[2], clock), "x",
            f"the same, compact with dropout_draws = active: {ms[2]:.1f} ms (another random "
            f"stream than the masked-dense step)", None, at_least=True))
    return figures


# ---------------------------------------------------------------------------------------------
def _forward_bound(shapes: Sequence[tuple[int, int]], examples: int, batch: int,
                   repeats: int, clock: str) -> float:
    """Seconds of the forward products of ``examples`` rows through dense layers ``shapes``
    ((in, out)) at ``batch`` rows per call, on ``clock`` (median of ``repeats``)."""
    g = torch.Generator().manual_seed(0)
    ws = [(torch.randn(o, i, generator=g), torch.randn(o, generator=g)) for i, o in shapes]
    x = torch.randn(batch, shapes[0][0], generator=g)
    calls = math.ceil(examples / batch)

    def run() -> None:
        for _ in range(calls):
            h = x
            for w, b in ws:
                h = torch.addmm(b, h, w.t())

    samples = interleaved([run], repeats)[0]
    return statistics.median(getattr(s, clock) for s in samples)


def section_eval(args, clock: str) -> List[Figure]:
    from sparse_nte.evaluation import EVAL_BATCH, EvalSpec
    from sparse_nte.runner import _evaluate_row

    figures, times = [], {}
    nets = [("MLP_1Layer", {}), ("MLP_1LayerSparse", {}),
            ("MLP_1LayerSparse", {"weight_sparsity_fc": 0.1})]
    rows = []
    for section, extra in nets:
        step, model, cfg = _learner_step(section, extra)
        rows.append((section, extra, model, step.scenario, cfg))
    shapes = [(784, 4000), (4000, 10)]
    after = 0 if args.quick else 9              # after the last of 10 tasks: every task is seen
    spec = EvalSpec("needed")
    fns = [lambda m=model, s=scenario: _evaluate_row(m, s, after, spec, 0, "cpu", record=True)
           for _, _, model, scenario, _ in rows]
    examples = sum(_evaluate_row(rows[0][2], rows[0][3], after, spec, 0, "cpu",
                                 record=False).examples.values())
    tasks = examples // bt.TEST_EXAMPLES
    samples = interleaved(fns, max(1, args.repeats // 2), warmup=1)
    bound = _forward_bound(shapes, examples, EVAL_BATCH, max(1, args.repeats // 2), clock)
    for (section, extra, *_), s in zip(rows, samples):
        t = statistics.median(getattr(x, clock) for x in s)
        label = section + ("" if not extra else ".density_0.10")
        times[label] = t
        figures.append(Figure(
            f"eval_over_forward_bound.{label}", t / bound, "x",
            f"{tasks} seen tasks x {bt.TEST_EXAMPLES} test images with record_stats folded in: "
            f"{t:.2f} s; forward GEMM bound {bound:.2f} s (784-4000-10 at {EVAL_BATCH} rows"
            f"{', dense-equivalent' if extra else ''})", 1.2))
    figures.append(Figure(
        "eval_sparse_over_dense.MLP_1LayerSparse.density_0.10",
        times["MLP_1LayerSparse.density_0.10"] / times["MLP_1LayerSparse"], "x",
        "evaluation of the 10%-connectivity k-WTA network / the same network with dense weights",
        1.0))
    return figures


# ---------------------------------------------------------------------------------------------
def _run(section: str, extra: Dict[str, Any], subset: int, out: Path, tasks: int) -> dict:
    from sparse_nte.config import load_config
    from sparse_nte.runner import run_trial

    overrides = {"dataset": "fashion_mnist", "num_batch": tasks, "train_subset": subset,
                 "seed": 0, **extra}
    cfg = load_config(bt.EXPERIMENTS, section, {k: str(v) for k, v in overrides.items()})
    c0 = time.process_time()
    w0 = time.perf_counter()
    res = run_trial(cfg, out, overwrite=True, progress=False, log=lambda m: None)
    res["_cpu_s"] = time.process_time() - c0
    res["_wall_s"] = time.perf_counter() - w0
    return res


def section_run(args, clock: str) -> List[Figure]:
    figures = []
    tasks = 2 if args.quick else 10
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        key = "_cpu_s" if clock == "cpu" else "_wall_s"
        speed = {"off": [], "auto": []}
        for r in range(1 if args.quick else 2):
            for mode in ("off", "auto"):
                res = _run("MLP_1LayerSparse", {"weight_sparsity_fc": 0.1, "sparse_exec": mode},
                           args.subset, base / f"{mode}{r}", tasks)
                speed[mode].append(res[key])
        ratio = statistics.median(a / b for a, b in zip(speed["off"], speed["auto"]))
        figures.append(Figure(
            "run_speedup.MLP_1LayerSparse.density_0.10", ratio, "x",
            f"whole {tasks}-task runs (train_subset = {args.subset}, 2 epochs per task, full test "
            f"sets, record_stats): masked-dense {statistics.median(speed['off']):.0f} s / auto "
            f"(compact) {statistics.median(speed['auto']):.0f} s", 2.5, at_least=True))
        for section, original in (("MLP_1Layer", 21.0), ("MLP_1LayerSparse", 26.0)):
            res = _run(section, {}, args.subset, base / section, tasks)
            per_task = res["stats"]["per_task"]
            train = sum(t["train_s"] for t in per_task)
            evals = sum(t["eval_s"] for t in per_task)
            init = res["elapsed_s"] - train - evals
            scaled_train = train * FULL_TASK / args.subset
            share = 100 * (evals + max(init, 0.0)) / (scaled_train + evals + max(init, 0.0))
            figures.append(Figure(
                f"eval_share_of_run.{section}", share, "%",
                f"evaluation {evals:.0f} s (+ {max(init, 0):.0f} s other) vs training {train:.0f} s "
                f"on {args.subset} examples per task, extrapolated to {FULL_TASK}: "
                f"{scaled_train:.0f} s (the original project: {original:.0f}%); wall clock",
                12.0))
    return figures


# ---------------------------------------------------------------------------------------------
def section_step(args, clock: str) -> List[Figure]:
    """Share of the dense 784-4000-10 step ([MLP_1Layer]) taken by each part."""
    figures = []
    step_default, model, cfg = _learner_step("MLP_1Layer", {})
    step_fused = _learner_step("MLP_1Layer", {"fused_optimizer": True})[0]
    lin, head = model.blocks[0].layer, model.heads[0]
    x = torch.randn(cfg.mb_size, 784)
    g = torch.randn(cfg.mb_size, 4000)
    h = torch.randn(cfg.mb_size, 4000)
    w = lin.weight.detach()

    def gemms() -> None:
        F.linear(x, w, lin.bias.detach())
        g.t().mm(x)
        F.linear(h, head.weight.detach())
        g[:, :10].t().mm(h)
        g[:, :10].mm(head.weight.detach())

    opt = torch.optim.SGD([nn.Parameter(torch.randn(4000, 784))], lr=0.1, momentum=0.9,
                          nesterov=True, weight_decay=1e-4)
    opt_f = torch.optim.SGD([nn.Parameter(torch.randn(4000, 784))], lr=0.1, momentum=0.9,
                            nesterov=True, weight_decay=1e-4, fused=True)
    for o in (opt, opt_f):
        for p in o.param_groups[0]["params"]:
            p.grad = torch.randn_like(p)

    drop = model.blocks[0].dropout.train()
    hr = h.clone().requires_grad_()

    def dropout() -> None:
        hr.grad = None
        drop(hr).backward(g)

    s = interleaved([step_default, step_fused, gemms, opt.step, opt_f.step, dropout],
                    args.repeats * 3, warmup=2)
    med = [statistics.median(getattr(v, clock) for v in x) for x in s]
    total = med[0]
    for name, value in (("products", med[2]), ("sgd_update", med[3]),
                        ("fused_sgd_update", med[4]), ("dropout_fwd_bwd", med[5])):
        figures.append(Figure(f"dense_step_share.{name}", 100 * value / total, "%",
                              f"{value * 1e3:.2f} ms of the {total * 1e3:.1f} ms default step",
                              None))
    figures.append(Figure("dense_step_fused_over_default", med[1] / med[0], "x",
                          f"step with fused_optimizer {med[1] * 1e3:.1f} ms / default "
                          f"{med[0] * 1e3:.1f} ms", None))
    return figures


def figure_names(sections: Sequence[str] = SECTIONS) -> List[str]:
    """The figures the given sections report (run_all checks that none is missing)."""
    names: List[str] = []
    if "layer" in sections:
        names += [f"layer_speedup.{i}x4000.density_{d:.2f}" for i in (784, 4000)
                  for d in DENSITIES]
    if "mlp" in sections:
        names += [f"{n}.density_{d:.2f}" for d in (0.10, 0.05)
                  for n in ("mlp_step_speedup", "mlp_step_speedup_active_dropout")]
    if "eval" in sections:
        names += [f"eval_over_forward_bound.{n}" for n in
                  ("MLP_1Layer", "MLP_1LayerSparse", "MLP_1LayerSparse.density_0.10")]
        names.append("eval_sparse_over_dense.MLP_1LayerSparse.density_0.10")
    if "run" in sections:
        names += ["run_speedup.MLP_1LayerSparse.density_0.10", "eval_share_of_run.MLP_1Layer",
                  "eval_share_of_run.MLP_1LayerSparse"]
    if "step" in sections:
        names += [f"dense_step_share.{n}" for n in
                  ("products", "sgd_update", "fused_sgd_update", "dropout_fwd_bwd")]
        names.append("dense_step_fused_over_default")
    return names


def main(argv: Optional[Sequence[str]] = None) -> List[Figure]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--subset", type=int, default=6000, help="training examples per task of "
                        "the whole runs")
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny measurements")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.subset = 1, 600
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")
    threads = pin_threads(args.threads)
    clock = primary(threads)
    desc = machine(threads)
    print(f"# speed figures: {desc['cpu']}, {threads} thread(s), {clock} time, torch "
          f"{desc['torch']}, load {desc['loadavg_1_5_15'][0]}", flush=True)
    figures: List[Figure] = []
    runners: Dict[str, Callable] = {"layer": section_layer, "mlp": section_mlp,
                                    "eval": section_eval, "run": section_run,
                                    "step": section_step}
    for name in names:
        for fig in runners[name](args, clock):
            print(fig.line(), flush=True)
            figures.append(fig)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": desc,
                                         "figures": [f.to_json() for f in figures]}, indent=1))
    return figures


if __name__ == "__main__":
    main()
