"""``nupic.torch.modules``: the k-winners, sparse-weights, prunable and flatten modules."""
# the submodules are attributes of the package, as in nupic.torch
from sparse_nte.compat.modules import flatten as flatten
from sparse_nte.compat.modules import k_winners as k_winners
from sparse_nte.compat.modules import prunable_sparse_weights as prunable_sparse_weights
from sparse_nte.compat.modules import sparse_weights as sparse_weights
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
