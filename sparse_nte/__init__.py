"""sparse_nte: biological constraints and catastrophic forgetting in continual learning.

Layers (nupic.torch-compatible k-winners and sparse weights; nupic.torch's module layout in
sparse_nte.compat), Dale's law, the Neural Tangent Ensemble learning rule, connection
growth/pruning schedules and the experiment runner.
"""
from sparse_nte.layers import (
    Flatten,
    HasRezeroWeights,
    KWinners,
    KWinners2d,
    KWinnersBase,
    PrunableSparseWeights,
    PrunableSparseWeights2d,
    SparseWeights,
    SparseWeights2d,
    SparseWeightsBase,
    boost_activations,
    enforce_constraints,
    kwinners,
    kwinners2d,
    normalize_sparse_weights,
    rezero_weights,
    update_boost_strength,
)
from sparse_nte.nte import NTE, build_nte_optimizer  # noqa: E402  (needs the layers above)

__version__ = "0.1.0"

__all__ = [
    "Flatten", "HasRezeroWeights", "KWinners", "KWinners2d", "KWinnersBase",
    "PrunableSparseWeights", "PrunableSparseWeights2d", "SparseWeights",
    "SparseWeights2d", "SparseWeightsBase", "boost_activations", "enforce_constraints",
    "kwinners", "kwinners2d", "normalize_sparse_weights", "rezero_weights",
    "update_boost_strength", "NTE", "build_nte_optimizer", "__version__",
]
