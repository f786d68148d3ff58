"""The speed goals table of docs/results/speed.md from a benchmark report (bench/run_all.py --out).

    python bench/run_all.py --sections training,nte,speed --out docs/results/speed_report.json
    python bench/speed_tables.py --report docs/results/speed_report.json --write

Every row is one goal of the sparse-speed work: the figure the suite measured (a ratio of two
quantities timed in the same process, one thread), the goal, whether it is met, and, where it
is not, the physical cost that stands in the way, with that cost's own measured share where the
suite measures it (``speed/dense_step_share.*``). Without ``--write`` the table is printed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "results" / "speed.md"
BEGIN, END = "<!-- table:goals -->", "<!-- /table:goals -->"

_KERNELS = ("the live-entry kernels run below the GEMM rate (`embedding_bag` products ~55, the "
            "sampled weight gradient ~20 GFLOP/s, against ~115 for a GEMM) and every call "
            "transposes the batch x 4000 activations (0.5-0.7 ms, as long as the 5% product)")
_DROPOUT = ("dropout draws one float64 uniform per unit so that its mask is torch's bit for bit "
            "(512,000 per step); with `dropout_draws = active` (another random stream) the step "
            "is {active:.1f}x faster than masked-dense")
_UPDATE = ("the optimizer update: torch's default SGD makes five element-wise passes over the "
           "3.1M weights ({sgd_update:.0f}% of the dense step; the fused update, which differs in "
           "the last bit and is behind `fused_optimizer`, {fused_sgd_update:.0f}%), then dropout "
           "({dropout_fwd_bwd:.0f}%); the products are {products:.0f}%")


class Goal(NamedTuple):
    figure: str                 # name in the report (section/name)
    label: str
    why: str = ""               # the cost in the way (format fields: other figures)


GOALS: Sequence[Goal] = (
    Goal("speed/layer_speedup.784x4000.density_0.02",
         "compact / masked-dense layer, forward + both gradients, 784->4000, batch 128, 2%", _KERNELS),
    Goal("speed/layer_speedup.784x4000.density_0.05", "the same at 5%", "as at 2%"),
    Goal("speed/mlp_step_speedup.density_0.10",
         "k-WTA 784-4000-10 training step ([MLP_1LayerSparse]), masked-dense / compact, 10%",
         _DROPOUT.replace("{active:", "{active_10:") + "; then the layer kernels"),
    Goal("speed/mlp_step_speedup.density_0.05", "the same at 5%",
         _DROPOUT.replace("{active:", "{active_05:") + "; then the layer kernels"),
    Goal("speed/run_speedup.MLP_1LayerSparse.density_0.10",
         "whole 10-task run of [MLP_1LayerSparse] at 10% connectivity, masked-dense / compact",
         "the step ratio above; with a training subset the full test sets are most of the run, "
         "and they evaluate about as fast either way"),
    Goal("speed/eval_over_forward_bound.MLP_1Layer",
         "evaluation of all seen tasks (activity statistics folded in) / forward GEMM bound, dense",
         "the bias copy of `addmm`, the activity counts and the 4000->10 head (a GEMM with 10 "
         "columns runs at a fraction of the rate)"),
    Goal("speed/eval_over_forward_bound.MLP_1LayerSparse", "the same, k-WTA network",
         "the k-WTA at evaluation: boosting, `topk` and the zeroed output, on top of the above"),
    Goal("speed/eval_over_forward_bound.MLP_1LayerSparse.density_0.10",
         "the same, k-WTA at 10% connectivity (dense-equivalent bound)"),
    Goal("speed/eval_sparse_over_dense.MLP_1LayerSparse.density_0.10",
         "evaluation of the 10%-connectivity k-WTA network / the same with dense weights"),
    Goal("speed/eval_share_of_run.MLP_1Layer",
         "share of a 10-task run spent evaluating, [MLP_1Layer] (the original project: 21%)"),
    Goal("speed/eval_share_of_run.MLP_1LayerSparse",
         "the same, [MLP_1LayerSparse] (the original project: 26%)",
         "the k-WTA's evaluation cost above"),
    Goal("training/train_over_6pn_bound.mlp1x4000_dense",
         "dense 1x4000 training epoch / matmul bound (6 x weights x examples at the GEMM rate)",
         _UPDATE),
    Goal("training/train_over_6pn_bound.mlp1x4000_kwta", "the same, k-WTA 1x4000",
         "as for the dense network"),
    Goal("training/train_over_6pn_bound.mlp1x4000_dense_fused",
         "dense 1x4000 epoch with `fused_optimizer` (one pass per update) / matmul bound",
         "dropout's random numbers and the remaining element-wise passes (see above)"),
    Goal("training/train_over_6pn_bound.mlp1x4000_kwta_fused",
         "k-WTA 1x4000 epoch with `fused_optimizer` / matmul bound", "as for the dense network"),
    Goal("nte/nte_fast_step_time_over_sgd",
         "NTE fast-path step / SGD step (784-1000-1000-10, batch 128)",
         "the power series of the NTE update does two or three GEMMs per layer where SGD does "
         "one, plus renormalisation passes (float64 sums) over every weight"),
)


def _fmt(value: float, unit: str) -> str:
    return f"{value:.2f}{unit}" if unit == "x" else f"{value:.1f}{unit}"


def _command(argv: Sequence[str]) -> str:
    """The suite's command line without the interpreter and the report's own path."""
    args = list(argv[1:])
    if "--out" in args:
        i = args.index("--out")
        del args[i:i + 2]
    return " ".join(args)


def goals_table(report: dict) -> str:
    """The Markdown table of :data:`GOALS` with the report's figures (module docstring)."""
    figures: Dict[str, dict] = {f["name"]: f for f in report["figures"]}

    def value(name: str) -> Optional[float]:
        f = figures.get(name)
        return None if f is None else float(f["value"])

    fields = {k: value(f"speed/dense_step_share.{k}") for k in
              ("products", "sgd_update", "fused_sgd_update", "dropout_fwd_bwd")}
    fields["active_10"] = value("speed/mlp_step_speedup_active_dropout.density_0.10")
    fields["active_05"] = value("speed/mlp_step_speedup_active_dropout.density_0.05")
    rows = ["| figure | goal | measured | met | what stands in the way |", "|---|---|---|---|---|"]
    for goal in GOALS:
        f = figures.get(goal.figure)
        if f is None:
            rows.append(f"| {goal.label} | — | not in this report | — | — |")
            continue
        sign = ">=" if f.get("at_least") else "<="
        target = "—" if f.get("goal") is None else f"{sign} {_fmt(float(f['goal']), f['unit'])}"
        met = {True: "met", False: "**not met**", None: "—"}[f.get("met")]
        why = ""
        if f.get("met") is False and goal.why:
            why = goal.why.format(**{k: (v if v is not None else float("nan"))
                                     for k, v in fields.items()})
        rows.append(f"| {goal.label} | {target} | {_fmt(float(f['value']), f['unit'])} | {met} | "
                    f"{why} |")
    judged = [figures[g.figure] for g in GOALS if g.figure in figures
              and figures[g.figure].get("met") is not None]
    rows.append("")
    rows.append(f"Goals met: {sum(1 for f in judged if f['met'])} of {len(judged)}.")
    step, layer = value("speed/mlp_step_speedup.density_0.05"), \
        value("speed/layer_speedup.784x4000.density_0.05")
    if step is not None and layer is not None:
        active = fields["active_05"]
        rows.append(f"Switching `weight_sparsity_fc` from 1.0 to 0.05 in the 784-4000-10 k-WTA MLP "
                    f"makes its training step {step:.1f}x faster at the default settings"
                    + (f" ({active:.1f}x with `dropout_draws = active`)" if active else "")
                    + f" and its 784->4000 layer {layer:.1f}x faster.")
    m = report["machine"]
    rows.append("")
    rows.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch thread, torch "
                f"{m['torch']}, load average {m['loadavg_1_5_15']} at the start; suite "
                f"{_command(report['suite']['command'])}"
                f"{' (quick: not for quoting)' if report['suite'].get('quick') else ''}.")
    return "\n".join(rows)


def write_page(table: str, page: Path = PAGE) -> None:
    """Replace the block between the page's goal markers with ``table``."""
    text = page.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{page} lacks the markers {BEGIN} ... {END}")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{BEGIN}\n{table}\n{END}{tail}")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--report", type=Path, required=True, help="JSON report of bench/run_all.py")
    ap.add_argument("--write", action="store_true", help=f"write the table into {PAGE.name}")
    args = ap.parse_args(argv)
    table = goals_table(json.loads(args.report.read_text()))
    if args.write:
        write_page(table)
        print(f"wrote the goals table into {PAGE.relative_to(ROOT)}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
