"""Model keys: the MLP / CNN of the original project (models.build_model)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

TITLE = "model"


@dataclass(frozen=True)
class ModelKeys:
    cnn: bool = key(
        False,
        doc="Convolutional network (the original SimpleCNN) instead of an MLP.")
    conv_layers: int = key(
        2, interval="[1, 2]",
        doc="Convolutions of the CNN (5x5, 64 then 128 channels): 2 (the original's final SimpleCNN) "
            "or 1 (the one-convolution SimpleCNN of its permuted-MNIST results).")
    conv_channels: str = key(
        "", kind="text",
        doc="Channels of each convolution, comma-separated (e.g. `128, 256`, the CNN of Daruwalla & "
            "Lipasti 2024); empty = the original's (64, then 128; `conv_layers` of them). When "
            "given, it replaces `conv_layers`.")
    conv_kernel: int = key(
        5, interval="[1, inf)",
        doc="Side of the square convolution kernels (5 as the original; 3 in Daruwalla & Lipasti "
            "2024).")
    conv_padding: str = key(
        "valid", choices=("valid", "same"),
        doc="Convolution padding: valid (none, as the original) or same (zeros, output the size of "
            "the input; odd `conv_kernel` only).")
    conv_pool: int = key(
        1, interval="[1, inf)",
        doc="Average pooling (window = stride = this many pixels) after every convolution block, "
            "applied to what the next layer receives; 1 = none (the original), 2 in Daruwalla & "
            "Lipasti 2024.")
    hidden_units: int = key(
        1024, interval="[1, inf)",
        doc="Units per hidden fc layer.")
    hidden_layers: int = key(
        1, interval="[0, inf)",
        doc="Number of hidden fc layers; 0 (CNN only) feeds the convolutions' flattened output "
            "straight to the heads, as the CNN of Daruwalla & Lipasti 2024.")
    hidden_widths: str = key(
        "", kind="text",
        doc="Units of each hidden fc layer, comma-separated (e.g. `128, 64`, the MLP of Daruwalla & "
            "Lipasti 2024); empty = `hidden_layers` layers of `hidden_units`. When given, it replaces "
            "both.")
    dropout: float = key(
        0.0, interval="[0, 1)",
        doc="Dropout probability after each hidden layer.")
    dropout_draws: str = key(
        "all", choices=("all", "active"),
        doc="Random draws of dropout: all (one per unit: torch's F.dropout masks bit for bit) or "
            "active (one per non-zero activation, per winner after a k-WTA: the same dropout, much "
            "cheaper for sparse activity, but another use of the random stream, so results differ "
            "from `all` for the same seed).")

    layer_norm: bool = key(
        False,
        doc="LayerNorm without affine parameters after every hidden activation (over the units, or "
            "over the channels at each location), as the networks the IB-Hebbian rule was published "
            "with (Daruwalla & Lipasti 2024). Activity statistics are recorded before it."
            )

def parse_widths(text: str) -> tuple[int, ...]:
    """The widths of ``hidden_widths`` text (``"128, 64"`` -> ``(128, 64)``; ``""`` -> ``()``);
    ValueError unless every entry is an integer >= 1."""
    if not text.strip():
        return ()
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        raise ValueError(f"expected comma-separated integers >= 1 (e.g. 128, 64), got {text!r}")
    return tuple(int(p) for p in parts)


def fc_widths(v: Any) -> tuple[int, ...]:
    """The width of every hidden fc layer of a config (a mapping of values, or a Config)."""
    def get(k: str) -> Any:
        return v[k] if isinstance(v, dict) else getattr(v, k)

    widths = parse_widths(str(get("hidden_widths")))
    return widths or (int(get("hidden_units")),) * int(get("hidden_layers"))


#: the original SimpleCNN's channels (its ``conv_layers`` first ones)
ORIGINAL_CONV_CHANNELS = (64, 128)


def derive(r: "Resolver") -> None:
    """``hidden_widths`` and ``conv_channels`` in canonical form (``"128,64"``), so that
    spellings of the same network are the same configuration."""
    v = r.values
    for name in ("hidden_widths", "conv_channels"):
        try:
            v[name] = ",".join(str(w) for w in parse_widths(v[name]))
        except ValueError as exc:
            r.fail(r.error(name, str(exc)))
            v[name] = ""             # the error is reported; later checks see a valid value


def check(r: "Resolver") -> None:
    v, w = r.values, r.where
    if not v["cnn"] and not fc_widths(v):
        r.fail(r.conflict(f"{w('hidden_layers')} leaves the MLP without a hidden layer; only a "
                          f"CNN (cnn = true) may feed the heads directly, so use hidden_layers >= 1",
                          "hidden_layers", "cnn"))
    if v["cnn"] and v["conv_padding"] == "same" and v["conv_kernel"] % 2 == 0:
        r.fail(r.conflict(f"{w('conv_padding')} pads symmetrically, which needs an odd kernel, but "
                          f"{w('conv_kernel')}; use an odd conv_kernel or conv_padding = valid",
                          "conv_padding", "conv_kernel"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    out = {}
    if v["hidden_widths"]:
        out.update(dict.fromkeys(("hidden_units", "hidden_layers"),
                                 f"hidden_widths = {v['hidden_widths']} sets the hidden fc layers"))
    if not v["cnn"]:
        out.update(dict.fromkeys(("percent_on_conv", "weight_sparsity_conv", "conv_layers",
                                  "conv_channels", "conv_kernel", "conv_padding", "conv_pool"),
                                 "there are no conv layers (cnn = false)"))
    elif v["conv_channels"]:
        out["conv_layers"] = f"conv_channels = {v['conv_channels']} sets the convolutions"
    if v["dropout"] == 0:
        out["dropout_draws"] = "there is no dropout (dropout = 0)"
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = ModelKeys
