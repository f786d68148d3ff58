"""Per-example gradients of any parameter: ``torch.func.vmap`` over the backward pass.

For parameters outside the captured linear / conv layers (a gain vector, a grouped convolution,
a weight used outside its module), the gradient of each example's own loss is
``d L_b / d theta = vjp(e_b)``, the vector-Jacobian product of the per-example losses with the
one-hot cotangent e_b; ``vmap`` batches these products over a chunk of examples.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple

import torch

from sparse_nte.per_example.checks import graph_parents

__all__ = ["per_example_grads"]


def per_example_grads(losses: torch.Tensor, params: Sequence[torch.Tensor],
                      chunk_elements: int) -> Iterator[Tuple[slice, List[Optional[torch.Tensor]]]]:
    """Per-example gradients of ``params``: yields ``(examples, grads)`` where ``grads[i]`` is
    the ``(len(examples), *params[i].shape)`` tensor of d losses[b] / d params[i] for b in the
    slice (None if the parameter does not take part in computing ``losses``).

    ``torch.func.vmap`` over ``torch.autograd.grad`` with one-hot cotangents: one batched
    backward pass per chunk of examples, sized so that the per-example gradients of a chunk
    hold about ``chunk_elements`` numbers. The graph of ``losses`` must be retained.
    """
    n = losses.shape[0]
    nodes = [torch.autograd.graph.get_gradient_edge(p).node for p in params]
    counts, _ = graph_parents(losses.grad_fn, nodes)
    used = [i for i, node in enumerate(nodes) if counts[node] > 0]
    if not used:
        return
    inputs = [params[i] for i in used]

    def backward(cotangent: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return torch.autograd.grad(losses, inputs, cotangent, retain_graph=True)

    size = max(1, sum(p.numel() for p in inputs))
    chunk = max(1, min(n, chunk_elements // size))
    eye = torch.eye(n, dtype=losses.dtype, device=losses.device)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        batched = torch.func.vmap(backward)(eye[start:stop])
        grads: List[Optional[torch.Tensor]] = [None] * len(params)
        for i, g in zip(used, batched):
            grads[i] = g
        yield slice(start, stop), grads
