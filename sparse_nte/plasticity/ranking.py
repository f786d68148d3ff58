"""Choosing k positions per row of a layer: the k best by a score, or k uniformly at random,
with ties and draws from a seeded generator (never by position).

Every growth and drop decision of the schedules is such a per-row choice: rows are output units,
columns their inputs (the weight viewed as ``(out_units, fan_in)``).
"""
from __future__ import annotations

import math

import torch

__all__ = ["top_k_per_row", "random_per_row"]


def top_k_per_row(scores: torch.Tensor, k: torch.Tensor,
                  generator: torch.Generator) -> torch.Tensor:
    """Per row ``r`` the ``k[r]`` largest ``scores`` (``-inf`` marks positions that must not be
    chosen; the caller guarantees enough finite ones). Exact ties at the selection threshold are
    broken uniformly at random, so that e.g. inputs whose gradient is exactly 0 everywhere are
    not chosen by column order. Returns a bool mask of the scores' shape."""
    rows, cols = scores.shape
    selected = torch.zeros(rows, cols, dtype=torch.bool, device=scores.device)
    k = k.to(device=scores.device, dtype=torch.long)
    kmax = int(k.max().item()) if rows else 0
    if kmax == 0:
        return selected
    if kmax > cols or bool((k < 0).any()):
        raise ValueError(f"internal: cannot choose {kmax} of {cols} positions")
    kk = min(kmax + 1, cols)              # one more than needed, to see ties at the boundary
    vals, idx = scores.topk(kk, dim=1, sorted=True)
    take = torch.arange(kk, device=scores.device).unsqueeze(0) < k.unsqueeze(1)
    if not bool(torch.isfinite(vals.masked_fill(~take, 0.0)).all()):
        raise ValueError("plasticity: cannot rank connections: a layer has non-finite weights "
                         "or gradients (has the training diverged?)")
    selected.scatter_(1, idx, take)
    active = k > 0
    thr = vals.gather(1, (k - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    nxt = vals.gather(1, k.clamp(max=kk - 1).unsqueeze(1)).squeeze(1)
    tied = active & (k < kk) & (nxt == thr)
    if bool(tied.any()):                  # rows where the k-th value recurs beyond rank k
        r = torch.nonzero(tied).flatten()
        s, t = scores[r], thr[r].unsqueeze(1)
        above, tie = s > t, s == t
        need = k[r] - above.sum(dim=1)
        keys = torch.rand(s.shape, generator=generator).to(s.device).masked_fill(~tie, -1.0)
        pick = keys.topk(int(need.max().item()), dim=1).indices
        chosen = torch.zeros_like(tie).scatter_(
            1, pick, torch.arange(pick.shape[1], device=s.device).unsqueeze(0) < need.unsqueeze(1))
        selected[r] = above | (chosen & tie)
    return selected


def random_per_row(eligible: torch.Tensor, k: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """Per row ``r`` a uniformly random set of ``k[r]`` eligible positions (bool mask).

    Draws columns uniformly with replacement and keeps the first ``k[r]`` distinct eligible ones
    of each row, which is sequential sampling without replacement from the eligible set, hence
    uniform over its ``k``-subsets; it touches ``O(k / p)`` entries per row (p = eligible
    fraction) instead of sorting the row. Rows that draw too few fall back to random keys.
    """
    rows, cols = eligible.shape
    dev = eligible.device
    selected = torch.zeros(rows, cols, dtype=torch.bool, device=dev)
    k = k.to(device=dev, dtype=torch.long)
    if rows == 0 or int(k.max().item()) == 0:
        return selected
    n_eligible = eligible.sum(dim=1)
    if bool((k > n_eligible).any()):
        raise ValueError("internal: asked for more positions than are eligible")
    active = k > 0
    p = float(n_eligible[active].min().item()) / cols
    draws_per_row = int(math.ceil(1.5 * int(k.max().item()) / p)) + 16
    todo = active
    if draws_per_row < cols:
        draws = torch.randint(0, cols, (rows, draws_per_row), generator=generator).to(dev)
        ok = eligible.gather(1, draws)
        ordered, order = draws.sort(dim=1, stable=True)
        first_sorted = torch.ones_like(ok)
        first_sorted[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
        first = torch.zeros_like(ok).scatter_(1, order, first_sorted)
        valid = ok & first
        take = valid & (valid.cumsum(dim=1) <= k.unsqueeze(1))
        r, j = torch.nonzero(take, as_tuple=True)
        selected[r, draws[r, j]] = True
        todo = take.sum(dim=1) < k
    if bool(todo.any()):
        r = torch.nonzero(todo).flatten()
        keys = torch.rand(len(r), cols, generator=generator).to(dev)
        selected[r] = top_k_per_row(keys.masked_fill(~eligible[r], -math.inf), k[r], generator)
    return selected
