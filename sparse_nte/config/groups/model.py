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
    hidden_units: int = key(
        1024, interval="[1, inf)",
        doc="Units per hidden fc layer.")
    hidden_layers: int = key(
        1, interval="[1, inf)",
        doc="Number of hidden fc layers.")
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


def derive(r: "Resolver") -> None:
    """``hidden_widths`` in canonical form (``"128,64"``), so that spellings of the same
    network are the same configuration."""
    v = r.values
    try:
        v["hidden_widths"] = ",".join(str(w) for w in parse_widths(v["hidden_widths"]))
    except ValueError as exc:
        r.fail(r.error("hidden_widths", str(exc)))
        v["hidden_widths"] = ""      # the error is reported; later checks see a valid value


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    out = {}
    if v["hidden_widths"]:
        out.update(dict.fromkeys(("hidden_units", "hidden_layers"),
                                 f"hidden_widths = {v['hidden_widths']} sets the hidden fc layers"))
    if not v["cnn"]:
        out.update(dict.fromkeys(("percent_on_conv", "weight_sparsity_conv"),
                                 "there are no conv layers (cnn = false)"))
    if v["dropout"] == 0:
        out["dropout_draws"] = "there is no dropout (dropout = 0)"
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = ModelKeys
