"""Many independent IB-Hebbian learners (seeds) trained as one batched computation.

The IB-Hebbian rule (:mod:`sparse_nte.rules.ib_hebbian`) changes the weights once per sample,
so a single network is latency-bound: a few small matrix products per update. ``S`` independent
streams (S networks, each with its own data order, working memory and optimizer state) are
stacked along a leading dimension and updated together with batched matrix products; the
equations are those of the single-stream rule, written out:

forward of the window (S, N rows) through hidden block l (pre-activation a, activation r,
output z; a LayerNorm without affine parameters when the network has ``layer_norm``)::

    a = h W_l^T + b_l,   r = relu(a) or kwta(a),   z = (r - mean(r)) / sqrt(var(r) + eps)

update for the newest row, with the global signal xi_l of
:func:`sparse_nte.rules.kernels.ib_signal` (exact, from the window)::

    g       = (xi_l - mean(xi_l) - zhat mean(xi_l o zhat)) / sqrt(var(r_N) + eps)   (J_norm^T xi_l)
    delta_l = act'(a_N) o g                       (relu: a_N > 0; k-WTA: the winners)
    dW_l = delta_l h_{l-1,N}^T,  db_l = delta_l   (masked weights: 0)

heads: the gradient of the mean cross-entropy over the window's rows on the last block's
output. The update is applied by one torch optimizer over the stacked tensors (SGD, Adam and
AdamW act element by element, so this is S independent optimizers), then masks and Dale signs
are re-applied (``w <- keep * w``, ``w <- s max(0, s w)``).

Supported networks: :class:`models.MLP` with ``nn.Linear`` or ``SparseWeights`` layers (masks,
Dale's law), ReLU or ``KWinners`` activations (boosting, duty cycles counting the newest sample),
optional LayerNorm, no dropout, any number of heads; all streams' networks must have the same
architecture. Signal: ``exact`` only. The result equals S separate runs of
:class:`~sparse_nte.rules.ib_hebbian.IBHebbian` (up to float rounding) when the streams use the
same heads at every update (the same task schedule): a head no stream uses is left untouched,
as the single-stream optimizer leaves a parameter without gradient.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.layers import KWinners, SparseWeights, boost_activations
from sparse_nte.layers.functional import _winner_off_mask
from sparse_nte.rules.ib_hebbian import IBHebbianSpec
from sparse_nte.rules.kernels import gaussian_kernel, gaussian_kernel_row, ib_modulation, ib_signal, one_hot
from sparse_nte.rules.local import LocalOptimizerSpec, build_local_optimizer

__all__ = ["IBHebbianStreams"]


@dataclass
class _Linear:
    weight: nn.Parameter                 # (S, out, in)
    bias: Optional[nn.Parameter]         # (S, out)
    keep: Optional[torch.Tensor]         # (S, out, in) 1 = live, 0 = masked
    sign: Optional[torch.Tensor]         # (S, 1, in) presynaptic signs (Dale's law)

    def project(self) -> None:
        with torch.no_grad():
            if self.keep is not None:
                self.weight.mul_(self.keep)
            if self.sign is not None:
                self.weight.mul_(self.sign).clamp_(min=0).mul_(self.sign)


@dataclass
class _KWTA:
    k: int
    boost_strength: float
    duty_cycle_period: int
    relu: bool
    break_ties: bool
    k_inference: int
    duty: torch.Tensor                   # (S, n)
    seen: int                            # samples counted (KWinners.learning_iterations)


def _set_grad(p: torch.Tensor, op, *args) -> None:
    """``p.grad = op(*args)``, written into the existing gradient buffer when there is one (a
    fresh multi-megabyte tensor per update costs more than the product)."""
    if p.grad is None:
        p.grad = op(*args)
    elif op is torch.clone:
        p.grad.copy_(args[0])
    else:
        op(*args, out=p.grad)


def _linear_of(layer: nn.Module, where: str) -> tuple[nn.Linear, Optional[torch.Tensor],
                                                      Optional[torch.Tensor]]:
    if isinstance(layer, SparseWeights):
        sign = layer.dale_sign
        return layer.module, (~layer.zero_mask), sign
    if isinstance(layer, nn.Linear):
        return layer, None, None
    raise ValueError(f"IBHebbianStreams: {where} is a {type(layer).__name__}; streams support "
                     f"nn.Linear and SparseWeights layers (MLPs)")


class IBHebbianStreams:
    """S IB-Hebbian learners as one computation (module docstring).

    Args:
        nets: S networks of the same architecture (their weights, masks, signs and k-WTA state
            are copied; the nets themselves are not changed until :meth:`write_back`).
        spec: :class:`IBHebbianSpec` (``signal = "exact"``).
        optimizer: :class:`LocalOptimizerSpec` of each stream's optimizer.
    """

    def __init__(self, nets: Sequence[nn.Module], spec: IBHebbianSpec,
                 optimizer: LocalOptimizerSpec) -> None:
        if not nets:
            raise ValueError("IBHebbianStreams needs at least one network")
        if spec.signal != "exact":
            raise ValueError(f"IBHebbianStreams supports ib_signal = 'exact' only, got "
                             f"{spec.signal!r}; use IBHebbian for the reservoir signal")
        self.spec = spec
        self.num_streams = len(nets)
        ref = nets[0]
        for a in ("blocks", "heads", "flatten_before", "head_of_task"):
            if not hasattr(ref, a):
                raise ValueError(f"IBHebbianStreams: the networks must be models.MLP; "
                                 f"{type(ref).__name__} lacks {a!r}")
        if ref.flatten_before != 0:
            raise ValueError("IBHebbianStreams supports MLPs only (the network has conv layers)")
        for i, net in enumerate(nets):
            if not torch.equal(net.head_of_task, ref.head_of_task) or \
                    len(net.blocks) != len(ref.blocks) or len(net.heads) != len(ref.heads):
                raise ValueError(f"IBHebbianStreams: network {i} differs in structure from "
                                 f"network 0")
        self.input_shape = tuple(ref.input_shape)
        self.head_size = int(ref.head_size)
        self.head_of_task = ref.head_of_task.clone()
        self.layers: List[_Linear] = []
        self.acts: List[Optional[_KWTA]] = []
        self.norm_eps: List[Optional[float]] = []
        for b in range(len(ref.blocks)):
            self.layers.append(self._stack([n.blocks[b].layer for n in nets], f"hidden layer {b}"))
            self.acts.append(self._activation([n.blocks[b].activation for n in nets], b))
            self.norm_eps.append(self._norm([n.blocks[b] for n in nets], b))
        self.heads = [self._stack([n.heads[h] for n in nets], f"head {h}")
                      for h in range(len(ref.heads))]
        self.optimizer = build_local_optimizer(optimizer, self.parameters(), fused=True)
        self.dtype = self.layers[0].weight.dtype
        s, n = self.num_streams, spec.window
        dx = int(torch.tensor(self.input_shape).prod())
        self.win_x = torch.zeros(s, n, dx, dtype=self.dtype)
        self.win_y = torch.zeros(s, n, dtype=torch.long)
        self.win_t = torch.zeros(s, n, dtype=torch.long)
        self.count = 0
        self.updates = 0

    # -- construction ---------------------------------------------------------------------------
    @staticmethod
    def _stack(layers: Sequence[nn.Module], where: str) -> _Linear:
        parts = [_linear_of(layer, where) for layer in layers]
        shapes = {tuple(p[0].weight.shape) for p in parts}
        if len(shapes) != 1:
            raise ValueError(f"IBHebbianStreams: {where} has different shapes {sorted(shapes)}")
        if len({p[1] is None for p in parts}) != 1 or len({p[2] is None for p in parts}) != 1:
            raise ValueError(f"IBHebbianStreams: {where} is sparse or signed in some networks only")
        if len({p[0].bias is None for p in parts}) != 1:
            raise ValueError(f"IBHebbianStreams: {where} has a bias in some networks only")
        with torch.no_grad():
            w = nn.Parameter(torch.stack([p[0].weight.detach().clone() for p in parts]))
            b = None if parts[0][0].bias is None else nn.Parameter(
                torch.stack([p[0].bias.detach().clone() for p in parts]))
            keep = None if parts[0][1] is None else torch.stack([p[1] for p in parts]).to(w.dtype)
            sign = None if parts[0][2] is None else torch.stack(
                [p[2] for p in parts]).to(w.dtype).unsqueeze(1)
        lin = _Linear(w, b, keep, sign)
        lin.project()
        return lin

    def _activation(self, acts: Sequence[nn.Module], b: int) -> Optional[_KWTA]:
        if all(isinstance(a, nn.ReLU) for a in acts):
            return None
        if not all(type(a) is KWinners for a in acts):
            raise ValueError(f"IBHebbianStreams: hidden block {b} has activation "
                             f"{type(acts[0]).__name__}; streams support ReLU and KWinners")
        a0 = acts[0]
        for a in acts:
            if (a.k, a.boost_strength_cpu, a.duty_cycle_period, a.relu, a.break_ties,
                    a.learning_iterations) != (a0.k, a0.boost_strength_cpu, a0.duty_cycle_period,
                                               a0.relu, a0.break_ties, a0.learning_iterations):
                raise ValueError(f"IBHebbianStreams: the k-WTA of hidden block {b} differs "
                                 f"between networks")
        return _KWTA(a0.k, a0.boost_strength_cpu, a0.duty_cycle_period, a0.relu, a0.break_ties,
                     a0.k_inference, torch.stack([a.duty_cycle.detach().clone() for a in acts]),
                     int(a0.learning_iterations))

    @staticmethod
    def _norm(blocks: Sequence[nn.Module], b: int) -> Optional[float]:
        for blk in blocks:
            if not isinstance(blk.dropout, nn.Identity):
                raise ValueError(f"IBHebbianStreams: hidden block {b} has dropout; streams "
                                 f"support dropout = 0 only")
        norm = getattr(blocks[0], "norm", None)
        if norm is None or isinstance(norm, nn.Identity):
            return None
        if not (isinstance(norm, nn.LayerNorm) and not norm.elementwise_affine):
            raise ValueError(f"IBHebbianStreams: hidden block {b} has norm "
                             f"{type(norm).__name__}; streams support LayerNorm without affine "
                             f"parameters")
        return float(norm.eps)

    def parameters(self) -> List[nn.Parameter]:
        out: List[nn.Parameter] = []
        for lin in self.layers + self.heads:
            out.append(lin.weight)
            if lin.bias is not None:
                out.append(lin.bias)
        return out

    # -- forward --------------------------------------------------------------------------------
    def _hidden(self, h: torch.Tensor, training: bool) -> tuple[list, list]:
        """Block outputs z_l (S, R, n) for inputs h (S, R, d) and, per block, what the update of
        the last row needs: (h_in, act', zhat, rstd) of row -1."""
        zs, saved = [], []
        for lin, act, eps in zip(self.layers, self.acts, self.norm_eps):
            a = torch.baddbmm(lin.bias.unsqueeze(1), h, lin.weight.transpose(1, 2)) \
                if lin.bias is not None else torch.bmm(h, lin.weight.transpose(1, 2))
            if act is None:
                on = a > 0
                r = torch.relu(a)
            else:
                k = act.k if training else act.k_inference
                boosted = boost_activations(a, act.duty.unsqueeze(1), act.boost_strength)
                off = _winner_off_mask(boosted.reshape(-1, a.shape[-1]), k, 1, act.break_ties,
                                       act.relu).view_as(a)
                on = ~off
                r = torch.where(off, a.new_zeros(()), a)
            if eps is None:
                z, zhat, rstd = r, None, None
            else:
                dev = r - r.mean(-1, keepdim=True)
                rstd = torch.rsqrt((dev * dev).mean(-1, keepdim=True) + eps)
                zhat = dev * rstd
                z = zhat
            zs.append(z)
            saved.append((h[:, -1], on[:, -1], None if zhat is None else zhat[:, -1],
                          None if rstd is None else rstd[:, -1]))
            h = z
        return zs, saved

    def _heads_logits(self, h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if len(self.heads) == 1:
            lin = self.heads[0]
            return torch.baddbmm(lin.bias.unsqueeze(1), h, lin.weight.transpose(1, 2)) \
                if lin.bias is not None else torch.bmm(h, lin.weight.transpose(1, 2))
        heads = self.head_of_task[t]                      # (S, R)
        out = h.new_zeros(h.shape[0], h.shape[1], self.head_size)
        for k in torch.unique(heads).tolist():
            lin = self.heads[k]
            y = torch.bmm(h, lin.weight.transpose(1, 2))
            if lin.bias is not None:
                y = y + lin.bias.unsqueeze(1)
            out = torch.where((heads == k).unsqueeze(-1), y, out)
        return out

    def _count_duty(self, saved: list) -> None:
        for act, (_, on, _, _) in zip(self.acts, saved):
            if act is None:
                continue
            act.seen += 1
            period = min(act.duty_cycle_period, act.seen)
            counts = on.to(act.duty.dtype)          # (S, n) winners of the newest row
            if period <= 1:
                act.duty.copy_(counts)
            else:
                act.duty.mul_(period - 1).add_(counts).div_(period)

    @torch.no_grad()
    def logits(self, x: torch.Tensor, t: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Logits (S, R, C) of inputs x (S, R, ...) with task ids t (S, R); ``training=False``
        evaluates as ``model.eval()`` (k-WTA with k at inference, no duty-cycle update)."""
        zs, _ = self._hidden(x.reshape(x.shape[0], x.shape[1], -1).to(self.dtype), training)
        return self._heads_logits(zs[-1], t)

    # -- training -------------------------------------------------------------------------------
    def on_task_start(self) -> None:
        """Empty the working memories (every task starts with a fresh window)."""
        self.count = 0

    @torch.no_grad()
    def step(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Consume B samples per stream (x (S, B, ...), y and t (S, B)), one update each; returns
        the CE of every sample just before its update (S, B)."""
        s = self.num_streams
        if x.shape[0] != s or y.shape[:1] != (s,) or t.shape != y.shape or x.shape[1] != y.shape[1]:
            raise ValueError(f"IBHebbianStreams.step: expected x (S={s}, B, ...), y and t (S, B); "
                             f"got {tuple(x.shape)}, {tuple(y.shape)}, {tuple(t.shape)}")
        x = x.reshape(s, x.shape[1], -1).to(self.dtype)
        losses = []
        for n in range(x.shape[1]):
            self.win_x = torch.roll(self.win_x, -1, 1)
            self.win_y = torch.roll(self.win_y, -1, 1)
            self.win_t = torch.roll(self.win_t, -1, 1)
            self.win_x[:, -1] = x[:, n]
            self.win_y[:, -1] = y[:, n]
            self.win_t[:, -1] = t[:, n]
            self.count = min(self.count + 1, self.spec.window)
            if self.count < self.spec.window:
                zs, saved = self._hidden(self.win_x[:, -1:], True)
                logits = self._heads_logits(zs[-1], self.win_t[:, -1:])
                self._count_duty(saved)
                losses.append(F.cross_entropy(logits[:, 0], self.win_y[:, -1], reduction="none"))
                continue
            losses.append(self._update())
        return torch.stack(losses, 1)

    def _update(self) -> torch.Tensor:
        spec = self.spec
        xw, yw, tw = self.win_x, self.win_y, self.win_t
        zs, saved = self._hidden(xw, True)
        logits = self._heads_logits(zs[-1], tw)
        self._count_duty(saved)

        yo = one_hot(yw, self.head_size, self.dtype)
        c = ib_modulation(gaussian_kernel(xw, spec.sigma_x), gaussian_kernel(yo, spec.sigma_y),
                          spec.gamma)
        for lin, z, (h_in, on, zhat, rstd) in zip(self.layers, zs, saved):
            xi = ib_signal(c, gaussian_kernel_row(z, spec.sigma_z), z, spec.sigma_z,
                           spec.prefix_bug)                                     # (S, n)
            if zhat is None:
                g = xi
            else:
                g = (xi - xi.mean(-1, keepdim=True)
                     - zhat * (xi * zhat).mean(-1, keepdim=True)) * rstd
            delta = g * on.to(g.dtype)
            _set_grad(lin.weight, torch.bmm, delta.unsqueeze(-1), h_in.unsqueeze(1))
            if lin.keep is not None:
                lin.weight.grad.mul_(lin.keep)
            if lin.bias is not None:
                _set_grad(lin.bias, torch.clone, delta)

        n = xw.shape[1]
        dlogits = (torch.softmax(logits, -1) - one_hot(yw, self.head_size, self.dtype)) / n
        heads = self.head_of_task[tw]
        h_last = zs[-1]
        for k, lin in enumerate(self.heads):
            if len(self.heads) == 1:
                dk = dlogits
            else:
                use = (heads == k)
                if not bool(use.any()):
                    lin.weight.grad = None
                    if lin.bias is not None:
                        lin.bias.grad = None
                    continue
                dk = dlogits * use.unsqueeze(-1).to(dlogits.dtype)
            _set_grad(lin.weight, torch.bmm, dk.transpose(1, 2), h_last)
            if lin.keep is not None:
                lin.weight.grad.mul_(lin.keep)
            if lin.bias is not None:
                _set_grad(lin.bias, torch.sum, dk, 1)

        self.optimizer.step()
        for lin in self.layers + self.heads:
            lin.project()
        self.updates += 1
        return F.cross_entropy(logits[:, -1], yw[:, -1], reduction="none")

    # -- export and checkpoints -----------------------------------------------------------------
    @torch.no_grad()
    def write_back(self, nets: Sequence[nn.Module]) -> None:
        """Copy every stream's weights and k-WTA state into the networks (of the architecture
        the streams were built from), e.g. to evaluate them with the toolkit."""
        if len(nets) != self.num_streams:
            raise ValueError(f"write_back: {len(nets)} networks for {self.num_streams} streams")
        for i, net in enumerate(nets):
            pairs = [(net.blocks[b].layer, lin) for b, lin in enumerate(self.layers)]
            pairs += [(net.heads[h], lin) for h, lin in enumerate(self.heads)]
            for layer, lin in pairs:
                module = layer.module if isinstance(layer, SparseWeights) else layer
                module.weight.copy_(lin.weight[i])
                if lin.bias is not None:
                    module.bias.copy_(lin.bias[i])
            for b, act in enumerate(self.acts):
                if act is not None:
                    kw = net.blocks[b].activation
                    kw.duty_cycle.copy_(act.duty[i])
                    kw.learning_iterations = act.seen

    def state_dict(self) -> Dict[str, Any]:
        return {"params": [p.detach().clone() for p in self.parameters()],
                "optimizer": self.optimizer.state_dict(),
                "duty": [None if a is None else (a.duty.clone(), a.seen) for a in self.acts],
                "window": (self.win_x.clone(), self.win_y.clone(), self.win_t.clone(), self.count),
                "updates": self.updates}

    @torch.no_grad()
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        params = self.parameters()
        if len(state["params"]) != len(params):
            raise ValueError("IBHebbianStreams.load_state_dict: the saved streams have another "
                             "architecture")
        for p, v in zip(params, state["params"]):
            p.copy_(v)
        self.optimizer.load_state_dict(state["optimizer"])
        for a, saved in zip(self.acts, state["duty"]):
            if a is not None:
                a.duty.copy_(saved[0])
                a.seen = int(saved[1])
        wx, wy, wt, self.count = state["window"]
        self.win_x, self.win_y, self.win_t = wx.clone(), wy.clone(), wt.clone()
        self.updates = int(state["updates"])
