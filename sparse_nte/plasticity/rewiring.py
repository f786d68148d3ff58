"""Drop-and-regrow at constant density: SET (Mocanu et al., Nature Communications 2018) and
RigL (Evci et al., "Rigging the Lottery: Making All Tickets Winners", ICML 2020)."""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch

from sparse_nte.plasticity.base import LayerList, PlasticitySchedule, check_fraction, check_interval
from sparse_nte.plasticity.dense_gradient import DenseGradient
from sparse_nte.plasticity.formulas import rigl_drop_fraction
from sparse_nte.plasticity.masks import commit, drop_regrow, excitatory_columns, unit_rows

__all__ = ["SET", "RigL"]


class SET(PlasticitySchedule):
    """Sparse Evolutionary Training (Mocanu et al. 2018).

    Every ``interval`` steps of a task, while ``t < end_fraction * steps_in_task``: in every
    unit, drop ``round(zeta * n_pos)`` of the smallest positive and ``round(zeta * n_neg)`` of the
    negative weights closest to zero (with Dale's law: of the E and of the I inputs), and regrow
    as many at uniformly random empty positions (of the same group with Dale's law).
    """

    kind = "set"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 zeta: float = 0.3, interval: int = 100, end_fraction: float = 0.75,
                 **kwargs: Any) -> None:
        check_fraction("set_zeta", zeta, "SET")
        check_interval(interval, end_fraction, "SET")
        super().__init__(layers, optimizer, **kwargs)
        self.zeta, self.interval, self.end_fraction = float(zeta), interval, float(end_fraction)

    def _after_optimizer_step(self, step: int) -> None:
        if not self._interval_event(step, self.interval, self.end_fraction):
            return
        for name, layer in self.layers:
            new_live, _ = drop_regrow(layer, self.zeta, None, self.generator, by_value_sign=True)
            self._record(step, name, *commit(layer, self.optimizer, new_live, None,
                                             self.init_scale, self.generator))


class RigL(PlasticitySchedule):
    """Rigging the Lottery (Evci et al. 2020).

    Every ``interval`` steps of a task while ``t < T_end = end_fraction * steps_in_task``: in
    every unit (and sign group with Dale's law) drop the fraction
    ``f(t) = alpha / 2 * (1 + cos(pi * t / T_end))`` of live weights with the smallest magnitude
    and grow as many at the empty positions with the largest dense-gradient score — ``|g|``
    without Dale's law, ``max(0, -s * g)`` with presynaptic sign ``s`` (only a gradient that
    pushes the weight in its allowed sign can grow it). ``t`` counts steps within the task, so
    the cosine restarts at every task.

    The dense gradient ``g`` is the loss gradient at every position, masked or not, of the step
    the update follows. :class:`~sparse_nte.layers.SparseWeights` zeroes the masked entries of
    ``.grad`` (and the NTE optimizer does not form weight gradients at all), so it is computed
    from the layer's input ``x`` and the gradient ``delta`` at its output, captured by hooks on
    the steps that end with an update only: ``g = sum_b delta_b^T x_b`` for a linear layer,
    ``torch.nn.grad.conv2d_weight`` for a convolution (see :class:`DenseGradient`).
    """

    kind = "rigl"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 alpha: float = 0.3, interval: int = 100, end_fraction: float = 0.75,
                 **kwargs: Any) -> None:
        check_fraction("rigl_alpha", alpha, "RigL")
        check_interval(interval, end_fraction, "RigL")
        super().__init__(layers, optimizer, **kwargs)
        self.alpha, self.interval, self.end_fraction = float(alpha), interval, float(end_fraction)
        self._captures = [DenseGradient(layer) for _, layer in self.layers]

    def close(self) -> None:
        for c in self._captures:
            c.close()

    def _arm(self, next_done: int) -> None:
        """Capture dense gradients during the step that makes ``next_done`` steps in the task."""
        t_end = self.end_fraction * self.steps_per_task[self.task]
        armed = next_done % self.interval == 0 and next_done < t_end
        for c in self._captures:
            c.arm(armed)

    def _task_start(self) -> None:
        self._arm(1)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        if self.task >= 0:   # resume capturing if the next step ends with an update
            origin = self._task_origin if self._task_origin is not None else self._next_step
            self._arm(self._next_step - origin + 1)

    def drop_fraction(self, done: int) -> float:
        """f(t) for a task-step count ``t = done``."""
        return rigl_drop_fraction(done, self.end_fraction * self.steps_per_task[self.task],
                                  self.alpha)

    def _after_optimizer_step(self, step: int) -> None:
        done = self.task_step(step) + 1
        if self._interval_event(step, self.interval, self.end_fraction):
            fraction = self.drop_fraction(done)
            for i, (name, layer) in enumerate(self.layers):
                g = self._captures[i].grad
                if g is None:
                    raise RuntimeError(
                        f"RigL: no gradient reached the output of layer {name!r} during step "
                        f"{step}; RigL needs a backward pass through the layer on every update "
                        f"step (call on_task_start/after_backward/after_step in order)")
                g = unit_rows(g)
                exc = excitatory_columns(layer)
                if exc is None:
                    scores = g.abs()
                    init_sign = -torch.sign(g)     # the direction gradient descent moves
                else:
                    sign = torch.where(exc, 1.0, -1.0).to(g.dtype)
                    scores = (-sign * g).clamp(min=0)
                    init_sign = None
                new_live, _ = drop_regrow(layer, fraction, scores, self.generator,
                                          by_value_sign=False)
                self._record(step, name, *commit(layer, self.optimizer, new_live, init_sign,
                                                 self.init_scale, self.generator))
        self._arm(done + 1)
