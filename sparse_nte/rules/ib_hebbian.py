"""The IB-Hebbian rule with a working memory (Daruwalla & Lipasti, "Information bottleneck-based
Hebbian learning rule naturally ties working memory and synaptic updates", Front. Comput.
Neurosci. 18, 2024, doi 10.3389/fncom.2024.1240348, arXiv 2111.13187), as its released code
(darsnack/biological-hsic, ``global_error`` and ``create_biohsic_step``) defines it.

Working memory: the stream moves one sample per update; the window holds the last N samples
(x_i, y_i), newest last (i = N). Each update recomputes the network on the whole window with the
current weights and changes the weights for the newest sample only:

* hidden block l, output z_l = norm(act(W_l h_{l-1} + b_l)) (:mod:`sparse_nte.rules.layerwise`)::

      Delta theta_l = -eta * (d z_l(x_N) / d theta_l)^T xi_l

  the vector-Jacobian product of the block's own output at the newest sample with cotangent
  ``xi_l``; the block's input is held fixed, so no error crosses a layer. For a linear layer
  (pre-activation a = W h + b), an activation r = act(a) (ReLU, or k-WTA: act' = 1 on the
  winners) and a LayerNorm z = norm(r), it factorises into presynaptic activity x postsynaptic
  term x global signal::

      delta_l   = act'(a_N) o (J_norm(r_N)^T xi_l)          (postsynaptic x global)
      Delta W_l = -eta delta_l h_{l-1,N}^T                  (x presynaptic)
      Delta b_l = -eta delta_l

* the global signal ``xi_l`` of layer l (:func:`sparse_nte.rules.kernels.ib_signal`)::

      c_j     = kbar_x[j] - gamma kbar_y[j],   kbar_a[j] = K_a[j, j] - (1/N) sum_k K_a[j, k]
      alpha_j = (2 K_z[N, j] / (sigma_z^2 d_z)) (z_N - z_j)
      xi_l    = [ (1/N) sum_{j<N} c_j alpha_j + c_N (1/N) sum_{j<N} alpha_j ] / (N - 1)^2

  with Gaussian kernels ``K_a[i, j] = exp(-||a_i - a_j||^2 / (2 sigma_a^2 d_a))`` of the inputs
  (flattened), the one-hot labels (head_size classes) and the layer's outputs.
  ``ib_prefix_bug`` reproduces the code released before 2024-10-22, which used ``alpha_N = 0`` in
  the first term (``xi_l = c_N abar / (N-1)^2``); the published figures were made with it.

* output layer (the head of each window row's task): the ordinary cross-entropy gradient of
  the mean CE over the window, on the detached features of the last hidden block.

``eta`` is applied through the rule's torch optimizer (AdamW in the reference: lr 1e-4,
weight decay 1e-4, beta2 0.99 on MNIST).

Signal source (``ib_signal``): ``exact`` computes ``xi_l`` from the window; ``reservoir`` feeds
``[x_N, y_N, z_{l,N}]`` to one reservoir per hidden layer (:mod:`sparse_nte.rules.reservoir`)
and updates the synapses with its readout, which learns the exact ``xi_l`` online by LMS; the
relative tracking error ``sum ||xi_hat - xi||^2 / sum ||xi||^2`` is in the statistics. A
reservoir costs about ``size^2 * steps`` multiply-adds per sample and layer and holds
``size * (inputs + classes + layer outputs)`` input weights: fine for MLPs, too large for the
outputs of conv layers.

How the runner's mini-batches are consumed: a batch of B rows is B consecutive single-sample
updates, in row order (one optimizer step each, ``before_update()`` before each step). The
window carries over from batch to batch and epoch to epoch within a task and is emptied at
every task start, so a window never mixes tasks (replayed rows appended to a batch do enter it);
the reservoirs' activity is reset then too (their learned readouts are kept).
While it holds fewer than N samples the newest sample only enters it: no weight changes (the
reference starts with the first full window). The returned loss of a row is the CE of the
model's output for it just before its update.

k-WTA duty cycles count every sample once, when it enters the window (the recomputation of the
older rows leaves them alone).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from sparse_nte.rules.kernels import (gaussian_kernel, gaussian_kernel_row, hsic, ib_modulation,
                                      ib_signal, one_hot)
from sparse_nte.rules.layerwise import check_net, frozen_duty_cycles, heads_forward, local_forward
from sparse_nte.rules.local import (LocalOptimizerSpec, LocalRule, build_local_optimizer,
                                    check_bool, check_choice, check_int, check_number, read_keys)
from sparse_nte.rules.reservoir import Reservoir, ReservoirSpec
from sparse_nte.seams import Batch, BuildEnv, Objective, TaskContext

__all__ = ["IBHebbianSpec", "IBHebbian", "SampleWindow", "build_ib_hebbian", "SIGNALS"]

SIGNALS = ("exact", "reservoir")


@dataclass(frozen=True)
class IBHebbianSpec:
    """IB-Hebbian settings (config keys ``ib_<field>``); defaults: the reference's MNIST run.

    Attributes:
        window: N, samples in the working memory (>= 2; reference 6 in its config, 8 plotted).
        gamma: weight of the label term, gamma >= 0 (2 on MNIST).
        sigma_x, sigma_y, sigma_z: kernel widths of inputs, labels, layer outputs, before the
            sqrt(dimension) scaling (0.5, 0.1, 1 on MNIST).
        signal: ``exact`` or ``reservoir`` (module docstring).
        prefix_bug: use the signal of the code released before 2024-10-22 (module docstring).
    """

    window: int = 8
    gamma: float = 2.0
    sigma_x: float = 0.5
    sigma_y: float = 0.1
    sigma_z: float = 1.0
    signal: str = "exact"
    prefix_bug: bool = False

    def __post_init__(self) -> None:
        check_int("ib_window", self.window, 2)
        check_number("ib_gamma", self.gamma, 0.0)
        for name in ("sigma_x", "sigma_y", "sigma_z"):
            check_number(f"ib_{name}", getattr(self, name), 0.0, low_open=True)
        check_choice("ib_signal", self.signal, SIGNALS)
        check_bool("ib_prefix_bug", self.prefix_bug)

    @classmethod
    def from_config(cls, config: Any) -> "IBHebbianSpec":
        names = ("ib_window", "ib_gamma", "ib_sigma_x", "ib_sigma_y", "ib_sigma_z", "ib_signal",
                 "ib_prefix_bug")
        v = read_keys(config, names, "learning_rule = ib_hebbian")
        return cls(**{k[3:]: val for k, val in v.items()})


class SampleWindow:
    """The last ``size`` samples of the stream (x, y, t), oldest first."""

    def __init__(self, size: int) -> None:
        self.size = int(size)
        self.x: Optional[torch.Tensor] = None
        self.y: Optional[torch.Tensor] = None
        self.t: Optional[torch.Tensor] = None
        self.count = 0

    @property
    def full(self) -> bool:
        return self.count >= self.size

    def clear(self) -> None:
        self.x = self.y = self.t = None
        self.count = 0

    def push(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        """Append one sample (x without a batch dimension; y, t 0-dim)."""
        if self.x is None or self.x.shape[1:] != x.shape or self.x.dtype != x.dtype:
            if self.count:
                raise ValueError(f"SampleWindow: sample of shape {tuple(x.shape)} / {x.dtype} "
                                 f"after samples of shape {tuple(self.x.shape[1:])} / "
                                 f"{self.x.dtype}")
            self.x = x.new_zeros((self.size,) + tuple(x.shape))
            self.y = torch.zeros(self.size, dtype=torch.long, device=x.device)
            self.t = torch.zeros(self.size, dtype=torch.long, device=x.device)
        self.x = torch.roll(self.x, -1, 0)
        self.y = torch.roll(self.y, -1, 0)
        self.t = torch.roll(self.t, -1, 0)
        self.x[-1] = x
        self.y[-1] = y
        self.t[-1] = t
        self.count = min(self.count + 1, self.size)

    def rows(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x, y, t) of the samples held, oldest first."""
        if self.x is None:
            raise ValueError("SampleWindow is empty")
        k = self.count
        return self.x[-k:], self.y[-k:], self.t[-k:]

    def state_dict(self) -> Dict[str, Any]:
        return {"size": self.size, "count": self.count,
                "x": None if self.x is None else self.x.clone(),
                "y": None if self.y is None else self.y.clone(),
                "t": None if self.t is None else self.t.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if int(state["size"]) != self.size:
            raise ValueError(f"SampleWindow.load_state_dict: saved window of {state['size']} "
                             f"samples, this one holds {self.size} (ib_window)")
        self.count = int(state["count"])
        self.x = None if state["x"] is None else state["x"].clone()
        self.y = None if state["y"] is None else state["y"].clone()
        self.t = None if state["t"] is None else state["t"].clone()


def _reservoir_generator(seed: int, layer: int) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), 2111_13187, int(layer)]).generate_state(2)
    return torch.Generator().manual_seed((int(state[1]) << 31) ^ int(state[0]))


class IBHebbian(LocalRule):
    """The rule (module docstring) on a :class:`models.Net`.

    Args:
        model: the network (its ``heads`` are trained by CE, its ``blocks`` by the rule).
        spec: :class:`IBHebbianSpec`.
        optimizer: the torch optimizer over the model's parameters that applies the updates.
        reservoir: :class:`ReservoirSpec`, required when ``spec.signal == "reservoir"``.
        seed: seeds the reservoirs' fixed weights.
    """

    name = "ib_hebbian"

    def __init__(self, model: nn.Module, spec: IBHebbianSpec, optimizer: torch.optim.Optimizer,
                 reservoir: Optional[ReservoirSpec] = None, seed: int = 0) -> None:
        check_net(model, "learning_rule = ib_hebbian")
        super().__init__(model, optimizer)
        self.spec = spec
        self.window = SampleWindow(spec.window)
        self.num_classes = int(model.head_size)
        self.updates = 0
        self.reservoirs: List[Reservoir] = []
        if spec.signal == "reservoir":
            if reservoir is None:
                raise ValueError("ib_signal = 'reservoir' needs the reservoir_* settings "
                                 "(a ReservoirSpec)")
            self.reservoirs = self._build_reservoirs(reservoir, seed)

    def _build_reservoirs(self, spec: ReservoirSpec, seed: int) -> List[Reservoir]:
        model = self.model
        x_dim = math.prod(model.input_shape)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                ref = next(model.parameters())
                zs, _ = local_forward(model, ref.new_zeros((1,) + tuple(model.input_shape)))
        finally:
            model.train(was_training)
        dtype = next(model.parameters()).dtype
        return [Reservoir(x_dim + self.num_classes + z[0].numel(), z[0].numel(), spec,
                          _reservoir_generator(seed, i), dtype)
                for i, z in enumerate(zs)]

    # -- events --------------------------------------------------------------------------------
    def on_task_start(self, ctx: TaskContext) -> None:
        """Empty the working memory (and the reservoirs' recent activity; their readouts stay)."""
        self.window.clear()
        for r in self.reservoirs:
            r.reset_state()
        self._reset_stats()

    # -- the step ------------------------------------------------------------------------------
    def step(self, batch: Batch, objective: Objective,
             before_update: Callable[[], None]) -> torch.Tensor:
        self.check_objective(objective)
        logits = []
        for n in range(len(batch)):
            self.window.push(batch.x[n], batch.y[n], batch.t[n])
            if self.window.full:
                logits.append(self._update(before_update))
            else:
                with torch.no_grad():
                    logits.append(self.model(batch.x[n:n + 1], batch.t[n:n + 1]))
                self._count("ib_warmup_samples")
        if not logits:
            return batch.y.new_zeros(0, dtype=torch.float32)
        return objective.example_losses(torch.cat(logits), batch).detach()

    def _update(self, before_update: Callable[[], None]) -> torch.Tensor:
        """One single-sample update for the newest sample; returns its logits (1, C)."""
        model, spec = self.model, self.spec
        x, y, t = self.window.rows()
        with torch.no_grad(), frozen_duty_cycles(model):
            zs_old, h_old = local_forward(model, x[:-1])
        zs_new, h_new = local_forward(model, x[-1:])
        logits = heads_forward(model, torch.cat([h_old, h_new.detach()]), t)

        with torch.no_grad():
            xf = x.flatten(1)
            yo = one_hot(y, self.num_classes, xf.dtype)
            kx = gaussian_kernel(xf, spec.sigma_x)
            ky = gaussian_kernel(yo, spec.sigma_y)
            c = ib_modulation(kx, ky, spec.gamma)
            cotangents, hx, hy, norms = [], [], [], []
            sq_err, sq_sig = [], []
            for i, (zo, zn) in enumerate(zip(zs_old, zs_new)):
                z = torch.cat([zo.flatten(1), zn.detach().flatten(1)])
                xi = ib_signal(c, gaussian_kernel_row(z, spec.sigma_z), z, spec.sigma_z,
                               spec.prefix_bug)
                kz = gaussian_kernel(z, spec.sigma_z)
                hx.append(float(hsic(kx, kz)))
                hy.append(float(hsic(ky, kz)))
                if self.reservoirs:
                    v = torch.cat([xf[-1], yo[-1], z[-1]])
                    xi_hat = self.reservoirs[i].present(v, xi)
                    sq_err.append(float(((xi_hat - xi) ** 2).sum()))
                    sq_sig.append(float((xi ** 2).sum()))
                    xi = xi_hat
                norms.append(float(xi.norm()))
                cotangents.append(xi.view_as(zn))
        ce = F.cross_entropy(logits, y)

        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(list(zs_new) + [ce], cotangents + [None])
        self._call(before_update)
        self.optimizer.step()

        self.updates += 1
        self._count("ib_updates")
        self._add("ib_hsic_x", hx)
        self._add("ib_hsic_y", hy)
        self._add("ib_signal_norm", norms)
        self._add("ib_window_ce", float(ce.detach()))
        if self.reservoirs:
            self._add("reservoir_sq_error", sq_err)
            self._add("reservoir_sq_signal", sq_sig)
        return logits[-1:].detach()

    # -- statistics and checkpoints ------------------------------------------------------------
    def stats(self) -> Dict[str, Any]:
        """Means over the task's updates: ``ib_hsic_x`` / ``ib_hsic_y`` (per hidden layer,
        HSIC(x, z_l) and HSIC(y, z_l) on the window), ``ib_signal_norm`` (per layer, ||xi_l||
        as delivered), ``ib_window_ce``; counts ``ib_updates`` and ``ib_warmup_samples``; with a
        reservoir, ``reservoir_error`` (per layer, sum ||xi_hat - xi||^2 / sum ||xi||^2)."""
        out = super().stats()
        err, sig = out.pop("reservoir_sq_error", None), out.pop("reservoir_sq_signal", None)
        if err is not None:
            out["reservoir_error"] = [e / s if s > 0 else float("nan") for e, s in zip(err, sig)]
        return out

    def state_dict(self) -> Dict[str, Any]:
        return {"window": self.window.state_dict(), "optimizer": self.optimizer.state_dict(),
                "reservoirs": [r.state_dict() for r in self.reservoirs],
                "updates": self.updates, "stats": self._stats_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["reservoirs"]) != len(self.reservoirs):
            raise ValueError(f"IBHebbian.load_state_dict: {len(state['reservoirs'])} saved "
                             f"reservoirs, this rule has {len(self.reservoirs)} (ib_signal = "
                             f"{self.spec.signal!r})")
        self.window.load_state_dict(state["window"])
        self.optimizer.load_state_dict(state["optimizer"])
        for r, s in zip(self.reservoirs, state["reservoirs"]):
            r.load_state_dict(s)
        self.updates = int(state["updates"])
        self._load_stats_state(state["stats"])


def build_ib_hebbian(config: Any, env: BuildEnv) -> IBHebbian:
    """Registry builder: ``learning_rule = ib_hebbian``."""
    spec = IBHebbianSpec.from_config(config)
    optimizer = build_local_optimizer(LocalOptimizerSpec.from_config(config), env.model.parameters())
    reservoir = ReservoirSpec.from_config(config) if spec.signal == "reservoir" else None
    return IBHebbian(env.model, spec, optimizer, reservoir, seed=int(getattr(config, "seed", 0)))
