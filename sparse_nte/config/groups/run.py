"""Run keys: what the experiment is and where its data lives (not how it learns)."""
from __future__ import annotations

from dataclasses import dataclass

from sparse_nte.config.fields import key

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
            "`record_stats`.")


#: The group's keys (read by sparse_nte.config.schema).
KEYS = RunKeys
