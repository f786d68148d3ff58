"""Block-wise passes over parameter-sized tensors.

Element-wise work on a whole parameter tensor (a log-sum-exp, a mixed-dtype product, the
renormalisation of the NTE rule) is done in consecutive blocks of :data:`BLOCK_ELEMENTS`
entries: each block stays in cache, and the temporaries of mixed-dtype operations (an int8 sign
cast to float, say) are one block, not one tensor, in size.
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["BLOCK_ELEMENTS", "blocks"]

#: Elements per block of the element-wise passes over parameter-sized tensors.
BLOCK_ELEMENTS = 1 << 16


def blocks(t: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Consecutive blocks of :data:`BLOCK_ELEMENTS` entries of a contiguous tensor, as views
    (in-place operations on them change ``t``)."""
    return t.view(-1).split(BLOCK_ELEMENTS)
