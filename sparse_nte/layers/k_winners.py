"""k-winner-take-all modules with boosting and duty cycles (nupic.torch's ``KWinners``,
``KWinners2d``, ``KWinnersBase``, ``update_boost_strength``).

The winners are chosen as in :mod:`sparse_nte.layers.functional` (Ahmad & Scheinkman, "How can
we be so dense? The benefits of using highly sparse representations", 2019). Duty cycles, a
running average of how often each unit is active, are updated in training mode::

    period = min(duty_cycle_period, samples_seen)
    d      = (d * (period - batch) + count(y > 0)) / period

For ``KWinners2d`` the count of a channel is the number of its active locations divided by
``H * W``. Diagnostics (:mod:`sparse_nte.duty_cycle_metrics`), with ``n`` the units of one
example (``C * H * W`` for a feature map, in both modes, as nupic.torch)::

    entropy()     = sum_i H(d_i)                       KWinners
                  = (H * W) sum_c H(d_c)               KWinners2d: every location of channel c
                                                       has the channel's duty cycle d_c
    max_entropy() = n H(w / n),  w = winners per example in training:
                    k (KWinners, KWinners2d global), k * H * W (KWinners2d local: k per location)

Defects of nupic.torch fixed here (elsewhere outputs, input gradients and duty cycles are step
for step the same):

1. ``k_inference`` is capped at the number of competing units (nupic.torch crashes in ``topk``).
2. When ``batch > period`` nupic.torch multiplies by ``period - batch < 0`` and the average goes
   negative; here the window then holds only the newest samples, so ``d = count(y > 0) / batch``.
3. The samples-seen counter ``learning_iterations`` is saved in the state dict (nupic.torch keeps
   it as a plain attribute, so a resumed run restarts its averaging window).
4. ``max_entropy()`` uses the winners the layer actually keeps, ``k = round(n * percent_on)``;
   nupic.torch uses ``int(n * percent_on)``, which is smaller when the fraction is >= 0.5, so the
   entropy of an evenly used layer exceeded its "maximum" (``KWinners(10, 0.15)``: 7.22 > 4.69
   bits). Before the first forward pass of a ``KWinners2d`` (``n = 0``) it is 0 instead of a
   division by zero.
"""
from __future__ import annotations

import abc
from typing import Any

import torch
import torch.nn as nn

from sparse_nte import duty_cycle_metrics
from sparse_nte.layers.functional import kwinners2d, kwinners_with_indices

__all__ = ["KWinnersBase", "KWinners", "KWinners2d", "update_boost_strength"]


def _check_unit_interval(name: str, value: float, *, closed_low: bool = False) -> None:
    ok = (0.0 <= value <= 1.0) if closed_low else (0.0 < value <= 1.0)
    if not (isinstance(value, (int, float)) and ok):
        rng = "[0, 1]" if closed_low else "(0, 1]"
        raise ValueError(f"{name} must be in {rng}, got {value!r}")


class KWinnersBase(nn.Module, metaclass=abc.ABCMeta):
    """State and bookkeeping shared by :class:`KWinners` and :class:`KWinners2d`.

    Buffers: ``boost_strength`` (scalar), ``duty_cycle``. ``_cached_boost_strength`` is the same
    value as a Python float (nupic.torch's name; ``boost_strength_cpu`` is an alias), read by
    ``forward`` without a device sync. The samples-seen counter ``learning_iterations`` travels
    in the state dict's ``_extra_state`` (fix 3 in the module docstring); state dicts saved by
    nupic.torch, which lack it, still load (counter 0).

    Subclasses implement :meth:`update_duty_cycle` (abstract, as in nupic.torch) and may use
    :meth:`_update_duty_cycle` for the averaging.
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
        self._cached_boost_strength = float(boost_strength)
        self.boost_strength_factor = boost_strength_factor
        self.duty_cycle_period = duty_cycle_period
        self.break_ties = break_ties
        self.relu = relu
        self.inplace = inplace

    @property
    def boost_strength_cpu(self) -> float:
        """Alias of ``_cached_boost_strength``: the boost strength as a Python float."""
        return self._cached_boost_strength

    @boost_strength_cpu.setter
    def boost_strength_cpu(self, value: float) -> None:
        self._cached_boost_strength = float(value)

    # -- k ----------------------------------------------------------------------------------
    def _set_k(self, pool: int, k: int, k_inference: int, what: str) -> None:
        """Set ``k`` and ``k_inference`` for winners among ``pool`` competing units."""
        if k < 1:
            raise ValueError(
                f"{type(self).__name__}: k = round({what}={pool} * percent_on={self.percent_on}) = "
                f"{k}; it must be >= 1 (percent_on must exceed {0.5 / pool:.4g})"
            )
        if k_inference < 1:
            raise ValueError(
                f"{type(self).__name__}: k at inference = {k_inference} (k={k} * k_inference_factor="
                f"{self.k_inference_factor}); it must be >= 1"
            )
        self.k, self.k_inference = k, min(pool, k_inference)  # fix 1: capped at the pool

    def winners_per_example(self) -> int:
        """Winners in one training example: ``k`` (``k * H * W`` for a local ``KWinners2d``,
        0 before its first forward pass)."""
        return self.k

    # -- duty cycles --------------------------------------------------------------------------
    @abc.abstractmethod
    def update_duty_cycle(self, x: torch.Tensor) -> None:
        """Update the duty cycles from a k-WTA output ``x`` (a batch)::

            d = (d * (period - batch) + count(x > 0)) / period
        """
        raise NotImplementedError

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
        self._cached_boost_strength *= self.boost_strength_factor
        self.boost_strength.fill_(self._cached_boost_strength)

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
        self._cached_boost_strength = float(self.boost_strength.item())

    # -- diagnostics --------------------------------------------------------------------------
    def entropy(self) -> torch.Tensor:
        """Total binary entropy of the duty cycles, ``sum_i H(d_i)`` in bits (0-d tensor)."""
        return duty_cycle_metrics.binary_entropy(self.duty_cycle)[1]

    def max_entropy(self) -> float:
        """``n H(w / n)`` bits, w the winners per training example: the entropy if every unit
        were active equally often (fix 4 in the module docstring; 0 while ``n = 0``)."""
        if not self.n:
            return 0.0
        return duty_cycle_metrics.max_entropy(self.n, self.winners_per_example())

    def extra_repr(self) -> str:
        return (
            f"n={self.n}, percent_on={self.percent_on}, boost_strength={self._cached_boost_strength}, "
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
        self.n = n
        self.register_buffer("duty_cycle", torch.zeros(n))

    def forward(self, x: torch.Tensor, dropout: Any = None) -> torch.Tensor:
        """k winners of every row of ``x``, then (optionally) ``dropout``: an object with
        ``at(idx, like)``, the multipliers (batch, k) of the winners ``idx`` (used when the
        compact selection applies), and ``apply(y)``, the dropout of a whole output (used
        otherwise), e.g. :class:`models.blocks.HiddenBlock`'s. The duty cycles count the
        winners before the dropout."""
        if x.dim() != 2 or x.shape[1] != self.n:
            raise ValueError(f"KWinners(n={self.n}) expects input of shape (batch, {self.n}), "
                             f"got {tuple(x.shape)}")
        k = self.k if self.training else self.k_inference
        builtin = type(self).update_duty_cycle is KWinners.update_duty_cycle
        y, idx = kwinners_with_indices(x, self.duty_cycle, k, self._cached_boost_strength,
                                       self.break_ties, self.relu, self.inplace,
                                       None if dropout is None else dropout.at)
        if self.training:
            if idx is None or not builtin:
                self.update_duty_cycle(y)   # (an override must see the output, as in nupic)
            else:   # count the active winners only: the same counts, without a pass over y
                with torch.no_grad():
                    active = idx[x.detach().gather(1, idx) > 0]
                    counts = torch.bincount(active, minlength=self.n).to(torch.float)
                    self._update_duty_cycle(counts, x.shape[0])
        if dropout is not None and idx is None:
            y = dropout.apply(y)
        return y

    def update_duty_cycle(self, x: torch.Tensor) -> None:
        """Update the duty cycles from a ``(batch, n)`` k-WTA output: unit i counts as active in
        an example where ``x[:, i] > 0``."""
        with torch.no_grad():
            self._update_duty_cycle(x.gt(0).sum(dim=0, dtype=torch.float), x.shape[0])


class KWinners2d(KWinnersBase):
    """k-winner-take-all for conv feature maps ``(batch, channels, H, W)`` (nupic.torch's).

    ``local=False`` (default): ``k = round(C*H*W * percent_on)`` winners over the whole map, sized
    on the first forward. ``local=True``: ``k = round(C * percent_on)`` winners among channels at
    every location. Duty cycles are per channel (``(1, C, 1, 1)``), the fraction of locations
    where the channel is active, averaged over samples.

    ``n`` is ``C * H * W`` in both modes (0 before the first forward), as in nupic.torch; it sets
    :meth:`entropy` and :meth:`max_entropy`. A global layer is sized by its first input and
    rejects maps of another size; a local layer accepts any ``H, W`` and takes ``n`` from the
    latest input (nupic.torch keeps the first input's; the two differ only when the map size
    changes).
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
        self.n = n
        if not self.local:
            self._set_k(n, int(round(n * self.percent_on)),
                        int(round(n * self.percent_on_inference)), "C*H*W")

    def winners_per_example(self) -> int:
        if self.local:   # k at each of the n / C locations
            return self.k * (self.n // self.channels)
        return self.k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"KWinners2d(channels={self.channels}) expects input of shape "
                             f"(batch, {self.channels}, H, W), got {tuple(x.shape)}")
        n = int(x.shape[1] * x.shape[2] * x.shape[3])
        if self.local:
            self.n = n
        elif self.n == 0:
            self._size_from_n(n)
        elif n != self.n:
            raise ValueError(f"KWinners2d was sized for C*H*W={self.n}, got input {tuple(x.shape)}")
        k = self.k if self.training else self.k_inference
        y = kwinners2d(x, self.duty_cycle, k, self._cached_boost_strength, self.local,
                       self.break_ties, self.relu, self.inplace)
        if self.training:
            self.update_duty_cycle(y)
        return y

    def update_duty_cycle(self, x: torch.Tensor) -> None:
        """Update the per-channel duty cycles from a ``(batch, C, H, W)`` k-WTA output: channel c
        counts ``#{locations where x[:, c] > 0} / (H * W)`` per example."""
        with torch.no_grad():
            counts = x.gt(0).sum(dim=(0, 2, 3), dtype=torch.float) / float(x.shape[2] * x.shape[3])
            self._update_duty_cycle(counts, x.shape[0])

    def entropy(self) -> torch.Tensor:
        """``(H * W) sum_c H(d_c)`` bits: each of the ``n = C * H * W`` units has its channel's
        duty cycle (0 before the first forward)."""
        return super().entropy() * (self.n / self.channels)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, local={self.local}, " + super().extra_repr()


def update_boost_strength(m: nn.Module) -> None:
    """Decay the boost strength of ``m`` if it is a k-winners layer.

    Use as ``model.apply(update_boost_strength)`` (typically once per epoch), like nupic.torch.
    It acts on ``m`` alone so that ``apply`` decays every layer exactly once.
    """
    if isinstance(m, KWinnersBase):
        m.update_boost_strength()
