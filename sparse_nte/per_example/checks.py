"""Checks that per-example gradients obtained from captured layers are complete and exact.

The captured route (:mod:`sparse_nte.per_example.capture`) gives each example's own gradient
``g_b = D_b^T A_b`` of a layer's parameters only if

1. examples do not interact in the forward pass (:func:`check_examples_independent`: batch
   normalisation in training mode couples them);
2. the closure returned one loss per example, with gradients, and did not run a backward pass
   itself (:func:`check_example_losses`); a parameter penalty is a 0-dim function of the
   parameters alone, not of the batch (:func:`check_penalty`);
3. every call of the layer saw the examples along dim 0, the whole batch when the layer is
   called several times (:func:`check_layer_calls`);
4. the parameters enter the loss ONLY through the captured calls of their layer — no weight
   tying, no ``F.linear(x, layer.weight)`` outside the layer, no second use inside its forward
   (:func:`calls_account_for_uses`, read from the autograd graph).

Violations of 1-3 are errors; a layer failing 4 is handled by the caller on a slower path.
"""
from __future__ import annotations

from typing import Any, List, Sequence, Tuple

import torch
import torch.nn as nn

from sparse_nte.per_example.capture import LayerCall

__all__ = ["graph_parents", "check_examples_independent", "check_example_losses",
           "check_penalty", "check_layer_calls", "calls_account_for_uses"]


def graph_parents(root: Any, targets: Sequence[Any]) -> Tuple[dict, set]:
    """Walk the autograd graph from ``root``: returns ``(counts, seen)`` where ``counts[t]`` is
    how many edges of the reachable graph point to the node ``t`` (for t in ``targets``, e.g.
    the gradient accumulators of parameters) and ``seen`` the ids of the reachable nodes."""
    wanted = set(targets)
    counts = {t: 0 for t in wanted}
    seen = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        for nxt, _ in node.next_functions:
            if nxt is None:
                continue
            if nxt in wanted:
                counts[nxt] += 1
            stack.append(nxt)
    return counts, {id(n) for n in seen}


def check_examples_independent(model: nn.Module) -> None:
    """Raise ValueError if a module of ``model`` mixes examples in its forward pass.

    Per-example gradients from layer inputs and output gradients are exact only when each
    example's output depends on that example alone. Batch normalisation in training mode
    normalises with batch statistics, which couples the examples.
    """
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training:
            raise ValueError(
                f"module '{name}' ({type(m).__name__}) is in training mode: batch normalisation "
                f"uses batch statistics, so each example's loss depends on the other examples and "
                f"per-example gradients (needed by the NTE rule) are not defined. Put it in eval "
                f"mode, or use a per-example normalisation (LayerNorm, GroupNorm)")


def check_example_losses(losses: Any, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The closure's per-example losses as a (B,) tensor (entries of a (B, ...) result summed per
    example), or ValueError saying what is wrong: not a tensor, 0-dim (a mean- or sum-reduced
    loss), no gradient, not finite, or ``backward()`` already called (some of ``params`` hold
    a ``.grad``)."""
    if not isinstance(losses, torch.Tensor):
        raise ValueError(f"NTE.step: the closure must return a tensor of per-example losses, "
                         f"got {type(losses).__name__}")
    if losses.dim() == 0:
        raise ValueError(
            "NTE.step: the closure returned a 0-dim loss. The NTE rule needs every example's "
            "own loss: use reduction='none' (e.g. F.cross_entropy(logits, y, reduction='none'))"
            ", not the batch mean or sum")
    if any(p.grad is not None for p in params):
        raise ValueError("NTE.step: the closure must not call backward(); return the "
                         "per-example losses and step() computes what it needs")
    if not losses.requires_grad:
        raise ValueError("NTE.step: the losses do not require grad; run the forward pass with "
                         "gradients enabled (not under torch.no_grad / inference_mode)")
    if losses.dim() > 1:
        losses = losses.reshape(losses.shape[0], -1).sum(dim=1)
    if not bool(torch.isfinite(losses.detach()).all()):
        raise ValueError("NTE.step: some per-example losses are not finite (NaN or inf); the "
                         "update would be undefined")
    return losses


def check_penalty(value: Any, params: Sequence[torch.Tensor],
                  batch_nodes: Sequence[torch.Tensor]) -> torch.Tensor:
    """The value R of a parameter penalty, or ValueError: not a 0-dim tensor, no gradient (it
    does not depend on the parameters), not finite, ``backward()`` already called, or it
    depends on the batch (its graph reaches one of ``batch_nodes``, leaves created in the
    forward pass: per-example terms belong in the closure's losses)."""
    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        got = (f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor)
               else type(value).__name__)
        raise ValueError(f"NTE.step: penalty() must return a 0-dim tensor R(theta) (or None), "
                         f"got {got}")
    if any(p.grad is not None for p in params):
        raise ValueError("NTE.step: penalty() must not call backward(); return R(theta) and "
                         "step() takes its gradient")
    if not value.requires_grad:
        raise ValueError("NTE.step: the penalty does not require grad: it does not depend on any "
                         "trained parameter (computed under torch.no_grad, or from detached "
                         "tensors?)")
    if not bool(torch.isfinite(value.detach())):
        raise ValueError(f"NTE.step: the penalty is not finite ({float(value.detach())}); the "
                         f"update would be undefined")
    if batch_nodes:
        nodes = [torch.autograd.graph.get_gradient_edge(t).node for t in batch_nodes]
        counts, _ = graph_parents(value.grad_fn, nodes)
        if any(counts.values()):
            raise ValueError("NTE.step: the penalty depends on the batch (it uses outputs of the "
                             "forward pass); it must be a function R(theta) of the parameters "
                             "alone. Per-example terms belong in the closure's losses")
    return value


def check_layer_calls(name: str, calls: Sequence[LayerCall], n_examples: int) -> None:
    """A layer called once may see at most the batch's examples (a subset routed to a head);
    a layer called several times must see the whole batch, in order, at every call."""
    sizes = [c.input.shape[0] for c in calls]
    if len(calls) == 1:
        if sizes[0] > n_examples:
            raise ValueError(
                f"NTE.step: layer '{name}' saw {sizes[0]} rows but the closure returned "
                f"{n_examples} per-example losses; dim 0 of every layer input must index the "
                f"examples")
    elif any(s != n_examples for s in sizes):
        raise ValueError(
            f"NTE.step: layer '{name}' was called {len(calls)} times with batch sizes "
            f"{sizes} ({n_examples} examples); per-example gradients can combine several calls "
            f"only when each call sees the whole batch in the same order")


def calls_account_for_uses(total: torch.Tensor,
                           entries: Sequence[Tuple[Sequence[torch.Tensor], Sequence[LayerCall]]]
                           ) -> List[bool]:
    """For each ``(params, calls)`` entry (the parameters of one layer and its captured calls of
    this step, possibly none): True if, in the autograd graph of ``total``, each parameter is
    used exactly once per call whose output reaches ``total`` (none if the layer did not run).
    Any other use (weight tying, a penalty on the weight inside the loss, ``F.linear(x,
    layer.weight)`` without calling the layer, a forward that uses the weight twice) makes the
    captured per-example gradients incomplete."""
    accumulators = {id(p): torch.autograd.graph.get_gradient_edge(p).node
                    for params, _ in entries for p in params}
    counts, seen = graph_parents(total.grad_fn, list(accumulators.values()))
    out = []
    for params, calls in entries:
        reached = sum(1 for c in calls if c.node_id in seen)
        out.append(all(counts[accumulators[id(p)]] == reached for p in params))
    return out
