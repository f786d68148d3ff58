"""Run keys: what the experiment is and where its data lives (not how it learns)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparse_nte.config.fields import key
from sparse_nte.evaluation import EVAL_TASKS

TITLE = "run"


@dataclass(frozen=True)
class RunKeys:
    description: str = key(
        "", kind="text", affects_results=False,
        doc="One line describing the experiment (shown by `run_exps.py --list`).")
    seed: int = key(
        0, interval="[0, 4294967295]",
        doc="Seed of everything random: weights, masks, Dale signs, permutations, class order, batch "
            "order, subsets.")
    data_root: str = key(
        "", kind="path", affects_results=False,
        doc="Folder with the dataset files; empty = the default locations searched by `benchmarks` "
            "(`~` is expanded; relative paths start at the working directory).")
    record_stats: bool = key(
        True,
        doc="Record statistics after every task (active-unit fractions and overlaps, densities, E/I "
            "balance, Dale and mask violations, duty-cycle entropy) in the results, as the original "
            "`record_stats`; the activity is measured during the evaluation pass.")
    eval_tasks: str = key(
        "needed", choices=EVAL_TASKS,
        doc="Which tasks are evaluated after each task: needed (the tasks seen so far and the next "
            "one; the untrained network on tasks 1..T-1: every metric of the results, other entries "
            "of acc_matrix NaN) or all (the full T x T matrix and every random-init entry).")
    eval_subset: int = key(
        0, interval="[0, inf)",
        doc="0 = always whole test sets. m > 0: between full evaluations, tasks learned before the "
            "current one are evaluated on a fixed random subset of m test examples each (standard "
            "error sqrt(a(1-a)/m) on those entries, which enter the forgetting and the accuracy "
            "curve); the current and next task, the last row and every eval_full_every-th row use "
            "whole test sets. Changes the matrix's precision: never on by default.")
    eval_full_every: int = key(
        5, interval="[1, inf)",
        doc="With eval_subset > 0: rows after every eval_full_every-th task (and the last) are "
            "evaluated on whole test sets.")
    epoch_eval: bool = key(
        False,
        doc="Learning curves: after every epoch, also evaluate the task being trained on its whole "
            "test set and on `epoch_eval_train` of its training rows (eval mode; training is "
            "unchanged); stored per task in the results' stats as epoch_test_acc and "
            "epoch_train_acc.")
    epoch_eval_train: int = key(
        10000, interval="[0, inf)",
        doc="With epoch_eval: training rows whose accuracy is recorded after every epoch (a fixed "
            "random subset drawn from the seed and task; 0 = no training accuracy; at least the "
            "task's size = all of them).")


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    out = {}
    if v["eval_subset"] == 0:
        out["eval_full_every"] = "old tasks are always evaluated on whole test sets (eval_subset = 0)"
    if not v["epoch_eval"]:
        out["epoch_eval_train"] = "there are no learning curves (epoch_eval = false)"
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = RunKeys
