"""Training-time augmentation of image batches (config key ``augment``).

``crop_flip``, the CIFAR-10 augmentation of Daruwalla & Lipasti's reference code
(darsnack/biological-hsic: ``RandomCrop((32, 32), (2, 2))`` then ``RandomHFlip()``): every
image is padded by one black pixel on each side (the 2 extra rows and columns split evenly, as
``tf.image.resize_with_crop_or_pad`` does), cropped back to its size at an offset
``(i, j) ~ U{0, 1, 2}^2``, then mirrored left-right with probability 1/2::

    x'[c, h, w] = pad(x)[c, h + i, w + j]                  (pad value: the scaled black pixel)
    x''[c, h, w] = x'[c, h, W - 1 - w]   if flip else x'[c, h, w]

Batches arrive already scaled, so the padding is the value a black pixel (0) takes under the
run's input scaling (:func:`benchmarks.batching.black_level`): the same image as padding the
raw pixels first. Draws come from the generator the caller passes (the runner seeds one per
seed, task and epoch, apart from the batch order, so turning augmentation on leaves the order
of examples unchanged and a resumed run draws the same crops). Only training batches are
augmented; evaluation never is.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

__all__ = ["AUGMENTATIONS", "crop_flip"]

#: Choices of the config key ``augment``.
AUGMENTATIONS = ("none", "crop_flip")


def crop_flip(x: torch.Tensor, fill: Sequence[float], generator: Optional[torch.Generator] = None,
              pad: int = 1) -> torch.Tensor:
    """``x`` (B, C, H, W) float, each image shifted by a random crop of its ``pad``-padded self
    and mirrored with probability 1/2 (module docstring); ``fill`` gives the padding value of
    every channel. Returns a new tensor."""
    if x.dim() != 4:
        raise ValueError(f"crop_flip: expected images (B, C, H, W), got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    if len(fill) != c:
        raise ValueError(f"crop_flip: fill needs one value per channel ({c}), got {len(fill)}")
    padded = torch.empty(b, c, h + 2 * pad, w + 2 * pad, dtype=x.dtype, device=x.device)
    padded.copy_(torch.as_tensor(fill, dtype=x.dtype, device=x.device).view(1, c, 1, 1)
                 .expand_as(padded))
    padded[:, :, pad:pad + h, pad:pad + w] = x
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    flips = torch.rand(b, generator=generator) < 0.5
    rows = (offsets[:, 0].view(b, 1) + torch.arange(h)).to(x.device)            # (B, H)
    cols = offsets[:, 1].view(b, 1) + torch.arange(w)                             # (B, W)
    cols = torch.where(flips.view(b, 1), cols.flip(1), cols).to(x.device)
    out = padded.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * pad))
    return out.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))
