"""Recording of hidden-layer activity: how sparse it is and which units carry it.

Activity is measured on the output of each hidden layer's activation, BEFORE dropout (the original
sparse-dynamic-synapses project measured after dropout, which counts the units dropout silenced as
inactive and under-reports activity by the keep probability). A unit is a hidden unit of a fully
connected layer or a channel of a convolution (then counted at every location).

For layer l with U units, over the recorded examples b and locations p (one for fc layers)::

    active_fraction         = #{(b, p, u): y_bpu != 0} / (B * P * U)
    unit_active_fraction[u] = #{(b, p): y_bpu != 0} / (B * P)

``unit_active_fraction`` recorded on two tasks gives their overlap in representation
(:func:`sparse_nte.stats.usage_overlap`).
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch

__all__ = ["ActivityRecorder"]


class ActivityRecorder:
    """Accumulates activity statistics of the hidden layers of a network.

    Obtain one from ``model.record_activity()`` (a context manager); every forward pass inside
    the ``with`` block is recorded, in training or eval mode alike.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        n = len(self.names)
        self._units: list[Optional[torch.Tensor]] = [None] * n   # sum over batches of active counts
        self._positions = [0] * n                                 # sum of B * P
        self._batch_fractions: list[list[torch.Tensor]] = [[] for _ in range(n)]
        self._signs: list[Optional[np.ndarray]] = [None] * n
        self._buffers: dict[int, torch.Tensor] = {}                # per layer: 1.0 where active

    def record(self, index: int, y: torch.Tensor) -> None:
        """Add the activation ``y`` of hidden layer ``index``: (B, U) or (B, U, H, W)."""
        with torch.no_grad():
            # 1.0 where y != 0 (NaN counts as active), written into a reused float32 buffer and
            # summed in float32 (exact integers below 2^24 per call): one comparison pass and
            # one sum, ~5x faster than summing a bool tensor into float64.
            dims = (0, 2, 3) if y.dim() == 4 else (0,)
            if y.dim() in (2, 4):
                buf = self._buffers.get(index)
                if buf is None or buf.shape != y.shape or buf.device != y.device:
                    buf = self._buffers[index] = torch.empty(y.shape, device=y.device)
                counts = torch.ne(y.detach(), 0, out=buf).sum(dim=dims).to(torch.float64)
                positions = y.shape[0] * (y.shape[2] * y.shape[3] if y.dim() == 4 else 1)
            else:
                raise ValueError(f"ActivityRecorder: activation of {self.names[index]} has shape "
                                 f"{tuple(y.shape)}; expected (B, U) or (B, U, H, W)")
            acc = self._units[index]
            self._units[index] = counts if acc is None else acc + counts
            self._positions[index] += positions
            self._batch_fractions[index].append(counts.sum() / max(1, positions * counts.numel()))

    def set_unit_signs(self, index: int, sign: Optional[torch.Tensor]) -> None:
        """Signs (+1 E / -1 I) of the units of layer ``index`` for the E/I breakdown."""
        self._signs[index] = None if sign is None else sign.detach().cpu().numpy().copy()

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per hidden layer (by module name): ``active_fraction`` (float),
        ``active_fraction_per_batch`` (numpy float64 array, one entry per forward pass),
        ``unit_active_fraction`` (numpy float64 array, one entry per unit), ``num_positions``
        (int, B * P summed), and with Dale's law ``active_fraction_exc`` / ``active_fraction_inh``
        (float, or None when the layer has no unit of that sign). Layers never reached are
        omitted. Plain Python / numpy values only."""
        out: dict[str, dict[str, Any]] = {}
        for i, name in enumerate(self.names):
            counts = self._units[i]
            if counts is None:
                continue
            unit = counts.cpu().numpy() / self._positions[i]
            entry: dict[str, Any] = {
                "active_fraction": float(unit.mean()),
                "active_fraction_per_batch": torch.stack(self._batch_fractions[i]).cpu().numpy(),
                "unit_active_fraction": unit,
                "num_positions": int(self._positions[i]),
            }
            sign = self._signs[i]
            if sign is not None:
                exc, inh = unit[sign > 0], unit[sign < 0]
                entry["active_fraction_exc"] = float(exc.mean()) if exc.size else None
                entry["active_fraction_inh"] = float(inh.mean()) if inh.size else None
            out[name] = entry
        return out
