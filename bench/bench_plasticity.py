"""Cost of connectivity updates relative to training, for every plasticity schedule.

For each schedule the figure is the cost of one mask update (plus, for RigL, the extra cost of
the training step whose dense gradient it captures) amortised over ``plasticity_interval``
steps, as a fraction of the training time of those steps::

    fraction = (t_event + t_capture) / (interval * t_step)

with medians over repeated events and steps measured in the same run (so the ratio, not the
absolute time, is what counts on a shared machine). Task-wise growth updates once per task, so
its event is amortised over one task's steps; its protection of old connections
(``grow_old_lr`` < 1) costs something on every step, reported as a fraction of a step.

The network is the project's default MLP on 28x28 inputs (k-WTA, ``hidden_layers`` x
``hidden_units``, 10% weight density), batch ``mb_size``; data are random (timings do not depend
on the values).

    python bench/bench_plasticity.py [--threads 1] [--hidden 1024] [--layers 2] [--repeats 15]
                                     [--nte] [--kinds set,rigl,gmp,grow]
"""
from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from models import build_model
from sparse_nte.config import config_from_dict
from sparse_nte.nte import build_nte_optimizer
from sparse_nte.plasticity import TaskwiseGrowth, build_schedule, plastic_layers


class TimedGrowth(TaskwiseGrowth):
    """Task-wise growth that times its protection of old connections (the optimizer step
    hooks), so it can be reported apart from the step it is part of."""

    def __init__(self, *args, **kwargs) -> None:
        self.hook_times: list = []
        self._t = 0.0
        super().__init__(*args, **kwargs)

    def _record_old(self, *args) -> None:
        t0 = time.perf_counter()
        super()._record_old(*args)
        self._t = time.perf_counter() - t0

    def _protect_old(self, *args) -> None:
        t0 = time.perf_counter()
        super()._protect_old(*args)
        self.hook_times.append(self._t + time.perf_counter() - t0)


def make(args, plasticity: str, dale: bool, optimizer: str, **extra):
    cfg = config_from_dict({
        "hidden_units": args.hidden, "hidden_layers": args.layers, "sparsify": True,
        "weight_sparsity_fc": args.density, "dale": dale, "optimizer": optimizer,
        "plasticity": plasticity, "mb_size": args.batch, "num_batch": 2, "seed": 0, **extra})
    scenario = SimpleNamespace(input_shape=(1, 28, 28), num_heads=1, head_size=10,
                               tasks=(None, None), head_of=lambda t: 0)
    model = build_model(cfg, scenario)
    if optimizer == "nte":
        opt = build_nte_optimizer(model, cfg)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    return cfg, model, opt


def measure(args, plasticity: str, dale: bool, optimizer: str, **extra) -> dict:
    """Medians of: a training step (without the schedule's calls and growth's protection hooks),
    a mask update, the extra cost of a RigL step that captures the dense gradient, growth's
    protection of old connections per step, and a task-start growth event."""
    interval = 5   # events often, for many samples; the fraction is reported at args.interval
    grow = plasticity == "grow"
    num_tasks = args.repeats + 1 if grow else 1
    steps = 12 if grow else interval * (args.repeats + 1)
    extra = {"plasticity_interval": interval, "plasticity_end": 1.0, **extra}
    if plasticity == "gmp":
        extra.update(gmp_n=args.repeats, gmp_final_sparsity=0.99)
    cfg, model, opt = make(args, plasticity, dale, optimizer, num_batch=max(2, num_tasks), **extra)
    if grow:
        sched = TimedGrowth(
            plastic_layers(model), opt, start_density=cfg.grow_start_density,
            end_density=cfg.grow_end_density, old_lr=cfg.grow_old_lr,
            steps_per_task=steps, num_tasks=num_tasks, init_scale=cfg.grow_init_scale)
    else:
        sched = build_schedule(cfg, model, opt, steps, num_tasks)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    nte = optimizer == "nte"
    train, armed, events, protect, task_start = [], [], [], [], []
    step = 0
    for task in range(num_tasks):
        t0 = time.perf_counter()
        sched.on_task_start(task)
        if task > 0:
            task_start.append(time.perf_counter() - t0)
        for i in range(steps):
            t0 = time.perf_counter()
            if nte:   # NTE's step runs forward and backward from the closure
                t1 = time.perf_counter()
                sched.after_backward(step)
                t2 = time.perf_counter()
                opt.step(lambda: F.cross_entropy(model(x, None), y, reduction="none"))
            else:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x, None), y).backward()
                t1 = time.perf_counter()
                sched.after_backward(step)
                t2 = time.perf_counter()
                opt.step()
            t3 = time.perf_counter()
            n_events = len(sched.history)
            sched.after_step(step)
            t4 = time.perf_counter()
            hooks = sched.hook_times[-1] if grow and sched.hook_times else 0.0
            step_time = (t1 - t0) + (t3 - t2) - hooks
            if len(sched.history) > n_events:
                events.append(t4 - t3)
                armed.append(step_time)
            elif i > 1:
                train.append(step_time)
                if grow and task > 0:
                    protect.append(hooks)
            step += 1
    sched.close()
    med = statistics.median
    return {"step": med(train), "event": med(events) if events else 0.0,
            "capture": max(0.0, med(armed) - med(train)) if plasticity == "rigl" else 0.0,
            "protect": med(protect) if protect else 0.0,
            "task_start": med(task_start) if task_start else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--density", type=float, default=0.1)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--interval", type=int, default=100, help="plasticity_interval reported")
    ap.add_argument("--steps-per-task", type=int, default=469, help="60000 / 128 (one epoch)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--nte", action="store_true", help="also measure under the NTE optimizer")
    ap.add_argument("--kinds", default="set,rigl,gmp,grow", help="schedules to measure")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# MLP 784-{'-'.join([str(args.hidden)] * args.layers)}-10, density {args.density}, "
          f"batch {args.batch}, {args.threads} thread(s); fractions at plasticity_interval = "
          f"{args.interval}")
    optimizers = ["sgd"] + (["nte"] if args.nte else [])
    for optimizer in optimizers:
        for dale in (False, True):
            kinds = args.kinds.split(",")
            for kind in [k for k in ("set", "rigl", "gmp") if k in kinds]:
                r = measure(args, kind, dale, optimizer)
                frac = (r["event"] + r["capture"]) / (args.interval * r["step"])
                print(f"{kind:5s} optimizer={optimizer} dale={dale!s:5s}: step {1e3 * r['step']:7.2f} ms, "
                      f"event {1e3 * r['event']:7.2f} ms, capture {1e3 * r['capture']:6.2f} ms -> "
                      f"{100 * frac:.2f} % of training time")
            for old_lr in ((0.0, 0.5) if "grow" in kinds else ()):
                r = measure(args, "grow", dale, optimizer, grow_start_density=args.density,
                            grow_end_density=min(1.0, 3 * args.density), grow_old_lr=old_lr)
                frac = r["task_start"] / (args.steps_per_task * r["step"])
                print(f"grow  optimizer={optimizer} dale={dale!s:5s} old_lr={old_lr}: step "
                      f"{1e3 * r['step']:7.2f} ms, growth event {1e3 * r['task_start']:7.2f} ms -> "
                      f"{100 * frac:.3f} % of a {args.steps_per_task}-step task; protection "
                      f"{1e3 * r['protect']:.2f} ms/step = {100 * r['protect'] / r['step']:.2f} % "
                      f"of a step")


if __name__ == "__main__":
    main()
