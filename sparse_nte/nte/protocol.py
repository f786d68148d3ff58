"""The protocol of an expert-ensemble optimizer: what plasticity schedules and NTE pruning need
from an optimizer that updates weights multiplicatively, without naming its class.

An optimizer is an expert ensemble (:func:`is_expert_ensemble`) when it has

* ``managed_params()`` — the parameters it keeps experts for; for each of them ``state[p]``
  holds the entries named in :mod:`sparse_nte.nte.state` (log-magnitudes, signs, ...);
* ``multiplicative(param)`` — True where a weight at exactly 0 can never move (its growth
  must start at a signed magnitude, :func:`sparse_nte.plasticity.is_multiplicative`);
* ``reset_positions(param, changed_mask)`` — re-derive the experts where connectivity changed
  (:func:`sparse_nte.optim_state.reset_positions` delegates to it);
* ``score_momentum`` — the momentum of the pruning score it keeps, or None.

:class:`sparse_nte.nte.NTE` is one; a test double or another multiplicative rule can be one too.
"""
from __future__ import annotations

from typing import Any, List, Optional, Protocol

import torch

__all__ = ["ExpertEnsemble", "is_expert_ensemble"]

_METHODS = ("managed_params", "multiplicative", "reset_positions")


class ExpertEnsemble(Protocol):
    """See the module docstring."""

    state: Any
    score_momentum: Optional[float]

    def managed_params(self) -> List[torch.Tensor]: ...

    def multiplicative(self, param: torch.Tensor) -> bool: ...

    def reset_positions(self, param: torch.Tensor, changed_mask: torch.Tensor) -> None: ...


def is_expert_ensemble(optimizer: Any) -> bool:
    """True if ``optimizer`` follows :class:`ExpertEnsemble` (duck-typed: the three methods and
    the ``score_momentum`` attribute)."""
    return (optimizer is not None and hasattr(optimizer, "score_momentum")
            and all(callable(getattr(optimizer, name, None)) for name in _METHODS))
