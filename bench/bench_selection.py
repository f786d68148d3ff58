"""Cost of data selection relative to training: the selector's work in one epoch of a task of
N = 60,000 examples, as a percentage of one SGD epoch of the 1x1000 MLP (784-1000-10, ReLU,
batch 128) on random data, both measured in the same run.

Per dynamic selector (uniform, epsilon_greedy, ucb; p = --rate, rescaling on where it is
defined) and repeat, the selector's calls of two epochs are timed, exactly as the learner
makes them:

* ``full``: an epoch on full data: ``rows()`` (returns None), ``observe()`` of every batch of
  all N rows, and the score update they queue (applied at the next ``rows()``);
* ``pruned``: a selecting pruned epoch in steady state: ``rows()`` (the queued update of the
  previous pruned epoch's k rows, then a new draw over the N scores) and, for every batch of
  the k kept rows, ``loss_weights()`` (with rescaling) and ``observe()``.

Figures (one line each, goal <= 3%):

* ``selection_full_epoch_over_sgd_epoch.<selector>``: full / one SGD epoch over N rows
  (epsilon_greedy, ucb; uniform has no scores, its near-zero time is printed as a comment);
* ``selection_pruned_epoch_over_sgd_epoch.<selector>``: pruned / one SGD epoch over the k kept
  rows (the SGD epoch time scaled by k / N: same steps, fewer of them).

The static selectors' cost is their scoring run, counted in the run's time (``score_s``); with
``--static`` the scoring passes of el2n and grand on the task as it starts (no training of the
copy) are printed for information, also as a percentage of the SGD epoch.

Method: the SGD epoch (forward, cross-entropy, backward, SGD update over pre-made float32
batches, no data preparation) and the selector epochs are run in turn in every repeat, after
one warm-up round; each ratio is taken per repeat, then the median over repeats. Batches and
losses fed to ``observe`` are made outside the timed calls (the runner's batching is not the
selector's cost). With one thread the times are process CPU times (see :mod:`common`).

    python bench/bench_selection.py [--threads 1] [--repeats 5] [--rate 0.5] [--static]
                                    [--json out]
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Figure, Sample, machine, median_ratio, pin_threads, primary  # noqa: E402

from benchmarks.scenarios import Scenario, Task  # noqa: E402
from sparse_nte.seams import Batch, BuildEnv, TaskContext  # noqa: E402
from sparse_nte.selection import build_selection  # noqa: E402

N = 60_000
BATCH = 128
GOAL_PERCENT = 3.0
DYNAMIC = ("uniform", "epsilon_greedy", "ucb")
#: Selectors with work to do in a full-data epoch (uniform keeps no scores: printed as a comment).
FULL_EPOCH_FIGURES = ("epsilon_greedy", "ucb")


def make_scenario(n: int) -> Scenario:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8)
    y = torch.randint(0, 10, (n,), generator=g)
    task = Task(0, tuple(range(10)), x, y, torch.zeros(n, dtype=torch.int64), x[:100], y[:100])
    return Scenario("random", "random", "domain", (task,), (1, 28, 28), 1, 10, (0.5,), (0.25,),
                    None, False)


def make_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 1000), nn.ReLU(), nn.Linear(1000, 10))


def selection_config(method: str, rate: float) -> SimpleNamespace:
    return SimpleNamespace(
        data_pruning=method, data_prune_rate=rate, data_prune_every=1, data_prune_start=1,
        data_prune_end=0, data_prune_epsilon=0.1, data_prune_ucb_c=1.0, data_prune_ema=0.8,
        data_prune_rescale=method in ("uniform", "epsilon_greedy"), data_prune_score_epochs=0,
        data_prune_score_repeats=1, data_prune_score_lr=0.01)


def clock() -> tuple:
    return time.perf_counter(), time.process_time()


def since(start: tuple) -> Sample:
    w, c = clock()
    return Sample(w - start[0], c - start[1])


def add(a: Sample, b: Sample) -> Sample:
    return Sample(a.wall + b.wall, a.cpu + b.cpu)


def batches_of(rows: torch.Tensor, gen: torch.Generator) -> List[tuple]:
    """(Batch, losses) per mini-batch of ``rows`` in a shuffled order, as the learner sees them."""
    order = rows[torch.randperm(rows.numel(), generator=gen)]
    out = []
    dummy = torch.zeros(1)
    for s in range(0, order.numel(), BATCH):
        idx = order[s:s + BATCH]
        b = idx.numel()
        batch = Batch(dummy.expand(b, 1), dummy.new_zeros(b, dtype=torch.int64),
                      dummy.new_zeros(b, dtype=torch.int64), idx)
        out.append((batch, torch.rand(b, generator=gen) * 3))
    return out


class SelectorEpochs:
    """One selector on the 60k-example task, advancing one epoch per call."""

    def __init__(self, method: str, rate: float, scenario: Scenario, model: nn.Module) -> None:
        env = BuildEnv(model=model, scenario=scenario, steps_per_task=[0])
        self.sel = build_selection(selection_config(method, rate), env)
        self.full_sel = build_selection(selection_config(method, rate), env)
        self.ctx = TaskContext(task=0, num_tasks=1, scenario=scenario, model=model, device="cpu",
                               seed=0, steps=0, epochs=10_000, batch_size=BATCH)
        self.sel.on_task_start(self.ctx)
        assert self.sel.rows(self.ctx, 0) is None
        self.gen = torch.Generator().manual_seed(1)
        self.all_rows = torch.arange(scenario.tasks[0].num_train)
        # epoch 0 is the full-data epoch of the schedule (data_prune_start = 1): every score is
        # observed once before the first selection
        self.full_batches = batches_of(self.all_rows, self.gen)
        for batch, losses in self.full_batches:
            self.sel.observe(batch, losses)
        self.epoch = 0

    @staticmethod
    def _observe(sel, batches: List[tuple]) -> Sample:
        start = clock()
        for batch, losses in batches:
            w = sel.loss_weights(batch)
            if w is not None:
                losses = losses * w
            sel.observe(batch, losses)
        return since(start)

    def full_epoch(self) -> Sample:
        """Epoch 0 of a task (full data, data_prune_start = 1) on a second selector whose task
        restarts at every call."""
        self.full_sel.on_task_start(self.ctx)
        start = clock()
        rows = self.full_sel.rows(self.ctx, 0)
        t_rows = since(start)
        assert rows is None
        t_obs = self._observe(self.full_sel, self.full_batches)
        start = clock()
        self.full_sel._flush()   # the score update the next rows() would make
        return add(add(t_rows, t_obs), since(start))

    def pruned_epoch(self) -> Sample:
        """The next pruned epoch of the task (every pruned epoch selects: every = 1)."""
        self.epoch += 1
        start = clock()
        rows = self.sel.rows(self.ctx, self.epoch)
        t_rows = since(start)
        batches = batches_of(rows, self.gen)
        return add(t_rows, self._observe(self.sel, batches))


def sgd_epoch_fn(n: int) -> Callable[[], None]:
    model = make_mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    g = torch.Generator().manual_seed(2)
    steps = math.ceil(n / BATCH)
    xs = [torch.randn(min(BATCH, n - s * BATCH), 784, generator=g) for s in range(steps)]
    ys = [torch.randint(0, 10, (x.shape[0],), generator=g) for x in xs]

    def epoch() -> None:
        for x, y in zip(xs, ys):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()

    return epoch


def timed(fn: Callable[[], None]) -> Sample:
    start = clock()
    fn()
    return since(start)


def static_pass(method: str, scenario: Scenario, model: nn.Module) -> Sample:
    from sparse_nte.selection.data_diet import el2n_scores, grand_scores

    class Flat(nn.Module):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x, t=None):
            return self.net(x)

    ctx = TaskContext(task=0, num_tasks=1, scenario=scenario, model=Flat(model), device="cpu",
                      seed=0, steps=0, epochs=1, batch_size=BATCH)
    fn = el2n_scores if method == "el2n" else grand_scores
    return timed(lambda: fn(ctx.model, ctx))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rate", type=float, default=0.5)
    parser.add_argument("--static", action="store_true")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    threads = pin_threads(args.threads)
    clk = primary(threads)
    scenario = make_scenario(N)
    mlp = make_mlp()
    print(f"# {json.dumps(machine(threads))}")
    print(f"# N = {N}, batch {BATCH}, p = {args.rate}, median of {args.repeats} repeats, "
          f"{clk} time")

    sgd = sgd_epoch_fn(N)
    selectors: Dict[str, SelectorEpochs] = {m: SelectorEpochs(m, args.rate, scenario, mlp)
                                            for m in DYNAMIC}
    k = selectors["uniform"].sel._k
    # warm-up round, then interleaved repeats
    sgd()
    for s in selectors.values():
        s.full_epoch()
        s.pruned_epoch()
    sgd_t: List[Sample] = []
    full: Dict[str, List[Sample]] = {m: [] for m in DYNAMIC}
    pruned: Dict[str, List[Sample]] = {m: [] for m in DYNAMIC}
    for _ in range(args.repeats):
        sgd_t.append(timed(sgd))
        for m, s in selectors.items():
            pruned[m].append(s.pruned_epoch())
            full[m].append(s.full_epoch())

    sgd_med = sorted(getattr(x, clk) for x in sgd_t)[len(sgd_t) // 2]
    print(f"SGD epoch MLP 784-1000-10, {N} rows: {sgd_med:.2f} s")
    figures: List[Figure] = []
    for m in DYNAMIC:
        r_full = 100 * median_ratio(full[m], sgd_t, clk)
        r_pruned = 100 * median_ratio(pruned[m], sgd_t, clk, den_scale=k / N)
        if m in FULL_EPOCH_FIGURES:
            figures.append(Figure(f"selection_full_epoch_over_sgd_epoch.{m}", r_full, "%",
                                  f"rows()+observe() over {N} rows", goal=GOAL_PERCENT))
        else:
            print(f"# {m} full-data epoch: {r_full:.4f}% of an SGD epoch (no scores to update)")
        figures.append(Figure(f"selection_pruned_epoch_over_sgd_epoch.{m}", r_pruned, "%",
                              f"rows() with a new draw + loss_weights()+observe() over {k} rows, "
                              f"against the SGD epoch over {k} rows", goal=GOAL_PERCENT))
    for f in figures:
        print(f.line())
    if args.static:
        for m in ("el2n", "grand"):
            samples = [static_pass(m, scenario, mlp) for _ in range(max(1, args.repeats // 2))]
            sec = sorted(getattr(x, clk) for x in samples)[len(samples) // 2]
            print(f"# {m} scoring pass over {N} rows (no training of the copy): {sec:.2f} s = "
                  f"{100 * sec / sgd_med:.1f}% of an SGD epoch")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(threads),
                                               "figures": [f.to_json() for f in figures]},
                                              indent=1))


if __name__ == "__main__":
    main()
