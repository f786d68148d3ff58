"""``nupic.torch.modules``: the k-winners, sparse-weights, prunable and flatten modules."""
from sparse_nte.compat.modules import flatten, k_winners, prunable_sparse_weights, sparse_weights
from sparse_nte.compat.modules.flatten import Flatten
from sparse_nte.compat.modules.k_winners import KWinners, KWinners2d, update_boost_strength
from sparse_nte.compat.modules.prunable_sparse_weights import (
    PrunableSparseWeights,
    PrunableSparseWeights2d,
)
from sparse_nte.compat.modules.sparse_weights import (
    SparseWeights,
    SparseWeights2d,
    normalize_sparse_weights,
    rezero_weights,
)

__all__ = [
    "Flatten",
    "KWinners",
    "KWinners2d",
    "update_boost_strength",
    "SparseWeights",
    "SparseWeights2d",
    "rezero_weights",
    "normalize_sparse_weights",
    "PrunableSparseWeights",
    "PrunableSparseWeights2d",
]
