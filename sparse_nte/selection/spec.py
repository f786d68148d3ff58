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

The keys have no defaults or ranges here: they live in the config schema
(:mod:`sparse_nte.config.groups.selection`); :func:`relation_problems` states the relations
between keys, which the schema checks with their location and :class:`SelectionSpec` re-checks
for specs built directly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Any, List

__all__ = ["SelectionSpec", "SELECTION_KEYS", "relation_problems", "METHODS", "DYNAMIC", "STATIC", "UNBIASED",
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
        problems = relation_problems(self)
        if problems:
            raise ValueError("data selection: " + "; ".join(msg for _, msg in problems))

    @classmethod
    def from_config(cls, config: Any) -> "SelectionSpec":
        """Read the keys from a config object's attributes (other attributes are ignored).

        Raises ValueError naming every missing key, or the keys' contradictions.
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


def relation_problems(spec: Any) -> List[tuple[str, str]]:
    """``(key, message)`` for every contradiction between the keys (any object with the
    :class:`SelectionSpec` attributes; the config's resolver reports them with their location).
    Types and ranges are the config schema's (:mod:`sparse_nte.config.groups.selection`)."""
    out: List[tuple[str, str]] = []
    method = spec.data_pruning
    if spec.data_prune_end != 0 and spec.data_prune_end <= spec.data_prune_start:
        out.append(("data_prune_end",
                    f"data_prune_end = {spec.data_prune_end} must be 0 (prune to the last epoch) or "
                    f"greater than data_prune_start = {spec.data_prune_start}; otherwise no epoch is "
                    f"pruned"))
    if spec.data_prune_rescale and method != "none" and method not in UNBIASED:
        out.append(("data_prune_rescale",
                    f"data_prune_rescale = true needs a selector that keeps every example with "
                    f"positive probability ({', '.join(UNBIASED)}); {method} keeps the top k "
                    f"deterministically (pi_i is 0 or 1), so no weighting of the kept losses can make "
                    f"the epoch's loss unbiased; set data_prune_rescale = false"))
    if method == "forgetting" and spec.data_prune_score_epochs < 2:
        out.append(("data_prune_score_epochs",
                    f"data_pruning = forgetting counts correct -> incorrect transitions across the "
                    f"epochs of its scoring run, so data_prune_score_epochs must be >= 2, got "
                    f"{spec.data_prune_score_epochs}"))
    if (method in ("el2n", "grand") and spec.data_prune_score_epochs == 0
            and spec.data_prune_score_repeats > 1):
        out.append(("data_prune_score_repeats",
                    f"with data_prune_score_epochs = 0 the {method} scores are those of the model as "
                    f"the task starts, the same in every repeat; set data_prune_score_repeats = 1 (got "
                    f"{spec.data_prune_score_repeats}) or train the scoring copy for some epochs"))
    return out


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
