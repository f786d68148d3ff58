"""Per-example gradient norms of the cross-entropy, the GraNd score (Paul, Ganguli & Dziugaite,
"Deep Learning on a Data Diet: Finding Important Examples Early in Training", NeurIPS 2021)::

    GraNd(x_n, y_n) = || M . grad_theta CE(f(x_n; theta), y_n) ||_2

over every trainable parameter, where M is 0 at masked (pruned) connections and 1 elsewhere:
a masked weight is not a parameter the network can change (its gradient is zeroed as it is
accumulated), so it is not part of the norm. Weights held at zero by Dale's law are live
parameters and count.

Computed from the per-example machinery of :mod:`sparse_nte.per_example`, never as a loop over
examples nor as a batch x parameters tensor for whole layers:

* ``nn.Linear`` called once on ``(n, in)`` inputs A with output gradients D (n, out): the
  per-example weight gradient is the outer product d_n a_n^T, so::

      || M . d_n a_n^T ||^2 = sum_jk M_jk d_nj^2 a_nk^2 = [ (D^2 M) . A^2 ]_n summed over k

  one GEMM per layer (without a mask, ||d_n||^2 ||a_n||^2); the bias adds ||d_n||^2.
* ``nn.Conv2d`` and linear layers on ``(n, ..., in)`` inputs or called several times on the
  whole batch: per-example gradients D_n^T A_n over the locations, in chunks of examples.
* any other parameter, or a layer whose parameters also enter the loss some other way (checked
  in the autograd graph): ``per_example_grads`` (``torch.func.vmap`` over the backward pass).

The network is scored in eval mode (no dropout, the k-WTA's inference k), deterministically.
DeepCore's GraNd uses the last layer's gradient only; this is the full norm of the paper.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.layers import SparseWeightsBase
from sparse_nte.per_example import (LayerCall, PerExampleCapture, conv2d_supported, graph_parents,
                                    per_example_grads, unfold_conv2d_input)

__all__ = ["per_example_grad_norms"]

#: Bound on the elements of a temporary block of per-example gradients.
CHUNK_ELEMENTS = 1 << 22


def _keep_masks(model: nn.Module) -> Dict[int, torch.Tensor]:
    """id(weight) -> float keep mask (1 live, 0 masked) for every sparse-weights layer."""
    return {id(m.module.weight): m.keep_mask_float() for m in model.modules()
            if isinstance(m, SparseWeightsBase)}


def _as_locations(layer: nn.Module, call: LayerCall) -> tuple:
    """(A (n, L, K), D (n, L, out)) of one call: per-example gradient = D_n^T A_n."""
    a, d = call.input, call.output_grad
    if isinstance(layer, nn.Conv2d):
        a = unfold_conv2d_input(layer, a)
        d = d.flatten(2).transpose(1, 2)
    else:
        a = a.reshape(a.shape[0], -1, a.shape[-1])
        d = d.reshape(d.shape[0], -1, d.shape[-1])
    return a, d


def _layer_sq_norms(layer: nn.Module, calls: List[LayerCall], keep: Optional[torch.Tensor],
                    n: int, chunk_elements: int) -> torch.Tensor:
    """sum over this layer's trainable parameters of the squared per-example gradient norms."""
    w_on = layer.weight.requires_grad
    b_on = layer.bias is not None and layer.bias.requires_grad
    out = torch.zeros(n, dtype=torch.float64, device=calls[0].input.device)
    if isinstance(layer, nn.Linear) and len(calls) == 1 and calls[0].input.dim() == 2:
        a, d = calls[0].input, calls[0].output_grad
        d2 = d * d
        if w_on:
            if keep is None:
                out += d2.sum(1).double() * (a * a).sum(1).double()
            else:
                out += ((d2 @ keep.to(d2.dtype)) * (a * a)).sum(1).double()
        if b_on:
            out += d2.sum(1).double()
        return out
    parts = [_as_locations(layer, c) for c in calls]
    a_all = torch.cat([p[0] for p in parts], dim=1) if len(parts) > 1 else parts[0][0]
    d_all = torch.cat([p[1] for p in parts], dim=1) if len(parts) > 1 else parts[0][1]
    out_features, k = d_all.shape[2], a_all.shape[2]
    mask = None if keep is None else keep.reshape(out_features, k).to(d_all.dtype)
    step = max(1, chunk_elements // max(1, out_features * k))
    for s in range(0, n, step):
        a_b, d_b = a_all[s:s + step], d_all[s:s + step]
        if w_on:
            g = torch.bmm(d_b.transpose(1, 2), a_b)          # (m, out, K)
            if mask is not None:
                g.mul_(mask)
            out[s:s + step] += g.pow(2).sum((1, 2)).double()
        if b_on:
            out[s:s + step] += d_b.sum(1).pow(2).sum(1).double()
    return out


def per_example_grad_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           t: Optional[torch.Tensor] = None, *,
                           chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """GraNd of every example of the batch: float64 (n,) norms of the masked per-example
    gradients of ``cross_entropy(model(x, t)[n], y[n])`` over the trainable parameters.

    The model is used in the mode it is in (scoring uses eval mode); each example's output must
    depend on that example alone (no batch statistics).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    keeps = _keep_masks(model)
    layers = [m for m in model.modules()
              if (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and conv2d_supported(m)))
              and any(p is not None and p.requires_grad for p in (m.weight, m.bias))]
    capture = PerExampleCapture(layers)
    with capture, torch.enable_grad():
        logits = model(x, t) if t is not None else model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
    n = int(losses.shape[0])
    total = losses.sum()
    if total.grad_fn is None:
        return torch.zeros(n, dtype=torch.float64)
    nodes = {id(p): torch.autograd.graph.get_gradient_edge(p).node for p in params}
    counts, reached = graph_parents(total.grad_fn, list(nodes.values()))

    # layers whose captured calls account for every use of their parameters
    exact: Dict[nn.Module, List[LayerCall]] = {}
    covered = set()
    for m in layers:
        calls = [c for c in capture.calls.get(m, []) if c.node_id in reached]
        own = [p for p in (m.weight, m.bias) if p is not None and p.requires_grad]
        sizes_ok = all(c.input.shape[0] == n for c in calls)
        uses_ok = all(counts[nodes[id(p)]] == len(calls) for p in own)
        if sizes_ok and uses_ok:
            exact[m] = calls
            covered.update(id(p) for p in own)
    generic = [p for p in params if id(p) not in covered]

    if capture.anchors:
        capture.recording = True
        try:
            torch.autograd.grad(total, capture.anchors, retain_graph=bool(generic),
                                allow_unused=True)
        finally:
            capture.recording = False

    sq = torch.zeros(n, dtype=torch.float64, device=losses.device)
    for m, calls in exact.items():
        calls = [c for c in calls if c.output_grad is not None]
        if calls:
            sq += _layer_sq_norms(m, calls, keeps.get(id(m.weight)), n, chunk_elements)
    if generic:
        for rows, grads in per_example_grads(losses, generic, chunk_elements):
            for p, g in zip(generic, grads):
                if g is None:
                    continue
                keep = keeps.get(id(p))
                if keep is not None:
                    g = g * keep
                sq[rows] += g.flatten(1).double().pow(2).sum(1)
    return sq.sqrt().cpu()
