"""Linearised networks: the first-order Taylor expansion of a network around theta_0.

Lee et al., "Wide neural networks of any depth evolve as linear models under gradient descent"
(NeurIPS 2019); Maddox et al., "Fast adaptation with linearized neural networks" (AISTATS 2021)::

    f_lin(x; theta) = f(x; theta_0) + J(x; theta_0) (theta - theta_0)

Trained by gradient descent, f_lin follows kernel regression with the fixed empirical NTK at
theta_0 (the lazy / NTK regime); the NTE rule's experts are exactly the terms of this sum.

:class:`LinearizedNetwork` holds

* ``net``: a copy of the model whose parameters ARE theta (its only trainable parameters,
  initialised to theta_0). Its sparse-weights layers keep their masks and Dale signs, so the
  usual machinery applies: masked gradients are zeroed as they accumulate,
  :func:`sparse_nte.dale.constrain_optimizer` projects theta after every optimizer step, and the
  forward pass reads each constrained weight through the layer (projected lazily, as the model's
  own forward does). Masked entries of theta therefore stay exactly 0 and Dale signs never flip.
  ``net(x, t)`` is the non-linear network at theta.
* ``base``: a frozen copy of the network at theta_0: its parameters stored as buffers; its
  buffers (k-WTA duty cycles) and k-WTA boost strengths kept at their theta_0 values (passed as
  copies, restored, at every forward pass). Each forward pass is one forward-mode JVP of it
  (``torch.func.jvp``: the value f(x; theta_0) and J(x; theta_0)(theta - theta_0) together).
  The tangent is (theta - theta_0) * keep with the masks of ``net`` now, so masked entries do
  not enter f_lin at all.

Gradients with respect to theta flow through the JVP (reverse over forward mode), so any
``torch.optim`` optimizer trains it (an SGD step of the 2x1000 MLP costs about 2x the model's).
The NTE optimizer (:class:`sparse_nte.nte.NTE`) trains it correctly through its generic
per-example path: theta enters the loss through the tangent, not through a call of ``net``'s
linear layers, so NTE's graph check routes every managed tensor to ``torch.func.vmap`` over the
backward pass (exact, but for large layers one example per pass: about 150x slower than an NTE
step of the model itself on the 2x1000 MLP at batch 128).

Mode: ``forward(x, t)`` evaluates f(x; theta_0) in the module's own mode (k-WTA with ``k``
winners in training, ``k_inference`` in eval; dropout active in training), as the model would.
"""
from __future__ import annotations

import copy
from typing import Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

from sparse_nte.layers import KWinnersBase, SparseWeightsBase, enforce_constraints
from sparse_nte.ntk.params import ParameterPoint, counters_kept, unconstrained_view

__all__ = ["LinearizedNetwork", "linearize"]


def _freeze_as_buffers(module: nn.Module) -> None:
    """Turn every parameter of ``module`` into a buffer of the same name (values copied)."""
    for m in module.modules():
        for name in list(m._parameters):
            p = m._parameters.pop(name)
            m.register_buffer(name, None if p is None else p.detach().clone())


class LinearizedNetwork(nn.Module):
    """f_lin(x; theta) = f(x; theta_0) + J(x; theta_0)(theta - theta_0) (module docstring).

    Attributes:
        net: the network holding theta (``lin.parameters()`` are exactly its trainable ones).
        base: the frozen network at theta_0 (no parameters).
        names: names of theta in ``net`` (as in the original model's ``named_parameters()``).
    """

    def __init__(self, model: nn.Module,
                 params0: Optional[Union[ParameterPoint, Mapping[str, torch.Tensor]]] = None
                 ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise ValueError(f"linearize expects an nn.Module, got {type(model).__name__}")
        net = copy.deepcopy(model)
        self.names = [n for n, p in net.named_parameters() if p.requires_grad]
        if not self.names:
            raise ValueError(f"linearize: {type(model).__name__} has no trainable parameters")
        buffers0: Optional[Mapping[str, torch.Tensor]] = None
        if params0 is not None:
            values = params0.params if isinstance(params0, ParameterPoint) else params0
            buffers0 = params0.buffers if isinstance(params0, ParameterPoint) else None
            self._load(net, values, buffers0)
        enforce_constraints(net)
        self._sparse = [m for m in net.modules() if isinstance(m, SparseWeightsBase)]
        by_id = {id(p): n for n, p in net.named_parameters()}
        self._keep_of: Dict[str, SparseWeightsBase] = {
            by_id[id(m.module.weight)]: m for m in self._sparse if id(m.module.weight) in by_id}
        for m in self._sparse:
            m.weight  # noqa: B018 -- installs the layer's gradient mask on theta
        base = unconstrained_view(copy.deepcopy(net))
        _freeze_as_buffers(base)
        self.net = net
        self.base = base
        self._param_names = set(self.names)
        # k-WTA boost strengths are plain attributes that update_boost_strength() changes (the
        # runner calls it every epoch): restored before every forward pass, like the buffers
        self._boost = [(m, m.boost_strength_cpu) for m in base.modules()
                       if isinstance(m, KWinnersBase)]

    @staticmethod
    def _load(net: nn.Module, values: Mapping[str, torch.Tensor],
              buffers: Optional[Mapping[str, torch.Tensor]]) -> None:
        params = dict(net.named_parameters())
        unknown = sorted(set(values) - set(params))
        if unknown:
            raise ValueError(f"linearize: params0 has names that are not parameters of the model: "
                             f"{unknown[:3]}")
        with torch.no_grad():
            for name, value in values.items():
                if tuple(value.shape) != tuple(params[name].shape):
                    raise ValueError(f"linearize: params0['{name}'] has shape "
                                     f"{tuple(value.shape)}, the parameter has "
                                     f"{tuple(params[name].shape)}")
                params[name].copy_(value)
            if buffers is not None:
                own = dict(net.named_buffers())
                for name, value in buffers.items():
                    if name in own:
                        own[name].copy_(value)

    def theta0(self) -> Dict[str, torch.Tensor]:
        """name -> theta_0 (the frozen expansion point, masked entries 0)."""
        frozen = dict(self.base.named_buffers())
        return {n: frozen[n] for n in self.names}

    def delta(self) -> Dict[str, torch.Tensor]:
        """name -> (theta - theta_0) * keep, differentiable with respect to theta."""
        for m in self._sparse:
            # project theta (mask, Dale) if it changed, as the model does; not when a functional
            # call (e.g. the kernel code) has put its own tensor in place of the parameter
            if isinstance(m.module.weight, nn.Parameter):
                m.weight  # noqa: B018
        theta0 = self.theta0()
        out = {}
        for n, p in self.net.named_parameters():
            if n not in self._param_names:
                continue
            d = p - theta0[n]
            layer = self._keep_of.get(n)
            out[n] = d * layer.keep_mask_float() if layer is not None else d
        return out

    def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        theta0 = self.theta0()
        state = [(n, b) for n, b in self.base.named_buffers() if n not in self._param_names]
        args = (x,) if t is None else (x, t)

        def f(primals: Dict[str, torch.Tensor]) -> torch.Tensor:
            # copies made inside the transform: a training-mode forward may update them in place
            frozen = {n: b.clone() for n, b in state}
            return torch.func.functional_call(self.base, {**primals, **frozen}, args)

        for m, strength in self._boost:
            m.boost_strength_cpu = strength
        with counters_kept(self.base):
            value, change = torch.func.jvp(f, (theta0,), (self.delta(),))
        return value + change


def linearize(model: nn.Module,
              params0: Optional[Union[ParameterPoint, Mapping[str, torch.Tensor]]] = None
              ) -> LinearizedNetwork:
    """The linearisation of ``model`` around ``params0`` (default: its current parameters and
    buffers): a :class:`LinearizedNetwork` whose trainable parameters theta start at theta_0.

    ``params0``: a :class:`~sparse_nte.ntk.params.ParameterPoint` (parameters and buffers, e.g.
    from :func:`~sparse_nte.ntk.params.snapshot`) or a dict name -> tensor over (some of) the
    model's parameter names. The model itself is not modified.
    """
    return LinearizedNetwork(model, params0)
