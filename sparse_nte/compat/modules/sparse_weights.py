"""``nupic.torch.modules.sparse_weights``: :class:`HasRezeroWeights`,
:class:`SparseWeightsBase`, :class:`SparseWeights`, :class:`SparseWeights2d`,
:func:`rezero_weights`, :func:`normalize_sparse_weights`."""
from sparse_nte.layers.sparse_weights import (
    HasRezeroWeights,
    SparseWeights,
    SparseWeights2d,
    SparseWeightsBase,
    normalize_sparse_weights,
    rezero_weights,
)

__all__ = ["HasRezeroWeights", "SparseWeightsBase", "SparseWeights", "SparseWeights2d",
           "rezero_weights", "normalize_sparse_weights"]
