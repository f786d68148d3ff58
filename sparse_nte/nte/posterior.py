"""Steps 2-4 of the NTE update: renormalise the posterior, clip it, write the weights.

After step 1 has added the log-likelihoods to the log-magnitudes l of the experts taking part in
the step (Benjamin, Pehle & Daruwalla, NeurIPS 2024; reference ``projectlib/ntk.py``)::

    2. l_i <- l_i + c,  c = log Z_target - logsumexp_{j taking part} l_j
    3. l_i <- min(l_i, log max_delta)
    4. w_i  = theta0_i + s_i exp(l_i)

Z_target is Z, the total magnitude fixed when the optimizer was built, minus the mass of the
experts that do not take part in the step (tensors of a layer that did not run: a head no example
was routed to); those keep l and w unchanged. Everything works block by block
(:mod:`sparse_nte.per_example.blocks`) so that no parameter-sized temporary is formed.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from sparse_nte.nte.state import LOG_MAGNITUDE, SIGN, THETA0
from sparse_nte.per_example import BLOCK_ELEMENTS, blocks

__all__ = ["log_sum_exp", "write_weight", "renormalise_and_write"]

#: One tensor of experts taking part in a step: (parameter, its state, its zero mask or None,
#: its max_delta).
Entry = Tuple[torch.Tensor, Dict[str, torch.Tensor], Optional[torch.Tensor], float]


def log_sum_exp(tensors: Sequence[torch.Tensor]) -> float:
    """log sum exp over all entries of ``tensors``: per block of 2^16 entries in the tensors'
    dtype, the blocks combined in float64 (-inf if there are none)."""
    parts = [torch.logsumexp(block, 0).double() for t in tensors for block in blocks(t)]
    if not parts:
        return -math.inf
    return float(torch.logsumexp(torch.stack(parts), 0))


@torch.no_grad()
def write_weight(p: torch.Tensor, state: Dict[str, torch.Tensor]) -> None:
    """Equation 4, w = theta0 + s * exp(l), block by block (the int8 signs are cast one block at
    a time)."""
    theta0 = state.get(THETA0)
    parts = zip(blocks(state[LOG_MAGNITUDE]), blocks(state[SIGN]), blocks(p),
                blocks(theta0) if theta0 is not None else
                [None] * (p.numel() // BLOCK_ELEMENTS + 1))
    for l_blk, s_blk, w_blk, t_blk in parts:
        torch.exp(l_blk, out=w_blk)
        w_blk.mul_(s_blk)
        if t_blk is not None:
            w_blk.add_(t_blk)


@torch.no_grad()
def renormalise_and_write(entries: Sequence[Entry], untouched: Sequence[torch.Tensor],
                          log_total: float) -> None:
    """Equations 2-4 for the tensors in ``entries``; ``untouched`` are the log-magnitudes of the
    managed tensors that do not take part (their mass is kept out of the target).

    Masked entries (the mask may have changed since the last step) leave the ensemble first
    (l = -inf, theta0 = 0). Then two passes over each tensor, block by block (a block stays in
    cache): (a) with m the block's largest l, write exp(l - m) into the weight's storage and sum
    it (the block's log-sum-exp, without a second exponential pass later); (b) with the shift c
    of step 2, l <- min(l + c, log max_delta) and |w| <- min(exp(l - m) * exp(c + m),
    max_delta), then the signs (and theta0).
    """
    offsets: List[List[float]] = []
    parts: List[float] = []
    for p, st, mask, _ in entries:
        l = st[LOG_MAGNITUDE]  # noqa: E741  (l_i, the log-magnitudes of the docstring)
        if mask is not None:
            l.masked_fill_(mask, -math.inf)
            if THETA0 in st:
                st[THETA0].masked_fill_(mask, 0.0)
        block_offsets = []
        for l_blk, w_blk in zip(blocks(l), blocks(p)):
            m = float(l_blk.max())
            block_offsets.append(m)
            if m == -math.inf:  # no live expert in this block
                continue
            torch.sub(l_blk, m, out=w_blk).exp_()
            parts.append(m + math.log(float(w_blk.sum(dtype=torch.float64))))
        offsets.append(block_offsets)
    lse_active = float(torch.logsumexp(torch.tensor(parts, dtype=torch.float64), 0)) \
        if parts else -math.inf
    target = log_total
    if untouched:
        lse_in = log_sum_exp(untouched)
        # Untouched tensors keep their mass; the rest share Z minus it. If they already hold
        # all of Z (only reset_positions can move that much mass into them), the tensors taking
        # part are not rescaled.
        target = log_total + math.log1p(-math.exp(lse_in - log_total)) \
            if lse_in < log_total else lse_active
    shift = target - lse_active if math.isfinite(lse_active) else 0.0
    for (p, st, _, max_delta), block_offsets in zip(entries, offsets):
        lmax = math.log(max_delta)
        theta0 = st.get(THETA0)
        parts_of_p = zip(blocks(st[LOG_MAGNITUDE]), blocks(p), blocks(st[SIGN]),
                         blocks(theta0) if theta0 is not None else [None] * len(block_offsets),
                         block_offsets)
        for l_blk, w_blk, s_blk, t_blk, m in parts_of_p:
            if m == -math.inf:
                w_blk.zero_()
            else:
                l_blk.add_(shift)
                w_blk.mul_(math.exp(shift + m))
                if m + shift > lmax:  # the clip binds somewhere in this block
                    l_blk.clamp_(max=lmax)
                    w_blk.clamp_(max=max_delta)
                w_blk.mul_(s_blk)
            if t_blk is not None:
                w_blk.add_(t_blk)
