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

import abc
import math
import warnings
import weakref
from typing import Any, Optional

import torch
import torch.nn as nn

from sparse_nte.layers.compact import CompactLinear, rewire
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


class HasRezeroWeights(abc.ABC):
    """Modules with a ``rezero_weights()`` method (nupic.torch's abstract base class)."""

    @abc.abstractmethod
    def rezero_weights(self) -> None:
        """Set the masked weights to zero."""
        raise NotImplementedError


def _random_zero_mask(out_units: int, fan_in: int, num_zeros: int,
                      generator: Optional[torch.Generator]) -> torch.Tensor:
    """A (out_units, fan_in) bool mask with exactly ``num_zeros`` True entries per row."""
    mask = torch.zeros(out_units, fan_in, dtype=torch.bool)
    if num_zeros:
        order = torch.rand(out_units, fan_in, generator=generator).argsort(dim=1)
        mask.scatter_(1, order[:, :num_zeros], True)
    return mask


class SparseWeightsBase(nn.Module, HasRezeroWeights):
    """Wraps a module with a ``weight`` and keeps a fixed set of its weights at exactly zero.

    ``sparsity`` is the fraction of zeros; every output unit gets exactly
    ``fan_in - round((1 - sparsity) * fan_in)`` zeros. ``zero_mask`` (bool buffer, True = the
    weight is held at zero) may be replaced by plasticity schedules through :meth:`set_zero_mask`.

    The wrapper owns every constraint on its weight: the mask and, when Dale's law is on, the sign
    of each presynaptic unit (``dale_sign`` buffer, +1 excitatory / -1 inhibitory, see
    :mod:`sparse_nte.dale`). :meth:`enforce_constraints` applies both; it runs automatically
    before a forward pass or ``state_dict`` whenever the weight changed since the last time (the
    weight tensor's version counter tells), and the gradient of a masked weight is zeroed as it is
    accumulated, so stock optimizers never move it.

    Caveat: writes through ``weight.data`` bypass PyTorch's version counter; after editing
    ``.data`` directly call :meth:`rezero_weights` (as nupic.torch always required). In-place
    edits under ``torch.no_grad()`` and every ``torch.optim`` optimizer are detected.
    """

    def __init__(self, module: nn.Module, weight_sparsity: Optional[float] = None,
                 sparsity: Optional[float] = None, allow_extremes: bool = False) -> None:
        super().__init__()
        if weight_sparsity is None and sparsity is None:
            raise ValueError("SparseWeights needs `sparsity` (fraction of zeros)")
        if weight_sparsity is not None and sparsity is not None:
            raise ValueError(f"SparseWeights: pass `sparsity` (fraction of zeros) or the deprecated "
                             f"`weight_sparsity` (fraction of non-zeros), not both (got "
                             f"weight_sparsity={weight_sparsity!r}, sparsity={sparsity!r})")
        if weight_sparsity is not None:
            warnings.warn("Parameter `weight_sparsity` is deprecated (fraction of non-zeros). "
                          "Use `sparsity` (fraction of zeros) instead.", DeprecationWarning,
                          stacklevel=3)
            sparsity = 1.0 - weight_sparsity
        if not isinstance(sparsity, (int, float)):
            raise ValueError(f"sparsity must be a number, got {sparsity!r}")
        if allow_extremes:
            if not 0.0 <= sparsity <= 1.0:
                raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
        elif not 0.0 <= sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (fraction of zeros; pass "
                             f"allow_extremes=True for 1.0), got {sparsity!r}")
        if not isinstance(getattr(module, "weight", None), nn.Parameter):
            raise ValueError(f"SparseWeights wraps a module with a `weight` parameter, got {module!r}")
        self.module = module
        self.sparsity = float(sparsity)
        self.register_buffer("dale_sign", None)
        self._clean_key: tuple = ()
        self._hooked_weight: Optional[weakref.ref] = None  # weight whose grad hook is installed
        self.register_state_dict_pre_hook(_enforce_before_state_dict)

    # -- nupic.torch properties --------------------------------------------------------------
    @property
    def weight(self) -> nn.Parameter:
        """The wrapped layer's weight, with the constraints applied."""
        self._prepare()
        return self.module.weight

    @property
    def bias(self) -> Optional[nn.Parameter]:
        return self.module.bias

    @property
    def weight_param(self) -> nn.Parameter:
        """The trained tensor behind the weight: ``module.weight`` (dense storage) or
        ``module.values`` (compact storage, :class:`~sparse_nte.layers.SparseWeights`). Use it
        to find the weight among an optimizer's parameters; reading it applies no constraint."""
        return self.module.weight

    def to_dense_layout(self, t: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """A per-weight tensor of the trained parameter (the weight's shape; ``(nnz,)`` with
        compact storage) in the weight's dense layout, ``fill`` at pruned positions of a
        compact layer. Dense storage: ``t`` itself."""
        return t

    def from_dense_layout(self, t: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_dense_layout`: the entries of a weight-shaped tensor that
        belong to the trained parameter (the live ones with compact storage)."""
        return t

    @property
    def weight_sparsity(self) -> float:
        warnings.warn("`weight_sparsity` is deprecated; use `sparsity`.", DeprecationWarning,
                      stacklevel=2)
        return 1.0 - self.sparsity

    def extra_repr(self) -> str:
        return f"sparsity={self.sparsity}" + (", dale=True" if self.dale_sign is not None else "")

    # -- constraints -------------------------------------------------------------------------
    def _weight_spec(self) -> tuple[torch.Size, torch.dtype, torch.device]:
        """Shape, dtype and device of the (dense) weight, without materialising it."""
        w = self.module.weight
        return w.shape, w.dtype, w.device

    def _fan_in(self) -> int:
        shape = self._weight_spec()[0]
        return int(torch.Size(shape[1:]).numel())

    def _make_mask(self, generator: Optional[torch.Generator]) -> torch.Tensor:
        w = self.module.weight
        fan_in = self._fan_in()
        num_nz = int(round((1.0 - self.sparsity) * fan_in))
        mask = _random_zero_mask(w.shape[0], fan_in, fan_in - num_nz, generator)
        return mask.view(w.shape).to(w.device)

    def sign_tensor(self) -> Optional[torch.Tensor]:
        """``dale_sign`` shaped to broadcast over the weight, or None without Dale's law."""
        if self.dale_sign is None:
            return None
        return self.dale_sign.view((1, -1) + (1,) * (len(self._weight_spec()[0]) - 2))

    def set_zero_mask(self, zero_mask: torch.Tensor) -> None:
        """Replace the mask (True = held at zero) and apply it at once. Plasticity schedules use
        this; they are responsible for resetting optimizer state at the changed positions."""
        shape = self._weight_spec()[0]
        if zero_mask.shape != shape or zero_mask.dtype != torch.bool:
            raise ValueError(f"zero_mask must be a bool tensor of shape {tuple(shape)}, got "
                             f"{zero_mask.dtype} {tuple(zero_mask.shape)}")
        self.zero_mask.copy_(zero_mask)
        self.enforce_constraints()

    def set_presynaptic_sign(self, sign: Optional[torch.Tensor]) -> None:
        """Fix the sign (+1 / -1) of every presynaptic unit (input feature or input channel);
        None removes the constraint."""
        if sign is None:
            self.dale_sign = None
            return
        shape, dtype, device = self._weight_spec()
        n_in = shape[1]
        sign = torch.as_tensor(sign, dtype=dtype, device=device)
        if sign.shape != (n_in,) or not bool(((sign == 1) | (sign == -1)).all()):
            raise ValueError(f"presynaptic sign must be a ({n_in},) tensor of +1/-1 values")
        self.dale_sign = sign.clone()
        self.enforce_constraints()

    def enforce_constraints(self) -> None:
        """Zero the masked weights and, with Dale's law, zero every weight whose sign disagrees
        with its presynaptic unit's sign (projection onto the feasible set)."""
        w = self.module.weight
        with torch.no_grad():
            w.mul_(self.keep_mask_float())       # w <- w * (1 - zero_mask)
            s = self.sign_tensor()
            if s is not None:                    # w <- s * max(0, s * w)
                w.mul_(s).clamp_(min=0).mul_(s)
            if not bool(torch.isfinite(w.sum())):  # one pass; NaN/inf anywhere make the sum so
                # Diverged training: NaN * 0 = NaN, so put exact zeros back at masked positions
                # (live NaNs stay visible).
                w.masked_fill_(self.zero_mask, 0.0)
        self._clean_key = (w, w._version)

    def _is_clean(self) -> bool:
        # Keyed on the tensor object (held here, so its memory cannot be reused by another
        # tensor) and its version counter, which every in-place change bumps.
        key, w = self._clean_key, self.module.weight
        return bool(key) and key[0] is w and key[1] == w._version

    def keep_mask_float(self) -> torch.Tensor:
        """``1 - zero_mask`` in the weight's dtype, cached until the mask changes (multiplying
        by it is ~40x faster than ``masked_fill_`` with a bool mask on CPU)."""
        zm = self.zero_mask
        _, dtype, device = self._weight_spec()
        key = getattr(self, "_keep_key", None)
        if not (key and key[0] is zm and key[1] == zm._version and key[2] == dtype
                and key[3] == device):
            self._keep_cache = (~zm).to(dtype)
            self._keep_key = (zm, zm._version, dtype, device)  # holds zm: no address reuse
        return self._keep_cache

    def rezero_weights(self) -> None:
        """nupic.torch's name for :meth:`enforce_constraints`."""
        self.enforce_constraints()

    def _install_grad_mask(self) -> None:
        w = self.module.weight
        hooked = self._hooked_weight() if self._hooked_weight is not None else None
        if hooked is not w and w.requires_grad:
            w.register_post_accumulate_grad_hook(_MaskGrad(self))
            self._hooked_weight = weakref.ref(w)

    def _prepare(self) -> None:
        """Make sure the weight satisfies the constraints before it is used."""
        if not self._is_clean():
            self.enforce_constraints()
        self._install_grad_mask()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._prepare()
        return self.module(x)

    def __getstate__(self) -> dict:
        # Gradient hooks do not survive pickling/deepcopy; forget them so the copy reinstalls.
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        state["_hooked_weight"] = None
        state["_clean_key"] = ()
        state.pop("_keep_cache", None)
        state.pop("_keep_key", None)
        return state


class _MaskGrad:
    """Post-accumulate-grad hook: zero the accumulated gradient of masked weights.

    Holds its layer weakly: the hook lives in the weight tensor's (C++) hook table, which the
    garbage collector cannot traverse, so a strong reference would keep every layer alive."""

    def __init__(self, owner: SparseWeightsBase) -> None:
        self.owner = weakref.ref(owner)

    def __call__(self, param: torch.Tensor) -> None:
        owner, grad = self.owner(), param.grad
        if owner is not None and grad is not None:
            grad.mul_(owner.keep_mask_float())
            if not bool(torch.isfinite(grad.sum())):
                grad.masked_fill_(owner.zero_mask, 0.0)


def _enforce_before_state_dict(module: SparseWeightsBase, prefix: str, keep_vars: bool) -> None:
    module._prepare()


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
