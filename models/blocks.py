"""Building blocks of the networks: a hidden layer (weights -> activation -> [norm] -> dropout),
dropout with a faster mask on CPU, a layer normalisation over channels, and a k-winner-take-all
among the excitatory units only (Dale's law with ``dale_kwta = exclude``).

Dropout draws (config key ``dropout_draws``). ``all`` (default): one uniform per unit, the
masks of torch's ``F.dropout`` bit for bit. ``active``: one uniform per unit that can pass
anything, i.e. per non-zero activation, and for a k-WTA layer per winner (k per example instead
of n; the k-WTA and the dropout are then one operation on the winners). A unit whose activation
is 0 contributes 0 forward and gets no gradient whether it is dropped or not, so the two are
the same dropout (Srivastava et al. 2014: each unit kept independently with probability 1 - p,
kept values scaled by 1 / (1 - p)); they use the random stream differently, so for one seed the
results of ``active`` differ from those of ``all``.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.layers import KWinners, KWinnersBase
from sparse_nte.layers.functional import scale_nonzeros

__all__ = ["HiddenBlock", "Dropout", "ExcitatoryKWinners", "ChannelLayerNorm", "DROPOUT_DRAWS"]

#: Choices of the config key ``dropout_draws`` (module docstring).
DROPOUT_DRAWS = ("all", "active")


@functools.lru_cache(maxsize=None)
def _bernoulli_draws_uniform_doubles() -> bool:
    """Whether torch's CPU ``bernoulli_(p)`` sets each element to ``u < p`` with ``u`` the float64
    uniform that ``uniform_()`` would draw from the same generator (its portable kernel; builds
    with MKL use MKL's own stream instead on Intel CPUs). Checked once, on a private generator."""
    seed = 20240521
    g_bernoulli = torch.Generator().manual_seed(seed)
    g_uniform = torch.Generator().manual_seed(seed)
    mask = torch.empty(512).bernoulli_(0.5, generator=g_bernoulli)
    uniform = torch.empty(512, dtype=torch.float64).uniform_(generator=g_uniform)
    return (torch.equal(mask.bool(), uniform < 0.5)
            and torch.equal(g_bernoulli.get_state(), g_uniform.get_state()))


class Dropout(nn.Dropout):
    """``nn.Dropout`` (Srivastava et al. 2014, JMLR 15:1929); with ``draws="all"`` (default)
    the same output, bit for bit::

        y = x * m / (1 - p),   m_i = [u_i < 1 - p],   u_i ~ U[0, 1) float64, torch's generator

    ``F.dropout`` on CPU draws ``m`` with ``bernoulli_(1 - p)``, whose portable kernel compares
    exactly these uniforms one element at a time; drawing them with ``uniform_()`` and comparing
    them as a tensor is about 2x faster (128 x 4000 activations: 6.5 -> 3.1 ms), with identical
    masks, outputs, gradients and generator state afterwards. Where torch's ``bernoulli_`` takes
    another path (MKL on Intel CPUs, GPUs), in eval mode, for ``p = 0`` and ``inplace=True``, the
    module simply calls ``F.dropout``.

    ``draws="active"``: one float64 uniform per non-zero entry of ``x`` (row-major order), the
    mask 0 elsewhere (module docstring).
    """

    def __init__(self, p: float = 0.5, inplace: bool = False, draws: str = "all") -> None:
        super().__init__(p, inplace)
        if draws not in DROPOUT_DRAWS:
            raise ValueError(f"Dropout: draws must be one of {DROPOUT_DRAWS}, got {draws!r}")
        self.draws = draws

    def _noise(self, u: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``m / (1 - p)`` from uniforms ``u``: 1 / (1 - p) where ``u < 1 - p``, else 0."""
        keep = 1.0 - self.p
        return u.lt(keep).to(like.dtype).div_(keep)

    def keep_scales(self, shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
        """``m / (1 - p)`` for ``shape`` fresh draws (float64 uniforms from torch's generator),
        in ``like``'s dtype."""
        return self._noise(torch.rand(shape, dtype=torch.float64, device=like.device), like)

    def _portable(self, x: torch.Tensor) -> bool:
        """Whether ``draws="all"`` draws its mask as ``uniform_()`` doubles in ``x``'s layout
        (where that is what torch's own dropout does: module docstring)."""
        return (self.training and not self.inplace and 0.0 < self.p < 1.0
                and x.device.type == "cpu" and x.is_floating_point() and x.numel() > 0
                and _bernoulli_draws_uniform_doubles())

    def winner_scales(self, x: torch.Tensor) -> Optional["_WinnerDropout"]:
        """This dropout on the output of a k-WTA applied to ``x``, drawn for its winners only
        (:class:`_WinnerDropout`), or None where that is not the same operation."""
        if not (self.training and 0.0 < self.p < 1.0 and not self.inplace
                and x.is_floating_point() and x.dim() == 2):
            return None
        if self.draws == "all" and not (self._portable(x) and x.is_contiguous()):
            return None
        return _WinnerDropout(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.draws == "active" and self.training and 0.0 < self.p < 1.0
                and x.is_floating_point() and not self.inplace):
            return scale_nonzeros(x, self.keep_scales)
        if not self._portable(x):
            return F.dropout(x, self.p, self.training, self.inplace)
        u = torch.empty_like(x, dtype=torch.float64).uniform_()   # element order = x's layout
        return x * self._noise(u, x)


class _WinnerDropout:
    """A :class:`Dropout` applied to a k-WTA output through its winners
    (:meth:`KWinners.forward`'s ``dropout``): ``at(idx, like)`` gives the multipliers of the
    winners, ``apply(y)`` the dropout of a whole output (when the k-WTA takes its general path).

    ``draws="all"``: every unit's uniform is drawn, as torch's dropout does, and read at the
    winners: the output and gradient equal those of k-WTA followed by dropout, bit for bit, with
    one pass over the units instead of five (the losers are 0 either way). ``draws="active"``:
    one uniform per winner."""

    def __init__(self, drop: Dropout, x: torch.Tensor) -> None:
        self.drop = drop
        self.shape = x.shape

    def at(self, idx: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if self.drop.draws == "active":
            return self.drop.keep_scales(idx.shape, like)
        u = torch.empty(self.shape, dtype=torch.float64, device=like.device).uniform_()
        return self.drop._noise(u.gather(1, idx), like)

    def apply(self, y: torch.Tensor) -> torch.Tensor:
        return self.drop(y)


class ChannelLayerNorm(nn.Module):
    """Layer normalisation over the channels at every location of a ``(B, C, H, W)`` map, without
    affine parameters (flax's ``LayerNorm`` on channels-last maps, as in the CNN of Daruwalla &
    Lipasti 2024)::

        y[b, c, h, w] = (x[b, c, h, w] - mu[b, h, w]) / sqrt(var[b, h, w] + eps)

    with ``mu`` and the biased ``var`` taken over c."""

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.channels = int(channels)
        self.eps = float(eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels:
            raise ValueError(f"ChannelLayerNorm({self.channels}) expects (B, {self.channels}, H, W), "
                             f"got {tuple(x.shape)}")
        y = F.layer_norm(x.movedim(1, -1), (self.channels,), eps=self.eps)
        return y.movedim(-1, 1)

    def extra_repr(self) -> str:
        return f"{self.channels}, eps={self.eps}"


class HiddenBlock(nn.Module):
    """``pool(dropout(norm(activation(layer(x)))))``; ``norm`` is the identity unless the network
    has ``layer_norm`` on, ``pool`` (average pooling of conv maps) unless ``conv_pool > 1``.

    The parts are separate submodules so that the network can observe the activation BEFORE
    normalisation and dropout (activity statistics must not count the units dropout silenced),
    and local learning rules can read the block's output ``norm(activation(layer(x)))``.
    """

    def __init__(self, layer: nn.Module, activation: nn.Module, dropout: float,
                 dropout_draws: str = "all", norm: Optional[nn.Module] = None,
                 pool: int = 1) -> None:
        super().__init__()
        self.layer = layer
        self.activation = activation
        self.norm = norm if norm is not None else nn.Identity()
        self.dropout = Dropout(dropout, draws=dropout_draws) if dropout > 0 else nn.Identity()
        self.pool = nn.AvgPool2d(pool) if pool > 1 else nn.Identity()

    def pass_on(self, z: torch.Tensor) -> torch.Tensor:
        """What the next layer receives from the block's output ``z``: ``pool(dropout(z))``."""
        return self.pool(self.dropout(z))

    def activate(self, h: torch.Tensor) -> torch.Tensor:
        """``activation(h)``; a plain ReLU without autograd (evaluation) runs in place on the
        layer's output (the same values, without writing a second activation tensor)."""
        if type(self.activation) is nn.ReLU and not torch.is_grad_enabled():
            return h.relu_()
        return self.activation(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.layer(x)
        act, norm, drop, pool = self.activation, self.norm, self.dropout, self.pool
        if not torch.is_grad_enabled():
            return pool(drop(norm(self.activate(h))))
        if (isinstance(drop, Dropout) and type(act) is KWinners and act.training
                and type(norm) is nn.Identity):
            fused = drop.winner_scales(h)
            if fused is not None:
                return act(h, dropout=fused)   # the dropout applied to the k winners only (fc)
        return pool(drop(norm(act(h))))


class ExcitatoryKWinners(nn.Module):
    """k-winner-take-all among the excitatory units; inhibitory units pass through a ReLU.

    With Dale's law, excitatory units (principal cells) form the sparse code while inhibitory
    interneurons stay dense, as in cortex. For units split along dim 1 into E and I::

        y[:, E] = kwinners(x[:, E])        (k = round(n_E * percent_on) winners among E only)
        y[:, I] = relu(x[:, I])

    ``kwinners`` is a :class:`~sparse_nte.layers.KWinners` (or ``KWinners2d`` with
    ``local=True`` for channels) sized for the ``n_E`` excitatory units: boosting, duty cycles
    and entropy concern E units only.

    Buffers ``exc_index``, ``inh_index``: positions of the E and I units along dim 1.
    """

    def __init__(self, kwinners: KWinnersBase, sign: torch.Tensor) -> None:
        super().__init__()
        if sign.dim() != 1 or not bool(((sign == 1) | (sign == -1)).all()):
            raise ValueError("ExcitatoryKWinners: sign must be a 1-d tensor of +1/-1 values")
        exc = torch.nonzero(sign > 0).flatten()
        inh = torch.nonzero(sign < 0).flatten()
        n_kw = getattr(kwinners, "channels", None) or kwinners.n
        if n_kw != exc.numel():
            raise ValueError(f"ExcitatoryKWinners: the k-WTA is sized for {n_kw} units but the sign "
                             f"has {exc.numel()} excitatory units")
        self.kwinners = kwinners
        self.register_buffer("exc_index", exc)
        self.register_buffer("inh_index", inh)

    @property
    def num_units(self) -> int:
        return self.exc_index.numel() + self.inh_index.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_units:
            raise ValueError(f"ExcitatoryKWinners expects {self.num_units} units along dim 1, got "
                             f"input of shape {tuple(x.shape)}")
        winners = self.kwinners(x.index_select(1, self.exc_index))
        return torch.relu(x).index_copy(1, self.exc_index, winners)

    def extra_repr(self) -> str:
        return f"excitatory={self.exc_index.numel()}, inhibitory={self.inh_index.numel()}"
