"""k-winner-take-all modules with boosting and duty cycles (nupic.torch's ``KWinners``,
``KWinners2d``, ``KWinnersBase``, ``update_boost_strength``).

The winners are chosen as in :mod:`sparse_nte.layers.functional` (Ahmad & Scheinkman, "How can
we be so dense? The benefits of using highly sparse representations", 2019). Duty cycles, a
running average of how often each unit is active, are updated in training mode::

    period = min(duty_cycle_period, samples_seen)
    d      = (d * (period - batch) + count(y > 0)) / period

Defects of nupic.torch fixed here (elsewhere outputs, input gradients and duty cycles are step
for step the same):

1. ``k_inference = k * k_inference_factor`` is capped at ``n`` (nupic.torch crashes in ``topk``
   when it exceeds ``n``).
2. When ``batch > period`` nupic.torch multiplies by ``period - batch < 0`` and the average goes
   negative; here the window then holds only the newest samples, so ``d = count(y > 0) / batch``.
3. The samples-seen counter ``learning_iterations`` is saved in the state dict (nupic.torch keeps
   it as a plain attribute, so a resumed run restarts its averaging window).
"""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn as nn

from sparse_nte.layers.functional import kwinners, kwinners2d

__all__ = ["KWinnersBase", "KWinners", "KWinners2d", "update_boost_strength"]


def _check_unit_interval(name: str, value: float, *, closed_low: bool = False) -> None:
    ok = (0.0 <= value <= 1.0) if closed_low else (0.0 < value <= 1.0)
    if not (isinstance(value, (int, float)) and ok):
        rng = "[0, 1]" if closed_low else "(0, 1]"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")


class KWinnersBase(nn.Module):
    """State and bookkeeping shared by :class:`KWinners` and :class:`KWinners2d`.

    Buffers: ``boost_strength`` (scalar), ``duty_cycle``. The samples-seen counter
    ``learning_iterations`` travels in the state dict's ``_extra_state`` (fix 3 in the module
    docstring); state dicts saved by nupic.torch, which lack it, still load (counter 0).
    """

    def __init__(
        self,
        percent_on: float,
        k_inference_factor: float = 1.0,
        boost_strength: float = 1.0,
        boost_strength_factor: float = 1.0,
        duty_cycle_period: int = 1000,
        break_ties: bool = False,
        relu: bool = False,
        inplace: bool = False,
    ) -> None:
        super().__init__()
        _check_unit_interval("percent_on", percent_on)
        if not k_inference_factor > 0:
            raise ValueError(f"k_inference_factor must be > 0, got {k_inference_factor!r}")
        if not boost_strength >= 0.0:
            raise ValueError(f"boost_strength must be >= 0, got {boost_strength!r}")
        _check_unit_interval("boost_strength_factor", boost_strength_factor, closed_low=True)
        if not (isinstance(duty_cycle_period, int) and duty_cycle_period > 0):
            raise ValueError(f"duty_cycle_period must be a positive int, got {duty_cycle_period!r}")
        self.percent_on = percent_on
        self.percent_on_inference = percent_on * k_inference_factor
        self.k_inference_factor = k_inference_factor
        self.learning_iterations = 0
        self.n = 0
        self.k = 0
        self.k_inference = 0
        self.register_buffer("boost_strength", torch.tensor(float(boost_strength), dtype=torch.float))
        self.boost_strength_cpu = float(boost_strength)
        self.boost_strength_factor = boost_strength_factor
        self.duty_cycle_period = duty_cycle_period
        self.break_ties = break_ties
        self.relu = relu
        self.inplace = inplace

    # -- k ----------------------------------------------------------------------------------
    def _set_k(self, n: int, k: int, k_inference: int, what: str) -> None:
        if k < 1:
            raise ValueError(
                f"{type(self).__name__}: k = round({what}={n} * percent_on={self.percent_on}) = {k}; "
                f"it must be >= 1 (percent_on must exceed {0.5 / n:.4g})"
            )
        if k_inference < 1:
            raise ValueError(
                f"{type(self).__name__}: k at inference = {k_inference} (k={k} * k_inference_factor="
                f"{self.k_inference_factor}); it must be >= 1"
            )
        self.n, self.k, self.k_inference = n, k, min(n, k_inference)  # fix 1: capped at n

    # -- duty cycles --------------------------------------------------------------------------
    def _update_duty_cycle(self, active_counts: torch.Tensor, batch_size: int) -> None:
        """d = (d * (period - batch) + counts) / period, period = min(duty_cycle_period, seen).

        When batch >= period the window is filled by this batch alone: d = counts / batch (fix 2).
        """
        self.learning_iterations += batch_size
        period = min(self.duty_cycle_period, self.learning_iterations)
        dc = self.duty_cycle.view(-1)
        if batch_size >= period:
            dc.copy_(active_counts.view(-1) / batch_size)
        else:
            dc.mul_(period - batch_size).add_(active_counts.view(-1)).div_(period)

    def update_boost_strength(self) -> None:
        """boost_strength <- boost_strength * boost_strength_factor (typically once per epoch)."""
        self.boost_strength_cpu *= self.boost_strength_factor
        self.boost_strength.fill_(self.boost_strength_cpu)

    # -- state dict ---------------------------------------------------------------------------
    def get_extra_state(self) -> Any:
        return {"learning_iterations": int(self.learning_iterations), "n": int(self.n)}

    def set_extra_state(self, state: Any) -> None:
        self.learning_iterations = int(state["learning_iterations"])
        n = int(state.get("n", 0))
        if n and not self.n:  # a lazily sized KWinners2d restored before its first forward
            self._size_from_n(n)

    def _size_from_n(self, n: int) -> None:  # overridden by KWinners2d
        pass

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        extra = prefix + "_extra_state"
        if extra in missing_keys:  # state dict written by nupic.torch: no counter saved
            missing_keys.remove(extra)
        self.boost_strength_cpu = float(self.boost_strength.item())

    # -- diagnostics --------------------------------------------------------------------------
    def entropy(self) -> torch.Tensor:
        """Total binary entropy of the duty cycles, sum_i H(d_i) in bits (nupic.torch's)."""
        d = self.duty_cycle.clamp(1e-12, 1 - 1e-12)
        return -(d * torch.log2(d) + (1 - d) * torch.log2(1 - d)).sum()

    def max_entropy(self) -> float:
        """Entropy if every unit were active with probability k/n."""
        if not self.n:
            return 0.0
        p = min(max(int(self.n * self.percent_on) / self.n, 1e-12), 1 - 1e-12)
        return float(-self.n * (p * math.log2(p) + (1 - p) * math.log2(1 - p)))

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, percent_on={self.percent_on}, boost_strength={self.boost_strength_cpu}, "
            f"boost_strength_factor={self.boost_strength_factor}, "
            f"k_inference_factor={self.k_inference_factor}, duty_cycle_period={self.duty_cycle_period}"
            f", break_ties={self.break_ties}, relu={self.relu}, inplace={self.inplace}"
        )


class KWinners(KWinnersBase):
    """k-winner-take-all over the ``n`` units of a ``(batch, n)`` input (nupic.torch's KWinners).

    ``k = round(n * percent_on)`` winners in training; ``min(n, int(k * k_inference_factor))``
    in eval mode. Boosting applies in both modes; duty cycles update in training mode only.
    """

    def __init__(
        self,
        n: int,
        percent_on: float,
        k_inference_factor: float = 1.5,
        boost_strength: float = 1.0,
        boost_strength_factor: float = 0.9,
        duty_cycle_period: int = 1000,
        break_ties: bool = False,
        relu: bool = False,
        inplace: bool = False,
    ) -> None:
        super().__init__(percent_on, k_inference_factor, boost_strength, boost_strength_factor,
                         duty_cycle_period, break_ties, relu, inplace)
        if not (isinstance(n, int) and n > 0):
            raise ValueError(f"KWinners: n must be a positive int, got {n!r}")
        k = int(round(n * percent_on))
        self._set_k(n, k, int(k * k_inference_factor), "n")
        self.register_buffer("duty_cycle", torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.shape[1] != self.n:
            raise ValueError(f"KWinners(n={self.n}) expects input of shape (batch, {self.n}), "
                             f"got {tuple(x.shape)}")
        k = self.k if self.training else self.k_inference
        y = kwinners(x, self.duty_cycle, k, self.boost_strength_cpu, self.break_ties, self.relu,
                     self.inplace)
        if self.training:
            with torch.no_grad():
                self._update_duty_cycle(y.gt(0).sum(dim=0, dtype=torch.float), x.shape[0])
        return y

    def update_duty_cycle(self, x: torch.Tensor) -> None:
        """nupic.torch-compatible entry point: update duty cycles from a k-WTA output ``x``."""
        with torch.no_grad():
            self._update_duty_cycle(x.gt(0).sum(dim=0, dtype=torch.float), x.shape[0])


class KWinners2d(KWinnersBase):
    """k-winner-take-all for conv feature maps ``(batch, channels, H, W)`` (nupic.torch's).

    ``local=False`` (default): ``k = round(C*H*W * percent_on)`` winners over the whole map, sized
    on the first forward. ``local=True``: ``k = round(C * percent_on)`` winners among channels at
    every location. Duty cycles are per channel (``(1, C, 1, 1)``), the fraction of locations
    where the channel is active, averaged over samples.
    """

    def __init__(
        self,
        channels: int,
        percent_on: float = 0.1,
        k_inference_factor: float = 1.5,
        boost_strength: float = 1.0,
        boost_strength_factor: float = 0.9,
        duty_cycle_period: int = 1000,
        local: bool = False,
        break_ties: bool = False,
        relu: bool = False,
        inplace: bool = False,
    ) -> None:
        super().__init__(percent_on, k_inference_factor, boost_strength, boost_strength_factor,
                         duty_cycle_period, break_ties, relu, inplace)
        if not (isinstance(channels, int) and channels > 0):
            raise ValueError(f"KWinners2d: channels must be a positive int, got {channels!r}")
        self.channels = channels
        self.local = local
        if local:
            self._set_k(channels, int(round(channels * percent_on)),
                        int(round(channels * self.percent_on_inference)), "channels")
        self.register_buffer("duty_cycle", torch.zeros((1, channels, 1, 1)))

    def _size_from_n(self, n: int) -> None:
        if not self.local:
            self._set_k(n, int(round(n * self.percent_on)),
                        int(round(n * self.percent_on_inference)), "C*H*W")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"KWinners2d(channels={self.channels}) expects input of shape "
                             f"(batch, {self.channels}, H, W), got {tuple(x.shape)}")
        if not self.local:
            n = int(x.shape[1] * x.shape[2] * x.shape[3])
            if self.n == 0:
                self._size_from_n(n)
            elif n != self.n:
                raise ValueError(f"KWinners2d was sized for C*H*W={self.n}, got input {tuple(x.shape)}")
        k = self.k if self.training else self.k_inference
        y = kwinners2d(x, self.duty_cycle, k, self.boost_strength_cpu, self.local, self.break_ties,
                       self.relu, self.inplace)
        if self.training:
            self.update_duty_cycle(y)
        return y

    def update_duty_cycle(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            counts = x.gt(0).sum(dim=(0, 2, 3), dtype=torch.float) / float(x.shape[2] * x.shape[3])
            self._update_duty_cycle(counts, x.shape[0])

    def entropy(self) -> torch.Tensor:
        if self.local or not self.n:
            return super().entropy()
        return super().entropy() * self.n / self.channels

    def extra_repr(self) -> str:
        return f"channels={self.channels}, local={self.local}, " + super().extra_repr()


def update_boost_strength(m: nn.Module) -> None:
    """Decay the boost strength of ``m`` if it is a k-winners layer.

    Use as ``model.apply(update_boost_strength)`` (typically once per epoch), like nupic.torch.
    It acts on ``m`` alone so that ``apply`` decays every layer exactly once.
    """
    if isinstance(m, KWinnersBase):
        m.update_boost_strength()
