"""Connectivity keys: the density of the hidden layers' and heads' weights and how sparse layers
run."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sparse_nte.config.fields import key

from sparse_nte.sparse_exec import SPARSE_EXEC_MODES

TITLE = "connectivity"


@dataclass(frozen=True)
class ConnectivityKeys:
    weight_sparsity_fc: float = key(
        1.0, interval="(0, 1]",
        doc="ORIGINAL MEANING: density (fraction of NON-zero weights kept) of the hidden fc layers; "
            "1.0 = dense, 0.1 = 90% of the weights are zero. It is the density the network STARTS "
            "with: a schedule that changes densities (plasticity = grow: set to grow_start_density, "
            "the first task's; gmp, nte_prune: pruned from it) does not rewrite it; the densities "
            "after every task are in the results, stats per_task[k] connectivity.")
    weight_sparsity_head: float = key(
        1.0, interval="(0, 1]",
        doc="Density of the output heads' weights (same meaning as weight_sparsity_fc); 1.0 = dense, "
            "as the original project. Below 1 every head keeps round(d * fan_in) random inputs per "
            "output unit, fixed for the run (no plasticity schedule changes heads).")
    weight_sparsity_conv: float = key(
        1.0, interval="(0, 1]",
        doc="Density of the conv layers (same meaning as weight_sparsity_fc).")
    erk: bool = key(
        False,
        doc="Allocate per-layer densities by Erdos-Renyi-Kernel scaling (Evci et al. 2020), keeping the "
            "total number of connections of the uniform densities.")
    sparse_exec: str = key(
        "auto", choices=SPARSE_EXEC_MODES,
        doc="Storage and execution of sparse fc layers: off (masked-dense: a dense weight and dense "
            "products), on (the dense weight, products from the live weights only), compact (only the "
            "live weights are stored, trained and updated: gradients and optimizer state of nnz entries; "
            "every fc layer below density 1), auto (compact for layers of >= 2^17 weights at density "
            "<= 0.25, else the dense weight with the products of `on` where the batch makes them faster). "
            "All equal the masked-dense computation up to float rounding.")
    sparse_init: str = key(
        "torch", choices=("torch", "fan_in"),
        doc="Initial weights of sparse layers without Dale's law: torch (PyTorch's default, scaled for "
            "the full fan-in, as the original project) or fan_in (scaled for the live inputs: times "
            "sqrt(fan_in / live inputs), nupic.torch's normalize_sparse_weights), which keeps the "
            "signal from shrinking by sqrt(density) per layer.")


def sparse_at_start(v: dict[str, Any]) -> bool:
    """Some layer starts below density 1."""
    return v["weight_sparsity_fc"] < 1.0 or (v["cnn"] and v["weight_sparsity_conv"] < 1.0)


def prunes(v: dict[str, Any]) -> bool:
    """A schedule removes connections (so layers are SparseWeights even when they start dense)."""
    return v["plasticity"] in ("gmp", "nte_prune")


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    out = {}
    if not sparse_at_start(v):
        out["erk"] = ("every layer starts dense (weight_sparsity_fc = 1), so there are no densities to "
                      "allocate")
        out["sparse_init"] = ("every layer starts dense (weight_sparsity_fc = 1), so no layer is "
                              "initialised for sparse inputs")
    if not sparse_at_start(v) and v["weight_sparsity_head"] < 1.0:
        out.pop("sparse_init")   # it initialises the sparse heads
    if not (v["weight_sparsity_fc"] < 1.0 or v["weight_sparsity_head"] < 1.0 or prunes(v)
            or v["dale"]):
        out["sparse_exec"] = ("there is no SparseWeights fc layer (weight_sparsity_fc = 1, "
                              "weight_sparsity_head = 1, dale = false, nothing prunes)")
    return out


#: The group's keys (read by sparse_nte.config.schema).
KEYS = ConnectivityKeys
