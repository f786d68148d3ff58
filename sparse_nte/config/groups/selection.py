"""Data-selection keys: which training examples each epoch uses (sparse_nte.selection)."""
from __future__ import annotations

from dataclasses import dataclass

from sparse_nte.config.fields import key
from sparse_nte.selection import SELECTORS

TITLE = "data selection"


@dataclass(frozen=True)
class SelectionKeys:
    data_pruning: str = key(
        "none", choices=("none", *SELECTORS),
        doc="Which training examples each epoch uses: none (all of them every epoch).")


#: The group's keys (read by sparse_nte.config.schema).
KEYS = SelectionKeys
