"""Capturing layer inputs and the gradients at layer outputs during one forward/backward pass.

For a layer ``y = f(x; W)`` applied to a batch whose examples do not interact, the gradient of
the SUMMED per-example losses at the output, ``D = d(sum_b L_b)/dy``, has in row b the gradient
of example b's own loss (``L_c`` does not depend on ``y_b`` for c != b). With the input ``A``,
each example's weight gradient follows: ``g_b = D_b^T A_b`` for a linear layer. This module
records A and D for given modules without forming any weight gradient.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

__all__ = ["LayerCall", "PerExampleCapture"]


@dataclass
class LayerCall:
    """One call of a captured layer during the forward pass.

    Attributes:
        input: the layer input (detached), dim 0 indexing examples.
        output_grad: gradient of the summed per-example losses at the layer output (detached),
            filled in by the backward pass; None if the output did not reach the loss.
        node_id: ``id`` of the autograd node of the (anchored) output (an id, not the node: the
            node's hook refers to this record, and a reference back would make a cycle through
            C++ objects that the garbage collector cannot free).
    """

    input: torch.Tensor
    output_grad: Optional[torch.Tensor] = None
    node_id: int = 0


@dataclass
class PerExampleCapture:
    """Context manager capturing, for each given module, its inputs in the forward pass and the
    gradients at its outputs in the backward pass.

    While active, every call of a module whose output requires grad is recorded in
    ``calls[module]``; the output is replaced by ``output + anchor`` where ``anchor`` is a fresh
    0-dim zero tensor requiring grad (``anchors``). Asking autograd for the gradients of the
    anchors forces the backward pass through every captured output, WITHOUT computing the
    weight gradients of the captured layers; a tensor hook on the new output (registered before
    any later in-place operation such as ``relu_``) records the gradient at the layer output.
    Gradients are recorded only while ``recording`` is True, so later batched backward passes
    through the same graph do not overwrite them.
    """

    modules: Sequence[nn.Module]
    calls: dict = field(default_factory=dict)
    anchors: List[torch.Tensor] = field(default_factory=list)
    recording: bool = False
    _handles: list = field(default_factory=list)

    def __enter__(self) -> "PerExampleCapture":
        for m in self.modules:
            self._handles.append(m.register_forward_hook(self._forward_hook, with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _forward_hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor)
                and output.requires_grad):
            return None
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor):
            return None
        anchor = torch.zeros((), dtype=output.dtype, device=output.device, requires_grad=True)
        out = output + anchor
        call = LayerCall(x.detach(), node_id=id(out.grad_fn))
        out.register_hook(_GradRecorder(self, call))
        self.calls.setdefault(module, []).append(call)
        self.anchors.append(anchor)
        return out


class _GradRecorder:
    def __init__(self, capture: PerExampleCapture, call: LayerCall) -> None:
        self.capture = capture
        self.call = call

    def __call__(self, grad: torch.Tensor) -> None:
        if self.capture.recording:
            self.call.output_grad = grad.detach()
