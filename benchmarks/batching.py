"""Mini-batches from uint8 tensors: shuffle, gather, permute and scale per batch.

For a batch of rows ``b`` of a task whose examples carry task ids ``t`` and the pixel
permutations ``P`` (one row per task), the batch is::

    z[j, p] = X_u8[b_j].flatten()[p] * a_c(p) + s_c(p),   a_c = 1 / (255 std_c),
                                                          s_c = -mean_c / std_c
    x[j, q] = z[j, P[t_j][q]]                             (index gather, no permuted copies)

i.e. ``x = ((X / 255 - mean_c) / std_c)`` with its pixels permuted. The input scaling
(:data:`SCALINGS`) chooses ``mean_c`` and ``std_c``:

* ``standard``: the dataset's own per-channel statistics (the ``mean``/``std`` arguments);
  inputs have zero mean and unit variance per channel.
* ``unit``: ``z = X / 255`` in [0, 1], computed as a float32 division by 255 so that a batch
  equals the original sparse-dynamic-synapses MNIST arrays bit for bit (its reader stored
  ``uint8.astype(float32) / 255``; multiplying by ``1/255`` instead differs in the last bit for
  126 of the 256 values).
* ``symmetric``: ``mean_c = std_c = 0.5``, i.e. ``z = (X / 255 - 0.5) / 0.5`` in [-1, 1], the
  input of Daruwalla & Lipasti's IB-Hebbian experiments (darsnack/biological-hsic).
* ``imagenet``: ``mean = (0.485, 0.456, 0.406)``, ``std = (0.229, 0.224, 0.225)`` (RGB), the
  ImageNet statistics the original project's iCIFAR path normalised with
  (``preprocess_imgs``); three-channel inputs only.

The rows are gathered as uint8, converted and scaled in place, then permuted: ``index_select``
along the pixels when the whole task shares one permutation, ``gather`` with per-example
permutations in cumulative permuted tasks (on float32 both are several times faster than on
uint8, and scaling before permuting keeps each pixel with its own channel's statistics).
"""
from __future__ import annotations

from typing import Iterator, Optional, Sequence

import torch

#: Input scalings (module docstring).
SCALINGS = ("standard", "unit", "symmetric", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def black_level(scaling: str, mean: Sequence[float], std: Sequence[float]) -> tuple[float, ...]:
    """The value a black pixel (0) takes in every channel under ``scaling`` (``mean``/``std``
    are the dataset's statistics, used by ``standard``)."""
    channels = len(mean)
    check_scaling(scaling, channels)
    if scaling == "unit":
        return (0.0,) * channels
    if scaling == "symmetric":
        return (-1.0,) * channels
    if scaling == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return tuple(-m / s for m, s in zip(mean, std))


def check_scaling(scaling: str, channels: int) -> None:
    """Raise ValueError unless ``scaling`` is one of :data:`SCALINGS` and applies to images
    with ``channels`` channels (``imagenet`` needs 3)."""
    if scaling not in SCALINGS:
        raise ValueError(f"input scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    if scaling == "imagenet" and channels != 3:
        raise ValueError(f"input scaling 'imagenet' normalises the 3 RGB channels with ImageNet's "
                         f"statistics, but the images have {channels} channel(s); use standard "
                         f"or unit")


def iterate_batches(x: torch.Tensor, y: torch.Tensor, t: torch.Tensor, *,
                    mean: Sequence[float], std: Sequence[float],
                    permutations: Optional[torch.Tensor] = None,
                    batch_size: int = 128, shuffle: bool = False,
                    generator: Optional[torch.Generator] = None,
                    device: torch.device | str = "cpu", drop_last: bool = False,
                    rows: Optional[torch.Tensor] = None, with_index: bool = False,
                    scaling: str = "standard") -> Iterator[tuple[torch.Tensor, ...]]:
    """Yield ``(x float32 (B, C, H, W), y int64 (B,), t int64 (B,))`` over ``x`` uint8
    (N, C, H, W), scaled as ``scaling`` says (module docstring; ``mean``/``std`` are used by
    ``standard`` only) and permuted by ``permutations[t]`` when given.

    ``shuffle`` draws one ``torch.randperm`` from ``generator`` (torch's global generator when
    None) per call; the last batch is smaller unless ``drop_last``. ``rows`` (int64) restricts
    the pass to those rows (in that order, or shuffled: ``rows[randperm(len(rows))]``);
    ``with_index`` appends the int64 (B,) row numbers of the batch to every tuple. Rows may
    repeat (an epoch padded to whole batches).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"x must be a uint8 tensor (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    n, channels = x.shape[0], x.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean/std need one value per channel ({channels}), got {len(mean)} "
                         f"and {len(std)}")
    check_scaling(scaling, channels)
    if scaling == "imagenet":
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    elif scaling == "symmetric":
        mean, std = (0.5,) * channels, (0.5,) * channels
    device = torch.device(device)
    flat = x.reshape(n, -1)
    dim = flat.shape[1]
    scale = torch.tensor([1.0 / (255.0 * s) for s in std], dtype=torch.float32, device=device)
    shift = torch.tensor([-m / s for m, s in zip(mean, std)], dtype=torch.float32,
                         device=device)
    if channels == 1:
        scale_b, shift_b = scale.view(1, 1), shift.view(1, 1)
    else:
        per_pixel = dim // channels
        scale_b = scale.repeat_interleave(per_pixel).view(1, dim)
        shift_b = shift.repeat_interleave(per_pixel).view(1, dim)

    single_perm: Optional[torch.Tensor] = None
    perms: Optional[torch.Tensor] = None
    if permutations is not None and n > 0:
        tasks = torch.unique(t)
        if tasks.numel() == 1:
            row = permutations[int(tasks)]
            if not torch.equal(row, torch.arange(dim, dtype=row.dtype)):
                single_perm = row.to(device)
        else:
            perms = permutations.to(device)

    if rows is not None:
        rows = torch.as_tensor(rows, dtype=torch.int64)
        if rows.dim() != 1 or (rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n)):
            raise ValueError(f"rows must be a 1-d int64 tensor of row numbers in 0..{n - 1}")
        order = rows[torch.randperm(rows.numel(), generator=generator)] if shuffle else rows
        count = int(rows.numel())
    else:
        order = torch.randperm(n, generator=generator) if shuffle else None
        count = n
    stop = count - count % batch_size if drop_last else count
    for start in range(0, stop, batch_size):
        if order is None:
            span = slice(start, min(start + batch_size, n))
            xb, yb, tb = flat[span], y[span], t[span]
            index = torch.arange(span.start, span.stop, dtype=torch.int64) if with_index else None
        else:
            index = order[start:start + batch_size]
            xb, yb = flat.index_select(0, index), y.index_select(0, index)
            tb = t.index_select(0, index)
        xb = xb.to(device, non_blocking=True).to(torch.float32)
        xb = xb.div_(255.0) if scaling == "unit" else xb.mul_(scale_b).add_(shift_b)
        tb = tb.to(device, non_blocking=True)
        if single_perm is not None:
            xb = xb.index_select(1, single_perm)
        elif perms is not None:
            xb = torch.gather(xb, 1, perms.index_select(0, tb))
        out = (xb.view(-1, *x.shape[1:]), yb.to(device, non_blocking=True), tb)
        yield out + (index.to(device),) if with_index else out
