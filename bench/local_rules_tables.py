"""Markdown tables of docs/results/local_rules.md from the result files of the local-rule runs.

Reads, from ``--dir``:

* ``ib_n8.json``, ``bp.json``, ``hsic.json`` (``bench/repro_local_rules.py``: test accuracy of
  every seed after every epoch, first 10k training images) and ``ib_full.json``,
  ``bp_full.json``, ``hsic_full.json`` (all 60k): accuracy after epochs 1, 5 and 25 (those
  run), mean +- sd over seeds, beside the published figures (ANCHORS);
* ``ib_n<N>.json`` for the window sweep: test accuracy after epoch 1 for every N found;
  ``sweep_n<N>.json`` (run with ``--train-eval``): test and training accuracy after the last
  epoch;
* ``bench_local_rules*.json`` (``bench/bench_local_rules.py --json``): samples per second of one
  and 32 streams against the GEMM bound measured in the same run.

* with ``--reservoir-results``, the run_exps results of ``ibh_fmnist`` and
  ``ibh_fmnist_reservoir`` (test accuracy after every epoch, the reservoir's tracking error).

Missing files leave their rows out (stated under the table). Run:
``python bench/local_rules_tables.py --dir R --bench R/bench_local_rules.json --reservoir-results R/res``.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Sequence

#: Published figures (docs/results/local_rules.md cites where each comes from).
ANCHORS: Dict[str, Dict[int, str]] = {
    "ib_n8": {1: "≈74 (MNIST)", 5: "≈88 (MNIST)", 25: "91–92 (MNIST)"},
    "bp": {5: "≈87.5 (F-MNIST, HSIC paper's backprop)", 25: "≈97.5 (MNIST, IB-Hebbian paper)"},
    "hsic": {5: "≈86.5 (F-MNIST)"},
}
_RULES = {"ib_n8": "IB-Hebbian, exact signal, N = 8", "bp": "backprop (AdamW 1e-3, batch 6)",
          "hsic": "HSIC bottleneck (3x256, heads formatted online)"}
#: file stem -> row label: runs on the first 10,000 training images, then on all 60,000
#: (``ib_full.json``, ``bp_full.json``, ``hsic_full.json``)
LABELS = {k: f"{v}, first 10k images" for k, v in _RULES.items()}
LABELS.update({f"{k.split('_')[0]}_full": f"{v}, all 60k images" for k, v in _RULES.items()})
ANCHORS.update({f"{k.split('_')[0]}_full": v for k, v in list(ANCHORS.items())})


def mean_sd(values: Sequence[float]) -> str:
    """``"71.61 ± 0.67 (3)"``: percent, sample sd, number of seeds."""
    m = 100 * statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.2f} ({len(values)})"
    return f"{m:.2f} ± {100 * statistics.stdev(values):.2f} ({len(values)})"


def load(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None


def accuracy_table(folder: Path, epochs: Sequence[int] = (1, 5, 25)) -> str:
    """Accuracy after ``epochs`` of the runs in ``folder``, with the anchors beside them."""
    head = "| rule | " + " | ".join(f"epoch {e}: toolkit | epoch {e}: paper" for e in epochs)
    rows = [head + " |", "|---" * (1 + 2 * len(epochs)) + "|"]
    for name, label in LABELS.items():
        data = load(folder / f"{name}.json")
        if data is None:
            continue
        cells = []
        for e in epochs:
            got = mean_sd(data["epochs"][e - 1]["acc"]) if len(data["epochs"]) >= e else "not run"
            cells += [got, ANCHORS[name].get(e, "—")]
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _windows(folder: Path, prefix: str) -> List[tuple]:
    """``(N, epochs)`` of every ``<prefix><N>.json`` in ``folder`` with at least one epoch,
    by N."""
    found = []
    for path in folder.glob(f"{prefix}*.json"):
        m = re.fullmatch(rf"{prefix}(\d+)\.json", path.name)
        data = load(path)
        if m and data and data["epochs"]:
            found.append((int(m.group(1)), data["epochs"]))
    return sorted(found, key=lambda item: item[0])


def window_table(folder: Path) -> str:
    """Test accuracy after epoch 1 for every window N run."""
    found = [(n, epochs[0]) for n, epochs in _windows(folder, "ib_n")]
    rows = [("| window N | test accuracy after epoch 1 (%) | wall seconds, 3 seeds (load varied: not a "
            "speed figure) |"),
            "|---|---|---|"]
    for n, ep in sorted(found):
        rows.append(f"| {n} | {mean_sd(ep['acc'])} | {ep['seconds']:.0f} |")
    return "\n".join(rows)


def reservoir_table(results_dir: Path) -> str:
    """Test accuracy after every epoch of the run_exps sections ``ibh_fmnist`` (exact signal) and
    ``ibh_fmnist_reservoir`` (reservoir signal) found in ``results_dir`` (variant folders of the
    same overrides side by side), with the reservoir's relative tracking error per layer."""
    from sparse_nte.results import load_result

    rows = ["| signal | overrides | seeds | " + " | ".join(f"epoch {e}" for e in range(1, 6))
            + " | tracking error (layer 1, 2) |", "|---" * 9 + "|"]
    for folder in sorted(results_dir.glob("ibh_fmnist*")):
        name, _, overrides = folder.name.partition("+")
        if name not in ("ibh_fmnist", "ibh_fmnist_reservoir"):
            continue
        runs = [load_result(p) for p in sorted(folder.glob("seed*.pkl"))]
        runs = [r for r in runs if r.get("status") == "done"]
        if not runs:
            continue
        curves = [r["stats"]["per_task"][0].get("epoch_test_acc", []) for r in runs]
        epochs = min(len(c) for c in curves)
        cells = [mean_sd([c[e] for c in curves]) for e in range(min(epochs, 5))]
        cells += ["—"] * (5 - len(cells))
        errors = [r["stats"]["per_task"][0].get("reservoir_error") for r in runs]
        err = ("—" if not all(errors) else ", ".join(
            f"{statistics.fmean(e[i] for e in errors):.2f}" for i in range(len(errors[0]))))
        label = "reservoir" if name.endswith("reservoir") else "exact"
        rows.append(f"| {label} | `{overrides.replace('+', ' ')}` | {len(runs)} | "
                    + " | ".join(cells) + f" | {err} |")
    return "\n".join(rows)


def sweep_table(folder: Path) -> str:
    """Test and training accuracy after the last epoch of every ``sweep_n<N>.json`` (the window
    sweep run for several epochs with ``--train-eval``)."""
    found = [(n, len(epochs), epochs[-1]) for n, epochs in _windows(folder, "sweep_n")]
    rows = ["| window N | epochs | test accuracy (%) | training accuracy (%) |", "|---|---|---|---|"]
    for n, epochs, ep in sorted(found):
        train = mean_sd(ep["train_acc"]) if "train_acc" in ep else "—"
        rows.append(f"| {n} | {epochs} | {mean_sd(ep['acc'])} | {train} |")
    return "\n".join(rows)


def speed_table(paths: List[Path]) -> str:
    """Samples per second against the GEMM bound, one row per bench file."""
    rows = ["| variant | samples/s | GEMM bound | GEMM + fused AdamW floor | fraction of GEMM bound |",
            "|---|---|---|---|---|"]
    for path in paths:
        data = json.loads(path.read_text())
        sps = data["samples_per_second"]
        rows.append(f"| single-stream rule (`models.Net`, autograd) | {sps['rule']:.0f} | — | — | — |")
        for s in ("streams S=1", "streams S=32"):
            bound, floor = data["gemm_bound"][s], data["gemm_adamw_floor"][s]
            rows.append(f"| {s} | {sps[s]:.0f} | {bound:.0f} | {floor:.0f} | "
                        f"{sps[s] / bound:.2f} |")
        m = data["machine"]
        rows.append(f"\nMachine: {m['cpu']}, {m['cores']} cores, {m['threads']} thread, torch "
                    f"{m['torch']}, load average during the run {m['loadavg_1_5_15']}.")
    return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, required=True, help="folder of the repro JSON files")
    ap.add_argument("--bench", type=Path, action="append", default=[],
                    help="bench_local_rules JSON file(s)")
    ap.add_argument("--reservoir-results", type=Path, default=None,
                    help="results folder of the ibh_fmnist / ibh_fmnist_reservoir run_exps runs")
    args = ap.parse_args(argv)
    print("### Single task, Fashion-MNIST\n")
    print(accuracy_table(args.dir))
    print("\n### Window sweep\n")
    print(window_table(args.dir))
    if any(args.dir.glob("sweep_n*.json")):
        print("\n### Window sweep, several epochs\n")
        print(sweep_table(args.dir))
    if args.reservoir_results:
        print("\n### Reservoir signal\n")
        print(reservoir_table(args.reservoir_results))
    if args.bench:
        print("\n### Speed\n")
        print(speed_table(args.bench))


if __name__ == "__main__":
    main()
