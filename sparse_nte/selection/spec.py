"""The data-selection keys of an experiment config, read into one typed, validated spec, and the
epoch schedule they define.

Dynamic data pruning (Raju, Daruwalla & Lipasti, "Accelerating Deep Learning with Dynamic Data
Pruning", arXiv 2111.12621): in some epochs of a task, train on a subset of

    k = floor((1 - p) * N)                                   (p = data_prune_rate)

of the task's N training examples, re-chosen every ``data_prune_every`` epochs.

Schedule (epochs e = 0 .. E-1 of each task, counted from the task's start; E its epochs)::

    end_eff   = E                   if data_prune_end == 0
              = min(data_prune_end, E)  otherwise
    pruned(e)  <=>  data_prune_start <= e < end_eff                  (else: every example)
    selects(e) <=>  pruned(e) and (e - data_prune_start) % data_prune_every == 0

so ``start = 1, end = 0`` trains epoch 0 on full data and prunes from epoch 1 to the last;
``start = 0, end = 3, every = 2`` prunes epochs 0, 1, 2 and chooses new subsets at epochs 0
and 2. The first pruned epoch always selects. Between selections the kept set stays. (The
third-party reimplementation sodabori/dataset_pruning trains on full data while
``epoch <= start`` and selects when ``epoch % every == 0``; this convention is the one above.)

Static selectors (el2n, grand, forgetting) choose their set once, at the first pruned epoch of
the task (their scores do not change during the task), so ``data_prune_every`` has no effect
on them.

The keys have no defaults here: defaults and ranges live in the config schema
(:mod:`sparse_nte.config`); this module re-checks them and the relations between keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any, List

__all__ = ["SelectionSpec", "SELECTION_KEYS", "METHODS", "DYNAMIC", "STATIC", "UNBIASED",
           "keep_count", "random_count", "is_pruned", "selects", "pruned_epochs", "planned_rows",
           "schedule_warning"]

#: Every value of ``data_pruning`` ("none" = no selection object).
METHODS = ("none", "uniform", "epsilon_greedy", "ucb", "el2n", "grand", "forgetting")
#: Selectors whose scores come from the training losses (``observe``).
DYNAMIC = ("epsilon_greedy", "ucb")
#: Selectors whose scores come from a scoring run at the task's start.
STATIC = ("el2n", "grand", "forgetting")
#: Selectors that keep every example with positive probability, so that weighting the kept
#: examples' losses by 1 / pi makes the epoch's loss unbiased (``data_prune_rescale``).
UNBIASED = ("uniform", "epsilon_greedy")


@dataclass(frozen=True)
class SelectionSpec:
    """The ``data_prune*`` keys (attribute names = config keys).

    Attributes:
        data_pruning: the selector, one of :data:`METHODS`.
        data_prune_rate: p in [0, 1): fraction of the task's examples left out of a pruned
            epoch; k = floor((1 - p) N) are kept (decimal arithmetic on the value as written,
            so p = 0.9 keeps exactly 10 of 100).
        data_prune_every: epochs between two selections (>= 1).
        data_prune_start: first pruned epoch of each task (>= 0).
        data_prune_end: first epoch of each task back on full data (0 = prune to the last).
        data_prune_epsilon: epsilon-greedy's exploration share in [0, 1]: floor(eps k) of the
            kept examples are drawn uniformly from those not taken greedily.
        data_prune_ucb_c: UCB's weight c >= 0 of the loss variance in s = mu + c v.
        data_prune_ema: alpha in (0, 1] of the score averages s <- (1 - alpha) s + alpha l.
        data_prune_rescale: multiply the loss of every kept example by 1 / pi_i (pi_i: the
            probability it was kept), an unbiased estimate of the full epoch's loss; only for
            the selectors in :data:`UNBIASED`.
        data_prune_score_epochs: static selectors: epochs of SGD a copy of the model trains on
            the task before it is scored (el2n / grand: >= 0, 0 = the model as the task
            starts; forgetting: >= 2, the epochs over which transitions are counted).
        data_prune_score_repeats: static selectors: independent scoring runs (different data
            orders) whose scores are averaged (>= 1).
        data_prune_score_lr: static selectors: learning rate of the scoring run's SGD (> 0).
    """

    data_pruning: str
    data_prune_rate: float
    data_prune_every: int
    data_prune_start: int
    data_prune_end: int
    data_prune_epsilon: float
    data_prune_ucb_c: float
    data_prune_ema: float
    data_prune_rescale: bool
    data_prune_score_epochs: int
    data_prune_score_repeats: int
    data_prune_score_lr: float

    def __post_init__(self) -> None:
        for f in fields(self):
            ok, valid = _RULES[f.name]
            value = getattr(self, f.name)
            if not ok(value):
                raise ValueError(f"data selection: config key {f.name!r} = {value!r} is invalid; "
                                 f"it must be {valid}")
        self._check_relations()

    def _check_relations(self) -> None:
        method = self.data_pruning
        if self.data_prune_end != 0 and self.data_prune_end <= self.data_prune_start:
            raise ValueError(
                f"data selection: data_prune_end = {self.data_prune_end} must be 0 (prune to the "
                f"last epoch) or greater than data_prune_start = {self.data_prune_start}; "
                f"otherwise no epoch is pruned")
        if self.data_prune_rescale and method != "none" and method not in UNBIASED:
            raise ValueError(
                f"data selection: data_prune_rescale = true needs a selector that keeps every "
                f"example with positive probability ({', '.join(UNBIASED)}); {method} keeps "
                f"the top k deterministically (pi_i is 0 or 1), so no weighting of the kept "
                f"losses can make the epoch's loss unbiased; set data_prune_rescale = false")
        if method == "forgetting" and self.data_prune_score_epochs < 2:
            raise ValueError(
                f"data selection: data_pruning = forgetting counts correct -> incorrect "
                f"transitions across the epochs of its scoring run, so data_prune_score_epochs "
                f"must be >= 2, got {self.data_prune_score_epochs}")
        if (method in ("el2n", "grand") and self.data_prune_score_epochs == 0
                and self.data_prune_score_repeats > 1):
            raise ValueError(
                f"data selection: with data_prune_score_epochs = 0 the {method} scores are those "
                f"of the model as the task starts, the same in every repeat; set "
                f"data_prune_score_repeats = 1 (got {self.data_prune_score_repeats}) or train "
                f"the scoring copy for some epochs")

    @classmethod
    def from_config(cls, config: Any) -> "SelectionSpec":
        """Read the keys from a config object's attributes (other attributes are ignored).

        Raises ValueError naming every missing key, or the first invalid value.
        """
        missing = [k for k in SELECTION_KEYS if not hasattr(config, k)]
        if missing:
            raise ValueError(f"data selection: config lacks the key(s) {', '.join(missing)} "
                             f"(needed: {', '.join(SELECTION_KEYS)})")
        return cls(**{k: getattr(config, k) for k in SELECTION_KEYS})

    @property
    def dynamic(self) -> bool:
        return self.data_pruning in DYNAMIC

    @property
    def static(self) -> bool:
        return self.data_pruning in STATIC


SELECTION_KEYS: tuple[str, ...] = tuple(f.name for f in fields(SelectionSpec))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


_RULES = {
    "data_pruning": (lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
    "data_prune_rate": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
    "data_prune_every": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data_prune_start": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "data_prune_end": (lambda v: _is_int(v) and v >= 0, "an integer >= 0 (0 = to the last epoch)"),
    "data_prune_epsilon": (lambda v: _is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
    "data_prune_ucb_c": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "data_prune_ema": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "data_prune_rescale": (lambda v: isinstance(v, bool), "true or false"),
    "data_prune_score_epochs": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "data_prune_score_repeats": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "data_prune_score_lr": (lambda v: _is_number(v) and v > 0, "a number > 0"),
}


# ---------------------------------------------------------------------------------------------
# Counts
# ---------------------------------------------------------------------------------------------
def _decimal(x: float) -> Fraction:
    """The value as written (its shortest repr), exactly: 0.9 -> 9/10, not the binary double."""
    return Fraction(repr(float(x)))


def keep_count(n: int, rate: float) -> int:
    """k = floor((1 - p) n), in exact decimal arithmetic."""
    return math.floor((1 - _decimal(rate)) * int(n))


def random_count(k: int, epsilon: float) -> int:
    """Epsilon-greedy's uniformly drawn share of the k kept examples: floor(eps k)."""
    return math.floor(_decimal(epsilon) * int(k))


# ---------------------------------------------------------------------------------------------
# Schedule
# ---------------------------------------------------------------------------------------------
def _end(spec: SelectionSpec, epochs: int) -> int:
    return epochs if spec.data_prune_end == 0 else min(spec.data_prune_end, epochs)


def is_pruned(spec: SelectionSpec, epoch: int, epochs: int) -> bool:
    """Whether epoch ``epoch`` (0-based, of a task of ``epochs`` epochs) trains on a subset."""
    return spec.data_pruning != "none" and spec.data_prune_start <= epoch < _end(spec, epochs)


def selects(spec: SelectionSpec, epoch: int, epochs: int) -> bool:
    """Whether a new subset is chosen at the start of epoch ``epoch`` (dynamic selectors and
    uniform; static selectors choose only at the first pruned epoch)."""
    return (is_pruned(spec, epoch, epochs)
            and (epoch - spec.data_prune_start) % spec.data_prune_every == 0)


def pruned_epochs(spec: SelectionSpec, epochs: int) -> List[int]:
    """The pruned epochs of a task of ``epochs`` epochs."""
    return [e for e in range(epochs) if is_pruned(spec, e, epochs)]


def planned_rows(spec: SelectionSpec, n: int, epochs: int) -> List[int]:
    """Examples trained on in each epoch of a task with ``n`` training examples: k in pruned
    epochs, n in the others (so the task's optimizer steps are sum_e ceil(rows_e / batch))."""
    k = keep_count(n, spec.data_prune_rate)
    return [k if is_pruned(spec, e, epochs) else n for e in range(epochs)]


def schedule_warning(spec: SelectionSpec, epochs_per_task: List[int]) -> str:
    """A one-line warning when pruning is on but no task has a pruned epoch (``""`` if fine)."""
    if spec.data_pruning == "none" or any(pruned_epochs(spec, e) for e in epochs_per_task):
        return ""
    return (f"warning: data_pruning = {spec.data_pruning} will never act: data_prune_start = "
            f"{spec.data_prune_start} but the longest task has {max(epochs_per_task, default=0)} "
            f"epoch(s); lower data_prune_start")
