"""A linear layer that stores, trains and computes with its live connections only.

With ``E`` the live entries of an ``(out, in)`` weight (row-major order, see
:class:`~sparse_nte.sparse_exec.LiveConnections`) the trainable tensor is the vector ``v`` of
their values, ``v_e = W[i_e, j_e]``, and::

    forward            y[b, i]  = b_i + sum_{e : i_e = i} v_e x[b, j_e]
    input gradient    dx[b, j]  = sum_{e : j_e = j} v_e dy[b, i_e]
    values gradient      dv_e   = sum_b dy[b, i_e] x[b, j_e]

the masked-dense linear layer ``y = x (W * live)^T + b`` restricted to its free parameters
(back-propagation, Rumelhart et al. 1986): the same numbers as the dense gradient at the live
entries, so SGD (momentum, Nesterov, weight decay), Adam and AdamW take elementwise the same steps
on ``v`` as on the live entries of the masked-dense weight, and their state (momentum, moments)
has ``nnz`` entries instead of ``out * in``. Nothing is ever stored or updated at a pruned
position, so the masked-dense invariant "a pruned weight is exactly zero" holds by
construction. Kernels: those of :mod:`sparse_nte.sparse_exec` (``embedding_bag`` products and a
sampled dense-dense product for ``dv``).

Dense view. :attr:`CompactLinear.weight` is the ``(out, in)`` matrix with the live values and
exact zeros, built on demand and cached until ``v`` changes. It is *write-through*: an in-place
edit of it (``layer.weight.mul_(2)``, ``nn.init.uniform_(layer.weight)``, anything that bumps
the tensor's version counter) is copied into ``v`` before ``v`` is next used (entries written at
pruned positions are dropped); if both the view and ``v`` changed since the view was built
(an edit of a stale view), that is an error rather than a silent loss of one of the changes.
Writes through ``.data`` bypass the version counter: call :meth:`CompactLinear.sync` (or the
wrapper's ``rezero_weights``) after them.

State dicts use the dense layout (``weight`` of shape ``(out, in)``, ``bias``), exactly the keys
and shapes of the masked-dense layer, so checkpoints and ``state_dict`` consumers see the same
thing whatever the storage; a state dict holding the compact ``values`` also loads.

Evaluation (no gradient) of large batches at higher densities multiplies by the dense view
instead (cached while ``v`` is unchanged, i.e. built once per evaluation), where the measured
crossovers of :data:`INFERENCE_DENSITY_BY_BATCH` say the dense product is faster.

Under ``torch.func`` transforms (``vmap``, ``grad``, ``jvp``, used by the NTK tools and some
per-example code) the product is computed from ``scatter(v)`` with ``F.linear``: the same
function, differentiable by every transform, at the dense cost.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.sparse_exec import LiveConnections, _bag_product, _gradient_node, _will_run

__all__ = ["CompactLinear", "compact_linear", "rewire", "INFERENCE_DENSITY_BY_BATCH"]

#: (minimum rows, largest density at which the compact product is used) for forward passes
#: without gradient, largest batch first; above it the cached dense view is multiplied. The
#: crossovers of the forward product measured by bench/bench_sparse.py --sections compact
#: (784x4000, 4000x4000, 1000x1000; dense wins from ~0.05 at 1024 rows, ~0.12-0.3 at 256).
INFERENCE_DENSITY_BY_BATCH: tuple[tuple[int, float], ...] = ((1024, 0.05), (256, 0.12), (1, 0.2))

_SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _transformed(*tensors: Optional[torch.Tensor]) -> bool:
    """True inside a ``torch.func`` transform (vmap / grad / jvp), or when one of ``tensors``
    is a functorch-wrapped (e.g. batched) tensor, as the cotangents of a backward pass with
    ``is_grads_batched=True`` are."""
    try:
        if torch._C._are_functorch_transforms_active():
            return True
        f = torch._C._functorch
        return any(t is not None and (f.is_functorch_wrapped_tensor(t)
                                      or f.is_legacy_batchedtensor(t)) for t in tensors)
    except AttributeError:   # pragma: no cover - older torch
        return False


class _CompactLinearFn(torch.autograd.Function):
    """y = x W^T + b from the live values ``v``; see the module docstring."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
                live: LiveConnections) -> torch.Tensor:
        need_x, need_v = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        x_t = x.t().contiguous()                                              # (in, B)
        y_t = _bag_product(live.col_idx, live.row_ptr, values, x_t)           # (out, B)
        if bias is not None:
            y_t.add_(bias.unsqueeze(1))
        ctx.live = live
        ctx.has_bias = bias is not None
        ctx.x_node = _gradient_node(x) if need_x else None
        ctx.v_node = _gradient_node(values) if need_v else None
        ctx.save_for_backward(x_t if need_v else None, values if need_x else None)
        return y_t.t().contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: torch.Tensor):
        live: LiveConnections = ctx.live
        x_t, values = ctx.saved_tensors
        need_x = ctx.needs_input_grad[0] and _will_run(ctx.x_node)
        need_v = ctx.needs_input_grad[1] and _will_run(ctx.v_node)
        grad_x = grad_v = grad_b = None
        if _transformed(grad_y):   # a batched backward (vmap, is_grads_batched): dense products
            if need_x:
                grad_x = grad_y @ live.scatter(values)
            if need_v:
                full = grad_y.transpose(-1, -2) @ x_t.t()
                grad_v = full.reshape(*full.shape[:-2], -1)[..., live.flat_idx]
        else:
            grad_y_t = grad_y.t().contiguous() if (need_x or need_v) else None   # (out, B)
            if need_x:
                values_t = live.column_major(values)
                grad_x = _bag_product(live.row_idx_t, live.col_ptr, values_t, grad_y_t).t()
                grad_x = grad_x.contiguous()
            if need_v:
                grad_v = live.sampled_mm(grad_y_t, x_t.t())
        if ctx.needs_input_grad[2] and ctx.has_bias:
            grad_b = grad_y.sum(dim=0)
        return grad_x, grad_v, grad_b, None


def compact_linear(x: torch.Tensor, values: torch.Tensor, bias: Optional[torch.Tensor],
                   live: LiveConnections) -> torch.Tensor:
    """``F.linear(x, W, bias)`` for the weight ``W`` whose live entries (``live``, row-major)
    hold ``values`` and whose other entries are 0. ``x``: (*, in) -> (*, out). Gradients flow to
    ``x``, ``values`` and ``bias``."""
    out_f, in_f = live.out_features, live.in_features
    if values.shape != (live.nnz,):
        raise ValueError(f"compact_linear: {tuple(values.shape)} values for {live.nnz} live "
                         f"connections")
    if x.shape[-1:] != (in_f,):
        raise ValueError(f"compact_linear: input of shape {tuple(x.shape)} does not end in "
                         f"in_features={in_f}")
    if _transformed():
        return F.linear(x, live.scatter(values), bias)
    if values.dtype not in _SUPPORTED_DTYPES or x.dtype != values.dtype:
        raise ValueError(f"compact_linear supports float32 and float64 inputs and values of the "
                         f"same dtype, got input {x.dtype} and values {values.dtype}")
    lead = x.shape[:-1]
    x2 = x.reshape(-1, in_f)
    if x2.shape[0] == 0 or live.nnz == 0:
        return F.linear(x, live.scatter(values), bias)
    if torch.is_grad_enabled() and (x.requires_grad or values.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        y = _CompactLinearFn.apply(x2, values, bias, live)
    else:
        with torch.no_grad():
            y = _CompactLinearFn.forward(_NoCtx(), x2, values, bias, live)
    return y.reshape(*lead, out_f)


class _NoCtx:
    """Stand-in for the autograd context when the forward runs without a graph."""

    needs_input_grad = (False, False, False, False)

    def save_for_backward(self, *tensors: Any) -> None:
        pass


class CompactLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` held as the vector ``values`` of its live entries.

    Built by :class:`~sparse_nte.layers.SparseWeights` with ``sparse_exec="compact"`` (which
    owns the mask and the Dale signs and keeps :attr:`live` in step with them); see the module
    docstring for the equations, the write-through dense view and the state-dict layout.

    Attributes:
        in_features, out_features: the dense shape.
        values: ``nn.Parameter`` (nnz,), the live weights in row-major order.
        bias: ``nn.Parameter`` (out,) or None.
        live: the :class:`~sparse_nte.sparse_exec.LiveConnections` of ``values``.
    """

    def __init__(self, linear: nn.Linear, live: LiveConnections) -> None:
        super().__init__()
        w = linear.weight
        if tuple(w.shape) != (live.out_features, live.in_features):
            raise ValueError(f"CompactLinear: weight of shape {tuple(w.shape)} does not match the "
                             f"live structure ({live.out_features}, {live.in_features})")
        self.in_features, self.out_features = live.in_features, live.out_features
        self.live = live
        self.values = nn.Parameter(live.gather(w).clone(), requires_grad=w.requires_grad)
        self.bias = linear.bias
        self._dense: Optional[torch.Tensor] = None
        self._dense_at: tuple = (-1, -1)      # (values version, dense version) when in step

    # -- the dense view ---------------------------------------------------------------------
    def pending_dense(self) -> Optional[torch.Tensor]:
        """The dense view if it was edited since it was last in step with ``values`` (its
        edits not yet copied into ``values``), else None."""
        d = self._dense
        if d is None or d._version == self._dense_at[1]:
            return None
        if self.values._version != self._dense_at[0]:
            raise ValueError(
                "CompactLinear: the dense view `weight` was modified after the live values "
                "changed (an edit of a stale view: read `layer.weight` again after an optimizer "
                "step, then modify it); refusing to drop either change")
        return d

    @torch.no_grad()
    def sync(self) -> None:
        """Copy edits of the dense view into ``values`` (edits at pruned positions are dropped
        and zeroed in the view)."""
        d = self.pending_dense()
        if d is None:
            return
        self.values.copy_(d.reshape(-1).index_select(0, self.live.flat_idx))
        self._refresh_dense()

    @torch.inference_mode(False)   # a normal tensor (with a version counter) even when built
    @torch.no_grad()               # during an inference-mode evaluation
    def _refresh_dense(self) -> torch.Tensor:
        v = self.values
        d = self._dense
        if d is None or d.dtype != v.dtype or d.device != v.device:
            d = torch.zeros(self.out_features, self.in_features, dtype=v.dtype, device=v.device)
        else:
            d.zero_()
        d.view(-1).index_copy_(0, self.live.flat_idx, v.detach())
        self._dense = d
        self._dense_at = (v._version, d._version)
        return d

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``(out, in)`` weight (live values, exact zeros elsewhere): a cached,
        write-through view (module docstring). Not a parameter: train ``values``."""
        return self.dense_weight()

    def dense_weight(self) -> torch.Tensor:
        """See :attr:`weight`."""
        self.sync()
        d = self._dense
        if d is None or self._dense_at != (self.values._version, d._version) \
                or d.dtype != self.values.dtype or d.device != self.values.device:
            d = self._refresh_dense()
        return d

    def release_dense(self) -> None:
        """Drop the cached dense view (after copying its edits into ``values``)."""
        self.sync()
        self._dense = None
        self._dense_at = (-1, -1)

    # -- structure --------------------------------------------------------------------------
    @torch.no_grad()
    def set_live(self, live: LiveConnections, values: torch.Tensor) -> None:
        """Adopt a new live structure with its ``values`` (row-major, ``live.nnz`` of them).
        The ``values`` parameter keeps its identity (optimizers keep it); its gradient is
        dropped. Optimizer state must be remapped by the caller
        (:func:`sparse_nte.optim_state.remap_positions`)."""
        if values.shape != (live.nnz,):
            raise ValueError(f"CompactLinear.set_live: {tuple(values.shape)} values for "
                             f"{live.nnz} live connections")
        self.live = live
        self.values.data = values.to(dtype=self.values.dtype, device=self.values.device)
        self.values.grad = None
        self._dense = None
        self._dense_at = (-1, -1)

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` holding the dense weight (live values, zeros elsewhere) and this
        layer's bias parameter."""
        v = self.values
        lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        dtype=v.dtype, device=v.device)
        with torch.no_grad():
            lin.weight.copy_(self.dense_weight())
        lin.weight.requires_grad_(v.requires_grad)
        if self.bias is not None:
            lin.bias = self.bias
        return lin

    # -- forward ----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sync()
        if not torch.is_grad_enabled() and not _transformed() and x.dim() >= 1:
            rows = x.numel() // max(1, self.in_features)
            density = self.live.density
            limit = next((d for r, d in INFERENCE_DENSITY_BY_BATCH if rows >= r), 0.0)
            if density > limit:
                return F.linear(x, self.dense_weight(), self.bias)
        return compact_linear(x, self.values, self.bias, self.live)

    # -- state dict: the dense layout -------------------------------------------------------
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        destination[prefix + "weight"] = self.dense_weight().detach().clone()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, local_metadata: dict,
                              strict: bool, missing_keys: list, unexpected_keys: list,
                              error_msgs: list) -> None:
        live = self.live
        w_key, v_key, b_key = prefix + "weight", prefix + "values", prefix + "bias"
        with torch.no_grad():
            if w_key in state_dict:
                w = state_dict[w_key]
                if tuple(w.shape) != (self.out_features, self.in_features):
                    error_msgs.append(f"size mismatch for {w_key}: copying a param with shape "
                                      f"{tuple(w.shape)}, the shape in the current model is "
                                      f"{(self.out_features, self.in_features)}")
                else:
                    self.values.copy_(w.reshape(-1).index_select(0, live.flat_idx.to(w.device)))
            elif v_key in state_dict:
                v = state_dict[v_key]
                if tuple(v.shape) != (live.nnz,):
                    error_msgs.append(f"size mismatch for {v_key}: {tuple(v.shape)} values for "
                                      f"{live.nnz} live connections")
                else:
                    self.values.copy_(v)
            else:
                missing_keys.append(w_key)
            if self.bias is not None:
                if b_key in state_dict:
                    b = state_dict[b_key]
                    if tuple(b.shape) != tuple(self.bias.shape):
                        error_msgs.append(f"size mismatch for {b_key}: copying a param with "
                                          f"shape {tuple(b.shape)}, the shape in the current "
                                          f"model is {tuple(self.bias.shape)}")
                    else:
                        self.bias.copy_(b)
                else:
                    missing_keys.append(b_key)
        if strict:
            allowed = {w_key, v_key, b_key}
            for k in state_dict:
                if k.startswith(prefix) and "." not in k[len(prefix):] and k not in allowed:
                    unexpected_keys.append(k)
        self._dense = None
        self._dense_at = (-1, -1)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_dense"] = None
        state["_dense_at"] = (-1, -1)
        return state

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"nnz={self.live.nnz}, bias={self.bias is not None}")


@torch.no_grad()
def rewire(module: CompactLinear, zero_mask: torch.Tensor) -> torch.Tensor:
    """Give ``module`` the live structure of ``zero_mask`` (True = pruned) and return
    ``source`` (new nnz,), int64: the old position of every new live entry, -1 for an entry
    that was not live (grown).

    Values: an entry live before and after keeps its value; a grown entry takes the value the
    dense view holds there if the view was edited (plasticity writes the start values of grown
    weights into ``layer.weight`` before changing the mask), else 0. With an edited view every
    new value is read from it (its edits are the newest)."""
    old = module.live
    new = LiveConnections(zero_mask)
    pending = module.pending_dense()
    if old.nnz:
        pos, was_live = old.positions(new.flat_idx)
    else:
        pos = torch.zeros_like(new.flat_idx)
        was_live = torch.zeros_like(new.flat_idx, dtype=torch.bool)
    if pending is not None:
        values = pending.reshape(-1).index_select(0, new.flat_idx)
    elif old.nnz:
        values = torch.where(was_live, module.values.detach().index_select(0, pos),
                             module.values.new_zeros(()))
    else:
        values = module.values.new_zeros(new.nnz)
    module.set_live(new, values)
    return torch.where(was_live, pos, torch.full_like(pos, -1))
