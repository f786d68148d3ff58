"""The architecture hyper-parameters of a network, read from an experiment config.

Key names and meanings are those of the original sparse-dynamic-synapses project (Pervasive-AI-Lab)
plus the Dale's-law keys; the schema with defaults lives in :mod:`sparse_nte.config`, so every key
here is required (a resolved config has them all) and nothing is defaulted twice.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

__all__ = ["NetSpec", "MODEL_KEYS"]


@dataclass(frozen=True)
class NetSpec:
    """Architecture of an MLP or CNN built by :func:`models.build_model`.

    Attributes (config keys of the same name):
        cnn: two 5x5 convolutions (64 and 128 channels) before the fully connected layers.
        hidden_units: width of every fully connected hidden layer.
        hidden_layers: number of fully connected hidden layers (>= 1).
        dropout: dropout probability after every hidden layer, in [0, 1).
        sparsify: k-winner-take-all activations instead of ReLU.
        percent_on_fc, percent_on_conv: fraction of winners in fc / conv layers, in (0, 1].
        k_inference_factor, boost_strength, boost_strength_factor, duty_cycle_period: k-WTA
            settings, as in nupic.torch's KWinners.
        weight_sparsity_fc, weight_sparsity_conv: DENSITY (fraction of non-zero weights kept)
            of hidden fc / conv layers, in (0, 1]; 1.0 = dense (the original project's meaning).
        seed: seeds masks, signs and initial weights (the global torch RNG is not used).
        dale: Dale's law on (every unit has a fixed sign on all its outgoing weights).
        exc_fraction: fraction of excitatory units per layer, in [0, 1].
        dale_input: also give the input pixels (MLP) / input channels (CNN) fixed signs.
        dale_kwta: "include": all units compete in the k-WTA; "exclude": only excitatory units
            compete (k = round(n_E * percent_on)), inhibitory units pass through a ReLU.
        sparse_exec: "auto", "on" or "off": execution path of the ``SparseWeights`` linear layers
            (computation on live weights only; see :mod:`sparse_nte.sparse_exec`).
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
    layer_norm: bool = False

    def __post_init__(self) -> None:
        for f in fields(self):
            _check(f.name, getattr(self, f.name))

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "NetSpec":
        """Read the architecture keys of a (resolved) experiment config; other keys are ignored.

        Raises ValueError naming every missing key, or the first key whose value is invalid.
        """
        missing = [k for k in MODEL_KEYS if k not in config]
        if missing:
            raise ValueError(f"build_model: config lacks the model key(s) {', '.join(missing)} "
                             f"(needed: {', '.join(MODEL_KEYS)})")
        optional = {k: config[k] for k in OPTIONAL_MODEL_KEYS if k in config}
        return cls(**{k: config[k] for k in MODEL_KEYS}, **optional)


#: Model keys read when the config has them and defaulted otherwise (newer than the schema).
OPTIONAL_MODEL_KEYS: tuple[str, ...] = ("layer_norm",)
#: Model keys every config must have.
MODEL_KEYS: tuple[str, ...] = tuple(f.name for f in fields(NetSpec)
                                    if f.name not in OPTIONAL_MODEL_KEYS)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _range(lo: float, hi: float, lo_open: bool, hi_open: bool):
    def ok(v: Any) -> bool:
        return _is_number(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)
    return ok, f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


_UNIT_OPEN_LOW = _range(0.0, 1.0, True, False)
_RULES = {
    "cnn": (lambda v: isinstance(v, bool), "a bool"),
    "hidden_units": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "hidden_layers": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "dropout": _range(0.0, 1.0, False, True),
    "sparsify": (lambda v: isinstance(v, bool), "a bool"),
    "percent_on_fc": _UNIT_OPEN_LOW,
    "percent_on_conv": _UNIT_OPEN_LOW,
    "k_inference_factor": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "boost_strength": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    "boost_strength_factor": _range(0.0, 1.0, False, False),
    "duty_cycle_period": (lambda v: _is_int(v) and v >= 1, "an int >= 1"),
    "weight_sparsity_fc": (_UNIT_OPEN_LOW[0], _UNIT_OPEN_LOW[1] + " (fraction of NON-ZERO weights, "
                           "1.0 = dense)"),
    "weight_sparsity_conv": (_UNIT_OPEN_LOW[0], _UNIT_OPEN_LOW[1] + " (fraction of NON-ZERO "
                             "weights, 1.0 = dense)"),
    "seed": (lambda v: _is_int(v) and v >= 0, "an int >= 0"),
    "dale": (lambda v: isinstance(v, bool), "a bool"),
    "exc_fraction": _range(0.0, 1.0, False, False),
    "dale_input": (lambda v: isinstance(v, bool), "a bool"),
    "dale_kwta": (lambda v: v in ("include", "exclude"), "'include' or 'exclude'"),
    "sparse_exec": (lambda v: v in ("auto", "on", "off"), "'auto', 'on' or 'off'"),
    "sparse_init": (lambda v: v in ("torch", "fan_in"), "'torch' or 'fan_in'"),
    "layer_norm": (lambda v: isinstance(v, bool), "a bool"),
}


def _check(key: str, value: Any) -> None:
    ok, valid = _RULES[key]
    if not ok(value):
        raise ValueError(f"build_model: config key {key!r} = {value!r} is invalid; it must be {valid}")
