"""Convolution geometry for per-example gradients: which ``nn.Conv2d`` layers the unfold route
reproduces, and the unfolded input.

For a convolution with groups = 1 and zero padding, the per-example weight gradient is
``g_b = D_b^T A_b`` with ``A_b`` the ``(L, C*kh*kw)`` input patches of example b
(``F.unfold``) and ``D_b`` its ``(L, out)`` output gradient over the L output locations.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["conv2d_supported", "conv2d_padding", "unfold_conv2d_input"]


def conv2d_supported(conv: nn.Conv2d) -> bool:
    """Whether :func:`unfold_conv2d_input` reproduces this convolution (groups = 1, zero padding,
    numeric or symmetric 'same'/'valid' padding)."""
    if conv.groups != 1 or conv.padding_mode != "zeros":
        return False
    return conv2d_padding(conv) is not None


def conv2d_padding(conv: nn.Conv2d) -> Optional[Tuple[int, int]]:
    """The convolution's padding as two ints (string paddings resolved), or None for an
    asymmetric 'same' padding."""
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation):
            total = d * (k - 1)
            if total % 2:
                return None  # asymmetric 'same' padding
            pads.append(total // 2)
        return (pads[0], pads[1])
    return (int(conv.padding[0]), int(conv.padding[1]))


def unfold_conv2d_input(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The input patches of ``conv`` as a ``(n, L, C*kh*kw)`` tensor (L output locations), so
    that the per-example weight gradient is ``D_b^T A_b`` with D the ``(n, L, out)`` output
    gradient. Column order matches ``conv.weight.flatten(1)``."""
    u = F.unfold(x, conv.kernel_size, dilation=conv.dilation, padding=conv2d_padding(conv),
                 stride=conv.stride)
    return u.transpose(1, 2)
