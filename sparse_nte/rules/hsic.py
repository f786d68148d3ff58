"""The HSIC bottleneck (Ma, Lewis & Kleijn, "The HSIC Bottleneck: Deep Learning without
Back-Propagation", AAAI 2020, 34(04):5085-5092, arXiv 1908.01580), with the estimator and
training loop of its released code (choasma/HSIC-bottleneck), on a :class:`models.Net`.

Every hidden block l, with output Z_l on the batch (m samples), minimises its own loss::

    L_l = nHSIC(Z_l, X) - beta nHSIC(Z_l, Y)
    nHSIC(A, B) = tr(R_A R_B),   R = Kc (Kc + eps m I)^{-1},   Kc = K H,   H = I - 11^T / m
    K[i, j] = exp(-||a_i - a_j||^2 / (2 sigma^2 d_a))

(X the flattened inputs, Y the one-hot labels over the head's outputs, one ``sigma`` for all
three kernels as in the reference), through the gradient of L_l with respect to block l's own
parameters only: its input is held fixed, so no error crosses a layer. Blocks are updated in
turn, first to last, each on a fresh forward pass through the blocks already updated in this
batch (the block's output is recomputed after its step and passed on), each step by the rule's
one torch optimizer with only that block's gradients set (optimizer state is per parameter, so
this is "one optimizer per layer" as in the reference).

The "format" step (the reference trains the output layer with CE on the frozen HSIC network
before reading accuracy; its users who read the raw unformatted output got 0%, issues #7, #11):
here the heads are trained online by the mean cross-entropy of the batch on the detached
features of the last block, as the last step of every batch, with their own learning rate
``hsic_head_lr`` when it is given (the reference's format step: SGD, lr 5e-3). Accuracy is thus always read off a
trained linear read-out. (The reference's unformatted accuracy, reading a 10-unit last HSIC
layer through a class map, needs a last hidden layer as wide as the number of classes, which
these networks do not have.)

k-WTA duty cycles count each sample once per batch (the recomputation after a block's step
leaves them alone). With a batch of fewer than 2 rows the HSIC steps are skipped (the kernels
need two samples) and only the heads are trained.

The reference's SGD (momentum 0.9, weight decay 1e-3) is re-created for every layer and batch,
so its momentum never acts; ``optimizer = sgd`` with ``momentum = 0`` matches it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Mapping

import torch
import torch.nn as nn

from sparse_nte.rules.kernels import gaussian_kernel, normalized_hsic, normalized_hsic_factor, one_hot
from sparse_nte.rules.layerwise import block_forward, check_net, frozen_duty_cycles, heads_forward
from sparse_nte.rules.local import (LocalOptimizerSpec, LocalRule, build_local_optimizer,
                                    check_number, read_keys)
from sparse_nte.seams import Batch, BuildEnv, Objective, TaskContext

__all__ = ["HSICSpec", "HSICBottleneck", "build_hsic", "hsic_param_groups"]


@dataclass(frozen=True)
class HSICSpec:
    """HSIC-bottleneck settings (config keys ``hsic_<field>``).

    Attributes:
        beta: weight of the label term, >= 0 (the reference: 50-2500 by dataset and depth).
        sigma: kernel width of inputs, labels and layer outputs, before the sqrt(d) scaling
            (the reference: 5).
        epsilon: regulariser of the normalised HSIC, eps in (Kc + eps m I)^{-1} (1e-5).
        head_lr: learning rate of the heads (the format step), 0 = the optimizer's ``lr``
            (the reference formats with its own SGD, lr 5e-3, after HSIC training).
    """

    beta: float = 500.0
    sigma: float = 5.0
    epsilon: float = 1e-5
    head_lr: float = 0.0

    def __post_init__(self) -> None:
        check_number("hsic_beta", self.beta, 0.0)
        check_number("hsic_sigma", self.sigma, 0.0, low_open=True)
        check_number("hsic_epsilon", self.epsilon, 0.0, low_open=True)
        check_number("hsic_head_lr", self.head_lr, 0.0)

    @classmethod
    def from_config(cls, config: Any) -> "HSICSpec":
        v = read_keys(config, ("hsic_beta", "hsic_sigma", "hsic_epsilon", "hsic_head_lr"),
                      "learning_rule = hsic")
        return cls(**{k[5:]: val for k, val in v.items()})


class HSICBottleneck(LocalRule):
    """The HSIC bottleneck with an online format step (module docstring).

    Args:
        model: the network (its ``blocks`` trained by HSIC, its ``heads`` by CE).
        spec: :class:`HSICSpec`.
        optimizer: the torch optimizer over the model's parameters that applies the updates.
    """

    name = "hsic"

    def __init__(self, model: nn.Module, spec: HSICSpec, optimizer: torch.optim.Optimizer) -> None:
        check_net(model, "learning_rule = hsic")
        super().__init__(model, optimizer)
        self.spec = spec
        self.num_classes = int(model.head_size)

    def on_task_start(self, ctx: TaskContext) -> None:
        self._reset_stats()

    def step(self, batch: Batch, objective: Objective,
             before_update: Callable[[], None]) -> torch.Tensor:
        self.check_objective(objective)
        model, spec, opt = self.model, self.spec, self.optimizer
        model._check_input(batch.x)
        h = batch.x
        if len(batch) >= 2:
            with torch.no_grad():
                xf = batch.x.flatten(1)
                rx = normalized_hsic_factor(gaussian_kernel(xf, spec.sigma), spec.epsilon)
                yo = one_hot(batch.y, self.num_classes, xf.dtype)
                ry = normalized_hsic_factor(gaussian_kernel(yo, spec.sigma), spec.epsilon)
            hx, hy = [], []
            for i in range(len(model.blocks)):
                z = block_forward(model, i, h.detach())
                rz = normalized_hsic_factor(gaussian_kernel(z.flatten(1), spec.sigma), spec.epsilon)
                zx, zy = normalized_hsic(rz, rx), normalized_hsic(rz, ry)
                opt.zero_grad(set_to_none=True)
                (zx - spec.beta * zy).backward()
                self._call(before_update)
                opt.step()
                hx.append(float(zx.detach()))
                hy.append(float(zy.detach()))
                with torch.no_grad(), frozen_duty_cycles(model):
                    z = block_forward(model, i, h)
                h = model.blocks[i].pass_on(z)
            self._add("hsic_zx", hx)
            self._add("hsic_zy", hy)
        else:
            with torch.no_grad():
                for i in range(len(model.blocks)):
                    h = model.blocks[i].pass_on(block_forward(model, i, h))
            self._count("hsic_skipped_batches")

        logits = heads_forward(model, h, batch.t)
        losses = objective.example_losses(logits, batch)
        opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        self._call(before_update)
        opt.step()
        self._add("hsic_format_ce", float(losses.detach().mean()))
        self._count("hsic_batches")
        return losses.detach()

    def stats(self) -> Dict[str, Any]:
        """Means over the task's batches: ``hsic_zx`` and ``hsic_zy`` (per hidden block,
        nHSIC(Z_l, X) and nHSIC(Z_l, Y) before the block's step), ``hsic_format_ce`` (the
        heads' CE); counts ``hsic_batches`` and ``hsic_skipped_batches``."""
        return super().stats()

    def state_dict(self) -> Dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict(), "stats": self._stats_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_stats_state(state["stats"])


def hsic_param_groups(model: nn.Module, spec: HSICSpec) -> list:
    """The optimizer's parameter groups: every parameter outside the heads, and the heads with
    their own learning rate when ``spec.head_lr`` > 0 (one group otherwise)."""
    heads = [p for p in model.heads.parameters()]
    ids = {id(p) for p in heads}
    rest = [p for p in model.parameters() if id(p) not in ids]
    if spec.head_lr > 0:
        return [{"params": rest}, {"params": heads, "lr": spec.head_lr}]
    return [{"params": rest + heads}]


def build_hsic(config: Any, env: BuildEnv) -> HSICBottleneck:
    """Registry builder: ``learning_rule = hsic``."""
    spec = HSICSpec.from_config(config)
    check_net(env.model, "learning_rule = hsic")
    optimizer = build_local_optimizer(LocalOptimizerSpec.from_config(config),
                                      hsic_param_groups(env.model, spec))
    return HSICBottleneck(env.model, spec, optimizer)
