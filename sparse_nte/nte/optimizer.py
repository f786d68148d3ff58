"""The :class:`NTE` optimizer: param groups, the step, checkpoints (the equations are in
:mod:`sparse_nte.nte`; the maths in :mod:`~sparse_nte.nte.likelihood` and
:mod:`~sparse_nte.nte.posterior`; the experts' state in :mod:`~sparse_nte.nte.experts`)."""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Iterable, List, Optional, Union

import torch
import torch.nn as nn
from torch.optim import Optimizer

from sparse_nte.nte.experts import new_experts, rederive_experts, update_prune_score
from sparse_nte.nte.likelihood import (Numerics, batch_weight_grad, bias_log_likelihood,
                                       generic_log_likelihood, nonzero_terms,
                                       penalty_gradients, penalty_log_likelihood,
                                       weight_log_likelihood)
from sparse_nte.nte.model_index import Layer, ModelIndex, ParamInfo
from sparse_nte.nte.options import EXPANSIONS, check_group, check_number
from sparse_nte.nte.posterior import log_sum_exp, renormalise_and_write, write_weight
from sparse_nte.nte.state import LOG_MAGNITUDE, PRUNE_SCORE, SIGN, THETA0
from sparse_nte.per_example import (PerExampleCapture, check_example_losses,
                                    check_examples_independent)

__all__ = ["NTE"]


class NTE(Optimizer):
    """The Neural Tangent Ensemble rule (see :mod:`sparse_nte.nte` for the equations and the
    differences from the reference implementation).

    Args:
        params: parameters or param groups, as for any torch optimizer. Per-group options:
            ``beta``, ``eta``, ``max_delta``, ``fast``, ``managed`` and ``lr``.
        model: the module whose forward pass the closure runs (hooks go on its layers).
        beta: inverse temperature of the likelihood 1 - beta s g (> 0).
        eta: exponent of the likelihood (> 0).
        max_delta: largest magnitude |w - theta0| of an expert (> 0).
        lr: SGD learning rate of the groups with ``managed=False`` (required for them).
        managed: whether the NTE rule updates the group (default True).
        fast: "auto" | "on" | "off": power series for linear layers where provably within
            ``fast_tol`` (see :data:`~sparse_nte.nte.FAST_MODES`), or always exact.
        expand: "origin" (theta0 = 0) or "init" (theta0 = initial weights - small noise).
        noise_scale: magnitude scale of the experts at ``expand="init"`` (> 0).
        fast_tol: largest truncation error of the series on a log-magnitude update (> 0).
        min_likelihood: the guard: smallest likelihood of one example under one expert.
        chunk_elements: size of the temporary blocks of the exact per-example computation.
        keep_grad: after each step, set ``p.grad`` to the gradient of the step's objective,
            the batch-mean loss plus the penalty (costs one extra matrix product per layer).
        score_momentum: if set, keep ``state[p][PRUNE_SCORE]``, an exponential moving average
            of ``grad * sign`` (the NTE pruning score, :mod:`sparse_nte.nte_prune`).
        seed: seeds the noise of ``expand="init"``.
    """

    #: ``step(closure)`` takes the per-example losses (see :mod:`sparse_nte.rules.optimizers`).
    takes_example_losses = True

    def __init__(self, params: Union[Iterable[torch.Tensor], Iterable[dict]], model: nn.Module, *,
                 beta: float = 0.01, eta: float = 1.0, max_delta: float = 0.1,
                 lr: Optional[float] = None, managed: bool = True, fast: str = "auto",
                 expand: str = "origin", noise_scale: float = 1e-3, fast_tol: float = 1e-7,
                 min_likelihood: float = 1e-6, chunk_elements: int = 1 << 19,
                 keep_grad: bool = False, score_momentum: Optional[float] = None,
                 seed: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"NTE: model must be the nn.Module the closure runs, got "
                             f"{type(model).__name__}")
        if expand not in EXPANSIONS:
            raise ValueError(f"NTE: expand must be one of {EXPANSIONS}, got {expand!r}")
        self.expand = expand
        self.noise_scale = check_number("noise_scale", noise_scale)
        min_likelihood = check_number("min_likelihood", min_likelihood)
        if not min_likelihood < 1:
            raise ValueError(f"NTE: min_likelihood must be in (0, 1), got {min_likelihood!r}")
        if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) \
                or chunk_elements < 1:
            raise ValueError(f"NTE: chunk_elements must be a positive int, got {chunk_elements!r}")
        self.numerics = Numerics(check_number("fast_tol", fast_tol), min_likelihood,
                                 chunk_elements)
        self.keep_grad = bool(keep_grad)
        if score_momentum is not None:
            check_number("score_momentum", score_momentum, allow_zero=True)
            if not 0 <= score_momentum < 1:
                raise ValueError(f"NTE: score_momentum must be in [0, 1), got {score_momentum!r}")
        self.score_momentum = score_momentum
        self.seed = int(seed)
        self.model = model
        self._log_total = -math.inf
        self._guard_count = 0
        self._steps = 0
        self.last_step: Dict[str, Any] = {}
        self._generator = torch.Generator().manual_seed(self.seed)
        self._index = ModelIndex(model)
        defaults = dict(beta=beta, eta=eta, max_delta=max_delta, lr=lr, managed=managed, fast=fast)
        super().__init__(params, defaults)
        for info in self._index.info.values():   # compact layers move the experts with their
            attach = getattr(info.wrapper, "attach_optimizer", None)   # live set
            if attach is not None and getattr(info.wrapper, "compact", False):
                attach(self)

    # -- numerics, as attributes of the optimizer ---------------------------------------------
    @property
    def fast_tol(self) -> float:
        """Largest truncation error of the series on a log-magnitude step."""
        return self.numerics.fast_tol

    @property
    def min_likelihood(self) -> float:
        """The guard: smallest likelihood of one example under one expert."""
        return self.numerics.min_likelihood

    @property
    def chunk_elements(self) -> int:
        """Size of the temporary blocks of the exact per-example computation."""
        return self.numerics.chunk_elements

    # -- param groups ------------------------------------------------------------------------
    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_group(group, len(self.param_groups) - 1)
        for p in group["params"]:
            info = self._index.register(p, group)
            if group["managed"] and p.requires_grad:
                self._add_experts(p, info)

    def _add_experts(self, p: torch.Tensor, info: ParamInfo) -> None:
        with torch.no_grad():
            if info.wrapper is not None:
                info.wrapper.enforce_constraints()
            info.remember_dale()
            w = info.wrapper
            if getattr(w, "compact", False):
                # created in the dense layout and gathered at the live entries, so that a
                # compact layer gets exactly the experts (and noise draws) of a masked-dense one
                dense = new_experts(w.weight.detach(), w.zero_mask, w.sign_tensor(), self.expand,
                                    self.noise_scale, self._generator,
                                    self.score_momentum is not None, info.name)
                self.state[p].update({k: w.from_dense_layout(v).clone()
                                      for k, v in dense.items()})
            else:
                self.state[p].update(new_experts(
                    p.detach(), info.mask(), info.dale_signs(), self.expand, self.noise_scale,
                    self._generator, self.score_momentum is not None, info.name))
            mass = log_sum_exp([self.state[p][LOG_MAGNITUDE]])
            self._log_total = float(torch.logaddexp(torch.tensor(self._log_total),
                                                    torch.tensor(mass)))
            if self.expand == "init":
                write_weight(p, self.state[p])

    # -- public properties -------------------------------------------------------------------
    @property
    def guard_count(self) -> int:
        """Number of (example, entry) likelihood terms clamped by the guard so far."""
        return self._guard_count

    @property
    def log_total(self) -> float:
        """log Z, the log of the total magnitude sum_i exp(l_i) the renormalisation keeps."""
        return self._log_total

    def managed_params(self) -> List[torch.Tensor]:
        """The parameters the NTE rule updates (in param-group order)."""
        return [p for g in self.param_groups if g["managed"] for p in g["params"]
                if p in self.state and LOG_MAGNITUDE in self.state[p]]

    def multiplicative(self, param: torch.Tensor) -> bool:
        """True for the parameters the rule updates multiplicatively (the managed ones: a weight
        at its expansion point never moves); the others take additive SGD steps."""
        return self._is_managed(param) and LOG_MAGNITUDE in self.state.get(param, {})

    def stats(self) -> Dict[str, Any]:
        """Counters for experiment statistics: guard count, steps, live / dead experts, log Z,
        and what the last step did (``last_step``)."""
        live = dead = 0
        for p in self.managed_params():
            l = self.state[p][LOG_MAGNITUDE]  # noqa: E741  (l_i, the log-magnitudes of the docstring)
            mask = self._index.info[id(p)].mask()
            unmasked = torch.ones_like(l, dtype=torch.bool) if mask is None else ~mask
            finite = torch.isfinite(l)
            live += int((finite & unmasked).sum())
            dead += int((~finite & unmasked).sum())
        return {"guard_count": self._guard_count, "steps": self._steps, "live_experts": live,
                "dead_experts": dead, "log_total": self._log_total,
                "last_step": dict(self.last_step)}

    # -- the step ----------------------------------------------------------------------------
    def step(self,  # type: ignore[override]
             closure: Optional[Callable[[], torch.Tensor]] = None,
             penalty: Optional[Callable[[], Optional[torch.Tensor]]] = None
             ) -> torch.Tensor:
        """Run ``closure`` (forward pass returning the per-example losses) and apply one NTE
        update. Returns the batch-mean loss (detached).

        The closure must return a tensor whose dim 0 indexes the examples (shape (B,), or
        (B, ...) summed per example), e.g. ``F.cross_entropy(logits, y, reduction="none")``.
        It must not call ``backward()``. A 0-dim (mean- or sum-reduced) loss is rejected: the
        rule needs each example's own gradient.

        ``penalty``: a callable returning a 0-dim tensor R(theta) of the parameters alone (a
        continual-learning strategy's term, e.g. EWC's), or None. Its gradient g_R enters each
        managed expert as one more likelihood factor, l_i += eta log(1 - beta s_i g_R,i), and
        the unmanaged parameters step on (batch-mean loss + R) (see :mod:`sparse_nte.nte`).
        """
        if closure is None:
            raise ValueError(
                "NTE.step needs a closure that runs the forward pass and returns the per-example "
                "losses, e.g. opt.step(lambda: F.cross_entropy(model(x), y, reduction='none')); "
                "per-example gradients are captured while it runs")
        check_examples_independent(self.model)
        self._index.check_dale_signs(self.managed_params())
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        for p in params:
            p.grad = None
        hooked = [layer for layer in self._index.layers if not layer.bypassed
                  and (self._is_managed(layer.weight) or self._is_managed(layer.bias))]
        capture = PerExampleCapture([layer.module for layer in hooked])
        with capture, torch.enable_grad():
            losses = closure()
        losses = check_example_losses(losses, params)
        n_examples = losses.shape[0]
        total = losses.sum()
        penalty_grads = penalty_gradients(penalty, params, capture.anchors)
        fired = self._index.fired_layers(hooked, capture, n_examples, total,
                                         self._is_managed)
        generic = [p for p in params if self._is_managed(p) and self._is_generic(p)]
        unmanaged = [p for g in self.param_groups if not g["managed"] for p in g["params"]
                     if p.requires_grad]

        # one backward pass: output gradients of the captured layers (their anchors) and the
        # gradients of the unmanaged parameters; the graph is kept only for the generic path
        unmanaged_grads: List[Optional[torch.Tensor]] = [None] * len(unmanaged)
        if capture.anchors or unmanaged:
            capture.recording = True
            try:
                grads = torch.autograd.grad(total, capture.anchors + unmanaged,
                                            retain_graph=bool(generic), allow_unused=True)
            finally:
                capture.recording = False
            unmanaged_grads = list(grads[len(capture.anchors):])
            del grads

        # step 1: layer by layer, the generic parameters, the penalty
        active: set = set()   # ids of the tensors taking part in steps 2-4
        mean_grads: Dict[int, torch.Tensor] = {}
        want_grad = self.keep_grad or self.score_momentum is not None
        report = {"series_rows": 0, "exact_rows": 0, "series_terms": {}, "generic": []}
        guard = 0
        for layer, calls in fired.items():
            guard += self._layer_step(layer, calls, active, mean_grads, want_grad, report)
            for c in calls:  # release this layer's activations and output gradients now
                c.input = c.output_grad = None
        if generic:
            groups = [self._index.info[id(p)].group for p in generic]
            count, used, grad_sums = generic_log_likelihood(
                losses, generic, [self.state[p] for p in generic], groups, self.numerics,
                want_grad)
            guard += count
            active.update(id(p) for p in used)
            mean_grads.update(grad_sums)
            report["generic"] = [self._index.info[id(p)].name for p in generic]
        for p in self.managed_params():
            if id(p) in penalty_grads:
                guard += penalty_log_likelihood(self.state[p], penalty_grads[id(p)],
                                                self._index.info[id(p)].group,
                                                self.numerics.min_likelihood)
                active.add(id(p))

        with torch.no_grad():
            self._apply(active)  # steps 2-4: renormalise, clip, write the weights
            self._sgd_step(unmanaged, unmanaged_grads, penalty_grads, n_examples)
            self._record_gradients(mean_grads, penalty_grads, n_examples)
        self._guard_count += guard
        self._steps += 1
        report["guard"] = guard
        report["updated"] = [self._index.info[id(p)].name for p in self.managed_params()
                             if id(p) in active]
        self.last_step = report
        return losses.detach().mean()

    # -- helpers of step ---------------------------------------------------------------------
    def _layer_step(self, layer: Layer, calls: list, active: set,
                    mean_grads: Dict[int, torch.Tensor], want_grad: bool, report: dict) -> int:
        """Step 1 for the managed parameters of a captured layer that ran. They all take part in
        the step; where every per-example gradient is zero (an all-zero input, dead units
        downstream, an output that does not reach the loss) their likelihood term is 0."""
        calls = [c for c in calls if c.output_grad is not None]
        weight_terms, bias_terms = nonzero_terms(calls)
        guard = 0
        w, b = layer.weight, layer.bias
        if self._is_managed(w):
            info = self._index.info[id(w)]
            active.add(id(w))
            if weight_terms:
                guard += weight_log_likelihood(layer, calls, self.state[w], info.current_dale(),
                                               info.group, self.numerics, report)
            if want_grad:
                mean_grads[id(w)] = batch_weight_grad(layer, calls) if weight_terms \
                    else torch.zeros_like(w.detach())
        if self._is_managed(b):
            active.add(id(b))
            if bias_terms:
                count, g = bias_log_likelihood(layer, calls, self.state[b],
                                               self._index.info[id(b)].group,
                                               self.numerics.min_likelihood)
                guard += count
                if want_grad:
                    mean_grads[id(b)] = g.sum(0)
            elif want_grad:
                mean_grads[id(b)] = torch.zeros_like(b.detach())
        return guard

    def _apply(self, active_ids: set) -> None:
        """Steps 2-4 on the tensors taking part (``active_ids``); the other managed tensors keep
        their mass out of the renormalisation target."""
        if not active_ids:
            return
        managed = self.managed_params()
        entries = [(p, self.state[p], self._index.info[id(p)].mask(),
                    self._index.info[id(p)].group["max_delta"])
                   for p in managed if id(p) in active_ids]
        untouched = [self.state[p][LOG_MAGNITUDE] for p in managed if id(p) not in active_ids]
        renormalise_and_write(entries, untouched, self._log_total)

    def _sgd_step(self, params: List[torch.Tensor], grads: List[Optional[torch.Tensor]],
                  penalty_grads: Dict[int, torch.Tensor], n_examples: int) -> None:
        """Plain SGD on (batch-mean loss + R) for the unmanaged parameters, then their layer's
        constraints (masked weights back to 0, Dale projection)."""
        for p, g in zip(params, grads):
            r = penalty_grads.get(id(p))
            if g is None and r is None:
                continue
            lr = self._index.info[id(p)].group["lr"]
            if r is None:
                p.add_(g, alpha=-lr / n_examples)
                if self.keep_grad:
                    p.grad = g / n_examples
            else:
                step = r if g is None else g / n_examples + r
                p.add_(step, alpha=-lr)
                if self.keep_grad:
                    p.grad = step
            wrapper = self._index.info[id(p)].wrapper
            if wrapper is not None:
                wrapper.enforce_constraints()

    def _record_gradients(self, mean_grads: Dict[int, torch.Tensor],
                          penalty_grads: Dict[int, torch.Tensor], n_examples: int) -> None:
        """``keep_grad``: p.grad = g, the gradient of (batch-mean loss + R); ``score_momentum``:
        the pruning score v <- m v + (1 - m) g s."""
        for p in self.managed_params():
            g, r = mean_grads.get(id(p)), penalty_grads.get(id(p))
            if g is None and r is None:
                continue
            g = r if g is None else (g / n_examples if r is None else g / n_examples + r)
            if self.keep_grad:
                p.grad = g
            if self.score_momentum is not None:
                update_prune_score(self.state[p], g, self.score_momentum)

    def _is_managed(self, p: Optional[torch.Tensor]) -> bool:
        return p is not None and p.requires_grad and id(p) in self._index.info \
            and self._index.info[id(p)].group["managed"]

    def _is_generic(self, p: torch.Tensor) -> bool:
        layer = self._index.info[id(p)].layer
        return layer is None or layer.bypassed

    # -- plasticity --------------------------------------------------------------------------
    def reset_positions(self, param: torch.Tensor, changed_mask: torch.Tensor) -> None:
        """Re-derive the experts of ``param`` at the positions where ``changed_mask`` is True
        from the current weight values (a plasticity schedule pruned or grew them; see
        :func:`~sparse_nte.nte.experts.rederive_experts`). A newly grown weight must therefore
        be non-zero: multiplicative updates cannot move a zero weight. The normaliser Z is
        unchanged; the next step renormalises. Unmanaged parameters keep no per-weight state
        and are left alone.
        """
        if id(param) not in self._index.info:
            raise ValueError(f"NTE.reset_positions: the parameter of shape {tuple(param.shape)} "
                             f"is not trained by this optimizer")
        if not isinstance(changed_mask, torch.Tensor) or changed_mask.dtype != torch.bool \
                or changed_mask.shape != param.shape:
            raise ValueError(f"NTE.reset_positions: changed_mask must be a bool tensor of shape "
                             f"{tuple(param.shape)}")
        if not self._is_managed(param):
            return
        info = self._index.info[id(param)]
        with torch.no_grad():
            rederive_experts(self.state[param], param.detach(), changed_mask, info.mask(),
                             info.dale_signs())

    def remap_positions(self, param: torch.Tensor, source: torch.Tensor) -> None:
        """The live set of a compact parameter changed (:func:`sparse_nte.optim_state.
        remap_positions`): entry ``i`` of ``param`` was entry ``source[i]`` before, or is new
        where ``source[i] < 0``. The experts move with their entries (a pruned entry's expert
        leaves the ensemble), and the new ones are derived from the current weight values, as
        :meth:`reset_positions` does for a grown weight. Z is unchanged."""
        if id(param) not in self._index.info:
            raise ValueError(f"NTE.remap_positions: the parameter of shape {tuple(param.shape)} "
                             f"is not trained by this optimizer")
        if not self._is_managed(param) or param not in self.state:
            return
        st = self.state[param]
        kept = source >= 0
        src = source.clamp(min=0)
        fills = {LOG_MAGNITUDE: -math.inf, SIGN: 1, THETA0: 0.0, PRUNE_SCORE: 0.0}
        with torch.no_grad():
            for key, value in list(st.items()):
                if not isinstance(value, torch.Tensor) or value.dim() == 0:
                    continue
                if key not in fills:
                    raise ValueError(f"NTE.remap_positions: unknown per-weight state {key!r}")
                if value.numel():
                    moved = value.index_select(0, src.to(value.device))
                    moved.masked_fill_(~kept.to(value.device), fills[key])
                else:
                    moved = torch.full(param.shape, fills[key], dtype=value.dtype,
                                       device=value.device)
                st[key] = moved
            info = self._index.info[id(param)]
            rederive_experts(st, param.detach(), ~kept, info.mask(), info.dale_signs())

    def resync(self) -> None:
        """Re-derive every expert from the current weights (after editing weights or Dale signs
        outside the optimizer). Z is unchanged."""
        for p in self.managed_params():
            info = self._index.info[id(p)]
            if info.wrapper is not None:
                info.wrapper.enforce_constraints()
                info.remember_dale()
            self.reset_positions(p, torch.ones_like(p, dtype=torch.bool))

    # -- state dict --------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd["nte"] = {"log_total": self._log_total, "guard_count": self._guard_count,
                     "steps": self._steps, "expand": self.expand}
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("nte", None)
        if extra is None:
            raise ValueError("NTE.load_state_dict: the state dict has no 'nte' entry (it was not "
                             "saved by an NTE optimizer)")
        if extra.get("expand") != self.expand:
            raise ValueError(f"NTE.load_state_dict: saved with expand={extra.get('expand')!r}, "
                             f"this optimizer expands around {self.expand!r}")
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # loading replaces the group dicts
            for p in group["params"]:
                self._index.info[id(p)].group = group
        for st in self.state.values():
            if SIGN in st:
                st[SIGN] = st[SIGN].to(torch.int8)
        self._log_total = float(extra["log_total"])
        self._guard_count = int(extra["guard_count"])
        self._steps = int(extra["steps"])
        for p in self.managed_params():
            self._index.info[id(p)].remember_dale()
