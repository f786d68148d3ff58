"""Entropy of k-winner duty cycles, in bits (nupic.torch's ``duty_cycle_metrics``).

A unit active with probability ``p`` (its duty cycle) carries the binary entropy

    H(p) = -p log2 p - (1 - p) log2 (1 - p),        H(0) = H(1) = 0

and a layer of ``n`` units ``sum_i H(d_i)`` bits. With ``k`` of ``n`` units active in every
example the mean duty cycle is ``k / n``, and since ``H`` is concave the sum is largest when every
unit has exactly that duty cycle::

    max_entropy(n, k) = n H(k / n)

Ahmad & Scheinkman, "How can we be so dense? The benefits of using highly sparse
representations" (2019) use the ratio of the two to show that boosting spreads activity over the
units.

Differences from nupic.torch: ``max_entropy(0, 0)`` is 0 (nupic.torch divides by zero), and a
``k`` outside ``[0, n]`` is a ``ValueError`` instead of a silent 0.
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["binary_entropy", "max_entropy"]


def binary_entropy(x: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-element binary entropy ``H(x)`` in bits and its sum: ``(entropy, entropy.sum())``.

    ``x`` holds probabilities (a tensor or anything ``torch.as_tensor`` takes; integers are
    converted to the default float dtype). Elements equal to 0 or 1 give exactly 0; elements
    outside ``[0, 1]`` have no entropy and give NaN.
    """
    x = torch.as_tensor(x)
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    # xlogy(a, a) = a log a with 0 log 0 = 0: no NaN at the ends of [0, 1].
    q = 1.0 - x
    entropy = -(torch.special.xlogy(x, x) + torch.special.xlogy(q, q)) / math.log(2.0)
    return entropy, entropy.sum()


def max_entropy(n: int, k: int) -> float:
    """``n H(k / n)`` bits: the largest total entropy of ``n`` units of which ``k`` are active in
    every example (0 when ``n = 0``, ``k = 0`` or ``k = n``)."""
    n, k = int(n), int(k)
    if n < 0:
        raise ValueError(f"max_entropy: n (number of units) must be >= 0, got {n}")
    if not 0 <= k <= n:
        raise ValueError(f"max_entropy: k (active units) must be in [0, n={n}], got {k}")
    if k == 0 or k == n:
        return 0.0
    s = k / n
    return -n * (s * math.log2(s) + (1.0 - s) * math.log2(1.0 - s))
