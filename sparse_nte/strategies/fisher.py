"""The diagonal of the Fisher information from per-example gradients, without a loop over
examples and without a batch x parameters tensor.

For a model with predictive distribution p(y | x, theta) (the softmax of the logits the model
returns for the example's task), the diagonal Fisher on examples x_1..x_N is estimated as::

    F_i = (1/N) sum_n g_{n,i}^2,      g_n = grad_theta [-log p(yhat_n | x_n, theta)]

(Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017). The
label ``yhat_n`` is

* ``"true"``: drawn from p(. | x_n, theta) (one draw per example, from a seeded generator):
  an unbiased Monte-Carlo estimate of the Fisher information E_{y ~ p} [g g^T]_ii;
* ``"empirical"``: the training label y_n. This "empirical Fisher" is not the Fisher in general
  and can differ from it badly away from a perfect fit (Kunstner, Balles & Hennig, "Limitations
  of the empirical Fisher approximation", NeurIPS 2019); it is offered because many EWC
  implementations use it.

Per-example gradients come from the layers' inputs and output gradients
(:class:`sparse_nte.per_example.PerExampleCapture`; examples do not interact, so the gradient of
the summed loss at a layer output is each example's own):

* ``nn.Linear`` on (n, in) inputs A with output gradients D (n, out): g_{n,jk} = D_nj A_nk, so
  ``sum_n g_{n,jk}^2 = [(D∘D)^T (A∘A)]_jk``, one matrix product; bias: ``sum_n D_nj^2``.
* ``nn.Conv2d`` (and linear layers on (n, ..., in) inputs or called several times on the same
  examples): g_n = D_n^T A_n over the L output locations (inputs unfolded with ``F.unfold``),
  formed with ``bmm`` in chunks of examples; bias: (sum_L D_n)^2.
* any other parameter: ``torch.func.vmap`` over the backward pass
  (:func:`sparse_nte.per_example.per_example_grads`), in chunks.

The model runs in eval mode (as in van de Ven's reference code): no dropout, k-WTA layers keep
their inference k and leave their duty cycles untouched; the modules' training flags are
restored afterwards. Batches whose rows belong to several tasks are split by task, so each head
sees all the rows it is called on. Masked weights of ``SparseWeights`` layers get 0: they are
constants of the trained model (their gradient is zeroed as it accumulates).
"""
from __future__ import annotations

from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.per_example import (PerExampleCapture, check_examples_independent,
                                    conv2d_supported, per_example_grads, unfold_conv2d_input)
from sparse_nte.strategies.common import trained_parameters, zero_masked

__all__ = ["diagonal_fisher", "empirical_labels", "sampled_labels", "fisher_labels",
           "CHUNK_ELEMENTS"]

#: Bound on the elements of any per-example gradient block formed at once (64 MB in float32).
CHUNK_ELEMENTS = 1 << 24

Labels = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def empirical_labels(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The training labels (empirical Fisher)."""
    return y


def sampled_labels(generator: torch.Generator) -> Labels:
    """Labels drawn from the model's predictive distribution softmax(logits), one per example
    (``torch.multinomial`` on float64 probabilities, from ``generator``)."""

    def draw(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.detach().to(torch.float64), dim=1)
        return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(y.device)

    return draw


def fisher_labels(kind: str, generator: Optional[torch.Generator]) -> Labels:
    """The label rule of a Fisher kind: ``"true"`` (sampled, needs ``generator``) or
    ``"empirical"``."""
    if kind == "empirical":
        return empirical_labels
    if kind == "true":
        if generator is None:
            raise ValueError("the true Fisher samples labels: pass a torch.Generator")
        return sampled_labels(generator)
    raise ValueError(f"Fisher kind must be 'true' or 'empirical', got {kind!r}")


def _captured_modules(model: nn.Module, wanted: set) -> List[nn.Module]:
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and conv2d_supported(m)):
            if id(m.weight) in wanted or (m.bias is not None and id(m.bias) in wanted):
                out.append(m)
    return out


def _bmm_squares(module: nn.Module, inputs: List[torch.Tensor], grads: List[torch.Tensor],
                 w_sum: Optional[torch.Tensor], b_sum: Optional[torch.Tensor],
                 chunk_elements: int) -> None:
    """Add sum_n (D_n^T A_n)^2 to ``w_sum`` (out, K) and sum_n (sum_L D_n)^2 to ``b_sum``, over
    several locations per example, in chunks of examples (convolution inputs unfolded per
    chunk)."""
    conv = isinstance(module, nn.Conv2d)
    n = grads[0].shape[0]
    out_f = grads[0].shape[1] if conv else grads[0].shape[-1]
    k = module.weight[0].numel()
    locations = sum(g[0].numel() // out_f for g in grads)
    nb = max(1, min(n, chunk_elements // max(1, out_f * k + locations * (k + out_f))))
    for b0 in range(0, n, nb):
        a_parts, d_parts = [], []
        for a, d in zip(inputs, grads):
            a, d = a[b0:b0 + nb], d[b0:b0 + nb]
            if conv:
                a_parts.append(unfold_conv2d_input(module, a))            # (m, L, K)
                d_parts.append(d.flatten(2).transpose(1, 2))              # (m, L, out)
            else:
                a_parts.append(a.reshape(a.shape[0], -1, k))
                d_parts.append(d.reshape(d.shape[0], -1, out_f))
        a_b = torch.cat(a_parts, dim=1) if len(a_parts) > 1 else a_parts[0]
        d_b = torch.cat(d_parts, dim=1) if len(d_parts) > 1 else d_parts[0]
        if w_sum is not None:
            g = torch.bmm(d_b.transpose(1, 2), a_b)                        # (m, out, K)
            w_sum.add_(g.square_().sum(dim=0).view_as(w_sum))
        if b_sum is not None:
            b_sum.add_(d_b.sum(dim=1).square_().sum(dim=0))


def _accumulate(module: nn.Module, calls: Sequence, n: int, w_sum: Optional[torch.Tensor],
                b_sum: Optional[torch.Tensor], chunk_elements: int) -> None:
    calls = [c for c in calls if c.output_grad is not None]
    if not calls:
        return
    for c in calls:
        if c.input.shape[0] != n:
            raise ValueError(
                f"diagonal_fisher: {type(module).__name__} {tuple(module.weight.shape)} was called on "
                f"{c.input.shape[0]} rows of a forward pass over {n} examples of one task; "
                f"per-example gradients need every call of a layer to see all the examples (a "
                f"model that routes rows of one task to different layers is not supported)")
    inputs = [c.input for c in calls]
    grads = [c.output_grad for c in calls]
    if isinstance(module, nn.Linear) and len(calls) == 1 and inputs[0].dim() == 2:
        d2 = grads[0].square()
        if w_sum is not None:
            w_sum.addmm_(d2.T, inputs[0].square())
        if b_sum is not None:
            b_sum.add_(d2.sum(dim=0))
        return
    _bmm_squares(module, inputs, grads, w_sum, b_sum, chunk_elements)


def _task_groups(t: torch.Tensor) -> List[Optional[torch.Tensor]]:
    """Row indices of each task in ``t`` (None = every row: one task)."""
    if t.numel() == 0 or bool((t == t[0]).all()):
        return [None]
    return [torch.nonzero(t == v).flatten() for v in torch.unique(t)]


def diagonal_fisher(model: nn.Module, batches: Iterable[Tuple[torch.Tensor, ...]], labels: Labels,
                    *, params: Optional[Sequence[Tuple[str, nn.Parameter]]] = None,
                    chunk_elements: int = CHUNK_ELEMENTS) -> Tuple[Dict[str, torch.Tensor], int]:
    """The diagonal Fisher (module docstring) of ``params`` (default: every parameter that
    requires grad) over the examples of ``batches``.

    Args:
        model: called as ``model(x, t)``; returns logits.
        batches: ``(x, y, t, ...)`` tuples (extra entries ignored).
        labels: ``labels(logits, y) -> labels`` (:func:`empirical_labels`, :func:`sampled_labels`).
        chunk_elements: bound on the elements of a per-example gradient block.

    Returns:
        ``({name: F}, N)``: F in the parameter's dtype and shape, N the number of examples.
        Raises ValueError if there are no examples.
    """
    named = list(params) if params is not None else trained_parameters(model)
    by_id = {id(p): name for name, p in named}
    sums = {name: torch.zeros_like(p, memory_format=torch.contiguous_format) for name, p in named}
    modules = _captured_modules(model, set(by_id))
    covered = set()
    for m in modules:
        covered.add(id(m.weight))
        if m.bias is not None:
            covered.add(id(m.bias))
    others = [(name, p) for name, p in named if id(p) not in covered]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    count = 0
    try:
        check_examples_independent(model)
        with PerExampleCapture(modules) as cap, torch.enable_grad():
            for batch in batches:
                x, y, t = batch[0], batch[1], batch[2]
                for rows in _task_groups(t):
                    xg, yg, tg = (x, y, t) if rows is None else (x[rows], y[rows], t[rows])
                    n = int(yg.shape[0])
                    if n == 0:
                        continue
                    cap.calls, cap.anchors = {}, []
                    logits = model(xg, tg)
                    if not bool(torch.isfinite(logits).all()):
                        raise FloatingPointError(
                            "diagonal_fisher: the model's outputs are not finite (NaN or inf): the "
                            "training has diverged, so there is no Fisher to compute")
                    losses = F.cross_entropy(logits, labels(logits, yg), reduction="none")
                    if cap.anchors:
                        cap.recording = True
                        try:
                            torch.autograd.grad(losses.sum(), cap.anchors, retain_graph=bool(others),
                                                allow_unused=True)
                        finally:
                            cap.recording = False
                    for m in modules:
                        w = sums.get(by_id.get(id(m.weight), ""))
                        b = sums.get(by_id.get(id(m.bias), "")) if m.bias is not None else None
                        _accumulate(m, cap.calls.get(m, []), n, w, b, chunk_elements)
                    if others:
                        for _, grads in per_example_grads(losses, [p for _, p in others],
                                                          chunk_elements):
                            for (name, _), g in zip(others, grads):
                                if g is not None:
                                    sums[name].add_(g.square().sum(dim=0))
                    count += n
                    cap.calls, cap.anchors = {}, []
    finally:
        for m, mode in flags:
            m.training = mode
    if count == 0:
        raise ValueError("diagonal_fisher: no examples (the batches were empty)")
    for v in sums.values():
        v.div_(count)
    zero_masked(model, sums)
    return sums, count
