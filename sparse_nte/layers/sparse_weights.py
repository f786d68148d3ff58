"""Sparse connectivity: a fixed set of a layer's weights held at exactly zero (nupic.torch's
``SparseWeights``, ``SparseWeights2d``, ``SparseWeightsBase``, ``HasRezeroWeights``,
``rezero_weights``, ``normalize_sparse_weights``), plus Dale's-law signs.

With ``M`` the zero mask (True = held at zero) and ``s`` the presynaptic signs (Dale's law, see
:mod:`sparse_nte.dale`), the layer computes with the projection of its weight onto the feasible
set::

    W <- W * (1 - M)                  (mask)
    W <- s * max(0, s * W)            (Dale: a weight of the wrong sign becomes 0)

Every output unit keeps ``round((1 - sparsity) * fan_in)`` live weights (Ahmad & Scheinkman,
"How can we be so dense? The benefits of using highly sparse representations", 2019).

Defects of nupic.torch fixed here:

1. Masked weights can never be revived by momentum, weight decay or Adam state: the gradient of
   a masked weight is zeroed as it is accumulated, and the constraints are re-applied before any
   forward pass or ``state_dict`` that follows a change of the weight. This holds whether or not
   the user calls ``rezero_weights``.
2. ``normalize_sparse_weights`` also works for ``SparseWeights2d`` (nupic.torch unpacks a 2-d
   weight shape and fails on a conv weight); its fan-in is ``in_channels * kh * kw``.
3. Passing both ``weight_sparsity`` and ``sparsity`` is an error even when one is 0 (nupic.torch
   checks ``weight_sparsity and sparsity`` and silently keeps ``sparsity`` if one is 0).

``zero_mask`` is a bool buffer (nupic.torch stores it as float16); nupic.torch's float16 masks
load into it.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Optional

import torch
import torch.nn as nn

from sparse_nte.layers.compact import CompactLinear, rewire
from sparse_nte.layers.sparse_base import (  # noqa: F401  (_MaskGrad: re-exported)
    HasRezeroWeights,
    SparseWeightsBase,
    _MaskGrad,
)
from sparse_nte.optim_state import remap_positions
from sparse_nte.sparse_exec import (
    LiveConnections,
    SparseLinearOverride,
    check_sparse_exec,
    prefers_sparse,
)

__all__ = [
    "HasRezeroWeights",
    "SparseWeightsBase",
    "SparseWeights",
    "SparseWeights2d",
    "rezero_weights",
    "normalize_sparse_weights",
    "enforce_constraints",
]


class SparseWeights(SparseWeightsBase):
    """Sparse connectivity for an ``nn.Linear`` (nupic.torch's SparseWeights).

    Args:
        module: the linear layer.
        weight_sparsity: deprecated, fraction of non-zeros (warns).
        sparsity: fraction of zeros in [0, 1) (1 allowed with ``allow_extremes``).
        allow_extremes: allow ``sparsity = 1``.
        generator: torch generator choosing the zeros (seedable); default the global RNG.
        sparse_exec: how the layer stores and computes its weight
            (:mod:`sparse_nte.sparse_exec`):

            * ``"off"``: masked-dense, a dense ``nn.Parameter`` and dense products;
            * ``"on"``: the dense parameter, products from the live weights only;
            * ``"auto"`` (default): the dense parameter, and the products of ``"on"`` when the
              rule :func:`sparse_nte.sparse_exec.prefers_sparse` expects them to be faster
              (density <= 0.2 with batches of 64+ rows, <= 0.1 with 16-63 rows; CPU;
              float32/64);
            * ``"compact"``: only the live weights are stored and trained
              (:class:`~sparse_nte.layers.compact.CompactLinear`: ``layer.module`` is replaced
              by it, ``layer.module.values`` is the parameter, its gradient and optimizer state
              have ``nnz`` entries; ``layer.weight`` is a write-through dense view). Set it
              before building the optimizer; optimizers that must follow mask changes are
              attached with :meth:`attach_optimizer`.

            Every mode equals the masked-dense computation up to float rounding. Not supported
            on the ``"on"``/``"auto"`` sparse products: double backward and ``torch.func``
            transforms of the layer (use ``"off"``); ``"compact"`` runs those at the dense cost.

    The sparse path's index structure is cached and rebuilt whenever ``zero_mask`` changes
    through :meth:`set_zero_mask`, ``load_state_dict``, ``.to()`` or any in-place torch operation
    on ``zero_mask`` itself (its version counter tells). Edits that bypass the version counter
    (through ``zero_mask.data`` or a numpy view) are not seen: call :meth:`set_zero_mask`.
    """

    def __init__(self, module: nn.Linear, weight_sparsity: Optional[float] = None,
                 sparsity: Optional[float] = None, allow_extremes: bool = False,
                 generator: Optional[torch.Generator] = None, *,
                 sparse_exec: str = "auto") -> None:
        w = getattr(module, "weight", None)
        if w is None or w.dim() != 2:
            raise ValueError(f"SparseWeights wraps an nn.Linear-like module with a 2-d weight, "
                             f"got {type(module).__name__}")
        super().__init__(module, weight_sparsity, sparsity, allow_extremes)
        self.register_buffer("zero_mask", self._make_mask(generator))
        self.__dict__["_optimizers"] = []
        self._forget_live()
        self.enforce_constraints()
        self.sparse_exec = sparse_exec

    # -- storage --------------------------------------------------------------------------------
    @property
    def compact(self) -> bool:
        """True when only the live weights are stored (``sparse_exec = "compact"``)."""
        return isinstance(self.__dict__["_modules"].get("module"), CompactLinear)

    @property
    def sparse_exec(self) -> str:
        """``"auto"``, ``"on"``, ``"off"`` or ``"compact"`` (see the class docstring)."""
        return self.__dict__.get("_sparse_exec", "auto")

    @sparse_exec.setter
    def sparse_exec(self, mode: str) -> None:
        mode = check_sparse_exec(mode, f"{type(self).__name__}.sparse_exec")
        want = mode == "compact"
        if want != self.compact:
            if self._attached():
                raise ValueError(f"{type(self).__name__}: changing sparse_exec between "
                                 f"'compact' and the dense storage replaces the trained "
                                 f"parameter, but an optimizer is attached to this layer; set "
                                 f"sparse_exec before building the optimizer")
            self._convert(want)
        self.__dict__["_sparse_exec"] = mode

    def _convert(self, to_compact: bool) -> None:
        if to_compact:
            self._prepare()
            self.module = CompactLinear(self.module, self.live_connections())
        else:
            self._prepare()
            self.module = self.module.to_linear()
        self._forget_live()
        self._clean_key = ()
        self._hooked_weight = None
        self.enforce_constraints()

    @property
    def weight_param(self) -> nn.Parameter:
        return self.module.values if self.compact else self.module.weight

    def to_dense_layout(self, t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        if not self.compact:
            return t
        live = self.live_connections()
        out = t.new_full((live.out_features * live.in_features,), fill)
        out.index_copy_(0, live.flat_idx.to(t.device), t)
        return out.view(live.out_features, live.in_features)

    def from_dense_layout(self, t: torch.Tensor) -> torch.Tensor:
        if not self.compact:
            return t
        return t.reshape(-1).index_select(0, self.live_connections().flat_idx.to(t.device))

    def _weight_spec(self) -> tuple[torch.Size, torch.dtype, torch.device]:
        if self.compact:
            m = self.module
            return torch.Size((m.out_features, m.in_features)), m.values.dtype, m.values.device
        return super()._weight_spec()

    def attach_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Let ``optimizer`` follow this layer's mask changes: with compact storage every change
        of the live set rearranges its state of ``module.values``
        (:func:`sparse_nte.optim_state.remap_positions`). Held weakly; attaching twice is
        harmless. :func:`sparse_nte.dale.constrain_optimizer`, the plasticity schedules and
        the NTE optimizer attach theirs."""
        if not any(ref() is optimizer for ref in self.__dict__["_optimizers"]):
            self.__dict__["_optimizers"].append(weakref.ref(optimizer))

    def _attached(self) -> list:
        refs = [r for r in self.__dict__.get("_optimizers", []) if r() is not None]
        self.__dict__["_optimizers"] = refs
        return [r() for r in refs]

    # -- constraints on compact storage ---------------------------------------------------------
    def entry_sign(self) -> Optional[torch.Tensor]:
        """With compact storage and Dale's law: the presynaptic sign of every live entry,
        (nnz,) in the order of ``module.values``; else None."""
        if not self.compact or self.dale_sign is None:
            return None
        live, sign = self.module.live, self.dale_sign
        key = self.__dict__.get("_entry_sign_key")
        if not (key and key[0] is live and key[1] is sign and key[2] == sign._version):
            self.__dict__["_entry_sign"] = sign.index_select(0, live.col_idx)
            self.__dict__["_entry_sign_key"] = (live, sign, sign._version)
        return self.__dict__["_entry_sign"]

    def enforce_constraints(self) -> None:
        if not self.compact:
            super().enforce_constraints()
            return
        m = self.module
        m.sync()
        v = m.values
        with torch.no_grad():
            s = self.entry_sign()
            if s is not None:                    # v <- s * max(0, s * v)
                v.mul_(s).clamp_(min=0).mul_(s)
        self._clean_key = (v, v._version)

    def _is_clean(self) -> bool:
        if not self.compact:
            return super()._is_clean()
        key, v = self._clean_key, self.module.values
        return bool(key) and key[0] is v and key[1] == v._version

    def _prepare(self) -> None:
        if not self.compact:
            super()._prepare()
            return
        if not self._mask_unchanged(self._live_of):    # zero_mask edited in place
            self._rewire(self.zero_mask)
        if self.module.pending_dense() is not None or not self._is_clean():
            self.enforce_constraints()

    def set_zero_mask(self, zero_mask: torch.Tensor) -> None:
        """Replace the mask (True = held at zero) and apply it at once. With dense storage the
        caller resets optimizer state at the changed positions
        (:func:`sparse_nte.optim_state.reset_positions`); with compact storage the state of
        every attached optimizer is rearranged here (:meth:`attach_optimizer`)."""
        if not self.compact:
            super().set_zero_mask(zero_mask)
            return
        shape = self._weight_spec()[0]
        if zero_mask.shape != shape or zero_mask.dtype != torch.bool:
            raise ValueError(f"zero_mask must be a bool tensor of shape {tuple(shape)}, got "
                             f"{zero_mask.dtype} {tuple(zero_mask.shape)}")
        self.zero_mask.copy_(zero_mask)
        self._rewire(self.zero_mask)
        self.enforce_constraints()

    def _rewire(self, zero_mask: torch.Tensor) -> None:
        """Compact storage: adopt the live set of ``zero_mask``; move the attached optimizers'
        state along (grown entries start fresh)."""
        source = rewire(self.module, zero_mask)
        self._live = self.module.live
        mask = self.zero_mask
        self._live_of = (weakref.ref(mask), mask._version)
        for opt in self._attached():
            if any(p is self.module.values for g in opt.param_groups for p in g["params"]):
                remap_positions(opt, self.module.values, source)
        self._clean_key = ()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args)
        if self.compact and not self._mask_unchanged(self._live_of):
            self._rewire(self.zero_mask)   # the values follow from the child's dense weight

    # -- sparse execution ----------------------------------------------------------------------
    def _forget_live(self) -> None:
        self._live: Optional[LiveConnections] = None
        self._live_of: tuple = (None, -1)       # (weakref to the mask, its version)
        self._density_of: tuple = (None, -1)
        self._density = 1.0
        if self.compact:   # the compact values are laid out by the module's structure
            mask = self.zero_mask
            self._live = self.module.live
            self._live_of = (weakref.ref(mask), mask._version)

    def _mask_unchanged(self, key: tuple) -> bool:
        ref, version = key
        mask = self.zero_mask
        return ref is not None and ref() is mask and version == mask._version

    def live_connections(self) -> LiveConnections:
        """The index structure of the live weights (built from ``zero_mask`` when it changed)."""
        if self.compact:
            if not self._mask_unchanged(self._live_of):
                self._rewire(self.zero_mask)
            return self.module.live
        if self._live is None or not self._mask_unchanged(self._live_of):
            mask = self.zero_mask
            self._live = LiveConnections(mask)
            self._live_of = (weakref.ref(mask), mask._version)
        return self._live

    def density(self) -> float:
        """Fraction of live (unmasked) weights, from the current ``zero_mask``."""
        if not self._mask_unchanged(self._density_of):
            mask = self.zero_mask
            self._density = 1.0 - float(mask.sum()) / max(1, mask.numel())
            self._density_of = (weakref.ref(mask), mask._version)
        return self._density

    def uses_sparse_path(self, x: torch.Tensor) -> bool:
        """Whether :meth:`forward` on ``x`` runs the sparse path (see ``sparse_exec``)."""
        mode = self.sparse_exec
        if mode == "off" or x.numel() == 0:
            return False
        if mode in ("on", "compact"):
            return True
        shape, dtype, device = self._weight_spec()
        rows = x.numel() // max(1, x.shape[-1]) if x.dim() else 0
        return prefers_sparse(self.density(), shape.numel(), rows, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._prepare()
        if self.compact:
            return self.module(x)
        if not self.uses_sparse_path(x):
            return self.module(x)
        # The inner module is called as usual (its hooks fire); only its F.linear on this weight
        # is replaced by the sparse product.
        with SparseLinearOverride(self.module.weight, self.live_connections()) as override:
            y = self.module(x)
        if override.calls == 0 and self.sparse_exec == "on":
            raise ValueError(f"sparse_exec='on' needs the wrapped module to compute "
                             f"F.linear(x, weight, bias) with its own weight (nn.Linear does); "
                             f"{type(self.module).__name__} did not")
        return y

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.update(_live=None, _live_of=(None, -1), _density_of=(None, -1), _density=1.0,
                     _optimizers=[])
        state.pop("_entry_sign", None)
        state.pop("_entry_sign_key", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._forget_live()


class SparseWeights2d(SparseWeightsBase):
    """Sparse connectivity for an ``nn.Conv2d`` (nupic.torch's SparseWeights2d): every output
    channel keeps the same number of non-zeros among its ``in_channels * kh * kw`` weights."""

    def __init__(self, module: nn.Conv2d, weight_sparsity: Optional[float] = None,
                 sparsity: Optional[float] = None, allow_extremes: bool = False,
                 generator: Optional[torch.Generator] = None) -> None:
        w = getattr(module, "weight", None)
        if w is None or w.dim() != 4:
            raise ValueError(f"SparseWeights2d wraps an nn.Conv2d-like module with a 4-d weight, "
                             f"got {type(module).__name__}")
        super().__init__(module, weight_sparsity, sparsity, allow_extremes)
        self.register_buffer("zero_mask", self._make_mask(generator))
        self.enforce_constraints()


def rezero_weights(m: nn.Module) -> None:
    """Re-apply the constraints of ``m`` if it is a sparse-weights layer.

    Use as ``model.apply(rezero_weights)`` like nupic.torch. Not required for correctness here
    (see the module docstring, fix 1), but harmless.
    """
    if isinstance(m, HasRezeroWeights):
        m.rezero_weights()


def enforce_constraints(model: nn.Module) -> None:
    """Apply the constraints of every sparse-weights layer inside ``model``."""
    for m in model.modules():
        if isinstance(m, SparseWeightsBase):
            m.enforce_constraints()


def normalize_sparse_weights(m: nn.Module) -> None:
    """Kaiming-uniform initialisation scaled to the number of non-zero inputs (nupic.torch's)::

        weight ~ U(-b, b),  b = sqrt(3) * gain / sqrt(fan),  gain = sqrt(2 / (1 + 5))
        bias   ~ U(-1 / sqrt(fan), 1 / sqrt(fan)),          fan  = int(fan_in * (1 - sparsity))

    with ``gain`` torch's for ``leaky_relu`` of slope ``sqrt(5)`` (as ``nn.Linear``'s init) and
    ``fan_in`` the inputs of one output unit (``in_channels * kh * kw`` for a convolution, fix 2
    in the module docstring). The constraints are applied afterwards."""
    if isinstance(m, SparseWeightsBase):
        fan = max(1, int(m._fan_in() * (1.0 - m.sparsity)))
        gain = nn.init.calculate_gain("leaky_relu", math.sqrt(5))
        bound = math.sqrt(3.0) * gain / math.sqrt(fan)
        with torch.no_grad():
            nn.init.uniform_(m.module.weight, -bound, bound)
            if m.module.bias is not None:
                nn.init.uniform_(m.module.bias, -1 / math.sqrt(fan), 1 / math.sqrt(fan))
        m.enforce_constraints()
