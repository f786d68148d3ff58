"""Tables of docs/results/baselines.md, generated from the result files of two studies.

    python tools/baselines_table.py --results-dir RESULTS            # print the tables
    python tools/baselines_table.py --results-dir RESULTS --write    # rewrite them in the page

Per experiment, over the seeds whose trial is finished (mean ± sd, sd with ddof = 1):

- ACC, the final average accuracy ``1/T sum_j R[T-1, j]`` (Lopez-Paz & Ranzato 2017), in %;
- F, forgetting (Chaudhry et al. 2018), in points; LA, the just-learned accuracy ``mean_j R[j, j]``;
- gap closed, per seed: ``(ACC_m - ACC_none) / (ACC_joint - ACC_none)``, the share of the distance
  between fine-tuning and joint training that method m covers (van de Ven & Tolias's table gives
  the anchor's: their permuted-MNIST domain-incremental column, mean over 20 seeds);
- for the constrained networks, ``dACC``: ACC minus the same network's ACC without a strategy
  (paired by seed).

A block of the page between ``<!-- table:NAME -->`` and ``<!-- /table -->`` is replaced by the
table of study NAME.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sparse_nte.results import load_result, result_path  # noqa: E402
from sparse_nte.study import resolve_study  # noqa: E402

CONFIG = ROOT / "exps" / "exps_params.cfg"
PAGE = ROOT / "docs" / "results" / "baselines.md"

#: van de Ven & Tolias (arXiv:1904.07734), permuted MNIST, domain-incremental, final ACC in %.
ANCHOR_ACC = {"none": 78.51, "ewc": 94.31, "online_ewc": 94.42, "si": 95.33, "lwf": 72.64,
              "joint": 97.59}
LABELS = {"none": "none (fine-tuning)", "ewc": "EWC", "online_ewc": "online EWC", "si": "SI",
          "lwf": "LwF", "replay": "replay (1000)", "joint": "joint (cumul)", "nte": "NTE",
          "nte_ewc": "NTE + EWC"}


def gap_closed(acc: float, none: float, joint: float) -> float:
    """Share of the fine-tuning -> joint distance that ``acc`` covers (1 = joint, 0 = none)."""
    return (acc - none) / (joint - none)


def mean_sd(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    v = np.asarray(values, dtype=float) * scale
    if v.size == 0:
        return "not run"
    if v.size == 1:
        return f"{v[0]:.{digits}f} (1 seed)"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def load_study(results_dir: Path, name: str) -> Dict[str, Dict[int, dict]]:
    """``{experiment: {seed: metrics}}`` of the finished trials of study ``name``."""
    study = resolve_study(CONFIG, name)
    out: Dict[str, Dict[int, dict]] = {e: {} for e in study.experiments}
    for t in study.trials:
        path = result_path(results_dir, t.folder, t.config.seed)
        if path.exists():
            r = load_result(path)
            if r.get("status") == "done":
                out[t.name][t.config.seed] = dict(r["metrics"], elapsed_s=r.get("elapsed_s", np.nan))
    return out


def method_of(experiment: str) -> str:
    return re.sub(r"^pmnist_vdv_(bio_)?", "", experiment)


def paired(*runs: Mapping[int, dict]) -> List[int]:
    """The seeds finished in every one of ``runs``."""
    return sorted(set.intersection(*(set(r) for r in runs)))


def vdv_table(res: Dict[str, Dict[int, dict]]) -> str:
    none, joint = res["pmnist_vdv_none"], res["pmnist_vdv_joint"]
    lines = ["| method | seeds | ACC % | F (pts) | LA % | gap closed | anchor ACC % (pMNIST) "
             "| anchor gap closed | wall s/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    a_none, a_joint = ANCHOR_ACC["none"], ANCHOR_ACC["joint"]
    for e, runs in res.items():
        m = method_of(e)
        acc = [r["avg_acc"] for r in runs.values()]
        seeds = paired(none, joint, runs)
        gaps = [gap_closed(runs[s]["avg_acc"], none[s]["avg_acc"], joint[s]["avg_acc"]) for s in seeds]
        anchor = ANCHOR_ACC.get(m)
        lines.append("| " + " | ".join([
            LABELS.get(m, m), str(len(runs)), mean_sd(acc, 100), mean_sd([r["forgetting"] for r in runs.values()], 100),
            mean_sd([r["learning_acc"] for r in runs.values()], 100),
            mean_sd(gaps) if m not in ("none", "joint") else "—",
            f"{anchor:.2f}" if anchor is not None else "—",
            f"{gap_closed(anchor, a_none, a_joint):.2f}" if anchor is not None and m not in ("none", "joint") else "—",
            mean_sd([r["elapsed_s"] for r in runs.values()], digits=0)]) + " |")
    return "\n".join(lines)


def bio_table(res: Dict[str, Dict[int, dict]]) -> str:
    lines = ["| network | rule | strategy | seeds | ACC % | F (pts) | LA % "
             "| dACC vs same network, no strategy (pts) | wall s/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e, runs in res.items():
        m = method_of(e)
        bio = "_bio_" in e
        nte = m.startswith("nte")
        strategy = m[4:] if nte and m != "nte" else ("none" if nte else m)
        base = res["pmnist_vdv_" + ("bio_" if bio else "") + ("nte" if nte else "none")]
        seeds = paired(base, runs)
        delta = [100 * (runs[s]["avg_acc"] - base[s]["avg_acc"]) for s in seeds]
        lines.append("| " + " | ".join([
            "k-WTA 10%, 10% conn., Dale" if bio else "dense", "NTE" if nte else "Adam",
            "none" if strategy == "none" else LABELS.get(strategy, strategy), str(len(runs)),
            mean_sd([r["avg_acc"] for r in runs.values()], 100),
            mean_sd([r["forgetting"] for r in runs.values()], 100),
            mean_sd([r["learning_acc"] for r in runs.values()], 100),
            mean_sd(delta) if strategy != "none" else "—",
            mean_sd([r["elapsed_s"] for r in runs.values()], digits=0)]) + " |")
    return "\n".join(lines)


TABLES = {"vdv_pfmnist_short": vdv_table, "bio_baselines": bio_table}


def replace_block(text: str, name: str, table: str) -> str:
    """``text`` with the block of study ``name`` replaced by ``table``."""
    # the block's own lines only: never across another block's markers (an empty block included)
    pattern = re.compile(rf"(<!-- table:{re.escape(name)} -->\n)(?:(?!<!-- /?table).)*?(<!-- /table -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"{PAGE}: no '<!-- table:{name} -->' ... '<!-- /table -->' block to rewrite")
    return pattern.sub(lambda m: m.group(1) + table + "\n" + m.group(2), text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results-dir", type=Path, default=Path("results"))
    ap.add_argument("--write", action="store_true", help=f"rewrite the tables in {PAGE.relative_to(ROOT)}")
    args = ap.parse_args(argv)
    tables = {name: make(load_study(args.results_dir, name)) for name, make in TABLES.items()}
    if args.write:
        text = PAGE.read_text(encoding="utf-8")
        for name, table in tables.items():
            text = replace_block(text, name, table)
        PAGE.write_text(text, encoding="utf-8")
    else:
        for name, table in tables.items():
            print(f"## {name}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
