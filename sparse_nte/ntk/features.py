"""Per-example Jacobian features: the rows of J(x) = d o(x) / d theta, per parameter tensor, in
factored form for linear layers and in dense form for everything else.

The outputs o are either the logits (K = C outputs per example) or each example's own
cross-entropy (K = 1; the rows are then the per-example loss gradients).

Linear layers (Novak et al., "Fast finite width neural tangent kernel", ICML 2022, structured
derivatives). For a layer z = a W^T + b called once on the n examples of the batch::

    d o_{b,k} / d W_{jl} = D_{b,k,j} a_{b,l} keep_{jl}        d o_{b,k} / d b_j = D_{b,k,j}

with a_b the layer input of example b and D_{b,k,:} = d o_{b,k} / d z_b the error back-propagated
to the layer output. Examples do not interact in the forward pass, so one backward pass of
sum_b o_{b,k} per output k gives D_{:,k,:} for every example at once (the layer outputs are
captured with :class:`sparse_nte.per_example.PerExampleCapture`; no weight gradient is formed).
A layer takes this path only if it ran exactly once on all n examples as a (n, in) input and its
(masked) weight and bias each enter the graph exactly once, through that call (checked in the
autograd graph); otherwise its parameters take the dense path.

Dense path: J_{b,k,:} for the remaining parameters from batched backward passes over one-hot
cotangents (``torch.autograd.grad(..., is_grads_batched=True)``), a block of (example, output)
rows at a time. A parameter the outputs do not depend on (an unused head) gets no feature: its
rows are zero.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.ntk.params import NetworkFunction, budget_rows, chunks
from sparse_nte.per_example import PerExampleCapture, graph_parents

__all__ = ["Factored", "Dense", "Feature", "Features", "extract", "DEFAULT_BUDGET"]

#: Default bound (elements) on the temporaries of one block of the kernel and feature code.
DEFAULT_BUDGET = 1 << 24


@dataclass
class Factored:
    """Rows of a linear layer's Jacobian: J[b, k] = D[b, k, :] (x) a[b, :] (* keep)."""

    a: Optional[torch.Tensor]     # (n, in) layer inputs; None for a bias
    d: torch.Tensor               # (n, K, out)
    keep: Optional[torch.Tensor]  # (out, in) float keep mask of the weight, or None

    @property
    def n(self) -> int:
        return int(self.d.shape[0])

    def elements(self) -> int:
        return self.d.numel() + (0 if self.a is None else self.a.numel())

    def dense(self) -> torch.Tensor:
        """The rows formed explicitly, (n, K, numel)."""
        if self.a is None:
            return self.d
        j = self.d.unsqueeze(3) * self.a.unsqueeze(1).unsqueeze(2)   # (n, K, out, in)
        if self.keep is not None:
            j = j * self.keep
        return j.reshape(self.d.shape[0], self.d.shape[1], -1)


@dataclass
class Dense:
    """Rows formed explicitly: j (n, K, numel), masked entries 0."""

    j: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.j.shape[0])

    def elements(self) -> int:
        return self.j.numel()

    def dense(self) -> torch.Tensor:
        return self.j


Feature = Union[Factored, Dense]


@dataclass
class Features:
    """Jacobian rows of n examples: ``per_param`` name -> feature (absent = zero rows),
    ``outputs`` (n, K) the differentiated outputs, ``logits`` (n, C)."""

    per_param: Dict[str, Feature]
    outputs: torch.Tensor
    logits: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.outputs.shape[0])

    @property
    def k(self) -> int:
        return int(self.outputs.shape[1])

    def elements(self) -> int:
        return sum(f.elements() for f in self.per_param.values())


def _node(t: torch.Tensor):
    return torch.autograd.graph.get_gradient_edge(t).node


def extract(fn: NetworkFunction, x: torch.Tensor, t: Optional[torch.Tensor] = None, *,
            params: Optional[Mapping[str, torch.Tensor]] = None,
            buffers: Optional[Mapping[str, torch.Tensor]] = None,
            keep: Optional[Mapping[str, torch.Tensor]] = None,
            targets: Optional[torch.Tensor] = None, factored: bool = True,
            budget: int = DEFAULT_BUDGET) -> Features:
    """Jacobian features of the outputs on the n examples ``x`` (one chunk; the caller chunks).

    Args:
        fn: the network function; ``params`` / ``buffers`` / ``keep``: the point (default the
            model's current state, see :class:`NetworkFunction`).
        targets: None for the logits (K = C); int64 (n,) labels for the per-example
            cross-entropy (K = 1).
        factored: allow the factored path for linear layers (False: every row dense).
        budget: elements of one batched backward pass of the dense path (rows x parameters).
    """
    values = fn.full_params(params)
    leaves = {n: values[n].detach().requires_grad_(True) for n in fn.names}
    modules = [m for m in fn.model.modules()
               if isinstance(m, nn.Linear) and id(m) in fn.linear_names] if factored else []
    capture = PerExampleCapture(modules)
    with capture, torch.enable_grad():
        logits = fn(leaves, x, t, buffers=buffers, keep=keep)
        if targets is None:
            out = logits
        else:
            out = F.cross_entropy(logits, targets, reduction="none").unsqueeze(1)
    if out.dim() != 2:
        raise ValueError(f"the model's output must be (examples, outputs), got {tuple(out.shape)}")
    n, k = out.shape
    effective = fn.last_effective
    nodes = {name: _node(effective[name]) for name in fn.names if effective[name].requires_grad}
    counts, _ = graph_parents(out.grad_fn, list(set(nodes.values())))
    used = {name for name, node in nodes.items() if counts[node] > 0}

    # linear layers that ran once on all n examples, their parameters used once each
    factor: Dict[str, tuple] = {}
    for m in modules:
        calls = capture.calls.get(m, [])
        if len(calls) != 1 or calls[0].input.dim() != 2 or calls[0].input.shape[0] != n:
            continue
        roles = fn.linear_names[id(m)]
        if all(name in used and counts[nodes[name]] == 1 for name in roles.values()):
            for role, name in roles.items():
                factor[name] = (m, role)

    per_param: Dict[str, Feature] = {}
    fact_modules = list(dict.fromkeys(m for m, _ in factor.values()))
    if fact_modules:
        d = {m: out.new_zeros(n, k, m.out_features) for m in fact_modules}
        for j in range(k):
            capture.recording = True
            try:
                torch.autograd.grad(out[:, j].sum(), capture.anchors, retain_graph=True,
                                    allow_unused=True)
            finally:
                capture.recording = False
            for m in fact_modules:
                call = capture.calls[m][0]
                if call.output_grad is not None:
                    d[m][:, j] = call.output_grad
                    call.output_grad = None
        keep_now = fn.keep_masks() if keep is None else keep
        for name, (m, role) in factor.items():
            if role == "weight":
                per_param[name] = Factored(capture.calls[m][0].input, d[m], keep_now.get(name))
            else:
                per_param[name] = Factored(None, d[m], None)

    dense = [name for name in fn.names if name in used and name not in factor]
    if dense:
        inputs = [leaves[name] for name in dense]
        size = sum(p.numel() for p in inputs)
        rows = budget_rows(size, budget, n * k)
        jac = {name: out.new_zeros(n * k, leaves[name].numel()) for name in dense}
        eye = torch.eye(n * k, dtype=out.dtype, device=out.device).view(n * k, n, k)
        for sl in chunks(n * k, rows):
            grads = torch.autograd.grad(out, inputs, grad_outputs=eye[sl], is_grads_batched=True,
                                        retain_graph=True, allow_unused=True)
            for name, g in zip(dense, grads):
                if g is not None:
                    jac[name][sl] = g.reshape(g.shape[0], -1)
        for name in dense:
            per_param[name] = Dense(jac[name].view(n, k, -1))
    for calls in capture.calls.values():
        for c in calls:
            c.output_grad = None
    return Features(per_param, out.detach(), logits.detach())

