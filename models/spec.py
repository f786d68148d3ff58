"""The architecture hyper-parameters of a network, read from an experiment config.

Key names and meanings are those of the original sparse-dynamic-synapses project (Pervasive-AI-Lab)
plus the Dale's-law keys; the schema with types, defaults and ranges lives in
:mod:`sparse_nte.config`, so every key here is required (a resolved config has them all), nothing
is defaulted twice, and a value given in a plain mapping is checked against that schema.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from sparse_nte.config import SCHEMA, check_key
from sparse_nte.config.groups.model import ORIGINAL_CONV_CHANNELS, parse_widths

__all__ = ["NetSpec", "MODEL_KEYS"]


@dataclass(frozen=True)
class NetSpec:
    """Architecture of an MLP or CNN built by :func:`models.build_model`.

    Attributes (config keys of the same name):
        cnn: convolutions (by default the original's 5x5, 64 then 128 channels) before the
            fully connected layers.
        conv_layers: number of the original's convolutions, 1 or 2 (CNN only).
        conv_channels: the channels of each convolution, comma-separated text (``"128,256"``);
            empty (default) = the original's, ``conv_layers`` of them. Optional key.
        conv_kernel: side of the square kernels (5). Optional key.
        conv_padding: "valid" (default) or "same" (zero padding, odd kernels). Optional key.
        conv_pool: average pooling window and stride after every convolution block, applied
            to what the next layer receives (1 = none, default). Optional key.
        hidden_units: width of every fully connected hidden layer.
        hidden_layers: number of fully connected hidden layers (>= 1; 0 allowed for a CNN,
            whose flattened convolution output then feeds the heads).
        hidden_widths: the width of each fully connected hidden layer, comma-separated text
            (``"128,64"``); empty (default) = ``hidden_layers`` layers of ``hidden_units``.
            Optional key.
        dropout: dropout probability after every hidden layer, in [0, 1).
        dropout_draws: "all" (torch's dropout masks, bit for bit) or "active" (one draw per
            non-zero activation / k-WTA winner; see :mod:`models.blocks`).
        sparsify: k-winner-take-all activations instead of ReLU.
        percent_on_fc, percent_on_conv: fraction of winners in fc / conv layers, in (0, 1].
        k_inference_factor, boost_strength, boost_strength_factor, duty_cycle_period: k-WTA
            settings, as in nupic.torch's KWinners.
        weight_sparsity_fc, weight_sparsity_conv: DENSITY (fraction of non-zero weights kept)
            of hidden fc / conv layers, in (0, 1]; 1.0 = dense (the original project's meaning).
        weight_sparsity_head: density of the output heads, in (0, 1]; 1.0 = dense (as the
            original). Optional key, 1.0 when absent.
        seed: seeds masks, signs and initial weights (the global torch RNG is not used).
        dale: Dale's law on (every unit has a fixed sign on all its outgoing weights).
        exc_fraction: fraction of excitatory units per layer, in [0, 1].
        dale_input: also give the input pixels (MLP) / input channels (CNN) fixed signs.
        dale_kwta: "include": all units compete in the k-WTA; "exclude": only excitatory units
            compete (k = round(n_E * percent_on)), inhibitory units pass through a ReLU.
        sparse_exec: "auto", "on", "off" or "compact": storage and execution path of the
            ``SparseWeights`` linear layers (:func:`sparse_nte.sparse_exec.resolve_sparse_exec`).
        sparse_init: "torch" (PyTorch's default init, scaled for the full fan-in, as the original
            project) or "fan_in" (sparse layers without Dale's law scaled by
            sqrt(fan_in / live inputs), as nupic.torch's ``normalize_sparse_weights``).
        layer_norm: LayerNorm without affine parameters after every hidden activation (over the
            units, or over the channels at every location of a conv map), as the networks the
            IB-Hebbian rule was published with (Daruwalla & Lipasti 2024). Optional key, False
            when absent.
    """

    cnn: bool
    hidden_units: int
    hidden_layers: int
    dropout: float
    sparsify: bool
    percent_on_fc: float
    percent_on_conv: float
    k_inference_factor: float
    boost_strength: float
    boost_strength_factor: float
    duty_cycle_period: int
    weight_sparsity_fc: float
    weight_sparsity_conv: float
    seed: int
    dale: bool
    exc_fraction: float
    dale_input: bool
    dale_kwta: str
    sparse_exec: str
    sparse_init: str
    # keys added after the first release take the schema's default when not given (specs built
    # by code written before them keep working); see ADDED_KEYS
    dropout_draws: str = SCHEMA["dropout_draws"].default
    conv_layers: int = SCHEMA["conv_layers"].default
    layer_norm: bool = SCHEMA["layer_norm"].default
    weight_sparsity_head: float = SCHEMA["weight_sparsity_head"].default
    hidden_widths: str = SCHEMA["hidden_widths"].default
    conv_channels: str = SCHEMA["conv_channels"].default
    conv_kernel: int = SCHEMA["conv_kernel"].default
    conv_padding: str = SCHEMA["conv_padding"].default
    conv_pool: int = SCHEMA["conv_pool"].default

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name))
        for name in ("hidden_widths", "conv_channels"):
            try:
                parse_widths(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"build_model: config key {name!r} = {getattr(self, name)!r} "
                                 f"is invalid: {exc}") from None
        if not self.fc_widths and not self.cnn:
            raise ValueError("build_model: an MLP needs at least one hidden layer "
                             "(hidden_layers >= 1); only a CNN may feed its heads directly")
        if self.cnn and self.conv_padding == "same" and self.conv_kernel % 2 == 0:
            raise ValueError(f"build_model: conv_padding = 'same' needs an odd conv_kernel, got "
                             f"{self.conv_kernel}")

    @property
    def fc_widths(self) -> tuple[int, ...]:
        """The width of every fully connected hidden layer, first to last."""
        return parse_widths(self.hidden_widths) or (self.hidden_units,) * self.hidden_layers

    @property
    def conv_widths(self) -> tuple[int, ...]:
        """The channels of every convolution, first to last (CNN only)."""
        return parse_widths(self.conv_channels) or ORIGINAL_CONV_CHANNELS[:self.conv_layers]

    @classmethod
    def from_config(cls, config: Any) -> "NetSpec":
        """The architecture of a :class:`~sparse_nte.config.Config` (its attributes), or of a
        plain mapping holding at least the model keys (other keys are ignored).

        Raises ValueError naming every missing key, or the first key whose value is invalid.
        """
        if not isinstance(config, Mapping) or hasattr(config, "to_dict"):
            return cls(**{f.name: getattr(config, f.name) for f in fields(cls)})
        later = {k: SCHEMA[k].default for k in ADDED_KEYS if k not in config}
        config = {**config, **later}
        missing = [f.name for f in fields(cls) if f.name not in config]
        if missing:
            raise ValueError(f"build_model: config lacks the model key(s) {', '.join(missing)} "
                             f"(needed: {', '.join(f.name for f in fields(cls))})")
        return cls(**{f.name: config[f.name] for f in fields(cls)})


MODEL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(NetSpec))
#: Model keys added after the first release: a plain mapping without them (written for an
#: earlier version) gets their schema default.
ADDED_KEYS: tuple[str, ...] = ("dropout_draws", "conv_layers", "layer_norm", "weight_sparsity_head",
                              "hidden_widths", "conv_channels", "conv_kernel", "conv_padding",
                              "conv_pool")


def _check(name: str, value: Any) -> None:
    try:
        check_key(name, value)
    except ValueError as exc:
        raise ValueError(f"build_model: config key {name!r} = {value!r} is invalid: {exc}") from None
