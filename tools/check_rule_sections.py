"""Run every shipped experiment briefly under another learning rule and say what happens.

For each experiment section of ``exps/exps_params.cfg`` (MLPs; ``--cnn`` adds the CNNs), the
section is resolved with ``learning_rule = RULE`` (as ``run_exps.py --name S --set
learning_rule=RULE`` does) plus the shrinking overrides below, and then either

* the configuration is refused: the line shows the config error (it must name the keys in
  conflict and what would be valid), or
* one trial runs on small synthetic stand-ins of the section's dataset (the real files'
  formats, learnable class templates; :mod:`benchmarks.synthetic`), and the line shows its
  status, the accuracy on task 0 after it was learned, and the constraint counts after every
  task: stored weights at masked positions and against their unit's Dale sign (both must be 0).

Shrinking overrides: ``train_subset`` examples per task, 2 tasks (``num_batch``; the split
sections keep whole classes), 1 epoch per task; gradual magnitude pruning prunes once, at the
first step (its schedule must fit the short run). ``--width`` caps ``hidden_units`` (k-WTA
layers keep at least their section's number of winners); without it the sections' own widths
are used (a 4000-unit layer costs ~0.2 s per single-sample IB-Hebbian update on one core).

Run: ``python tools/check_rule_sections.py --rule ib_hebbian --rule hsic [--width 200]``.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIG = Path(__file__).resolve().parent.parent / "exps" / "exps_params.cfg"

__all__ = ["Outcome", "sections", "shrink_overrides", "check_section", "main"]


@dataclass
class Outcome:
    """What one section did under the rule."""

    section: str
    rule: str
    status: str                      # refused | done | diverged | failed
    message: str = ""
    acc_task0: float = float("nan")
    mask_violations: int = 0
    sign_violations: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        if self.status == "refused":
            return f"| {self.section} | {self.rule} | refused | {self.message} |"
        return (f"| {self.section} | {self.rule} | {self.status} | acc(task 0) "
                f"{100 * self.acc_task0:.1f}%, mask violations {self.mask_violations}, sign "
                f"violations {self.sign_violations}, {self.seconds:.1f} s"
                f"{'; ' + self.message if self.message else ''} |")


def sections(path: Path = CONFIG, cnn: bool = False) -> List[str]:
    """Experiment sections of ``path`` (not studies), MLPs only unless ``cnn``."""
    from sparse_nte.config import load_experiments

    return [name for name, c in load_experiments(path).items() if cnn or not c.cnn]


def shrink_overrides(config: Any, train_subset: int, width: Optional[int]) -> Dict[str, Any]:
    """The overrides that make ``config``'s section a seconds-long trial (module docstring)."""
    out: Dict[str, Any] = {"train_subset": train_subset, "num_batch": 2, "train_ep": 1,
                           "train_ep_inc": 1}
    if width is not None and config.hidden_units > width:
        out["hidden_units"] = width
        if config.sparsify:
            k = max(1, round(config.hidden_units * config.percent_on_fc))
            out["percent_on_fc"] = min(1.0, max(config.percent_on_fc, k / width))
    if config.plasticity == "gmp":                 # its pruning schedule must fit the short run
        out.update(gmp_start=0, gmp_n=1, plasticity_interval=1)
    return out


def check_section(name: str, rule: str, root: Path, *, path: Path = CONFIG,
                  train_subset: int = 24, width: Optional[int] = None,
                  extra: Optional[Dict[str, Any]] = None) -> Outcome:
    """Resolve section ``name`` with ``learning_rule = rule`` and run it briefly (module
    docstring) on the synthetic datasets under ``root``; results go to ``root/results``."""
    import numpy as np

    from sparse_nte.config import load_config
    from sparse_nte.errors import ConfigError
    from sparse_nte.runner import run_trial

    try:
        base = load_config(path, name)
        overrides = {"learning_rule": rule, **shrink_overrides(base, train_subset, width),
                     "data_root": str(root), "record_stats": True, **(extra or {})}
        config = load_config(path, name, overrides)
    except ConfigError as exc:
        return Outcome(name, rule, "refused", str(exc).strip().splitlines()[-1])
    t0 = time.perf_counter()
    try:
        res = run_trial(config, root / "results", folder=f"{name}-{rule}", overwrite=True,
                        progress=False, log=lambda _msg: None)
    except Exception as exc:  # noqa: BLE001 - reported, not hidden
        return Outcome(name, rule, "failed", f"{type(exc).__name__}: {exc}",
                       seconds=time.perf_counter() - t0)
    per_task = res["stats"].get("per_task", [])
    acc = np.asarray(res["acc_matrix"])
    why = res.get("diverged", {}).get("reason", "")
    return Outcome(name, rule, str(res["status"]), why,
                   acc_task0=float(acc[0, 0]) if per_task else float("nan"),
                   mask_violations=max((int(t["mask_violations"]) for t in per_task), default=0),
                   sign_violations=max((int(t["sign_violations"]) for t in per_task), default=0),
                   seconds=time.perf_counter() - t0)


def write_datasets(root: Path, names: Sequence[str], num_train: int = 200, num_test: int = 100) -> None:
    """Small synthetic stand-ins of ``names`` under ``root`` (:mod:`benchmarks.synthetic`)."""
    from benchmarks.synthetic import write_synthetic_dataset

    for n in names:
        write_synthetic_dataset(n, root, num_train=num_train, num_test=num_test)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rule", action="append", required=True, help="learning_rule (repeatable)")
    ap.add_argument("--name", action="append", default=None, help="only these sections")
    ap.add_argument("--cnn", action="store_true", help="also the CNN sections")
    ap.add_argument("--width", type=int, default=None, help="cap on hidden_units")
    ap.add_argument("--train-subset", type=int, default=24)
    ap.add_argument("--config", type=Path, default=CONFIG)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    names = args.name or sections(args.config, args.cnn)
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_datasets(root, ("mnist", "fashion_mnist", "cifar10", "cifar100"))
        print("| section | rule | outcome | details |\n|---|---|---|---|")
        for rule in args.rule:
            for name in names:
                out = check_section(name, rule, root, path=args.config,
                                    train_subset=args.train_subset, width=args.width)
                bad += out.status == "failed" or out.mask_violations > 0 or out.sign_violations > 0
                print(out.line(), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
