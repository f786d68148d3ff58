"""MLP and CNN of the sparse-dynamic-synapses project, built from sparse_nte layers, with one
output head per task (task-incremental) or one shared head, and optional Dale's law.

Architectures (as the original project's SimpleMLP / SimpleCNN; Pervasive-AI-Lab)::

    MLP: flatten -> hidden_layers x [Linear(hidden_units) -> act -> norm -> dropout] -> head(s)
    CNN: conv_layers x [Conv2d(64, then 128 channels, 5x5, stride 1, no padding) -> act -> norm
         -> dropout -> pool] -> flatten -> hidden_layers x [Linear(hidden_units) -> act -> norm
         -> dropout] -> head(s)

    pool, conv_pool 1 (default): identity;  conv_pool p > 1: average pooling p x p, stride p

``conv_channels`` (e.g. ``128,256``), ``conv_kernel`` and ``conv_padding`` (valid | same) change
the convolutions, and ``hidden_layers = 0`` feeds the flattened (pooled) maps to the heads: the
CNN of Daruwalla & Lipasti (2024) is ``conv_channels = 128,256``, ``conv_kernel = 3``,
``conv_padding = same``, ``conv_pool = 2``, ``hidden_layers = 0``, ``layer_norm = true``
(3x3 convolutions with zero padding, ReLU, LayerNorm over channels, 2x2 average pooling, then
one dense output layer).

    norm, layer_norm False (default): identity
    norm, layer_norm True:  LayerNorm without affine parameters over the units (fc) or over the
                            channels at every location (conv), as the networks of Daruwalla &
                            Lipasti (2024) that the IB-Hebbian rule was published with. After a
                            k-WTA it makes the next layer's input dense; activity statistics are
                            recorded before it.

``hidden_widths`` (e.g. ``128,64``) gives each fc layer its own width instead of
``hidden_layers`` x ``hidden_units``.

``conv_layers = 2`` is the SimpleCNN of the original's final release (8ee2b3c, iCIFAR);
``conv_layers = 1`` the one-convolution SimpleCNN its permuted-MNIST CNN results came from
(902843e: Conv2d(1, 64, 5) then Linear(64 * 24 * 24, hidden_units)).

    act, sparsify False: ReLU
    act, sparsify True:  MLP: KWinners (no ReLU before it, as in the original)
                         CNN: ReLU -> KWinners2d(local=True) (winners among channels at each
                              location) in conv layers, ReLU -> KWinners in fc layers

A hidden layer is a ``SparseWeights``/``SparseWeights2d`` whenever its weights are constrained
(density < 1 or Dale's law), else the plain torch layer. Heads are dense ``nn.Linear`` (as the
original) unless ``weight_sparsity_head < 1`` (a ``SparseWeights`` keeping ``round(d * fan_in)``
random inputs per output unit, masks drawn after the hidden layers' so that those do not change)
or Dale's law (a ``SparseWeights``, with sparsity 0 unless ``weight_sparsity_head < 1``).

Differences from the original, each deliberate:

* The CNN's flattened size is computed from the input (the original hard-coded it: 28x28 inputs
  for its one-convolution CNN, 32x32 for its two-convolution one),
  and ``hidden_layers`` sets its number of fully connected hidden layers (the original always
  had one, whatever the key said).
* ``sparsify`` switches the k-WTA only; weight sparsity is set by ``weight_sparsity_fc/conv``
  alone (1.0 = dense). The original tied both to ``sparsify``.
* One head per task in the task-incremental setting, all created at construction, so an
  optimizer built afterwards trains every one of them (the original trained a single classifier
  and kept a snapshot of it after each task as that task's "head").
* Initialisation and masks come from generators seeded with ``seed``; the global torch RNG is
  neither used nor advanced. Layers without Dale's law get PyTorch's default initialisation
  (as the original: no rescaling for sparsity); Dale layers get the balanced E/I initialisation
  of :func:`sparse_nte.dale.dale_init_`.
* Under Dale's law the MLP's k-WTA also drops non-positive values (``relu=True``): rates must
  be non-negative for a unit's sign to mean excitation or inhibition.

Dale's law: unit j of hidden layer l has sign s_j (``exc_fraction`` of them +1); all its outgoing
weights, into layer l+1 or into EVERY head, satisfy w_ij * s_j >= 0. For a conv layer the unit
is the channel: its sign applies per input channel of the next convolution and to all H*W
flattened features of the channel in the first fc layer. With ``dale_input`` the input pixels
(MLP) or channels (CNN) get signs too; otherwise the first layer is unconstrained by sign.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import skip_init

from models.activity import ActivityRecorder
from models.blocks import ChannelLayerNorm, ExcitatoryKWinners, HiddenBlock
from models.spec import NetSpec
from sparse_nte.dale import assign_signs, dale_init_
from sparse_nte.config.groups.model import ORIGINAL_CONV_CHANNELS
from sparse_nte.layers import KWinners, KWinners2d, SparseWeights, SparseWeights2d, SparseWeightsBase
from sparse_nte.sparse_exec import resolve_sparse_exec

__all__ = ["Net", "MLP", "CNN", "CONV_CHANNELS", "CONV_KERNEL"]

CONV_CHANNELS = ORIGINAL_CONV_CHANNELS
CONV_KERNEL = 5      # the original's kernel side (the default of conv_kernel)


@dataclass(frozen=True)
class _LayerPlan:
    conv: bool
    n_in: int          # input features (fc) or input channels (conv)
    n_out: int         # units (fc) or channels (conv)
    positions: int     # output locations per unit: out_H * out_W for conv, 1 for fc
    density: float     # fraction of non-zero weights
    percent_on: float
    relu_first: bool   # a ReLU precedes the k-WTA (CNN) or not (MLP)
    kernel: int = 0    # conv: kernel side
    padding: int = 0   # conv: zero padding per side
    pool: int = 1      # conv: average pooling after the block (1 = none)
    passed: int = 1    # locations per unit passed on (after pooling): what flattening sees


def _generators(seed: int) -> dict[str, torch.Generator]:
    """Independent torch generators for signs, masks and initial weights, derived from ``seed``
    with numpy's SeedSequence (so switching Dale's law on does not change masks or the
    initialisation of sign-free layers)."""
    out = {}
    for name, child in zip(("sign", "mask", "init", "dale"), np.random.SeedSequence(seed).spawn(4)):
        lo, hi = (int(v) for v in child.generate_state(2, dtype=np.uint32))
        out[name] = torch.Generator().manual_seed((hi << 31) ^ lo)
    return out


def _default_init_(module: nn.Module, generator: torch.Generator) -> None:
    """PyTorch's default Linear/Conv2d initialisation drawn from ``generator``: weights
    kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)); bias likewise."""
    w = module.weight
    fan_in = w[0].numel()
    with torch.no_grad():
        nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=generator)
        if module.bias is not None:
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _dale_sign(layer: nn.Module) -> Optional[torch.Tensor]:
    return layer.dale_sign if isinstance(layer, SparseWeightsBase) else None


class Net(nn.Module):
    """A feed-forward network with hidden ``blocks`` and output ``heads`` (see module docstring).

    ``forward(x, t)``: x is (B, C, H, W) (the MLP also takes (B, C*H*W)); t is an int64 (B,)
    tensor of task ids, routed to head ``head_of_task[t]``, and may be None with one head.
    Returns logits (B, head_size).

    Attributes: ``spec`` (:class:`NetSpec`), ``input_shape``, ``blocks`` (ModuleList of
    :class:`HiddenBlock`), ``heads`` (ModuleList), ``head_of_task`` (buffer), ``flatten_before``
    (index of the first fc block; the input is flattened before it).
    """

    def __init__(self, spec: NetSpec, input_shape: Sequence[int], num_heads: int, head_size: int,
                 head_of_task: Sequence[int]) -> None:
        super().__init__()
        if not isinstance(spec, NetSpec):
            raise ValueError(f"{type(self).__name__}: spec must be a NetSpec, got {type(spec).__name__}")
        shape = tuple(input_shape)
        if len(shape) != 3 or not all(isinstance(v, int) and v > 0 for v in shape):
            raise ValueError(f"{type(self).__name__}: input_shape must be (C, H, W) positive ints, "
                             f"got {input_shape!r}")
        if not (isinstance(num_heads, int) and num_heads >= 1):
            raise ValueError(f"{type(self).__name__}: num_heads must be an int >= 1, got {num_heads!r}")
        if not (isinstance(head_size, int) and head_size >= 1):
            raise ValueError(f"{type(self).__name__}: head_size must be an int >= 1, got {head_size!r}")
        head_of_task = tuple(int(h) for h in head_of_task)
        if not head_of_task or not all(0 <= h < num_heads for h in head_of_task):
            raise ValueError(f"{type(self).__name__}: head_of_task must map every task to a head in "
                             f"[0, {num_heads}), got {head_of_task!r}")
        self.spec = spec
        self.input_shape = shape
        self.head_size = head_size
        self.register_buffer("head_of_task", torch.tensor(head_of_task, dtype=torch.long),
                             persistent=False)
        self._recorder: Optional[ActivityRecorder] = None

        plans = self._plan(spec, shape)
        self.flatten_before = next((i for i, p in enumerate(plans) if not p.conv), len(plans))
        self._passed = tuple(p.passed for p in plans)     # locations per unit after pooling
        gen = _generators(spec.seed)

        # Signs: the input units (if constrained), then the units of every hidden layer.
        input_sign = unit_signs = None
        if spec.dale:
            if spec.dale_input:
                input_sign = assign_signs(plans[0].n_in, spec.exc_fraction, gen["sign"])
            unit_signs = [assign_signs(p.n_out, spec.exc_fraction, gen["sign"]) for p in plans]

        blocks = []
        for i, plan in enumerate(plans):
            pre_sign = input_sign if i == 0 else unit_signs[i - 1] if unit_signs else None
            if pre_sign is not None and i == self.flatten_before and i > 0:
                pre_sign = pre_sign.repeat_interleave(plans[i - 1].passed)   # channel -> C*H*W
            layer = self._make_layer(plan, pre_sign, gen, where=f"hidden layer {i}")
            activation = self._make_activation(plan, unit_signs[i] if unit_signs else None)
            blocks.append(HiddenBlock(layer, activation, spec.dropout, spec.dropout_draws,
                                      self._make_norm(plan), plan.pool))
        self.blocks = nn.ModuleList(blocks)

        last = plans[-1]
        head_sign = unit_signs[-1].repeat_interleave(last.passed) if unit_signs else None
        self.heads = nn.ModuleList(
            self._make_layer(_LayerPlan(False, last.n_out * last.passed, head_size, 1,
                                        spec.weight_sparsity_head,
                                        1.0, False),
                             head_sign, gen, where=f"head {k}", key="weight_sparsity_head")
            for k in range(num_heads))

    # -- construction ---------------------------------------------------------------------------
    def _plan(self, spec: NetSpec, input_shape: tuple[int, int, int]) -> list[_LayerPlan]:
        raise NotImplementedError

    @staticmethod
    def _fc_plans(spec: NetSpec, n_in: int, relu_first: bool) -> list[_LayerPlan]:
        plans = []
        for width in spec.fc_widths:
            plans.append(_LayerPlan(False, n_in, width, 1, spec.weight_sparsity_fc,
                                    spec.percent_on_fc, relu_first))
            n_in = width
        return plans

    def _make_layer(self, plan: _LayerPlan, pre_sign: Optional[torch.Tensor],
                    gen: dict[str, torch.Generator], where: str,
                    key: Optional[str] = None) -> nn.Module:
        if plan.conv:
            module = skip_init(nn.Conv2d, plan.n_in, plan.n_out, plan.kernel, padding=plan.padding)
        else:
            module = skip_init(nn.Linear, plan.n_in, plan.n_out)
        _default_init_(module, gen["init"])
        if plan.density >= 1.0 and pre_sign is None:
            return module
        fan_in = module.weight[0].numel()
        if round(plan.density * fan_in) < 1:
            key = key or ("weight_sparsity_conv" if plan.conv else "weight_sparsity_fc")
            raise ValueError(f"build_model: {key}={plan.density} keeps round({plan.density} * "
                             f"{fan_in}) = 0 of the {fan_in} inputs of each unit of {where}; "
                             f"it must be at least {0.5 / fan_in:.3g}")
        if plan.conv:
            layer = SparseWeights2d(module, sparsity=round(1.0 - plan.density, 12),
                                    generator=gen["mask"])
        else:
            layer = SparseWeights(module, sparsity=round(1.0 - plan.density, 12),
                                  generator=gen["mask"], sparse_exec="off")
        if pre_sign is not None:
            layer.set_presynaptic_sign(pre_sign)
            dale_init_(layer, gen["dale"])
        elif self.spec.sparse_init == "fan_in":
            # Scale for the live inputs: U(-1/sqrt(live), 1/sqrt(live)) instead of 1/sqrt(fan_in).
            live = round(plan.density * fan_in)
            with torch.no_grad():
                module.weight.mul_(math.sqrt(fan_in / live))
                if module.bias is not None:
                    module.bias.mul_(math.sqrt(fan_in / live))
        if isinstance(layer, SparseWeights):   # last: compact storage replaces `module`
            w = layer.weight_param
            layer.sparse_exec = resolve_sparse_exec(self.spec.sparse_exec, layer.density(),
                                                    w.numel(), w.device, w.dtype)
        return layer

    def _make_norm(self, plan: _LayerPlan) -> Optional[nn.Module]:
        if not self.spec.layer_norm:
            return None
        if plan.conv:
            return ChannelLayerNorm(plan.n_out)
        return nn.LayerNorm(plan.n_out, elementwise_affine=False)

    def _make_activation(self, plan: _LayerPlan, sign: Optional[torch.Tensor]) -> nn.Module:
        spec = self.spec
        if not spec.sparsify:
            return nn.ReLU()

        def kwinners(n: int) -> nn.Module:
            if plan.conv:
                return KWinners2d(n, plan.percent_on, spec.k_inference_factor, spec.boost_strength,
                                  spec.boost_strength_factor, spec.duty_cycle_period, local=True)
            return KWinners(n, plan.percent_on, spec.k_inference_factor, spec.boost_strength,
                            spec.boost_strength_factor, spec.duty_cycle_period,
                            relu=sign is not None and not plan.relu_first)

        if sign is not None and spec.dale_kwta == "exclude":
            n_exc = int((sign > 0).sum())
            if n_exc == 0:
                raise ValueError(f"build_model: dale_kwta='exclude' lets only excitatory units "
                                 f"compete, but exc_fraction={spec.exc_fraction} leaves none of "
                                 f"{plan.n_out} units excitatory; raise exc_fraction or use "
                                 f"dale_kwta='include'")
            act: nn.Module = ExcitatoryKWinners(kwinners(n_exc), sign)
        else:
            act = kwinners(plan.n_out)
        return nn.Sequential(nn.ReLU(), act) if plan.relu_first else act

    # -- forward --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: Optional[torch.Tensor] = None) -> torch.Tensor:
        self._check_input(x)
        h = x
        recorder = self._recorder
        for i, block in enumerate(self.blocks):
            if i == self.flatten_before:
                h = h.flatten(1)
            if recorder is None:
                h = block(h)
            else:   # observe the activation before dropout
                h = block.activate(block.layer(h))
                recorder.record(i, h)
                h = block.pass_on(block.norm(h))
        if self.flatten_before == len(self.blocks):
            h = h.flatten(1)
        return self._route(h, t)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() == 4 and tuple(x.shape[1:]) == self.input_shape:
            return
        if self.flatten_before == 0 and x.dim() == 2 and x.shape[1] == math.prod(self.input_shape):
            return
        shape = ", ".join(map(str, self.input_shape))
        flat = f" or (B, {math.prod(self.input_shape)})" if self.flatten_before == 0 else ""
        raise ValueError(f"{type(self).__name__} expects input of shape (B, {shape}){flat}, got "
                         f"{tuple(x.shape)}")

    def _route(self, h: torch.Tensor, t: Optional[torch.Tensor]) -> torch.Tensor:
        """logits[b] = heads[head_of_task[t[b]]](h[b])."""
        num_tasks = self.head_of_task.numel()
        if t is None:
            if len(self.heads) > 1:
                raise ValueError(f"{type(self).__name__} has {len(self.heads)} heads (task-incremental):"
                                 f" forward(x, t) needs the task id of every example")
            return self.heads[0](h)
        if (not isinstance(t, torch.Tensor) or t.dim() != 1 or t.shape[0] != h.shape[0]
                or t.dtype.is_floating_point or t.dtype == torch.bool):
            raise ValueError(f"task ids t must be an integer tensor of shape ({h.shape[0]},), got "
                             f"{t.dtype if isinstance(t, torch.Tensor) else type(t).__name__} "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else ''}")
        if t.numel() == 0:
            return self.heads[0](h)
        lo, hi = torch.aminmax(t)
        lo, hi = int(lo), int(hi)
        if lo < 0 or hi >= num_tasks:
            raise ValueError(f"task ids must be in [0, {num_tasks}) for this scenario, got values in "
                             f"[{lo}, {hi}]")
        if len(self.heads) == 1:
            return self.heads[0](h)
        head = self.head_of_task[t]
        if bool((head == head[0]).all()):
            return self.heads[int(head[0])](h)
        out = h.new_empty(h.shape[0], self.head_size)
        for k in torch.unique(head).tolist():
            idx = torch.nonzero(head == k).flatten()
            out.index_copy_(0, idx, self.heads[k](h.index_select(0, idx)))
        return out

    # -- introspection --------------------------------------------------------------------------
    def unit_signs(self) -> list[Optional[torch.Tensor]]:
        """Sign (+1 excitatory, -1 inhibitory) of the units (fc) or channels (conv) of every
        hidden block, read from the layer they project to; None entries without Dale's law."""
        out = []
        for i in range(len(self.blocks)):
            nxt = self.blocks[i + 1].layer if i + 1 < len(self.blocks) else self.heads[0]
            sign = _dale_sign(nxt)
            if sign is not None and i + 1 == self.flatten_before:
                sign = sign[:: self._passed[i]]   # one entry per channel
            out.append(sign)
        return out

    def input_sign(self) -> Optional[torch.Tensor]:
        """Signs of the input pixels (MLP) or channels (CNN), or None if they are unconstrained."""
        return _dale_sign(self.blocks[0].layer)

    @contextmanager
    def record_activity(self) -> Iterator[ActivityRecorder]:
        """Record hidden activity (before dropout) of every forward pass in the block::

            with model.record_activity() as rec:
                model(x, t)
            rec.summary()   # {"blocks.0": {"active_fraction": ..., "unit_active_fraction": ...}}

        Outside the block the forward pass does no extra work.
        """
        if self._recorder is not None:
            raise ValueError(f"{type(self).__name__} is already recording activity; nested "
                             f"record_activity() blocks are not supported")
        recorder = ActivityRecorder([f"blocks.{i}" for i in range(len(self.blocks))])
        for i, sign in enumerate(self.unit_signs()):
            recorder.set_unit_signs(i, sign)
        self._recorder = recorder
        try:
            yield recorder
        finally:
            self._recorder = None

    def extra_repr(self) -> str:
        return (f"input_shape={self.input_shape}, heads={len(self.heads)}x{self.head_size}, "
                f"dale={self.spec.dale}")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_recorder"] = None
        return state


class MLP(Net):
    """``hidden_layers`` fully connected layers of ``hidden_units`` (or of ``hidden_widths``) on
    the flattened input."""

    def _plan(self, spec: NetSpec, input_shape: tuple[int, int, int]) -> list[_LayerPlan]:
        return self._fc_plans(spec, math.prod(input_shape), relu_first=False)


class CNN(Net):
    """Convolutions (``conv_channels``, or the original's ``conv_layers`` of 64 then 128
    channels; ``conv_kernel`` x ``conv_kernel``, ``conv_padding``, then ``conv_pool`` average
    pooling) then ``hidden_layers`` fc layers (none: the flattened maps feed the heads)."""

    def _plan(self, spec: NetSpec, input_shape: tuple[int, int, int]) -> list[_LayerPlan]:
        c, h, w = input_shape
        k, pool = spec.conv_kernel, spec.conv_pool
        pad = (k - 1) // 2 if spec.conv_padding == "same" else 0
        plans, n_in = [], c
        for i, channels in enumerate(spec.conv_widths):
            out_h, out_w = h + 2 * pad - k + 1, w + 2 * pad - k + 1
            if min(out_h, out_w) < max(1, pool):
                raise ValueError(f"CNN: input {input_shape[1]}x{input_shape[2]} is too small for "
                                 f"{len(spec.conv_widths)} {k}x{k} {spec.conv_padding} convolutions"
                                 f"{f' with {pool}x{pool} pooling' if pool > 1 else ''}: "
                                 f"convolution {i} would see {h}x{w} and output {out_h}x{out_w}")
            h, w = out_h // pool, out_w // pool
            plans.append(_LayerPlan(True, n_in, channels, out_h * out_w, spec.weight_sparsity_conv,
                                    spec.percent_on_conv, True, k, pad, pool, h * w))
            n_in = channels
        return plans + self._fc_plans(spec, n_in * plans[-1].passed, relu_first=True)
