"""Cost of the empirical-NTK tools on the default MLP (784-1000-1000-10, ReLU, the [DEFAULT]
experiment of exps/exps_params.cfg), one thread.

Part A, per N in ``--sizes`` (default 500, 2000, 8000 examples of permuted Fashion-MNIST, or
random inputs of that shape when the dataset is absent), the model in eval mode, float32:

* ``nvp``: ``ntk_vector_product`` (Theta v for v of shape (N, 10); one reverse and one
  forward-mode pass, Theta never formed);
* ``gram_full``: forming the full Gram matrix Theta (N, N, 10, 10) with ``empirical_ntk``
  (factored linear layers), then one product with it (``gram_matvec``). Skipped, and said so,
  when the result (4 N^2 100 bytes: 25.6 GB at N = 8000) would not fit in half the memory
  available at start;
* ``gram_trace``: the trace kernel (N, N) (what the probe uses), for scale.

Times are process CPU times (one thread; see bench/common.py), medians over ``--repeats``
interleaved repeats (one run for the Gram at the largest size that fits). Peak memory is the
increase of the process's resident set over its level before the call: the kernel's peak RSS
counter VmHWM is reset through /proc/self/clear_refs right before the call and read after it
(it counts every allocation of torch's CPU allocator, which tracemalloc does not see). So that
freed memory is returned to the system instead of being reused unseen, the script runs with
glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` (it re-executes itself with it when unset): every
block of 64 KiB or more is then its own mapping, counted while it lives.

Part B, the NTK probe (``record_ntk``) at ``--probe-size`` examples per task (default 64, the
default of ``ntk_probe_size``) on the 10-task permuted scenario: its cost at the start of task 0
(theta_0 and the 10 initial kernels) and at the end of every task t (t + 1 kernels, alignments),
as a percentage of the training time of one task (60000 examples, batch 128, SGD as the
[DEFAULT] experiment; timed on ``--train-steps`` steps and scaled by example count, median of
``--repeats``). Goal: the end-of-task cost at most 10% of a task's training, after every task.

    python bench/bench_ntk.py [--sizes 500,2000,8000] [--repeats 3] [--probe-size 64]
                              [--train-steps 100] [--json bench_ntk.json] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import Figure, interleaved, machine, pin_threads, primary, timed  # noqa: E402

from benchmarks import build_scenario  # noqa: E402
from models import build_model  # noqa: E402
from sparse_nte.dale import constrain_optimizer  # noqa: E402
from sparse_nte.ntk import NTKProbe, NTKProbeSpec, empirical_ntk, ntk_vector_product  # noqa: E402
from sparse_nte.seams import TaskContext  # noqa: E402

EPOCH_EXAMPLES = 60000
BATCH = 128
MODEL = dict(cnn=False, hidden_units=1000, hidden_layers=2, dropout=0.0, sparsify=False,
             percent_on_fc=0.05, percent_on_conv=0.1, k_inference_factor=1.0, boost_strength=0.0,
             boost_strength_factor=1.0, duty_cycle_period=1000, weight_sparsity_fc=1.0,
             weight_sparsity_conv=1.0, seed=0, dale=False, exc_fraction=0.8, dale_input=False,
             dale_kwta="include", sparse_exec="auto", sparse_init="torch")
LR = 0.05
PROBE_GOAL = 10.0   # percent of one task's training time


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def peak_bytes(fn) -> int:
    """Increase of the resident set at its peak during ``fn()`` over its level before."""
    before = _status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                     # reset VmHWM to the current RSS
    fn()
    return max(0, _status("VmHWM") - before)


def scenario_or_none(num_tasks: int):
    try:
        return build_scenario("fashion_mnist", mode="permutations", num_tasks=num_tasks,
                              seed=0, download=False, progress=False)
    except Exception as exc:  # noqa: BLE001 -- any missing-data error: fall back to random inputs
        print(f"(Fashion-MNIST not available: {exc}; using random inputs)")
        return None


def inputs(scenario, n: int) -> torch.Tensor:
    if scenario is None:
        return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    rows = torch.arange(n) % scenario.tasks[0].num_train
    x, _, _ = next(iter(scenario.batches(0, "train", batch_size=n, shuffle=False, rows=rows)))
    return x


class _Shapes:
    input_shape = (1, 28, 28)
    num_heads = 1
    head_size = 10
    tasks = tuple(range(10))

    @staticmethod
    def head_of(i: int) -> int:
        return 0


def part_a(sizes: List[int], repeats: int, scenario, clock: str) -> List[Dict[str, Any]]:
    model = build_model(MODEL, scenario if scenario is not None else _Shapes()).eval()
    available = _available()
    rows = []
    for n in sizes:
        x = inputs(scenario, n)
        v = torch.randn(n, 10, generator=torch.Generator().manual_seed(1))
        row: Dict[str, Any] = {"N": n}
        nvp = interleaved([lambda: ntk_vector_product(model, x, v)], repeats)[0]
        row["nvp_s"] = statistics.median(getattr(s, clock) for s in nvp)
        row["nvp_peak_mib"] = peak_bytes(lambda: ntk_vector_product(model, x, v)) / 2 ** 20
        need = 4 * n * n * 100
        if need > available / 2:
            row["gram_full_skipped"] = (f"the full Gram needs {need / 2 ** 30:.1f} GiB; half the "
                                        f"available memory is {available / 2 ** 31:.1f} GiB")
        else:
            reps = repeats if n < max(sizes) or need < 2 ** 28 else 1
            holder: Dict[str, torch.Tensor] = {}

            def form() -> None:
                holder.pop("k", None)
                holder["k"] = empirical_ntk(model, x, mode="full")

            samples = [timed(form) for _ in range(reps)]
            row["gram_full_s"] = statistics.median(getattr(s, clock) for s in samples)
            k = holder.pop("k")
            mat = k.permute(0, 2, 1, 3).reshape(n * 10, n * 10)
            row["gram_matvec_s"] = statistics.median(
                getattr(s, clock) for s in interleaved([lambda: mat @ v.reshape(-1)], repeats)[0])
            check = (mat @ v.reshape(-1)).view(n, 10)
            ref = ntk_vector_product(model, x, v)
            row["gram_vs_nvp_rel_err"] = float((check - ref).abs().max() / ref.abs().max())
            del k, mat
            row["gram_full_peak_mib"] = peak_bytes(
                lambda: empirical_ntk(model, x, mode="full")) / 2 ** 20
            row["gram_over_nvp"] = row["gram_full_s"] / row["nvp_s"]
        trace = [timed(lambda: empirical_ntk(model, x, mode="trace"))
                 for _ in range(repeats if n < max(sizes) else 1)]
        row["gram_trace_s"] = statistics.median(getattr(s, clock) for s in trace)
        row["gram_trace_peak_mib"] = peak_bytes(
            lambda: empirical_ntk(model, x, mode="trace")) / 2 ** 20
        rows.append(row)
        print(_row_line(row), flush=True)
    return rows


def _row_line(row: Dict[str, Any]) -> str:
    full = (f"gram_full {row['gram_full_s']:.2f}s ({row['gram_over_nvp']:.0f}x nvp) peak "
            f"{row['gram_full_peak_mib']:.0f} MiB, then matvec {row['gram_matvec_s'] * 1e3:.1f} ms"
            if "gram_full_s" in row else f"gram_full SKIPPED ({row['gram_full_skipped']})")
    return (f"N={row['N']:>5}: nvp {row['nvp_s']:.3f}s peak {row['nvp_peak_mib']:.0f} MiB | "
            f"{full} | gram_trace {row['gram_trace_s']:.2f}s peak "
            f"{row['gram_trace_peak_mib']:.0f} MiB")


def _train_slice(model, opt, scenario, steps: int, seed: int) -> None:
    model.train()
    g = torch.Generator().manual_seed(seed)
    for i, (x, y, t) in enumerate(scenario.batches(0, "train", batch_size=BATCH, generator=g)):
        if i == steps:
            break
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x, t), y).backward()
        opt.step()


def part_b(probe_size: int, train_steps: int, repeats: int, scenario, clock: str
           ) -> Dict[str, Any]:
    if scenario is None:
        from benchmarks.synthetic import write_synthetic_dataset
        import tempfile
        root = tempfile.mkdtemp()
        write_synthetic_dataset("fashion_mnist", root, num_train=EPOCH_EXAMPLES, num_test=1000)
        scenario = build_scenario("fashion_mnist", mode="permutations", num_tasks=10,
                                  data_root=root, download=False, progress=False)
    model = build_model(MODEL, scenario)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    constrain_optimizer(opt, model)
    _train_slice(model, opt, scenario, 5, seed=99)           # warm-up
    train = [timed(lambda r=r: _train_slice(model, opt, scenario, train_steps, seed=r))
             for r in range(repeats)]
    per_task = statistics.median(getattr(s, clock) for s in train) * EPOCH_EXAMPLES / (
        train_steps * BATCH)
    probe = NTKProbe(NTKProbeSpec(record_ntk=True, ntk_probe_size=probe_size))

    def ctx(task: int) -> TaskContext:
        return TaskContext(task=task, num_tasks=scenario.num_tasks, scenario=scenario,
                           model=model, device="cpu", seed=0, steps=EPOCH_EXAMPLES // BATCH,
                           epochs=1, batch_size=BATCH)

    start = timed(lambda: probe.on_task_start(ctx(0)))
    ends = []
    for task in range(scenario.num_tasks):
        _train_slice(model, opt, scenario, 10, seed=task)    # the network moves between ends
        ends.append(getattr(timed(lambda: probe.on_task_end(ctx(task))), clock))
    pct = [100.0 * e / per_task for e in ends]
    out = {"probe_size": probe_size, "train_task_s": per_task,
           "start_task0_s": getattr(start, clock), "end_s": ends, "end_pct": pct,
           "start_task0_pct": 100.0 * getattr(start, clock) / per_task,
           "run_total_pct": 100.0 * (getattr(start, clock) + sum(ends)) / (per_task * len(ends))}
    print(f"probe (size {probe_size}): one task trains in {per_task:.1f}s; start of task 0 "
          f"{out['start_task0_s']:.2f}s ({out['start_task0_pct']:.2f}%); end of task t = 0..9: "
          + ", ".join(f"{p:.2f}%" for p in pct), flush=True)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="500,2000,8000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--probe-size", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="sizes 100,400; 1 repeat; 20 steps")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    if argv is None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    threads = pin_threads(args.threads)
    clock = primary(threads)
    sizes = [100, 400] if args.quick else [int(s) for s in args.sizes.split(",")]
    repeats = 1 if args.quick else args.repeats
    steps = 20 if args.quick else args.train_steps
    info = machine(threads)
    print(f"machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {threads} "
          f"thread(s), load {info['loadavg_1_5_15']}; clock: {clock} time")
    scenario = scenario_or_none(10)
    rows = part_a(sizes, repeats, scenario, clock)
    probe = part_b(args.probe_size, steps, repeats, scenario, clock)
    worst = max(probe["end_pct"])
    figure = Figure("ntk_probe_end_of_task_over_train.worst", worst, "%",
                    f"size {args.probe_size}, after each of 10 tasks; task 0 start "
                    f"{probe['start_task0_pct']:.2f}%", goal=PROBE_GOAL)
    print(figure.line())
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "clock": clock, "part_a": rows,
                                               "probe": probe, "figures": [figure.to_json()]},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
