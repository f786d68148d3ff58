"""The constrained building blocks, API-compatible with nupic.torch (Ahmad & Scheinkman, "How
can we be so dense? The benefits of using highly sparse representations", 2019): class names,
constructor arguments, defaults, buffers (``duty_cycle``, ``boost_strength``, ``zero_mask``)
and the helpers used as ``model.apply(rezero_weights)`` / ``model.apply(update_boost_strength)``
follow nupic.torch, so code written for it runs unchanged (see :mod:`sparse_nte.compat` for
its module layout). Where nupic.torch has a defect it is fixed, and each module says so.

    functional      k-winners as functions: ``kwinners``, ``kwinners2d``, ``boost_activations``
    k_winners       ``KWinners``, ``KWinners2d``, ``KWinnersBase``, ``update_boost_strength``
    sparse_weights  ``SparseWeights``, ``SparseWeights2d``, ``SparseWeightsBase``,
                    ``HasRezeroWeights``, ``rezero_weights``, ``normalize_sparse_weights``,
                    ``enforce_constraints`` (masks and Dale's-law signs)
    prunable        ``PrunableSparseWeights``, ``PrunableSparseWeights2d`` (settable ``off_mask``)
    flatten         ``Flatten``

Duty-cycle entropies are in :mod:`sparse_nte.duty_cycle_metrics`; the sparse execution path of
``SparseWeights`` in :mod:`sparse_nte.sparse_exec`.
"""
from sparse_nte.layers.flatten import Flatten
from sparse_nte.layers.functional import boost_activations, kwinners, kwinners2d
from sparse_nte.layers.k_winners import KWinners, KWinners2d, KWinnersBase, update_boost_strength
from sparse_nte.layers.prunable import (
    PrunableSparseWeightBase,
    PrunableSparseWeights,
    PrunableSparseWeights2d,
)
from sparse_nte.layers.sparse_weights import (
    HasRezeroWeights,
    SparseWeights,
    SparseWeights2d,
    SparseWeightsBase,
    enforce_constraints,
    normalize_sparse_weights,
    rezero_weights,
)

__all__ = [
    "KWinnersBase",
    "KWinners",
    "KWinners2d",
    "SparseWeightsBase",
    "SparseWeights",
    "SparseWeights2d",
    "PrunableSparseWeightBase",
    "PrunableSparseWeights",
    "PrunableSparseWeights2d",
    "HasRezeroWeights",
    "Flatten",
    "kwinners",
    "kwinners2d",
    "boost_activations",
    "rezero_weights",
    "update_boost_strength",
    "normalize_sparse_weights",
    "enforce_constraints",
]
