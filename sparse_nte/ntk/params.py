"""The network as a pure function of its live parameters, f(x; theta), for the kernel, product,
linearisation and GP code of :mod:`sparse_nte.ntk`.

theta is the model's trainable parameters (``requires_grad``), by name as in
``model.named_parameters()``. An entry masked by a sparse-weights layer
(:class:`~sparse_nte.layers.SparseWeightsBase`, ``zero_mask`` True) is not a parameter of the
network: the function uses ``w_eff = theta * keep`` (``keep = 1 - zero_mask``), so the value and
every derivative with respect to a masked entry are exactly 0 and masked entries contribute
nothing to a Jacobian, kernel or product. Dale's law constrains how weights may change, not the
function, so Dale layers need nothing here.

The function is evaluated with ``torch.func.functional_call`` on a *view* of the model in which
every sparse-weights wrapper is replaced by a thin pass-through to the layer it wraps (same
parameter names, same submodules otherwise, shared with the model). The wrappers' own bookkeeping
(in-place projection of the stored weight, gradient hooks, the sparse execution path, which has
no double backward and no ``torch.func`` rules) is thus never run on the substituted tensors,
while ``theta * keep`` gives exactly the masked-dense computation.

Mode and state. The model is evaluated in the mode the caller set (``model.train()`` /
``model.eval()``): k-WTA layers keep ``k`` winners in training and ``k_inference`` in eval mode,
and dropout is active in training mode (a fresh mask at every forward pass, so quantities built
from several passes mix different sub-networks; diagnostics use eval mode). Buffers are passed
as copies at every call and the k-WTA sample counters are restored, so evaluating the function
never changes the model's state (duty cycles, counters), in either mode.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from sparse_nte.layers import KWinnersBase, SparseWeightsBase

__all__ = ["NetworkFunction", "ParameterPoint", "snapshot", "flatten", "unflatten",
           "TensorDict"]

TensorDict = Dict[str, torch.Tensor]


class _PassThrough(nn.Module):
    """Calls the wrapped layer directly (stands in for a sparse-weights wrapper in the view)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def unconstrained_view(module: nn.Module) -> nn.Module:
    """``module`` with every sparse-weights wrapper replaced by a pass-through to its layer.

    Subtrees without such wrappers are shared with ``module``; containers above a wrapper are
    shallow copies with their own child table (parameters, buffers and hooks shared)."""
    if isinstance(module, SparseWeightsBase):
        return _PassThrough(module.module)
    if not any(isinstance(m, SparseWeightsBase) for m in module.modules()):
        return module
    view = copy.copy(module)
    view._modules = OrderedDict((name, None if child is None else unconstrained_view(child))
                                for name, child in module._modules.items())
    return view


@contextmanager
def counters_kept(model: nn.Module) -> Iterator[None]:
    """Restore the k-WTA sample counters (plain attributes, not buffers) on exit."""
    layers = [m for m in model.modules() if isinstance(m, KWinnersBase)]
    saved = [m.learning_iterations for m in layers]
    try:
        yield
    finally:
        for m, count in zip(layers, saved):
            m.learning_iterations = count


@dataclass
class ParameterPoint:
    """A point theta of parameter space with the state the function is evaluated at.

    ``params``: name -> tensor for every trainable parameter; ``buffers``: name -> tensor (k-WTA
    duty cycles, ...); ``keep``: name -> float keep mask (1 live, 0 masked) of every masked
    parameter at that point (masks may change later under a plasticity schedule).
    """

    params: TensorDict
    buffers: TensorDict
    keep: TensorDict

    def to(self, device: Union[str, torch.device]) -> "ParameterPoint":
        move = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return ParameterPoint(move(self.params), move(self.buffers), move(self.keep))


class NetworkFunction:
    """``f(params, x, t)``: the logits of ``model`` as a function of its live parameters.

    Attributes:
        model: the module (its current parameters are the default point).
        names: trainable parameter names, in ``named_parameters()`` order.
        layer_of: parameter name -> name of the module that owns it (the "layer").
        linear_names: ``id(nn.Linear module) -> {"weight": name, "bias": name}`` for the linear
            layers whose parameters are trainable (used by the factored kernel path).
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"NetworkFunction expects an nn.Module, got {type(model).__name__}")
        self.model = model
        self.view = unconstrained_view(model)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"{type(model).__name__} has no trainable parameters "
                             f"(requires_grad=True); its tangent kernel is empty")
        self.names: List[str] = [n for n, _ in named]
        self._param = dict(named)
        self.layer_of: Dict[str, str] = {n: n.rpartition(".")[0] for n in self.names}
        by_id = {id(p): n for n, p in named}
        self._wrapper: Dict[str, SparseWeightsBase] = {}
        for m in model.modules():
            if isinstance(m, SparseWeightsBase) and id(m.module.weight) in by_id:
                self._wrapper[by_id[id(m.module.weight)]] = m
        self.linear_names: Dict[int, Dict[str, str]] = {}
        for m in model.modules():
            if isinstance(m, nn.Linear):
                roles = {r: by_id[id(getattr(m, r))] for r in ("weight", "bias")
                         if isinstance(getattr(m, r), torch.Tensor) and id(getattr(m, r)) in by_id}
                if roles:
                    self.linear_names[id(m)] = roles
        self.last_effective: TensorDict = {}
        self._view_buffers = {n for n, _ in self.view.named_buffers()}

    # -- the current point ------------------------------------------------------------------
    def keep_masks(self) -> TensorDict:
        """name -> float keep mask (1 live, 0 masked) of every masked parameter, now."""
        return {n: w.keep_mask_float() for n, w in self._wrapper.items()}

    def params(self) -> TensorDict:
        """name -> current value (detached) of every trainable parameter."""
        return {n: p.detach() for n, p in self._param.items()}

    def buffers(self) -> TensorDict:
        return {n: b.detach() for n, b in self.model.named_buffers()}

    def num_live(self, keep: Optional[TensorDict] = None) -> Dict[str, int]:
        """name -> number of live (unmasked) entries."""
        keep = self.keep_masks() if keep is None else keep
        return {n: int(keep[n].sum()) if n in keep else self._param[n].numel() for n in self.names}

    def numel(self, name: str) -> int:
        """Number of entries of parameter ``name`` (live or not)."""
        return self._param[name].numel()

    def layers(self) -> List[str]:
        """Owning-module names, in parameter order, without repeats."""
        return list(dict.fromkeys(self.layer_of[n] for n in self.names))

    # -- evaluation ---------------------------------------------------------------------------
    def full_params(self, params: Optional[Mapping[str, torch.Tensor]]) -> TensorDict:
        """``params`` completed with the current values of the names it lacks."""
        out = self.params()
        if params is not None:
            unknown = set(params) - set(out)
            if unknown:
                raise ValueError(f"unknown parameter name(s) {sorted(unknown)[:3]}; trainable "
                                 f"parameters of {type(self.model).__name__}: {self.names[:4]}...")
            out.update(params)
        return out

    def __call__(self, params: Optional[Mapping[str, torch.Tensor]], x: torch.Tensor,
                 t: Optional[torch.Tensor] = None, *, buffers: Optional[Mapping[str, torch.Tensor]]
                 = None, keep: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        """Logits of the model at ``params`` (missing names: current values), ``buffers``
        (default the model's, copied) and ``keep`` masks (default the current ones).

        ``t`` is passed as ``model(x, t)`` when given, else the model is called as ``model(x)``.
        """
        values = self.full_params(params)
        keep = self.keep_masks() if keep is None else keep
        state: TensorDict = {}
        for n in self.names:
            v = values[n]
            state[n] = v * keep[n] if n in keep else v
        self.last_effective = dict(state)
        source = self.buffers() if buffers is None else buffers
        for n, b in source.items():
            if n in self._view_buffers:   # not the wrappers' masks and signs: the view has none
                state[n] = b.clone()
        args = (x,) if t is None else (x, t)
        with counters_kept(self.model):
            return torch.func.functional_call(self.view, state, args)

    def point(self) -> ParameterPoint:
        """A copy of the current parameters, buffers and masks (see :func:`snapshot`)."""
        return snapshot(self.model)


def snapshot(model: nn.Module) -> ParameterPoint:
    """Detached copies of the trainable parameters, buffers and keep masks of ``model``: the
    point theta_0 that kernels, gradients and linearisations can later be evaluated at."""
    fn = NetworkFunction(model)
    return ParameterPoint({n: v.clone() for n, v in fn.params().items()},
                          {n: v.clone() for n, v in fn.buffers().items()},
                          {n: v.clone() for n, v in fn.keep_masks().items()})


def flatten(tensors: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """Concatenate ``tensors[name].reshape(-1)`` in the order of ``names``."""
    missing = [n for n in names if n not in tensors]
    if missing:
        raise ValueError(f"flatten: no tensor for parameter(s) {missing[:3]}")
    return torch.cat([tensors[n].reshape(-1) for n in names])


def unflatten(vector: torch.Tensor, like: Mapping[str, torch.Tensor],
              names: Sequence[str]) -> TensorDict:
    """Inverse of :func:`flatten`: split ``vector`` into tensors shaped like ``like[name]``."""
    total = sum(like[n].numel() for n in names)
    if vector.dim() != 1 or vector.numel() != total:
        raise ValueError(f"unflatten: expected a 1-d vector of {total} entries (the trainable "
                         f"parameters), got shape {tuple(vector.shape)}")
    out, start = {}, 0
    for n in names:
        size = like[n].numel()
        out[n] = vector[start:start + size].view(like[n].shape)
        start += size
    return out


def as_tensor_dict(value: Union[torch.Tensor, Mapping[str, torch.Tensor]], fn: NetworkFunction,
                   what: str) -> tuple[TensorDict, bool]:
    """``value`` as name -> tensor over ``fn.names`` (a 1-d vector is unflattened in that
    order); returns the dict and whether the input was flat."""
    like = fn.params()
    if isinstance(value, torch.Tensor):
        return unflatten(value, like, fn.names), True
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dict name -> tensor over the trainable parameters or "
                         f"a 1-d tensor of their concatenation, got {type(value).__name__}")
    missing = [n for n in fn.names if n not in value]
    unknown = [n for n in value if n not in like]
    if missing or unknown:
        raise ValueError(f"{what}: names must be exactly the trainable parameters; missing "
                         f"{missing[:3]}, unknown {unknown[:3]}")
    for n in fn.names:
        if tuple(value[n].shape) != tuple(like[n].shape):
            raise ValueError(f"{what}['{n}'] has shape {tuple(value[n].shape)}, the parameter "
                             f"has {tuple(like[n].shape)}")
    return {n: value[n] for n in fn.names}, False


def chunks(n: int, size: int) -> List[slice]:
    """Consecutive slices of at most ``size`` covering ``range(n)``."""
    size = max(1, int(size))
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def check_inputs(x: torch.Tensor, t: Optional[torch.Tensor], where: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"{where}: x must be a tensor with at least one example along dim 0, "
                         f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if t is not None and (not isinstance(t, torch.Tensor) or t.dim() != 1
                          or t.shape[0] != x.shape[0]):
        raise ValueError(f"{where}: t must be an integer tensor of shape ({x.shape[0]},) (one task "
                         f"id per example), got {tuple(getattr(t, 'shape', ()))}")


def slice_t(t: Optional[torch.Tensor], rows: slice) -> Optional[torch.Tensor]:
    return None if t is None else t[rows]


def budget_rows(per_row: int, budget: int, n: int) -> int:
    """Rows of ``per_row`` elements that fit ``budget`` elements (at least 1, at most n)."""
    return max(1, min(n, budget // max(1, per_row)))


def prod(shape: Sequence[int]) -> int:
    return int(math.prod(shape))
