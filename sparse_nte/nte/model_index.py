"""Which layer and which constraints each parameter of the model belongs to.

The NTE step computes the per-example sums of a parameter from its layer's captured inputs and
output gradients (:mod:`sparse_nte.per_example`), so the optimizer needs, for every parameter it
trains: its name, its param group, the linear / conv layer owning it (and its role there, weight
or bias), and the :class:`~sparse_nte.layers.SparseWeightsBase` wrapper whose mask and Dale
signs constrain it. :class:`ModelIndex` collects these once, when the optimizer is built.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from sparse_nte.layers import SparseWeightsBase
from sparse_nte.layers.compact import CompactLinear
from sparse_nte.per_example import (PerExampleCapture, calls_account_for_uses, check_layer_calls,
                                    conv2d_supported)

__all__ = ["Layer", "ParamInfo", "ModelIndex", "weight_params"]


@dataclass(eq=False)
class Layer:
    """A linear / conv layer whose inputs and output gradients are captured."""

    module: nn.Module
    name: str
    kind: str                                   # "linear" | "conv2d" | "compact"
    weight: Optional[torch.Tensor] = None       # set when the optimizer trains it
    bias: Optional[torch.Tensor] = None
    checked: bool = False                       # parameter use verified in a step it ran
    checked_silent: bool = False                # ... and in a step it did not run
    bypassed: bool = False                      # params used outside forward: generic path


@dataclass(eq=False)
class ParamInfo:
    """What the optimizer knows about one of its parameters."""

    name: str
    group: dict
    layer: Optional[Layer] = None               # the captured layer owning it, if any
    role: Optional[str] = None                  # "weight" | "bias" | None
    wrapper: Optional[SparseWeightsBase] = None  # set for the weight of a SparseWeights layer
    dale: Optional[torch.Tensor] = field(default=None, repr=False)  # Dale signs seen at build

    def mask(self) -> Optional[torch.Tensor]:
        """The zero mask of a SparseWeights weight (True = held at 0), or None (also for a
        compact weight, which holds its live entries only)."""
        if self.wrapper is None or getattr(self.wrapper, "compact", False):
            return None
        return self.wrapper.zero_mask

    def dale_signs(self) -> Optional[torch.Tensor]:
        """The Dale signs broadcast over the weight ((nnz,) per live entry of a compact
        weight), or None."""
        if self.wrapper is None:
            return None
        if getattr(self.wrapper, "compact", False):
            return self.wrapper.entry_sign()
        return self.wrapper.sign_tensor()

    def current_dale(self) -> Optional[torch.Tensor]:
        """The wrapper's presynaptic signs now (``dale_sign``), or None."""
        return self.wrapper.dale_sign if self.wrapper is not None else None

    def remember_dale(self) -> None:
        """Record the current Dale signs (the expert signs follow them from now on)."""
        dale = self.current_dale()
        self.dale = None if dale is None else dale.clone()


class ModelIndex:
    """The captured layers of a model and, once registered, the :class:`ParamInfo` of every
    parameter an optimizer trains (``info[id(p)]``)."""

    def __init__(self, model: nn.Module) -> None:
        self._names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self._wrapper_of = {id(m.weight_param): m for m in model.modules()
                            if isinstance(m, SparseWeightsBase)}
        self._layer_of: Dict[int, Tuple[Layer, str]] = {}
        self.layers: List[Layer] = []
        for name, m in model.named_modules():
            roles = (("weight", "weight"), ("bias", "bias"))
            if isinstance(m, nn.Linear):
                kind = "linear"
            elif isinstance(m, nn.Conv2d) and conv2d_supported(m):
                kind = "conv2d"
            elif isinstance(m, CompactLinear):
                kind, roles = "compact", (("values", "weight"), ("bias", "bias"))
            else:
                continue
            layer = Layer(m, name, kind)
            self.layers.append(layer)
            for attr, role in roles:
                p = getattr(m, attr, None)
                if isinstance(p, torch.Tensor):
                    self._layer_of[id(p)] = (layer, role)
        self.info: Dict[int, ParamInfo] = {}

    def register(self, p: torch.Tensor, group: dict) -> ParamInfo:
        """Record that ``p`` is trained in ``group``; ValueError if it is not the model's."""
        if id(p) not in self._names:
            raise ValueError(f"NTE: a parameter of shape {tuple(p.shape)} is not a parameter "
                             f"of the model passed to the optimizer")
        layer, role = self._layer_of.get(id(p), (None, None))
        info = ParamInfo(self._names[id(p)], group, layer, role, self._wrapper_of.get(id(p)))
        self.info[id(p)] = info
        if layer is not None:
            setattr(layer, role, p)
        return info

    def fired_layers(self, hooked: Sequence[Layer], capture: PerExampleCapture, n_examples: int,
                     total: torch.Tensor, managed: Callable[[Optional[torch.Tensor]], bool]
                     ) -> Dict[Layer, list]:
        """The ``hooked`` layers that ran in the forward pass of ``total``, with their calls.
        Checks the calls' batch sizes and, the first time a layer runs (or does not), that its
        ``managed`` parameters enter the loss only through its calls
        (:func:`~sparse_nte.per_example.calls_account_for_uses`); a layer failing that is
        marked ``bypassed`` (its parameters go to the generic path for good) and left out."""
        fired: Dict[Layer, list] = {}
        for layer in hooked:
            calls = capture.calls.get(layer.module)
            if calls:
                check_layer_calls(layer.name, calls, n_examples)
                fired[layer] = calls
        unchecked = [layer for layer in hooked
                     if not (layer.checked if layer in fired else layer.checked_silent)]
        if unchecked:
            entries = [([p for p in (layer.weight, layer.bias) if managed(p)],
                        fired.get(layer, [])) for layer in unchecked]
            for layer, ok in zip(unchecked, calls_account_for_uses(total, entries)):
                layer.bypassed = layer.bypassed or not ok
                if layer in fired:
                    layer.checked = True
                else:
                    layer.checked_silent = True
                if layer.bypassed:
                    fired.pop(layer, None)
        return fired

    def check_dale_signs(self, params: Sequence[torch.Tensor]) -> None:
        """ValueError if the Dale signs of one of ``params`` changed since they were recorded
        (the expert signs must follow them: ``resync``)."""
        for p in params:
            info = self.info[id(p)]
            current = info.current_dale()
            if info.dale is None and current is None:
                continue
            if info.dale is None or current is None or not torch.equal(current, info.dale):
                raise ValueError(
                    f"NTE.step: the Dale signs of '{info.name}' changed after the optimizer was "
                    f"built (or last resynchronised); the expert signs must follow them: call "
                    f"optimizer.resync()")


def weight_params(model: nn.Module) -> List[torch.Tensor]:
    """The connection weights: ``weight`` of every linear and convolution layer, ``values`` of
    every compact sparse linear layer (trainable, each once, in module order)."""
    out, seen = [], set()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd, CompactLinear)):
            w = m.values if isinstance(m, CompactLinear) else m.weight
            if w.requires_grad and id(w) not in seen:
                seen.add(id(w))
                out.append(w)
    return out
