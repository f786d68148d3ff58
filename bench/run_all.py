"""The benchmark suite in one command: every figure of the speed issue, one line each, and a
JSON report.

    python bench/run_all.py                 # full suite, 1 thread, writes bench/report.json
    python bench/run_all.py --quick         # smoke test (about a minute; figures not for quoting)
    python bench/run_all.py --threads 2 --out /tmp/report.json --sections training,sparse

Sections (each its own script, run in a subprocess with the thread count pinned through
``--threads`` where the script takes it and OMP_NUM_THREADS / MKL_NUM_THREADS always):

    training  bench/bench_training.py  training epoch / matmul bound of the original MLPs;
                                       evaluation time / training time per task (T = 10, 50)
    nte       bench/bench_nte.py       NTE step / SGD step: time and peak memory
    sparse    bench/bench_sparse.py    sparse vs masked-dense k-WTA MLP training step at 2, 5,
                                       10, 20% connectivity (its "mlp" section)
    data      bench/bench_data.py      data pipeline: one epoch of batches / one SGD epoch
    selection bench/bench_selection.py data selection's calls in one epoch (N = 60000) / one
                                       SGD epoch of the 1x1000 MLP (full and pruned epochs)
    pruning   bench/bench_pruning.py   a task trained with uniform / UCB pruning at p = 0.3, 0.5,
                                       0.7 / the same task unpruned (the runner's task loop),
                                       and that ratio / (1 - p)
    fisher    bench/bench_fisher.py    EWC's diagonal Fisher: per-example loop / ours, vmap / ours,
                                       ours / GEMM bound (784-1000-1000-10 MLP)
    speed     bench/bench_speed.py     compact sparse layer / masked-dense at 2-20% density; the
                                       k-WTA MLP step at 10% and 5%; evaluation per example /
                                       forward bound; whole 10-task runs sparse vs masked-dense;
                                       the share of a run spent evaluating; the dense step's
                                       parts

Every figure is a ratio of times (or memory) measured within one run of its script. The
figures of the other scripts are read from their output lines with the patterns in
:data:`SECTIONS`; a line that is missing (its script changed its wording or failed) is
reported as missing, and the command then exits with status 1, as it does when a section fails
or the suite overruns ``--budget``. The report holds the machine description, every figure
(value, unit, goal, whether met, the line it came from), and each section's command, exit
status, time and output.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import Figure, machine  # noqa: E402

DEFAULT_OUT = HERE / "report.json"
DEFAULT_BUDGET_S = 1800.0


@dataclass(frozen=True)
class Pattern:
    """A figure read from a script's output: the first line matching ``regex`` (group ``v``)."""
    name: str
    regex: str
    unit: str = "x"
    goal: Optional[float] = None


@dataclass(frozen=True)
class Section:
    script: str
    args: Sequence[str] = ()
    quick_args: Sequence[str] = ()
    takes_threads: bool = True
    patterns: Sequence[Pattern] = ()
    timeout_s: float = 900.0
    own_json: bool = False          # the script writes its figures with --json


_DATA_LABELS = ("permuted_fashion_mnist domain x10", "permuted_fashion_mnist_cumulative domain x10",
                "split_fashion_mnist task x5", "split_fashion_mnist_cumulative class x5",
                "permuted_mnist domain x10", "split_mnist task x5", "split_cifar10 task x5",
                "split_cifar100 task x10", "split_cifar100_cumulative task x10")

SECTIONS: Dict[str, Section] = {
    "training": Section("bench_training.py", quick_args=("--quick",), own_json=True),
    "nte": Section(
        "bench_nte.py", quick_args=("--repeats", "1", "--steps", "2"), takes_threads=False,
        patterns=tuple(
            Pattern(f"nte_{path}_{what}_over_sgd",
                    rf"^nte {path} path {line} / sgd: (?P<v>[0-9.]+)x",
                    goal=2.0 if (path, what) == ("fast", "step_time") else None)
            for path in ("fast", "exact")
            for what, line in (("step_time", "step time"), ("added_peak_memory",
                                                            "added peak memory")))),
    "sparse": Section(
        "bench_sparse.py", args=("--sections", "mlp"), quick_args=("--repeats", "1"),
        patterns=tuple(
            Pattern(f"sparse_step_speedup.density_{d}",
                    rf"^mlp density {d}: step\s+(?P<v>[0-9.]+)x faster")
            for d in ("0.02", "0.05", "0.10", "0.20"))),
    "data": Section(
        "bench_data.py", quick_args=("--repeats", "1"),
        patterns=tuple(
            Pattern("data_epoch_over_sgd_epoch." + label.replace(" ", "_"),
                    rf"^epoch {re.escape(label)} task \d+ \(\d+ examples\): [0-9.]+ s = "
                    rf"(?P<v>[0-9.]+) % of an SGD epoch", unit="%")
            for label in _DATA_LABELS)),
    "speed": Section("bench_speed.py", args=("--subset", "3000"), quick_args=("--quick",),
                     own_json=True, timeout_s=1500.0),
    "selection": Section(
        "bench_selection.py", quick_args=("--repeats", "1"),
        patterns=tuple(
            Pattern(f"selection_{kind}_epoch_over_sgd_epoch.{method}",
                    rf"^selection_{kind}_epoch_over_sgd_epoch\.{method}: (?P<v>[0-9.]+)%",
                    unit="%", goal=3.0)
            for kind, methods in (("full", ("epsilon_greedy", "ucb")),
                                  ("pruned", ("uniform", "epsilon_greedy", "ucb")))
            for method in methods)),
    "pruning": Section("bench_pruning.py", quick_args=("--quick",), own_json=True),
    "fisher": Section(
        "bench_fisher.py", quick_args=("--examples", "256", "--loop-examples", "32", "--repeats", "1"),
        takes_threads=False,
        patterns=(Pattern("fisher_loop_over_ours", r"^loop / ours: (?P<v>[0-9.]+)x"),
                  Pattern("fisher_vmap_over_ours", r"^vmap / ours: (?P<v>[0-9.]+)x"),
                  Pattern("fisher_over_gemm_bound", r"^ours / GEMM bound: (?P<v>[0-9.]+)x"))),
}


def expected_figures(section: str) -> List[str]:
    """Names of the figures ``section`` must produce."""
    if section == "training":
        import bench_training
        return [n for net in bench_training.NETWORKS for n in bench_training.figure_names(net)]
    if section == "speed":
        import bench_speed
        return bench_speed.figure_names()
    if section == "pruning":
        import bench_pruning
        return bench_pruning.figure_names()
    return [p.name for p in SECTIONS[section].patterns]


@dataclass
class SectionResult:
    command: List[str]
    returncode: Optional[int]
    elapsed_s: float
    stdout: str
    stderr_tail: str
    figures: List[Figure] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    error: str = ""


def portable(cmd: Sequence[str], root: Path = HERE.parent) -> List[str]:
    """A command line as the report records it: ``python`` for the interpreter and paths inside
    the repository relative to it, so a report names no folder of the machine it ran on."""
    out = []
    for arg in cmd:
        if arg == sys.executable:
            out.append("python")
            continue
        path = Path(arg).resolve() if Path(arg).is_absolute() else None
        if path is not None and path.is_relative_to(root.resolve()):
            arg = str(path.relative_to(root.resolve()))
        out.append(arg)
    return out


def run_section(name: str, quick: bool, threads: int) -> SectionResult:
    spec = SECTIONS[name]
    cmd = [sys.executable, str(HERE / spec.script), *spec.args,
           *(spec.quick_args if quick else ())]
    if spec.takes_threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as tmp:
        json_path = Path(tmp) / "figures.json"
        if spec.own_json:
            cmd += ["--json", str(json_path)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                                  timeout=spec.timeout_s, cwd=HERE.parent)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
            error = "" if code == 0 else f"exit status {code}"
        except subprocess.TimeoutExpired as exc:
            code, error = None, f"timed out after {spec.timeout_s:.0f} s"
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        elapsed = time.perf_counter() - t0
        result = SectionResult(cmd, code, elapsed, out, "\n".join(err.splitlines()[-20:]),
                               error=error)
        if spec.own_json and json_path.exists():
            for f in json.loads(json_path.read_text())["figures"]:
                result.figures.append(Figure(f["name"], f["value"], f["unit"], f["detail"],
                                             f["goal"], f.get("extra", {}),
                                             f.get("at_least", False)))
    for pattern in spec.patterns:
        match = next((m for m in (re.search(pattern.regex, line) for line in out.splitlines())
                      if m), None)
        if match is not None:
            result.figures.append(Figure(pattern.name, float(match.group("v")), pattern.unit,
                                         match.string.strip(), pattern.goal))
    found = {f.name for f in result.figures}
    result.missing = [n for n in expected_figures(name) if n not in found]
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: every figure, tiny measurements")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma list of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report path")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S,
                        help="seconds the suite may take (exit status 1 beyond)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; valid: {', '.join(SECTIONS)}")

    desc = machine(args.threads)
    print(f"# sparse_nte benchmark suite{' (quick)' if args.quick else ''}: {desc['cpu']}, "
          f"{desc['cores']} cores, torch {desc['torch']}, {args.threads} thread(s), load "
          f"{desc['loadavg_1_5_15'][0]}", flush=True)
    t0 = time.perf_counter()
    results: Dict[str, SectionResult] = {}
    for name in names:
        res = run_section(name, args.quick, args.threads)
        results[name] = res
        for fig in res.figures:
            print(f"{name}/{fig.line()}", flush=True)
        for missing in res.missing:
            print(f"{name}/{missing}: MISSING", flush=True)
        if res.error:
            print(f"# section {name} failed: {res.error}\n{res.stderr_tail}", flush=True)
    elapsed = time.perf_counter() - t0
    within = elapsed <= args.budget
    print(f"# suite time {elapsed:.0f} s (budget {args.budget:.0f} s: "
          f"{'within' if within else 'EXCEEDED'})", flush=True)

    report = {
        "suite": {"command": portable([sys.executable, *sys.argv] if argv is None else list(argv)),
                  "quick": args.quick, "threads": args.threads, "sections": names,
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S",
                                           time.localtime(time.time() - elapsed)),
                  "elapsed_s": elapsed, "budget_s": args.budget, "within_budget": within},
        "machine": desc,
        "figures": [dict(f.to_json(), section=name, name=f"{name}/{f.name}")
                    for name, res in results.items() for f in res.figures],
        "missing": [f"{name}/{m}" for name, res in results.items() for m in res.missing],
        "sections": {name: {"command": portable(res.command), "returncode": res.returncode,
                            "elapsed_s": res.elapsed_s, "error": res.error, "stdout": res.stdout,
                            "stderr_tail": res.stderr_tail}
                     for name, res in results.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, allow_nan=True))
    os.replace(tmp, args.out)
    print(f"# report: {args.out}", flush=True)
    failed = [n for n, r in results.items() if r.error] or report["missing"]
    return 0 if within and not failed and all(
        math.isfinite(f["value"]) for f in report["figures"]) else 1


if __name__ == "__main__":
    sys.exit(main())
