"""The empirical neural tangent kernel of a network, and its Jacobian.

Jacot, Gabriel & Hongler, "Neural tangent kernel: convergence and generalization in neural
networks" (NeurIPS 2018); the empirical (finite-width) kernel at the current parameters::

    Theta(x, x') = J(x) J(x')^T,     J(x) = d f(x; theta) / d theta   (C outputs x P parameters)

over the model's trainable LIVE parameters (an entry masked by a sparse-weights layer is not a
parameter and contributes nothing; :mod:`sparse_nte.ntk.params`). Summed over parameter tensors,
Theta = sum_l Theta_l: the tensors (or layers) are the NTE view's groups of experts, and
``per_layer=True`` returns each layer's Theta_l (weight and bias of the module that owns them).

Linear layers are contracted without forming J (:mod:`sparse_nte.ntk.contract`); other layers
(convolutions, heads that see only part of a batch) through explicit Jacobian rows.

Mode: the model is evaluated as the caller set it (see :mod:`sparse_nte.ntk.params`): in eval
mode the kernel of the inference network (k-WTA with ``k_inference`` winners), in training mode
with ``k`` winners and, if the model has dropout, one random dropout mask per chunk pass
(then Theta is not even symmetric). Use ``model.eval()`` for diagnostics.
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn

from sparse_nte.ntk.contract import MODES, contract
from sparse_nte.ntk.features import DEFAULT_BUDGET, Features, extract
from sparse_nte.ntk.params import (NetworkFunction, ParameterPoint, check_inputs, chunks,
                                   slice_t)

__all__ = ["empirical_ntk", "jacobian", "KernelResult"]

KernelResult = Union[torch.Tensor, Dict[str, torch.Tensor]]


def _features(fn: NetworkFunction, x: torch.Tensor, t: Optional[torch.Tensor], rows: slice,
              point: Optional[ParameterPoint], budget: int) -> Features:
    if point is None:
        return extract(fn, x[rows], slice_t(t, rows), budget=budget)
    return extract(fn, x[rows], slice_t(t, rows), params=point.params, buffers=point.buffers,
                   keep=point.keep, budget=budget)


def _auto_chunk(probe: Features, n: int, mode: str, budget: int) -> int:
    """Examples per chunk: features of a chunk and its kernel block within ``budget``."""
    per_example = max(1, probe.elements() // probe.n)
    size = budget // per_example
    if mode == "full":
        size = min(size, int(math.isqrt(budget // max(1, probe.k * probe.k))))
    return max(1, min(n, size))


def _add(total: Dict[str, torch.Tensor], key: Dict[str, str], feats1: Features,
         feats2: Features, fn: NetworkFunction, mode: str, budget: int, rows1: slice,
         rows2: Optional[slice]) -> None:
    """Add each parameter's block to ``total[key[name]]`` (``rows2`` None: diagonal mode)."""
    for name in fn.names:
        f1 = feats1.per_param.get(name)
        f2 = feats2.per_param.get(name)
        if f1 is None or f2 is None:
            continue
        block = contract(f1, f2, mode, budget)
        target = total[key[name]]
        if rows2 is None:
            target[rows1] += block
        else:
            target[rows1, rows2] += block


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: Optional[torch.Tensor] = None, *,
                  t1: Optional[torch.Tensor] = None, t2: Optional[torch.Tensor] = None,
                  mode: str = "full", per_layer: bool = False, chunk: Optional[int] = None,
                  point: Optional[ParameterPoint] = None,
                  budget: int = DEFAULT_BUDGET) -> KernelResult:
    """The empirical NTK Theta(x1, x2) = J(x1) J(x2)^T of ``model`` (module docstring).

    Args:
        model: called as ``model(x, t)`` (``model(x)`` when t is None); outputs (N, C).
        x1, x2: inputs, examples along dim 0; ``x2=None`` means x2 = x1 (symmetric: only the
            blocks on and above the diagonal are computed).
        t1, t2: int64 task ids per example (multi-head models), or None.
        mode: ``"full"`` -> (N1, N2, C, C); ``"trace"`` -> (N1, N2), summed over outputs
            (Theta[a, b] = sum_c Theta[a, b, c, c]); ``"diagonal"`` -> (N1, C, C), the kernel of
            every example of x1 with itself (x2 must be None).
        per_layer: return ``{layer name: Theta_layer}`` (the module owning the parameters, e.g.
            ``"blocks.0.layer.module"``) instead of the total; the values sum to the total.
        chunk: examples per chunk (default: chosen so that one chunk's features and one kernel
            block each hold at most ``budget`` elements).
        point: evaluate at a saved :class:`ParameterPoint` (parameters, buffers and masks)
            instead of the model's current state.
        budget: element bound of the temporaries (default 2^24, 64 MiB in float32).

    Memory. With s bytes per element, F the features per example (sum over linear layers of
    in + (C + 1) out, plus C x parameters of any other layer) and m = ``chunk``, the peak beyond
    the result itself (N1 N2 C^2, N1 N2 or N1 C^2 elements, times the number of layers with
    ``per_layer``) is about s (2 m F + 3 budget): the features of one chunk of x1 and of one
    chunk of x2, and at most ``budget`` elements for each of: a kernel block (m^2 C^2), the
    masked Gram blocks of :mod:`sparse_nte.ntk.contract`, and one batched backward pass of the
    dense path (rows x its parameters). The features of x2 are kept across chunks of x1 when
    they hold at most 4 ``budget`` elements in all (then add s N2 F), otherwise recomputed.
    """
    if mode not in MODES:
        raise ValueError(f"empirical_ntk: mode must be one of {MODES}, got {mode!r}")
    check_inputs(x1, t1, "empirical_ntk (x1, t1)")
    if x2 is not None:
        if mode == "diagonal":
            raise ValueError("empirical_ntk: mode='diagonal' is the kernel of each example of x1 "
                             "with itself; pass x2=None")
        check_inputs(x2, t2, "empirical_ntk (x2, t2)")
    elif t2 is not None:
        raise ValueError("empirical_ntk: t2 given without x2")
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"empirical_ntk: chunk must be a positive int or None, got {chunk!r}")
    fn = NetworkFunction(model)
    n1 = x1.shape[0]
    symmetric = x2 is None
    xb, tb = (x1, t1) if symmetric else (x2, t2)
    n2 = xb.shape[0]
    probe = _features(fn, x1, t1, slice(0, min(2, n1)), point, budget)
    size = chunk or _auto_chunk(probe, n1, mode, budget)
    c = probe.k
    shape = {"full": (n1, n2, c, c), "trace": (n1, n2), "diagonal": (n1, c, c)}[mode]
    # one result per layer only when asked for: each is as large as the kernel
    key = {n: (fn.layer_of[n] if per_layer else "") for n in fn.names}
    total = {k: probe.logits.new_zeros(shape) for k in dict.fromkeys(key.values())}

    rows1: List[slice] = chunks(n1, size)
    if mode == "diagonal":
        for r1 in rows1:
            f1 = _features(fn, x1, t1, r1, point, budget)
            _add(total, key, f1, f1, fn, mode, budget, r1, None)
        return _result(total, per_layer)
    rows2: List[slice] = rows1 if symmetric else chunks(n2, size)
    cache: Dict[int, Features] = {}
    cacheable = (probe.elements() // probe.n) * n2 <= 4 * budget

    def side2(j: int) -> Features:
        if j in cache:
            return cache[j]
        feats = _features(fn, xb, tb, rows2[j], point, budget)
        if cacheable:
            cache[j] = feats
        return feats

    for i, r1 in enumerate(rows1):
        f1 = side2(i) if symmetric else _features(fn, x1, t1, r1, point, budget)
        for j, r2 in enumerate(rows2):
            if symmetric and j < i:
                continue
            f2 = f1 if symmetric and j == i else side2(j)
            _add(total, key, f1, f2, fn, mode, budget, r1, r2)
            if symmetric and j > i:
                for layer in total:
                    block = total[layer][r1, r2]
                    total[layer][r2, r1] = block.transpose(0, 1) if mode == "trace" \
                        else block.permute(1, 0, 3, 2)
    return _result(total, per_layer)


def _result(total: Dict[str, torch.Tensor], per_layer: bool) -> KernelResult:
    return total if per_layer else total[""]


def jacobian(model: nn.Module, x: torch.Tensor, t: Optional[torch.Tensor] = None, *,
             point: Optional[ParameterPoint] = None, live_only: bool = True,
             budget: int = DEFAULT_BUDGET) -> torch.Tensor:
    """J(x): (N, C, P) rows of the Jacobian of the logits over the trainable parameters,
    concatenated in ``named_parameters()`` order; with ``live_only`` the masked entries are
    left out (P = number of live entries), else they are included as zero columns.

    Forms J explicitly (N x C x P elements): meant for small models (the GP's parameter-space
    solve, tests). Chunks of examples sized by ``budget`` for the intermediate passes.
    """
    check_inputs(x, t, "jacobian")
    fn = NetworkFunction(model)
    keep = point.keep if point is not None else fn.keep_masks()
    rows = []
    for r in chunks(x.shape[0], max(1, budget // max(1, sum(fn.num_live(keep).values())))):
        if point is None:
            feats = extract(fn, x[r], slice_t(t, r), budget=budget)
        else:
            feats = extract(fn, x[r], slice_t(t, r), params=point.params, buffers=point.buffers,
                            keep=point.keep, budget=budget)
        n, c = feats.n, feats.k
        parts = []
        for name in fn.names:
            numel = fn.numel(name)
            f = feats.per_param.get(name)
            j = f.dense() if f is not None else feats.outputs.new_zeros(n, c, numel)
            if live_only and name in keep:
                j = j[:, :, keep[name].reshape(-1) != 0]
            parts.append(j)
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows, dim=0)
