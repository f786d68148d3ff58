"""``nupic.torch.modules.prunable_sparse_weights``: :class:`PrunableSparseWeightBase`,
:class:`PrunableSparseWeights`, :class:`PrunableSparseWeights2d`."""
from sparse_nte.layers.prunable import (
    PrunableSparseWeightBase,
    PrunableSparseWeights,
    PrunableSparseWeights2d,
)

__all__ = ["PrunableSparseWeightBase", "PrunableSparseWeights", "PrunableSparseWeights2d"]
