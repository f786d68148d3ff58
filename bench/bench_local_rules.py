"""Samples per second of the IB-Hebbian rule, one stream and many, against the GEMM bound.

Setup (the reference's MNIST run): MLP 784-128-64-10 with LayerNorm, window N = 8, exact
signal, AdamW; random inputs (speed does not depend on the data). One thread.

Figures (each line "name: value"):

* ``rule``: :class:`sparse_nte.rules.ib_hebbian.IBHebbian` on a ``models.Net`` (autograd, one
  sample per update), samples/s;
* ``streams S=1`` and ``streams S=32``: :class:`sparse_nte.rules.streams.IBHebbianStreams`,
  samples/s summed over the streams;
* the GEMM bound of each: the matrix products one update cannot avoid, replayed alone with the
  same shapes in the same run — the forward of the N-row window through every layer
  (``baddbmm``), the outer products of the hidden updates and the heads' weight gradient over the
  window — giving the samples/s the machine's matrix-product speed allows; and the fraction of
  that bound reached;
* the optimizer floor: a per-sample rule steps AdamW on every weight at every update (read and
  write weight, gradient and two moments: memory-bound, not GEMM work). The fused AdamW step on
  the same stacked tensors, timed alone, plus the GEMM replay is a second, tighter bound.

Timings interleave the variants over ``--repeats`` rounds and report medians (CPU time, one
thread; see bench/common.py).

Run: ``python bench/bench_local_rules.py`` (``--updates``, ``--repeats``, ``--json PATH``).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import interleaved, machine, pin_threads, primary  # noqa: E402
from models import MLP, NetSpec  # noqa: E402
from models.net import _LayerPlan  # noqa: E402
from sparse_nte.rules.ib_hebbian import IBHebbian, IBHebbianSpec  # noqa: E402
from sparse_nte.rules.local import LocalOptimizerSpec, build_local_optimizer  # noqa: E402
from sparse_nte.rules.streams import IBHebbianStreams  # noqa: E402
from sparse_nte.seams import Batch, Objective  # noqa: E402

WIDTHS = (128, 64)
INPUT = 784
CLASSES = 10
WINDOW = 8


class WidthsMLP(MLP):
    """``models.MLP`` with one width per hidden layer (the reference's [128, 64])."""

    widths: tuple = WIDTHS

    def _plan(self, spec, input_shape):
        n_in, plans = math.prod(input_shape), []
        for w in self.widths:
            plans.append(_LayerPlan(False, n_in, w, 1, 1.0, 1.0, False))
            n_in = w
        return plans


def reference_mlp(seed: int, widths=WIDTHS) -> WidthsMLP:
    spec = NetSpec(cnn=False, hidden_units=widths[0], hidden_layers=len(widths), dropout=0.0,
                   sparsify=False, percent_on_fc=1.0, percent_on_conv=1.0, k_inference_factor=1.0,
                   boost_strength=0.0, boost_strength_factor=1.0, duty_cycle_period=1000,
                   weight_sparsity_fc=1.0, weight_sparsity_conv=1.0, seed=seed, dale=False,
                   exc_fraction=0.8, dale_input=False, dale_kwta="include", sparse_exec="off",
                   sparse_init="torch", layer_norm=True)
    cls = type("MLP", (WidthsMLP,), {"widths": tuple(widths)})
    return cls(spec, (1, 28, 28), num_heads=1, head_size=CLASSES, head_of_task=(0,)).train()


SPEC = IBHebbianSpec(window=WINDOW, gamma=2.0, sigma_x=0.5, sigma_y=0.1, sigma_z=1.0)
OPT = LocalOptimizerSpec(optimizer="adamw", lr=1e-4, weight_decay=1e-4, adam_beta2=0.99)


def gemm_replay(streams: int, updates: int):
    """The unavoidable products of ``updates`` updates of ``streams`` streams (module docstring)."""
    g = torch.Generator().manual_seed(0)
    dims = (INPUT,) + WIDTHS
    layers = [(dims[i], dims[i + 1]) for i in range(len(WIDTHS))] + [(WIDTHS[-1], CLASSES)]
    ops = [(torch.randn(streams, WINDOW, i, generator=g), torch.randn(streams, o, i, generator=g),
            torch.randn(streams, 1, o, generator=g)) for i, o in layers]
    flops = updates * streams * sum(2 * WINDOW * i * o + (2 * i * o) for i, o in layers)

    def run() -> None:
        for _ in range(updates):
            for x, w, b in ops:
                torch.baddbmm(b, x, w.transpose(1, 2))
            for x, w, b in ops[:-1]:                       # hidden: one outer product each
                torch.bmm(b.transpose(1, 2), x[:, -1:])
            x, w, b = ops[-1]                              # heads: gradient over the window
            torch.bmm(b.expand(-1, WINDOW, -1).transpose(1, 2), x)
    return run, flops


def adamw_replay(streams: int, updates: int):
    """``updates`` fused AdamW steps over the stacked weights of ``streams`` streams."""
    dims = (INPUT,) + WIDTHS + (CLASSES,)
    params = []
    for i, o in zip(dims[:-1], dims[1:]):
        params += [torch.nn.Parameter(torch.zeros(streams, o, i)),
                   torch.nn.Parameter(torch.zeros(streams, o))]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt = build_local_optimizer(OPT, params, fused=True)

    def run() -> None:
        for _ in range(updates):
            opt.step()
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--updates", type=int, default=200, help="updates per timed round")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--streams", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    threads = pin_threads(1)
    clock = primary(threads)
    n, big = args.updates, args.streams
    g = torch.Generator().manual_seed(0)

    net = reference_mlp(0)
    rule = IBHebbian(net, SPEC, build_local_optimizer(OPT, net.parameters()))
    objective = Objective(net)
    xb = torch.randn(n, 1, 28, 28, generator=g)
    yb = torch.randint(0, CLASSES, (n,), generator=g)
    single = Batch(xb, yb, torch.zeros(n, dtype=torch.long), torch.arange(n))

    def streams_run(s: int):
        st = IBHebbianStreams([reference_mlp(i) for i in range(s)], SPEC, OPT)
        x = torch.randn(s, n, 1, 28, 28, generator=g)
        y = torch.randint(0, CLASSES, (s, n), generator=g)
        t = torch.zeros(s, n, dtype=torch.long)
        st.step(x[:, :WINDOW], y[:, :WINDOW], t[:, :WINDOW])          # fill the window
        return lambda: st.step(x, y, t)

    gemm1, flops1 = gemm_replay(1, n)
    gemmS, flopsS = gemm_replay(big, n)
    adam1, adamS = adamw_replay(1, n), adamw_replay(big, n)
    rule.step(Batch(xb[:WINDOW], yb[:WINDOW], single.t[:WINDOW], single.index[:WINDOW]),
              objective, lambda: None)
    fns = [lambda: rule.step(single, objective, lambda: None), streams_run(1), streams_run(big),
           gemm1, gemmS, adam1, adamS]
    samples = interleaved(fns, args.repeats)
    sec = [statistics.median(getattr(s, clock) for s in row) for row in samples]
    rate = {"rule": n / sec[0], "streams S=1": n / sec[1], f"streams S={big}": big * n / sec[2]}
    bound = {"streams S=1": n / sec[3], f"streams S={big}": big * n / sec[4]}
    floor = {"streams S=1": n / (sec[3] + sec[5]), f"streams S={big}": big * n / (sec[4] + sec[6])}
    lines = [f"rule (IBHebbian on models.Net): {rate['rule']:.0f} samples/s",
             f"streams S=1: {rate['streams S=1']:.0f} samples/s; GEMM bound "
             f"{bound['streams S=1']:.0f} samples/s ({flops1 / sec[3] / 1e9:.2f} GFLOP/s); "
             f"{rate['streams S=1'] / bound['streams S=1']:.1%} of the bound",
             f"streams S={big}: {rate[f'streams S={big}']:.0f} samples/s; GEMM bound "
             f"{bound[f'streams S={big}']:.0f} samples/s ({flopsS / sec[4] / 1e9:.2f} GFLOP/s); "
             f"{rate[f'streams S={big}'] / bound[f'streams S={big}']:.1%} of the bound",
             f"GEMM + fused-AdamW floor: S=1 {floor['streams S=1']:.0f} samples/s "
             f"({rate['streams S=1'] / floor['streams S=1']:.1%} reached), S={big} "
             f"{floor[f'streams S={big}']:.0f} samples/s "
             f"({rate[f'streams S={big}'] / floor[f'streams S={big}']:.1%} reached)",
             f"speed-up of S={big} streams over S=1 (samples/s): "
             f"{rate[f'streams S={big}'] / rate['streams S=1']:.1f}x"]
    for line in lines:
        print(line)
    info = machine(threads)
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
          f"{threads} thread, load {info['loadavg_1_5_15']}, clock {clock}, "
          f"{args.repeats} repeats x {n} updates")
    if args.json:
        args.json.write_text(json.dumps({"samples_per_second": rate, "gemm_bound": bound,
                                         "gemm_adamw_floor": floor, "machine": info}, indent=1))


if __name__ == "__main__":
    main()
