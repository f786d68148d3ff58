"""Step 1 of the NTE update: add each expert's log-likelihood of the batch to its log-magnitude,

    l_i <- l_i + eta * sum_b log(1 - beta s_i g_{b,i})            (Benjamin, Pehle & Daruwalla,
                                                                     NeurIPS 2024)

dispatched per layer to the per-example machinery (:mod:`sparse_nte.per_example`):

* the weight of a linear layer with one location per example: the power series where it is
  provably within ``fast_tol`` (``fast``), the exact sums for the other output rows;
* the weight of a convolution, or of a layer with several locations or calls per example: exact
  sums from ``bmm`` per-example gradients;
* the live values of a compact sparse linear layer: the same choice between series and exact
  sums per output row, computed at the live entries only
  (:mod:`sparse_nte.per_example.compact`);
* a bias: its per-example gradients are the layer's output gradients summed over locations;
* any other parameter: per-example gradients by ``vmap`` over the backward pass;
* a parameter penalty R(theta) (one more observation, :mod:`sparse_nte.nte`): the factor
  ``eta * log(1 - beta s_i g_R,i)`` of its gradient g_R.

Every function adds to the log-magnitudes in place and returns the number of likelihood terms
clamped by the guard (``1 - beta s g`` below ``min_likelihood``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from sparse_nte.nte.model_index import Layer
from sparse_nte.nte.options import FAST_MODES
from sparse_nte.nte.state import LOG_MAGNITUDE, SIGN
from sparse_nte.per_example import (LayerCall, add_log_likelihood, bmm_exact, check_penalty,
                                    compact_exact, compact_series, compact_weight_grad,
                                    conv2d_padding, dense_log_likelihood, linear_exact,
                                    linear_series, per_example_grads, row_bound, series_terms,
                                    unfold_conv2d_input)

__all__ = ["Numerics", "nonzero_terms", "weight_log_likelihood", "bias_log_likelihood",
           "batch_weight_grad", "generic_log_likelihood", "penalty_gradients",
           "penalty_log_likelihood"]


@dataclass(frozen=True)
class Numerics:
    """How the sums are evaluated: the series' tolerance on a log-magnitude step, the guard, and
    the size of the temporary blocks of the exact path."""

    fast_tol: float
    min_likelihood: float
    chunk_elements: int


def nonzero_terms(calls: Sequence[LayerCall]) -> Tuple[bool, bool]:
    """(weight, bias): whether some per-example gradient of the layer's weight (some call with a
    non-zero input and output gradient) or bias (a non-zero output gradient) is non-zero. Where
    all are zero every likelihood is 1 and the sums are exactly 0, so they are not formed."""
    weight = bias = False
    for c in calls:
        if bool(c.output_grad.any()):
            bias = True
            if bool(c.input.any()):
                return True, True
    return weight, bias


@torch.no_grad()
def weight_log_likelihood(layer: Layer, calls: Sequence[LayerCall], state: Dict[str, torch.Tensor],
                          dale_sign: Optional[torch.Tensor], group: dict, numerics: Numerics,
                          report: dict) -> int:
    """Step 1 for the weight of a captured layer from its calls (all with output gradients).
    ``dale_sign``: the (in,) presynaptic signs of a Dale layer (the expert signs of a column),
    or None. Adds the rows taken by the series / exact path to ``report``."""
    if layer.kind == "compact":
        return _compact_log_likelihood(layer, calls, state, group, numerics, report)
    w = layer.weight
    out = w.shape[0]
    sign: Optional[torch.Tensor] = state[SIGN].view(out, -1)
    acc = state[LOG_MAGNITUDE].view(out, -1)
    col_sign = None
    if dale_sign is not None:
        col_sign = dale_sign
        if w.dim() > 2:
            col_sign = col_sign.repeat_interleave(w[0, 0].numel())
        sign = None
    beta, eta = group["beta"], group["eta"]
    floor, chunk = numerics.min_likelihood, numerics.chunk_elements
    max_terms = FAST_MODES[group["fast"]]
    c0 = calls[0]
    if layer.kind == "linear" and len(calls) == 1 and c0.input.dim() == 2:
        a, d = c0.input, c0.output_grad
        x = row_bound(a.unsqueeze(1), d.unsqueeze(1), beta)
        if max_terms:
            n_terms, fast = series_terms(x, numerics.fast_tol / eta, max_terms)
        else:
            n_terms, fast = 0, torch.zeros(out, dtype=torch.bool, device=w.device)
        n_fast = int(fast.sum())
        guard = 0
        if n_fast == out:
            del x  # not needed by the series: free it before the series' buffers
            linear_series(a, d, beta, n_terms, sign, col_sign, out=acc, alpha=eta)
        else:
            if n_fast:
                rows = torch.nonzero(fast).flatten()
                part = linear_series(a, d[:, rows], beta, n_terms,
                                     None if sign is None else sign[rows], col_sign)
                acc.index_add_(0, rows, part, alpha=eta)
            rows = None if n_fast == 0 else torch.nonzero(~fast).flatten()
            guard = linear_exact(a, d, beta, rows, sign, col_sign, floor, x, chunk, out=acc,
                                 alpha=eta)
        if n_fast:
            report["series_terms"][layer.name] = n_terms
        report["series_rows"] += n_fast
        report["exact_rows"] += out - n_fast
        return guard
    sources, unfold = _layer_sources(layer, calls)
    report["exact_rows"] += out
    return bmm_exact(sources, beta, sign, col_sign, floor, chunk, out=acc, alpha=eta,
                     unfold=unfold)


def _compact_log_likelihood(layer: Layer, calls: Sequence[LayerCall],
                            state: Dict[str, torch.Tensor], group: dict, numerics: Numerics,
                            report: dict) -> int:
    """Step 1 for the live values of a compact layer: series for the output rows where it is
    provably within ``fast_tol`` (as for a dense linear layer), exact sums for the entries of
    the other rows. The expert signs (the Dale signs under Dale's law) are per entry."""
    c = calls[0]
    if len(calls) > 1 or c.input.dim() != 2:
        raise ValueError(f"NTE: compact layer '{layer.name}' was called with inputs of shape "
                         f"{tuple(c.input.shape)} ({len(calls)} call(s)); per-example sums of a "
                         f"compact layer need one (batch, in) call per step (use sparse_exec "
                         f"!= 'compact' for other uses)")
    live = layer.module.live
    out = live.out_features
    beta, eta = group["beta"], group["eta"]
    max_terms = FAST_MODES[group["fast"]]
    sign, acc = state[SIGN], state[LOG_MAGNITUDE]
    a, d = c.input, c.output_grad
    x = row_bound(a.unsqueeze(1), d.unsqueeze(1), beta)
    if max_terms:
        n_terms, fast = series_terms(x, numerics.fast_tol / eta, max_terms)
    else:
        n_terms, fast = 0, torch.zeros(out, dtype=torch.bool, device=a.device)
    n_fast = int(fast.sum())
    entry_fast = fast.index_select(0, live.row_idx) if 0 < n_fast < out else None
    guard = 0
    if n_fast:
        part = compact_series(a, d, beta, n_terms, live, sign)
        if entry_fast is not None:
            part.masked_fill_(~entry_fast, 0.0)
        acc.add_(part.to(acc.dtype), alpha=eta)
        report["series_terms"][layer.name] = n_terms
    if n_fast < out:
        entries = None if entry_fast is None else torch.nonzero(~entry_fast).flatten()
        sums, guard = compact_exact(a, d, beta, live, sign, numerics.min_likelihood, x,
                                    numerics.chunk_elements, entries)
        if entries is None:
            acc.add_(sums.to(acc.dtype), alpha=eta)
        else:
            acc.index_add_(0, entries, sums.to(acc.dtype), alpha=eta)
    report["series_rows"] += n_fast
    report["exact_rows"] += out - n_fast
    return guard


@torch.no_grad()
def bias_log_likelihood(layer: Layer, calls: Sequence[LayerCall], state: Dict[str, torch.Tensor],
                        group: dict, floor: float) -> Tuple[int, torch.Tensor]:
    """Step 1 for the bias of a captured layer; returns the guard count and the per-example
    bias gradients (n, out)."""
    g = _bias_grads(layer, calls)
    part, clamped = dense_log_likelihood(g, state[SIGN], group["beta"], floor)
    state[LOG_MAGNITUDE].add_(part, alpha=group["eta"])
    return clamped, g


def _bias_grads(layer: Layer, calls: Sequence[LayerCall]) -> torch.Tensor:
    """Per-example bias gradients (n, out): output gradients summed over locations/calls."""
    total = None
    for c in calls:
        d = c.output_grad
        d = d.flatten(2).sum(2) if layer.kind == "conv2d" else \
            d.reshape(d.shape[0], -1, d.shape[-1]).sum(1)
        total = d if total is None else total + d
    return total


def _layer_sources(layer: Layer, calls: Sequence[LayerCall]
                   ) -> Tuple[list, Optional[Callable[[torch.Tensor], torch.Tensor]]]:
    """(input, output_grad as (n, L, out)) per call, and the unfold for conv inputs."""
    m = layer.module
    if layer.kind == "conv2d":
        sources = [(c.input, c.output_grad.flatten(2).transpose(1, 2)) for c in calls]
        return sources, (lambda x: unfold_conv2d_input(m, x))
    sources = []
    for c in calls:
        n = c.input.shape[0]
        sources.append((c.input.reshape(n, -1, c.input.shape[-1]),
                        c.output_grad.reshape(n, -1, c.output_grad.shape[-1])))
    return sources, None


@torch.no_grad()
def batch_weight_grad(layer: Layer, calls: Sequence[LayerCall]) -> torch.Tensor:
    """sum_b g_b of the layer weight (the gradient of the summed losses)."""
    m = layer.module
    total = None
    for c in calls:
        if layer.kind == "compact":
            g = compact_weight_grad(c.input.reshape(-1, c.input.shape[-1]),
                                    c.output_grad.reshape(-1, c.output_grad.shape[-1]), m.live)
        elif layer.kind == "conv2d":
            g = torch.nn.grad.conv2d_weight(c.input, m.weight.shape, c.output_grad,
                                            stride=m.stride, padding=conv2d_padding(m),
                                            dilation=m.dilation, groups=m.groups)
        else:
            d = c.output_grad.reshape(-1, c.output_grad.shape[-1])
            a = c.input.reshape(-1, c.input.shape[-1])
            g = d.T @ a
        total = g if total is None else total.add_(g)
    return total


def generic_log_likelihood(losses: torch.Tensor, params: Sequence[torch.Tensor],
                           states: Sequence[Dict[str, torch.Tensor]], groups: Sequence[dict],
                           numerics: Numerics, want_grad: bool
                           ) -> Tuple[int, List[torch.Tensor], Dict[int, torch.Tensor]]:
    """Step 1 for parameters outside captured layers (vmap over the backward pass; the graph of
    ``losses`` must be retained). Returns the guard count, the parameters the losses depend on
    (the others get no term and do not take part in the step), and, with ``want_grad``, the
    gradient of the summed losses of each of them (by id)."""
    guard = 0
    sums: Dict[int, torch.Tensor] = {}
    gsum: Dict[int, torch.Tensor] = {}
    for _, grads in per_example_grads(losses, params, numerics.chunk_elements):
        with torch.no_grad():
            for p, st, group, g in zip(params, states, groups, grads):
                if g is None:
                    continue
                part, c = dense_log_likelihood(g, st[SIGN], group["beta"],
                                               numerics.min_likelihood)
                guard += c
                sums[id(p)] = part if id(p) not in sums else sums[id(p)].add_(part)
                if want_grad:
                    s = g.sum(0)
                    gsum[id(p)] = s if id(p) not in gsum else gsum[id(p)].add_(s)
    used = [p for p in params if id(p) in sums]
    with torch.no_grad():
        for p, st, group in zip(params, states, groups):
            if id(p) in sums:
                st[LOG_MAGNITUDE].add_(sums[id(p)], alpha=group["eta"])
    return guard, used, gsum


def penalty_gradients(penalty: Optional[Callable[[], Optional[torch.Tensor]]],
                      params: Sequence[torch.Tensor], batch_nodes: Sequence[torch.Tensor]
                      ) -> Dict[int, torch.Tensor]:
    """g_R = dR/dtheta of every parameter in ``params`` that R = ``penalty()`` depends on (by
    id); empty without a penalty or when it returns None. ``batch_nodes``: leaves of the
    forward pass R must not depend on (:func:`~sparse_nte.per_example.check_penalty`)."""
    if penalty is None:
        return {}
    if not callable(penalty):
        raise ValueError(f"NTE.step: penalty must be a callable returning R(theta), got "
                         f"{type(penalty).__name__}")
    with torch.enable_grad():
        value: Any = penalty()
    if value is None:
        return {}
    value = check_penalty(value, params, batch_nodes)
    grads = torch.autograd.grad(value, list(params), allow_unused=True)
    return {id(p): g for p, g in zip(params, grads) if g is not None}


@torch.no_grad()
def penalty_log_likelihood(state: Dict[str, torch.Tensor], g: torch.Tensor, group: dict,
                           floor: float) -> int:
    """Step 1': l_i += eta * log(max(1 - beta s_i g_R,i, floor)); returns the guard count."""
    return add_log_likelihood(state[LOG_MAGNITUDE], g, state[SIGN], group["beta"], floor,
                              alpha=group["eta"])
