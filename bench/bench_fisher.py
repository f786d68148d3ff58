"""Time of the diagonal Fisher (EWC's importance) from per-example gradients, against a loop
over examples and against ``torch.func.vmap``, on the 784-1000-1000-10 MLP, one thread.

Three ways to compute F = (1/N) sum_n g_n^2 on the same N examples:

* ``ours``: :func:`sparse_nte.strategies.fisher.diagonal_fisher` (layer inputs and output
  gradients; per linear layer one product (D∘D)^T (A∘A)), batches of 256;
* ``loop``: one forward and backward pass per example, squares of ``p.grad`` summed (what most
  EWC implementations do, e.g. with a data loader of batch size 1), timed on a subset of the
  examples and scaled to N;
* ``vmap``: ``torch.func.vmap(torch.func.grad(loss))`` over ``functional_call``, chunks of 32
  examples (32 x 1.8 M float32 per-example gradients = 230 MB), squares summed.

The three results are compared (largest relative difference). Ratios are medians over repeats
of per-example times measured in the same run, interleaved (bench/common.py), on CPU time with
one thread. ``ours`` is also put against the machine's own limit: a training step's GEMMs on the
same layers and rows (6 x weights x examples FLOPs, the same FLOP count as the Fisher: forward,
input-gradient and squared-weight-gradient products), replayed by :func:`bench.common.gemm_bound`.

Run: ``python bench/bench_fisher.py`` (``--examples``, ``--repeats``, ``--loop-examples``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import Figure, gemm_bound, interleaved, machine, median_ratio, pin_threads, primary  # noqa: E402
from models import MLP, NetSpec  # noqa: E402
from sparse_nte.strategies.fisher import diagonal_fisher, empirical_labels  # noqa: E402

SIZES = (784, 1000, 1000, 10)
FISHER_BATCH = 256
VMAP_CHUNK = 32


def build_model() -> MLP:
    spec = NetSpec(cnn=False, hidden_units=SIZES[1], hidden_layers=len(SIZES) - 2, dropout=0.0,
                   sparsify=False, percent_on_fc=1.0, percent_on_conv=1.0, k_inference_factor=1.0,
                   boost_strength=0.0, boost_strength_factor=1.0, duty_cycle_period=1000,
                   weight_sparsity_fc=1.0, weight_sparsity_conv=1.0, seed=0, dale=False,
                   exc_fraction=0.8, dale_input=False, dale_kwta="include", sparse_exec="off",
                   sparse_init="torch")
    return MLP(spec, (1, 28, 28), num_heads=1, head_size=SIZES[-1], head_of_task=(0,))


def ours(model, x, y, t):
    batches = [(x[i:i + FISHER_BATCH], y[i:i + FISHER_BATCH], t[i:i + FISHER_BATCH])
               for i in range(0, len(y), FISHER_BATCH)]
    return diagonal_fisher(model, batches, empirical_labels)[0]


def loop(model, x, y, t):
    model.eval()
    out = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for i in range(len(y)):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x[i:i + 1], t[i:i + 1]), y[i:i + 1]).backward()
        for n, p in model.named_parameters():
            out[n].add_(p.grad.square())
    model.zero_grad(set_to_none=True)
    return {n: v / len(y) for n, v in out.items()}


def vmapped(model, x, y, t):
    model.eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, xi, yi):   # one head: the task ids may be left out (routing is not vmappable)
        logits = torch.func.functional_call(model, (p, buffers), (xi.unsqueeze(0), None))
        return F.cross_entropy(logits, yi.unsqueeze(0))

    grad = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))
    out = {n: torch.zeros_like(p) for n, p in params.items()}
    for i in range(0, len(y), VMAP_CHUNK):
        g = grad(params, x[i:i + VMAP_CHUNK], y[i:i + VMAP_CHUNK])
        for n in out:
            out[n].add_(g[n].square().sum(0))
    return {n: v / len(y) for n, v in out.items()}


def max_rel_diff(a, b):
    return max(float((a[n] - b[n]).abs().max() / b[n].abs().max().clamp(min=1e-30)) for n in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1024)
    parser.add_argument("--loop-examples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    threads = pin_threads(1)
    clock = primary(threads)
    n, n_loop = args.examples, min(args.loop_examples, args.examples)

    model = build_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, SIZES[-1], (n,), generator=g)
    t = torch.zeros(n, dtype=torch.long)

    f_ours = ours(model, x[:n_loop], y[:n_loop], t[:n_loop])
    diff_loop = max_rel_diff(f_ours, loop(model, x[:n_loop], y[:n_loop], t[:n_loop]))
    diff_vmap = max_rel_diff(f_ours, vmapped(model, x[:n_loop], y[:n_loop], t[:n_loop]))

    layers = list(zip(SIZES[:-1], SIZES[1:]))
    bound = gemm_bound(layers, [FISHER_BATCH] * (n // FISHER_BATCH))
    bound_samples = []
    samples = interleaved([lambda: ours(model, x, y, t),
                           lambda: loop(model, x[:n_loop], y[:n_loop], t[:n_loop]),
                           lambda: vmapped(model, x, y, t),
                           lambda: bound_samples.append(bound())], repeats=args.repeats)
    s_ours, s_loop, s_vmap, _ = samples
    gemm = [b.all_three for b in bound_samples[-args.repeats:]]
    scale = n / n_loop
    per_1000 = 1e6 * sorted(getattr(s, clock) for s in s_ours)[len(s_ours) // 2] / n
    figures = [
        Figure("loop / ours", median_ratio(s_loop, s_ours, clock, num_scale=scale), "x",
               f"per-example forward+backward loop, {n_loop} examples scaled to {n}"),
        Figure("vmap / ours", median_ratio(s_vmap, s_ours, clock), "x",
               f"torch.func.vmap(grad) in chunks of {VMAP_CHUNK}"),
        Figure("ours / GEMM bound", median_ratio(s_ours, gemm, clock), "x",
               "6 x weights x examples FLOPs at the rate of the same products on this machine"),
    ]
    print(f"diagonal Fisher of the {'-'.join(map(str, SIZES))} MLP on {n} examples, "
          f"{threads} thread, {args.repeats} repeats, clock: {clock}")
    print(f"agreement: max relative difference to the loop {diff_loop:.1e}, to vmap {diff_vmap:.1e}")
    print(f"ours: {per_1000:.1f} ms per 1000 examples")
    for fig in figures:
        print(fig.line())
    info = machine(threads)
    print("machine:", json.dumps(info))
    if args.json:
        print(json.dumps({"figures": [f.to_json() for f in figures], "machine": info,
                          "agreement": {"loop": diff_loop, "vmap": diff_vmap}}))


if __name__ == "__main__":
    main()
