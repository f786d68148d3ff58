"""Model keys: the MLP / CNN of the original project (models.build_model)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparse_nte.config.fields import key

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

def no_effect(v: dict[str, Any]) -> dict[str, str]:
    out = {}
    if not v["cnn"]:
        out.update(dict.fromkeys(("percent_on_conv", "weight_sparsity_conv"),
                                 "there are no conv layers (cnn = false)"))
    if v["dropout"] == 0:
        out["dropout_draws"] = "there is no dropout (dropout = 0)"
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = ModelKeys
