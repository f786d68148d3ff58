"""Task-wise growth of connections with protection of the old ones.

Density grows from task to task (``d_k = d_start + (d_end - d_start) * k / (num_tasks - 1)``);
connections are owned by the task that created them (PackNet-style ownership masks, Mallya &
Lazebnik, CVPR 2018) and those of earlier tasks learn with a learning-rate factor ``old_lr``
applied to the optimizer's actual step (for NTE: to the experts' log-magnitude step).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional

import torch

from sparse_nte.nte.protocol import is_expert_ensemble
from sparse_nte.nte.state import LOG_MAGNITUDE, SIGN, THETA0
from sparse_nte.optim_state import reset_positions
from sparse_nte.plasticity.base import LayerList, PlasticitySchedule, check_fraction
from sparse_nte.plasticity.formulas import erk_densities, growth_density
from sparse_nte.plasticity.masks import commit, is_multiplicative, resize

__all__ = ["TaskwiseGrowth"]


class TaskwiseGrowth(PlasticitySchedule):
    """Connections grow from task to task; old ones are protected.

    At the start of task ``k`` every layer grows, at uniformly random empty positions, to
    density ``d_k = d_start + (d_end - d_start) * k / (num_tasks - 1)`` (at task 0 the layers
    are brought to ``d_start``, pruning by magnitude if they are denser; with ``erk`` the layer
    densities are the ERK allocation of ``d_k``). Grown weights start at ``s * init_scale``
    (``grow_init_scale``) under EVERY optimizer, ``s`` the presynaptic unit's Dale sign (a
    seeded random sign without Dale's law): a weight grown at exactly 0 into a unit that never
    wins its k-WTA would get no gradient and stay 0, so the mask would count a connection the
    network does not have. ``owner`` records, per
    layer, the task that created each live connection (-1 = empty), as PackNet's ownership masks
    (Mallya & Lazebnik 2018).

    During task ``k`` the connections owned by tasks ``< k`` learn with the learning-rate factor
    ``old_lr``: every optimizer step is followed by ``w = w_before + old_lr * (w_after -
    w_before)`` at those positions. This scales the optimizer's actual update, so it is an exact
    per-weight learning-rate factor for SGD (with momentum and weight decay), Adam and AdamW —
    scaling the gradient would not be, since Adam is invariant to the gradient's scale.
    ``old_lr = 0`` freezes them exactly; the optimizer state (e.g. momentum) at frozen positions
    keeps evolving but is never applied. Biases are not protected. The protection is part of
    the optimizer step itself (step pre- and post-hooks registered on the optimizer, removed by
    :meth:`close`), so it holds however the step is called; the hooks run before any
    registered later, e.g. :func:`sparse_nte.dale.constrain_optimizer`'s projection.

    Multiplicative optimizers: the factor scales the log-magnitude step. Under NTE the experts'
    log-magnitudes are blended, ``l = l_before + old_lr * (l_after - l_before)``, and the weight
    is rewritten as ``theta0 + s * exp(l)``; frozen experts keep ``l`` and ``w`` exactly. NTE
    renormalises the total magnitude of ALL experts to Z at each step and the protected ones
    are then set back, so the total drifts from Z by what the protected experts would have
    gained or lost; the next step renormalises again. Other multiplicative optimizers get
    ``|w| = |w_before|**(1 - old_lr) * |w_after|**old_lr`` and a reset of their state there.
    """

    kind = "grow"

    def __init__(self, layers: LayerList, optimizer: Optional[torch.optim.Optimizer], *,
                 start_density: float, end_density: float, old_lr: float = 1.0,
                 **kwargs: Any) -> None:
        for key, v in (("grow_start_density", start_density), ("grow_end_density", end_density)):
            if not (isinstance(v, (int, float)) and 0.0 < v <= 1.0):
                raise ValueError(f"TaskwiseGrowth: {key} must be in (0, 1], got {v!r}")
        if end_density < start_density:
            raise ValueError(f"TaskwiseGrowth: grow_end_density={end_density} is below "
                             f"grow_start_density={start_density}; growth never removes connections "
                             f"(use plasticity = gmp to prune)")
        check_fraction("grow_old_lr", old_lr, "TaskwiseGrowth")
        if old_lr < 1.0 and optimizer is None:
            raise ValueError("TaskwiseGrowth: grow_old_lr < 1 scales the optimizer's steps; pass "
                             "the optimizer")
        super().__init__(layers, optimizer, **kwargs)
        self.start_density, self.end_density = float(start_density), float(end_density)
        self.old_lr = float(old_lr)
        self.owner: Dict[str, torch.Tensor] = {
            name: torch.where(layer.zero_mask, -1, 0).to(torch.int16) for name, layer in self.layers}
        self._multiplicative = [is_multiplicative(optimizer, layer.weight_param)
                                for _, layer in self.layers]
        # NTE experts w = theta0 + s exp(l): protection acts on their log-magnitudes l
        self._nte = [is_expert_ensemble(optimizer)
                     and LOG_MAGNITUDE in optimizer.state.get(layer.weight_param, {})
                     for _, layer in self.layers]
        self._log_before: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        # (s, theta0) of the protected NTE experts: fixed during a task (only a plasticity
        # event changes them, and growth has events only at task starts)
        self._expert_const: List[Optional[tuple]] = [None] * len(self.layers)
        # protected positions as bool masks in the trained parameter's layout ((nnz,) for a
        # compact layer) and as indices into it
        self._protected: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._protected_idx: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._before: List[Optional[torch.Tensor]] = [None] * len(self.layers)
        self._handles = []
        if self.old_lr < 1.0:
            self._handles = [optimizer.register_step_pre_hook(self._record_old),
                             optimizer.register_step_post_hook(self._protect_old)]

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def density_of_task(self, task: int) -> List[float]:
        """Target density of every layer during task ``task``."""
        d = growth_density(task, self.num_tasks, self.start_density, self.end_density)
        if self.erk:
            return erk_densities([tuple(layer.zero_mask.shape) for _, layer in self.layers], d)
        return [d] * len(self.layers)

    def _set_protected(self) -> None:
        """Positions owned by earlier tasks, as a mask and as indices of the trained parameter."""
        for i, (name, layer) in enumerate(self.layers):
            owner = self.owner[name]
            protected = (owner >= 0) & (owner < self.task) if self.task > 0 else None
            if protected is not None:
                protected = layer.from_dense_layout(protected)
            self._protected[i] = protected
            self._protected_idx[i] = (None if protected is None
                                      else torch.nonzero(protected.reshape(-1)).flatten())
            self._before[i] = self._log_before[i] = self._expert_const[i] = None

    def _task_start(self) -> None:
        densities = self.density_of_task(self.task)
        for i, (name, layer) in enumerate(self.layers):
            new_live = resize(layer, densities[i], True, self.generator,
                              allow_drop=self.task == 0)
            result = commit(layer, self.optimizer, new_live, None, self.init_scale, self.generator,
                            signed_start=True)
            owner = self.owner[name]
            owner.masked_fill_(layer.zero_mask, -1)
            owner.masked_fill_(~layer.zero_mask & (owner < 0), self.task)
            self._record(self._next_step, name, *result)
        self._set_protected()

    def _record_old(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """Step pre-hook: record the protected weights (and NTE log-magnitudes). Frozen ones
        (``old_lr = 0``) cannot change during the task, so they are recorded once per task (or
        once after a checkpoint is loaded), at its first step."""
        for i, (_, layer) in enumerate(self.layers):
            idx = self._protected_idx[i]
            if idx is None or (self.old_lr == 0.0 and self._before[i] is not None):
                continue
            w = layer.weight_param   # not .weight: reading it must not re-apply constraints
            self._before[i] = w.detach().reshape(-1).index_select(0, idx)
            if self._nte[i]:
                log = self.optimizer.state[w][LOG_MAGNITUDE]
                self._log_before[i] = log.reshape(-1).index_select(0, idx)

    def _protect_old(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        """Step post-hook: scale the step of the protected weights by ``old_lr``."""
        f = self.old_lr
        for i, (name, layer) in enumerate(self.layers):
            idx = self._protected_idx[i]
            before = self._before[i]
            if idx is None or before is None:
                continue
            w = layer.weight_param
            nte = self._nte[i]
            with torch.no_grad():
                flat = w.detach().view(-1) if w.is_contiguous() else w.detach().reshape(-1)
                log = self.optimizer.state[w][LOG_MAGNITUDE].view(-1) if nte else None
                if f == 0.0:
                    kept = before
                    if nte:
                        log.index_copy_(0, idx, self._log_before[i])
                elif nte:   # scale the log-magnitude step of the experts
                    kept = self._blend_nte(i, w, log, idx, self._log_before[i], f)
                else:
                    after = flat.index_select(0, idx)
                    if self._multiplicative[i]:   # scale the log-magnitude step
                        geo = torch.sign(after) * before.abs().pow(1 - f) * after.abs().pow(f)
                        kept = torch.where(after * before > 0, geo, before + f * (after - before))
                    else:
                        kept = after.sub_(before).mul_(f).add_(before)
                if w.is_contiguous():
                    flat.index_copy_(0, idx, kept)   # shares w's version counter
                else:
                    w.copy_(flat.index_copy(0, idx, kept).view_as(w))
            if self._multiplicative[i] and not nte and self.optimizer is not None:
                reset_positions(self.optimizer, w, self._protected[i])
            if f != 0.0:
                self._before[i] = self._log_before[i] = None

    def _blend_nte(self, i: int, w: torch.Tensor, log: torch.Tensor, idx: torch.Tensor,
                   log_before: torch.Tensor, f: float) -> torch.Tensor:
        """l = l_before + f (l_after - l_before) at ``idx`` (dead experts, l = -inf, stay
        dead), written into the flat log-magnitudes ``log``; returns theta0 + s exp(l) there."""
        if self._expert_const[i] is None:
            st = self.optimizer.state[w]
            sign = st[SIGN].reshape(-1).index_select(0, idx).to(log.dtype)
            theta0 = st[THETA0].reshape(-1).index_select(0, idx) if THETA0 in st else None
            self._expert_const[i] = (sign, theta0)
        sign, theta0 = self._expert_const[i]
        blended = log.index_select(0, idx).sub_(log_before).mul_(f).add_(log_before)
        blended.nan_to_num_(nan=-math.inf, neginf=-math.inf)   # -inf - -inf: dead expert
        log.index_copy_(0, idx, blended)
        kept = blended.exp().mul_(sign)
        if theta0 is not None:
            kept.add_(theta0)
        return kept.to(w.dtype)

    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["owner"] = {name: t.clone() for name, t in self.owner.items()}
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        for name, t in state["owner"].items():
            self.owner[name].copy_(t)
        self._set_protected()
