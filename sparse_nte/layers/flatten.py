"""``Flatten``: ``(batch, d1, d2, ...) -> (batch, d1 * d2 * ...)`` (nupic.torch's ``Flatten``).

Unlike nupic.torch's (``x.view(batch, -1)``) it also takes non-contiguous inputs (copying them,
as ``reshape`` does) and empty batches; a contiguous input gives a view, as there.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["Flatten"]


class Flatten(nn.Module):
    """Flatten every dimension but the first (the batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0:
            raise ValueError("Flatten expects a tensor with a batch dimension, got a 0-d tensor")
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))
