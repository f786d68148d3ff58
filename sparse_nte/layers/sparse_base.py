"""The base of the sparse layers: the zero mask, Dale's-law signs and the invariants every sparse
layer keeps. :class:`SparseWeightsBase` holds the mask and the projection onto the feasible set;
:class:`_MaskGrad` is the gradient hook that keeps masked weights at zero under every optimizer.
The equations and the defects of nupic.torch fixed here are in
:mod:`sparse_nte.layers.sparse_weights`, where the concrete layers live.
"""
from __future__ import annotations

import abc
import warnings
import weakref
from typing import Optional

import torch
import torch.nn as nn

__all__ = ["HasRezeroWeights", "SparseWeightsBase"]


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
