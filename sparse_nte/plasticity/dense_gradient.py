"""The dense gradient of a sparse layer's weight, for growth by gradient (RigL).

For a linear layer ``y = x W^T + b`` the loss gradient at every position, masked or not, is
``dL/dW = sum_b delta_b^T x_b`` with ``delta = dL/dy``; for a convolution
``torch.nn.grad.conv2d_weight(x, W.shape, delta, ...)`` (Evci et al., ICML 2020, grow by
``|g|``). It is formed from hooks on the layer, so it needs neither ``W.grad`` (masked by
:class:`~sparse_nte.layers.SparseWeights`) nor an optimizer that forms weight gradients (NTE
does not).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from sparse_nte.layers import SparseWeightsBase
from sparse_nte.layers.compact import CompactLinear

__all__ = ["DenseGradient"]


def _is_batched(t: torch.Tensor) -> bool:
    """True for a tensor seen inside vmap (e.g. a batched backward pass of the NTE optimizer)."""
    try:
        return bool(torch._C._functorch.is_batchedtensor(t))
    except AttributeError:  # pragma: no cover - older torch
        return False


class DenseGradient:
    """The dense loss gradient of a sparse layer's weight, from its input and output gradient.

    For a linear layer ``y = x W^T + b``: ``dL/dW = sum_b delta_b^T x_b`` with
    ``delta = dL/dy`` (leading dimensions of ``x`` are flattened into the batch); for a
    convolution ``torch.nn.grad.conv2d_weight(x, W.shape, delta, ...)``. Unlike ``W.grad`` it
    is not masked, and it does not need the optimizer to form weight gradients. Input and
    output gradient are captured (by a forward hook on the layer and a tensor hook on its
    output) only while :meth:`arm` is on, and only the first backward pass through each call is
    used (later passes through the same graph, e.g. batched per-example passes, are ignored).
    Gradients of several forward calls in one step add up.
    """

    def __init__(self, layer: SparseWeightsBase) -> None:
        m = layer.module
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                raise ValueError(f"DenseGradient supports Conv2d with numeric zero padding, got "
                                 f"padding={m.padding!r}, padding_mode={m.padding_mode!r}")
        elif not isinstance(m, (nn.Linear, CompactLinear)):
            raise ValueError(f"DenseGradient supports Linear (dense or compact) and Conv2d "
                             f"layers, got {type(m).__name__}")
        self.layer = layer
        self.armed = False
        self.grad: Optional[torch.Tensor] = None
        self._handle = layer.register_forward_hook(self._on_forward)

    def arm(self, on: bool) -> None:
        """Start (or stop) capturing; clears the gradient captured so far."""
        self.armed = bool(on)
        self.grad = None

    def close(self) -> None:
        self._handle.remove()

    def _on_forward(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not (self.armed and torch.is_grad_enabled() and isinstance(output, torch.Tensor)
                and output.requires_grad):
            return
        x = args[0].detach()
        used = [False]

        def on_grad(delta: torch.Tensor) -> None:
            if used[0] or _is_batched(delta):
                return
            used[0] = True
            self._add(x, delta.detach())

        output.register_hook(on_grad)

    def _add(self, x: torch.Tensor, delta: torch.Tensor) -> None:
        m = self.layer.module
        if isinstance(m, nn.Conv2d):
            g = torch.nn.grad.conv2d_weight(x, m.weight.shape, delta, m.stride, m.padding,
                                            m.dilation, m.groups)
        else:
            g = delta.reshape(-1, delta.shape[-1]).t() @ x.reshape(-1, x.shape[-1])
        self.grad = g if self.grad is None else self.grad.add_(g)
