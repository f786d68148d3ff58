"""Sparse layers whose mask the user changes at will (nupic.torch's ``PrunableSparseWeights``,
``PrunableSparseWeights2d``, ``PrunableSparseWeightBase``), for pruning and regrowth methods.

``off_mask`` reads and writes the zero mask ``M`` (True = weight held at zero). ``sparsity`` is
always the fraction of the mask that is off::

    sparsity = #{M} / |W|

so it follows every change of the mask: through ``off_mask``, :meth:`set_zero_mask`, a loaded
state dict or an in-place edit of ``zero_mask``. Any sparsity in ``[0, 1]`` is allowed
(nupic.torch's ``allow_extremes=True``): a pruning method may empty or fill a layer.

Differences from nupic.torch, all fixes of defects:

1. Assigning ``off_mask`` applies the new mask to the weight at once (and Dale's signs, if any),
   so the invariant "a masked weight is exactly zero" holds right after the assignment;
   nupic.torch leaves the old weights in place until the next ``rezero_weights()``.
2. ``sparsity`` is read from the mask: in nupic.torch it is only updated by ``off_mask``
   assignments and goes stale when ``zero_mask`` changes any other way.
3. An ``off_mask`` of the wrong shape or with values other than 0/1 is a ``ValueError``
   (nupic.torch broadcasts it, or casts any non-zero to "off").

Pruning and growing moves only the mask: the optimizer's state at the changed positions is the
caller's to reset, as with nupic.torch (:func:`sparse_nte.optim_state.reset_positions` does it
for torch optimizers). Until then, momentum gathered before a weight was pruned still moves its
stored value at each step, but every read (forward pass, ``.weight``, ``state_dict``) sees an
exact zero, and with :func:`sparse_nte.dale.constrain_optimizer` so does the stored value after
every step.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from sparse_nte.layers.sparse_weights import SparseWeights, SparseWeights2d

__all__ = ["PrunableSparseWeightBase", "PrunableSparseWeights", "PrunableSparseWeights2d"]

_SPARSITY_TOLERANCE = 1e-9


class PrunableSparseWeightBase:
    """Mixin for sparse-weights layers: ``off_mask`` property and a ``sparsity`` that is always
    the mask's fraction of zeros."""

    # Provided by the sparse-weights class it is mixed into: the ``zero_mask`` buffer and
    # ``set_zero_mask(mask)``.
    zero_mask: torch.Tensor

    @property
    def off_mask(self) -> torch.Tensor:
        """A copy of the zero mask as a bool tensor of the weight's shape (True = off), so that
        ``layer.weight[~layer.off_mask]`` are the live weights. Assign a 0/1 or bool tensor of
        that shape to prune or regrow; ``sparsity`` follows."""
        return self.zero_mask.clone()

    @off_mask.setter
    def off_mask(self, mask: Any) -> None:
        self.set_zero_mask(_as_off_mask(mask, self.zero_mask, type(self).__name__))

    @property
    def sparsity(self) -> float:
        """Fraction of the weights that are off, ``#{zero_mask} / |zero_mask|``."""
        mask = self.__dict__.get("_buffers", {}).get("zero_mask")
        if mask is None:   # during construction, before the mask exists
            return self.__dict__["_initial_sparsity"]
        return float(mask.sum()) / max(1, mask.numel())

    @sparsity.setter
    def sparsity(self, value: float) -> None:
        mask = self.__dict__.get("_buffers", {}).get("zero_mask")
        if mask is None:
            self.__dict__["_initial_sparsity"] = float(value)
            return
        current = float(mask.sum()) / max(1, mask.numel())
        if abs(float(value) - current) > _SPARSITY_TOLERANCE:
            raise ValueError(f"{type(self).__name__}.sparsity follows the mask ({current:.6g} of "
                             f"the weights are off); to set it to {value!r}, assign `off_mask` "
                             f"(or call set_zero_mask) with a mask of that sparsity")


def _as_off_mask(mask: Any, like: torch.Tensor, owner: str) -> torch.Tensor:
    """``mask`` as a bool tensor shaped and placed like ``like``; ValueError unless it is a
    bool or 0/1 tensor of exactly that shape."""
    mask = torch.as_tensor(mask)
    if tuple(mask.shape) != tuple(like.shape):
        raise ValueError(f"{owner}.off_mask must have the weight's shape {tuple(like.shape)}, "
                         f"got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{owner}.off_mask must hold booleans or 0/1 values (1 = off)")
        mask = mask != 0
    return mask.to(like.device)


class PrunableSparseWeights(PrunableSparseWeightBase, SparseWeights):
    """A :class:`~sparse_nte.layers.SparseWeights` (``nn.Linear``) with a settable
    ``off_mask``; ``sparsity`` in ``[0, 1]`` (0: dense, 1: all weights off).

    Args are those of ``SparseWeights`` without ``allow_extremes`` (always allowed).
    """

    def __init__(self, module: nn.Linear, weight_sparsity: Optional[float] = None,
                 sparsity: Optional[float] = None, *,
                 generator: Optional[torch.Generator] = None, sparse_exec: str = "auto") -> None:
        super().__init__(module, weight_sparsity=weight_sparsity, sparsity=sparsity,
                         allow_extremes=True, generator=generator, sparse_exec=sparse_exec)


class PrunableSparseWeights2d(PrunableSparseWeightBase, SparseWeights2d):
    """A :class:`~sparse_nte.layers.SparseWeights2d` (``nn.Conv2d``) with a settable
    ``off_mask``; ``sparsity`` in ``[0, 1]``."""

    def __init__(self, module: nn.Conv2d, weight_sparsity: Optional[float] = None,
                 sparsity: Optional[float] = None, *,
                 generator: Optional[torch.Generator] = None) -> None:
        super().__init__(module, weight_sparsity=weight_sparsity, sparsity=sparsity,
                         allow_extremes=True, generator=generator)
