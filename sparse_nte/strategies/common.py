"""Helpers shared by the strategies: the trained parameters, importances held at zero where a
weight is masked, the check that an importance is not all zero, seeded generators, memory sizes
and frozen copies of a model.

Masked weights. A ``SparseWeights`` layer holds its masked weights at exactly zero and zeroes
their gradient, so they cannot matter to any task; their importance (Fisher, SI's Omega) is set
to 0. (The per-example gradient of a masked weight computed from the layer's inputs and output
gradients is not zero: it is the gradient the weight would have if it were free.)

Zero importances. An importance that is zero everywhere after a task makes the penalty a no-op
without any visible sign; a bug of that kind went unnoticed in a widely used library (Avalanche
PR #1101). :func:`check_importance` warns with :class:`ZeroImportanceWarning`, and the strategies
report ``importance_all_zero`` in their statistics.
"""
from __future__ import annotations

import copy
import warnings
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from sparse_nte.layers import SparseWeightsBase

__all__ = ["ZeroImportanceWarning", "trained_parameters", "mask_owners", "zero_masked",
           "check_importance", "task_generator", "tensor_bytes", "frozen_copy", "importance_stats"]


class ZeroImportanceWarning(RuntimeWarning):
    """A strategy's importance (Fisher, Omega) is zero for every parameter after a task."""


def trained_parameters(model: nn.Module) -> List[Tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of every parameter of ``model`` that requires grad."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def mask_owners(model: nn.Module) -> Dict[int, SparseWeightsBase]:
    """``{id(weight): layer}`` for the weight of every ``SparseWeights`` layer of ``model``."""
    return {id(m.module.weight): m for m in model.modules() if isinstance(m, SparseWeightsBase)}


def zero_masked(model: nn.Module, named: Mapping[str, torch.Tensor]) -> None:
    """Set ``named[name]`` to 0 (in place) where the parameter ``name`` is masked."""
    owners = mask_owners(model)
    for name, p in model.named_parameters():
        layer = owners.get(id(p))
        if layer is not None and name in named:
            named[name].masked_fill_(layer.zero_mask, 0.0)


def check_importance(what: str, named: Mapping[str, torch.Tensor], task: int) -> bool:
    """Warn (:class:`ZeroImportanceWarning`) if every entry of ``named`` is 0; returns whether
    they all are."""
    all_zero = all(not bool(v.any()) for v in named.values())
    if all_zero:
        warnings.warn(
            f"{what} is zero for every parameter after task {task}: its penalty will not protect "
            f"this task. The loss gradients vanished on the examples used (a saturated softmax, "
            f"dead units, or a model whose output does not depend on its parameters); check the "
            f"model and the training of this task", ZeroImportanceWarning, stacklevel=3)
    return all_zero


def importance_stats(prefix: str, named: Mapping[str, torch.Tensor]) -> Dict[str, float]:
    """Mean, max and fraction of non-zero entries over all parameters of an importance."""
    total = sum(v.numel() for v in named.values())
    if total == 0:
        return {f"{prefix}_mean": 0.0, f"{prefix}_max": 0.0, f"{prefix}_nonzero_fraction": 0.0}
    s = sum(float(v.double().sum()) for v in named.values())
    mx = max(float(v.max()) for v in named.values() if v.numel())
    nz = sum(int(torch.count_nonzero(v)) for v in named.values())
    return {f"{prefix}_mean": s / total, f"{prefix}_max": mx, f"{prefix}_nonzero_fraction": nz / total}


def task_generator(seed: int, task: int, tag: int) -> torch.Generator:
    """A torch generator seeded from ``SeedSequence(seed, spawn_key=(tag, task))``: independent
    streams per (strategy tag, task), the same in a resumed run as in an uninterrupted one."""
    state = np.random.SeedSequence(int(seed), spawn_key=(int(tag), int(task))).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[1]) << 32) | int(state[0]))


def tensor_bytes(tensors: Iterable[Optional[torch.Tensor]]) -> int:
    """Bytes held by the given tensors (None entries count 0)."""
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks",
               "_backward_pre_hooks")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with ``requires_grad = False`` everywhere.

    Forward/backward hooks that other components installed on ``model`` are left out of the copy
    (they refer to their owners, which would be copied along); state-dict hooks are kept.
    """
    saved = []
    for m in model.modules():
        saved.append((m, {name: getattr(m, name) for name in _HOOK_DICTS if hasattr(m, name)}))
        for name in saved[-1][1]:
            setattr(m, name, type(getattr(m, name))())
    try:
        twin = copy.deepcopy(model)
    finally:
        for m, dicts in saved:
            for name, value in dicts.items():
                setattr(m, name, value)
    twin.eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
