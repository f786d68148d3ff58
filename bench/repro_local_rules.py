"""Fashion-MNIST runs of the local rules against the published protocols (single task).

Three experiments, each over several seeds, test accuracy (10k images) after every epoch:

* ``ib``: the IB-Hebbian rule of Daruwalla & Lipasti (2024) as their MNIST run: MLP [128, 64]
  with LayerNorm (no affine), window N (8 as plotted), gamma 2, sigma (x, y, z) = (0.5, 0.1, 1),
  AdamW lr 1e-4, weight decay 1e-4, beta2 0.99, exact signal (``--prefix-bug`` for the signal of
  the code the published figures were made with). All seeds train as one computation
  (:class:`sparse_nte.rules.streams.IBHebbianStreams`); every seed has its own initialisation
  and data order.
* ``bp``: their backprop baseline: the same network, AdamW lr 1e-3 (weight decay 1e-4, beta2
  0.99), batch 6; the seeds' networks are stacked and trained as one batched computation
  (``--widths``, ``--bp-optimizer``, ``--batch`` for the backprop twin of the hsic network).
* ``hsic``: the HSIC bottleneck of Ma et al. (2020) on a ``models.Net`` with LayerNorm
  (:class:`sparse_nte.rules.hsic.HSICBottleneck`), accuracy of the online-formatted heads.

Inputs are scaled as in the IB-Hebbian reference, x = (pixel / 255 - 0.5) / 0.5. Results are
written after every epoch to ``--out`` (JSON; the run resumes from its checkpoint ``--out``.pt);
``--train-eval N`` adds the accuracy on the first N training images (ib).

Run, e.g.: ``python bench/repro_local_rules.py ib --seeds 5 --epochs 25 --out /tmp/ib.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_local_rules import reference_mlp  # noqa: E402
from bench.common import machine, pin_threads  # noqa: E402
from benchmarks.datasets import load_folder  # noqa: E402
from models import build_model  # noqa: E402
from sparse_nte.dale import constrain_optimizer  # noqa: E402
from sparse_nte.rules.hsic import HSICBottleneck, HSICSpec, hsic_param_groups  # noqa: E402
from sparse_nte.rules.ib_hebbian import IBHebbianSpec  # noqa: E402
from sparse_nte.rules.local import LocalOptimizerSpec, build_local_optimizer  # noqa: E402
from sparse_nte.rules.streams import IBHebbianStreams  # noqa: E402
from sparse_nte.seams import Batch, Objective  # noqa: E402

DATA = "/usr/share/datasets/fashion-mnist"


def load(folder: str, limit: int = 0):
    """Train and test tensors; ``limit`` > 0 keeps the first ``limit`` training images."""
    data = load_folder("fashion_mnist", folder)
    scale = lambda u8: (u8.float() / 255.0 - 0.5) / 0.5          # noqa: E731
    n = limit or len(data.train_y)
    return (scale(data.train_x[:n]), data.train_y[:n].long(), scale(data.test_x),
            data.test_y.long())


def order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The data order of (seed, epoch)."""
    state = np.random.SeedSequence([seed, epoch, 7]).generate_state(1)[0]
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(state)))


def summary(accs: list[float]) -> str:
    mean = statistics.fmean(accs)
    sd = statistics.stdev(accs) if len(accs) > 1 else float("nan")
    return f"{100 * mean:.2f} +- {100 * sd:.2f}"


class Log:
    """Per-epoch accuracies of every seed, saved as JSON after each epoch."""

    def __init__(self, path: Path, setup: dict) -> None:
        self.path = path
        self.data = {"setup": setup, "epochs": []}
        if path.exists():
            old = json.loads(path.read_text())
            if old["setup"] == setup:
                self.data = old

    @property
    def done(self) -> int:
        return len(self.data["epochs"])

    def add(self, accs: list[float], seconds: float,
            train_accs: Optional[list[float]] = None) -> None:
        entry = {"acc": accs, "seconds": seconds, "load": list(machine(1)["loadavg_1_5_15"])}
        if train_accs is not None:
            entry["train_acc"] = train_accs
        self.data["epochs"].append(entry)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1))
        tmp.replace(self.path)
        print(f"epoch {self.done}: {summary(accs)} % ({seconds:.0f} s) {accs}", flush=True)


# -- IB-Hebbian -------------------------------------------------------------------------------
def run_ib(args) -> None:
    xtr, ytr, xte, yte = load(args.data, args.train_limit)
    s = args.seeds
    spec = IBHebbianSpec(window=args.window, gamma=2.0, sigma_x=0.5, sigma_y=0.1, sigma_z=1.0,
                         prefix_bug=args.prefix_bug)
    opt = LocalOptimizerSpec(optimizer="adamw", lr=args.lr, weight_decay=1e-4, adam_beta2=0.99)
    setup = {"exp": "ib", "seeds": s, "spec": vars(spec), "lr": args.lr}
    if args.train_eval:
        setup["train_eval"] = args.train_eval
    log = Log(args.out, setup)
    streams = IBHebbianStreams([reference_mlp(seed) for seed in range(s)], spec, opt)
    ckpt = args.out.with_suffix(".pt")
    if log.done and ckpt.exists():
        streams.load_state_dict(torch.load(ckpt, weights_only=False))
    for epoch in range(log.done, args.epochs):
        t0 = time.time()
        rows = torch.stack([order(seed, epoch, len(ytr)) for seed in range(s)])
        for start in range(0, len(ytr), args.chunk):
            idx = rows[:, start:start + args.chunk]
            streams.step(xtr[idx], ytr[idx], torch.zeros_like(idx))
        def accuracy(x_all: torch.Tensor, y_all: torch.Tensor) -> list[float]:
            correct = torch.zeros(s)
            for start in range(0, len(y_all), 2000):
                x = x_all[start:start + 2000]
                logits = streams.logits(x.unsqueeze(0).expand(s, *x.shape),
                                        torch.zeros(s, x.shape[0], dtype=torch.long))
                correct += (logits.argmax(-1) == y_all[start:start + 2000]).sum(1)
            return (correct / len(y_all)).tolist()

        test = accuracy(xte, yte)
        train = (accuracy(xtr[:args.train_eval], ytr[:args.train_eval]) if args.train_eval
                 else None)
        torch.save(streams.state_dict(), ckpt)
        log.add(test, time.time() - t0, train)


# -- backprop baseline ------------------------------------------------------------------------
def run_bp(args) -> None:
    xtr, ytr, xte, yte = load(args.data, args.train_limit)
    s = args.seeds
    widths = tuple(int(w) for w in args.widths.split(","))
    log = Log(args.out, {"exp": "bp", "seeds": s, "lr": args.lr, "batch": args.batch,
                         "widths": widths, "optimizer": args.bp_optimizer})
    nets = [reference_mlp(seed, widths) for seed in range(s)]
    layers = [[n.blocks[i].layer for n in nets] for i in range(len(widths))] \
        + [[n.heads[0] for n in nets]]
    params = []
    for group in layers:
        params += [torch.nn.Parameter(torch.stack([m.weight.detach() for m in group])),
                   torch.nn.Parameter(torch.stack([m.bias.detach() for m in group]))]
    opt = build_local_optimizer(LocalOptimizerSpec(optimizer=args.bp_optimizer, lr=args.lr,
                                                   weight_decay=1e-4, adam_beta2=0.99),
                                params, fused=True)

    def forward(x: torch.Tensor) -> torch.Tensor:       # x (S, B, 784)
        h = x
        for i in range(len(widths)):
            h = torch.relu(torch.baddbmm(params[2 * i + 1].unsqueeze(1), h,
                                         params[2 * i].transpose(1, 2)))
            h = F.layer_norm(h, (h.shape[-1],))
        return torch.baddbmm(params[-1].unsqueeze(1), h, params[-2].transpose(1, 2))

    ckpt = args.out.with_suffix(".pt")
    if log.done:
        if not ckpt.exists():
            raise SystemExit(f"{args.out} has results but no checkpoint {ckpt}; delete it to restart")
        state = torch.load(ckpt, weights_only=False)
        with torch.no_grad():
            for p, saved in zip(params, state["params"]):
                p.copy_(saved)
        opt.load_state_dict(state["optimizer"])
    for epoch in range(log.done, args.epochs):
        t0 = time.time()
        rows = torch.stack([order(seed, epoch, len(ytr)) for seed in range(s)])
        for start in range(0, len(ytr), args.batch):
            idx = rows[:, start:start + args.batch]
            logits = forward(xtr[idx].flatten(2))
            loss = F.cross_entropy(logits.flatten(0, 1), ytr[idx].flatten(), reduction="sum") \
                / idx.shape[1]                         # each seed: the mean over its batch
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            pred = forward(xte.flatten(1).unsqueeze(0).expand(s, -1, -1)).argmax(-1)
        torch.save({"params": [p.detach() for p in params], "optimizer": opt.state_dict()}, ckpt)
        log.add((pred == yte).float().mean(1).tolist(), time.time() - t0)


# -- HSIC bottleneck --------------------------------------------------------------------------
class _Scenario:
    input_shape, num_heads, head_size, tasks, name = (1, 28, 28), 1, 10, (0,), "fashion_mnist"

    @staticmethod
    def head_of(task):
        return 0


def run_hsic(args) -> None:
    xtr, ytr, xte, yte = load(args.data, args.train_limit)
    setup = {"exp": "hsic", "seeds": args.seeds, "units": args.units, "layers": args.layers,
             "beta": args.beta, "sigma": args.sigma, "lr": args.lr, "batch": args.batch,
             "optimizer": args.optimizer, "head_lr": args.head_lr}
    log = Log(args.out, setup)
    if log.done:
        raise SystemExit(f"{args.out} has results; the hsic runs do not resume (delete it)")
    models, rules = [], []
    for seed in range(args.seeds):
        cfg = dict(cnn=False, hidden_units=args.units, hidden_layers=args.layers, dropout=0.0,
                   sparsify=False, percent_on_fc=1.0, percent_on_conv=1.0, k_inference_factor=1.0,
                   boost_strength=0.0, boost_strength_factor=1.0, duty_cycle_period=1000,
                   weight_sparsity_fc=1.0, weight_sparsity_conv=1.0, seed=seed, dale=False,
                   exc_fraction=0.8, dale_input=False, dale_kwta="include", sparse_exec="off",
                   sparse_init="torch", layer_norm=True)
        model = build_model(cfg, _Scenario()).train()
        spec = HSICSpec(beta=args.beta, sigma=args.sigma, head_lr=args.head_lr)
        opt = build_local_optimizer(LocalOptimizerSpec(optimizer=args.optimizer, lr=args.lr,
                                                       weight_decay=0.0),
                                    hsic_param_groups(model, spec))
        constrain_optimizer(opt, model)
        models.append(model)
        rules.append(HSICBottleneck(model, spec, opt))
    for epoch in range(args.epochs):
        t0 = time.time()
        accs = []
        for seed, (model, rule) in enumerate(zip(models, rules)):
            rows = order(seed, epoch, len(ytr))
            obj = Objective(model)
            for start in range(0, len(ytr), args.batch):
                idx = rows[start:start + args.batch]
                n = len(idx)
                rule.step(Batch(xtr[idx], ytr[idx], torch.zeros(n, dtype=torch.long),
                                torch.arange(n)), obj, lambda: None)
            model.eval()
            with torch.no_grad():
                pred = model(xte, torch.zeros(len(yte), dtype=torch.long)).argmax(1)
            model.train()
            accs.append(float((pred == yte).float().mean()))
            print(f"  seed {seed}: {rule.stats()}", flush=True)
        log.add(accs, time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("exp", choices=("ib", "bp", "hsic"))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--train-limit", type=int, default=0, help="use the first N training images")
    ap.add_argument("--window", type=int, default=8, help="ib: N")
    ap.add_argument("--prefix-bug", action="store_true", help="ib: the pre-fix signal")
    ap.add_argument("--chunk", type=int, default=500, help="ib: samples per step() call")
    ap.add_argument("--train-eval", type=int, default=0,
                    help="ib: also the accuracy on the first N training images after every epoch")
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--widths", default="128,64", help="bp: hidden widths")
    ap.add_argument("--bp-optimizer", default="adamw", help="bp: sgd | adam | adamw")
    ap.add_argument("--units", type=int, default=256, help="hsic: width")
    ap.add_argument("--layers", type=int, default=3, help="hsic: hidden layers")
    ap.add_argument("--beta", type=float, default=1000.0, help="hsic: beta")
    ap.add_argument("--sigma", type=float, default=5.0, help="hsic: sigma")
    ap.add_argument("--optimizer", default="sgd", help="hsic: sgd | adam | adamw")
    ap.add_argument("--head-lr", type=float, default=5e-3,
                    help="hsic: lr of the online-formatted heads (the reference's format step, SGD 5e-3)")
    args = ap.parse_args()
    pin_threads(1)
    defaults = {"ib": (1e-4, 1), "bp": (1e-3, 6), "hsic": (1e-3, 256)}[args.exp]
    args.lr = defaults[0] if args.lr is None else args.lr
    args.batch = defaults[1] if args.batch is None else args.batch
    print(f"{args.exp}: {vars(args)}; {machine(1)}", flush=True)
    {"ib": run_ib, "bp": run_bp, "hsic": run_hsic}[args.exp](args)


if __name__ == "__main__":
    main()
