"""Drawing the kept subset from a score table, with every example's inclusion probability.

Each draw returns ``(rows, pi)``: the kept rows (int64, ascending) and ``pi`` (float64, one per
example), the probability that the draw keeps the example given the scores. ``pi`` is what the
unbiased rescaling divides by (Horvitz & Thompson, "A generalization of sampling without
replacement from a finite universe", JASA 47:663, 1952)::

    E[ sum_{i kept} l_i / pi_i ] = sum_i pi_i l_i / pi_i = sum_i l_i        (all pi_i > 0)

Top k with random ties (:func:`top_k`). Let tau be the k-th largest score, A = {s_i > tau}
(a examples) and T = {s_i = tau} (m examples). The draw keeps A and a uniformly random
(k - a)-subset of T, so ties are never broken by position::

    pi_i = 1 on A,   (k - a) / m on T,   0 below tau.

NaN scores rank as +inf (an example whose loss is not a number is not judged easy).

Uniform (:func:`uniform`): k of n without replacement, pi_i = k / n.

Epsilon-greedy (:func:`epsilon_greedy`; Raju et al. 2021): the top g = k - r by score (random
ties, probabilities pi^g), then r drawn uniformly from the n - g others. Given any greedy set,
each other example is drawn with probability r / (n - g), so::

    pi_i = pi^g_i + (1 - pi^g_i) r / (n - g).
"""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["top_k", "uniform", "epsilon_greedy"]


def _check(n: int, k: int, what: str) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"{what}: cannot keep {k} of {n} examples (0 <= k <= n)")


def top_k(scores: torch.Tensor, k: int, generator: torch.Generator
          ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The k highest of ``scores`` (1-d), ties at the threshold broken at random.

    O(n): the threshold tau is the k-th largest score (``kthvalue``); A is kept whole and the
    k - a places left go to a uniformly random subset of the tied examples.
    """
    n = int(scores.numel())
    _check(n, k, "top_k")
    if k == 0:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(n, dtype=torch.float64)
    if k == n:
        return torch.arange(n, dtype=torch.int64), torch.ones(n, dtype=torch.float64)
    ranked = scores.detach().to("cpu", torch.float64)
    nan = torch.isnan(ranked)
    if bool(nan.any()):
        ranked = ranked.masked_fill(nan, torch.inf)
    tau = torch.kthvalue(ranked, n - k + 1).values
    above = ranked > tau
    tied = torch.nonzero(ranked == tau).flatten()
    a, m = int(above.sum()), int(tied.numel())
    keep = above.clone()
    keep[tied[torch.randperm(m, generator=generator)[:k - a]]] = True
    pi = above.to(torch.float64)
    pi[tied] = (k - a) / m
    return torch.nonzero(keep).flatten(), pi


def uniform(n: int, k: int, generator: torch.Generator) -> Tuple[torch.Tensor, torch.Tensor]:
    """k of n uniformly without replacement."""
    _check(n, k, "uniform")
    rows = torch.randperm(n, generator=generator)[:k]
    pi = torch.full((n,), k / n if n else 0.0, dtype=torch.float64)
    return torch.sort(rows).values, pi


def epsilon_greedy(scores: torch.Tensor, k: int, r: int, generator: torch.Generator
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
    """The top k - r by score plus r uniformly from the rest."""
    n = int(scores.numel())
    _check(n, k, "epsilon_greedy")
    if not 0 <= r <= k:
        raise ValueError(f"epsilon_greedy: the random share r = {r} must be in 0..k = {k}")
    g = k - r
    greedy, pi = top_k(scores, g, generator)
    if r == 0:
        return greedy, pi
    rest_mask = torch.ones(n, dtype=torch.bool)
    rest_mask[greedy] = False
    rest = torch.nonzero(rest_mask).flatten()
    drawn = rest[torch.randperm(rest.numel(), generator=generator)[:r]]
    pi = pi + (1.0 - pi) * (r / (n - g))
    return torch.sort(torch.cat([greedy, drawn])).values, pi
