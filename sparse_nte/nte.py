"""The Neural Tangent Ensemble (NTE) learning rule as a ``torch.optim.Optimizer``.

Benjamin, Pehle & Daruwalla, "Continual learning with the neural tangent ensemble", NeurIPS 2024
(reference implementation: ZadorLaboratory/NeuralTangentEnsemble, ``projectlib/ntk.py``).

Each managed parameter entry i is an *expert* of an ensemble, with a fixed sign s_i and a
log-magnitude l_i; the weight is::

    w_i = theta0_i + s_i * exp(l_i)          theta0 = 0 ("origin", default) or the initial
                                             weights minus a small noise ("init")

For a batch of B examples with per-example loss gradients g_{b,i} (the gradient of each
example's own negative log-likelihood, at the current weights), one step is::

    1. l_i <- l_i + eta * sum_b log(1 - beta * s_i * g_{b,i})        (Bayesian posterior update)
    2. l_i <- l_i + log Z - logsumexp_j l_j          (so that sum_i exp(l_i) = Z, the total at
                                                      construction)
    3. l_i <- min(l_i, log max_delta)

Defaults follow the reference: beta (inverse temperature) 0.01, eta 1, max_delta 0.1, expansion
around the origin. A weight's sign never flips; it only shrinks or grows relative to the others.

Usage (the closure returns the PER-EXAMPLE losses, ``reduction="none"``)::

    opt = NTE(model.parameters(), model)                  # or build_nte_optimizer(model, cfg)
    for x, y, t in batches:
        loss = opt.step(lambda: F.cross_entropy(model(x, t), y, reduction="none"))

``step`` runs the closure with forward hooks on the linear / conv layers, runs one backward pass
of the summed losses that stops at the layer outputs (no weight gradients are formed), and
computes the sums over examples layer by layer (:mod:`sparse_nte.per_example`): exactly, or for
linear layers through the power series of log(1 - x) where its truncation error is provably
below ``fast_tol``. Parameters outside linear / conv layers fall back to vmap over the backward
pass. Examples must not interact in the forward pass (no batch norm in training mode; k-WTA,
dropout and per-example routing to heads are fine): dim 0 of every layer input indexes the
examples.

How this implementation differs from the reference, and why:

* Guard. The reference takes log(1 - beta s g) with no check and returns NaN when
  beta s g >= 1. Here the likelihood is clamped to ``min_likelihood`` (default 1e-6, i.e. one
  example can shrink an expert by at most that factor) and every clamped (example, entry) term
  is counted (:attr:`NTE.guard_count`, saved in the state dict).
* Sparse connectivity. Entries masked by a :class:`~sparse_nte.layers.SparseWeightsBase` have
  l = -inf (exp(l) = 0): the weight is exactly 0, the entry is not an expert and is excluded from
  the normaliser. The masks are read at every step, so a pruned entry leaves the ensemble at once.
* Dale's law. For a layer with presynaptic signs (``dale_sign``) the expert signs ARE the Dale
  signs, so no step can violate the constraint.
* Zero weights. The reference asserts that no parameter is zero. Here an unmasked entry that is
  exactly 0 when expanding around the origin is a dead expert (l = -inf: it stays 0 until
  :meth:`NTE.reset_positions` gives it a magnitude); a managed tensor whose unmasked entries are
  ALL zero (e.g. a zero-initialised bias) is an error, because it could never learn.
* Expansion around init. As in the reference, theta0 = w_init - delta0 with
  delta0 = s * noise_scale * |xi|, xi ~ N(0, 1) (``seed``), so the network starts unchanged; s is
  the sign of xi, or the Dale sign. For Dale layers theta0 is clipped to the Dale sign
  (theta0 = s max(s (w_init - delta0), 0)) so that w = theta0 + s exp(l) can never cross zero.
* Which parameters. The reference manages every parameter; here the param groups say which
  (``managed=False`` groups take plain SGD steps on the batch-MEAN loss with their ``lr``).
  :func:`build_nte_optimizer` manages the weights of linear / conv layers by default
  (``nte_params = weights``) or everything (``all``).
* Several heads. A managed tensor that received no gradient this step (a head no example was
  routed to; its per-example gradients are all exactly zero or absent) is left untouched, and
  the renormalisation acts on the others with target ``Z - sum_{untouched} exp(l)``, so the
  total is still Z.
* Normaliser. Z is fixed when the optimizer is built (as in the reference) and is not changed by
  pruning or growth (:meth:`reset_positions`): after a pruning event the surviving experts are
  renormalised to the same total, as a posterior is after hypotheses are removed.
* eta is the exponent of the likelihood (the reference's latest version); the experimental
  periodic reset of the Taylor expansion point (``reset_taylor_steps``) is not implemented.
* max_delta clips the magnitudes after the renormalisation (reference's log-space version); an
  earlier reference version clipped the signed deltas from above only. The total can therefore
  fall below Z when the clip binds; the next renormalisation restores it before clipping again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.optim import Optimizer

from sparse_nte.layers import SparseWeightsBase
from sparse_nte.per_example import (
    BLOCK_ELEMENTS,
    PerExampleCapture,
    bmm_exact,
    check_examples_independent,
    conv2d_padding,
    conv2d_supported,
    dense_log_likelihood,
    graph_parents,
    linear_exact,
    linear_series,
    per_example_grads,
    row_bound,
    series_terms,
    unfold_conv2d_input,
)

__all__ = ["NTE", "build_nte_optimizer", "FAST_MODES", "EXPANSIONS", "NTE_PARAMS"]

#: ``fast`` setting -> most series terms allowed per linear layer (0 = always exact). Both "auto"
#: and "on" use the series only where its truncation error is provably below ``fast_tol``;
#: "on" allows up to 32 terms (fewer exact fallbacks, more matrix products), "auto" up to 8.
FAST_MODES: Dict[str, int] = {"off": 0, "auto": 8, "on": 32}
EXPANSIONS = ("origin", "init")
NTE_PARAMS = ("weights", "all")


@dataclass(eq=False)
class _Layer:
    """A linear / conv layer whose inputs and output gradients are captured."""

    module: nn.Module
    name: str
    kind: str                                   # "linear" | "conv2d"
    weight: Optional[torch.Tensor] = None       # set when the optimizer trains it
    bias: Optional[torch.Tensor] = None
    checked: bool = False                       # parameter use verified in a step it ran
    checked_silent: bool = False                # ... and in a step it did not run
    bypassed: bool = False                      # params used outside forward: generic path


@dataclass(eq=False)
class _ParamInfo:
    name: str
    group: dict
    layer: Optional[_Layer] = None              # the captured layer owning it, if any
    role: Optional[str] = None                  # "weight" | "bias" | None
    wrapper: Optional[SparseWeightsBase] = None  # set for the weight of a SparseWeights layer
    dale: Optional[torch.Tensor] = field(default=None, repr=False)  # Dale signs seen at build


def _blocks(t: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Consecutive blocks of :data:`~sparse_nte.per_example.BLOCK_ELEMENTS` entries of a
    contiguous tensor, as views (in-place operations on them change ``t``)."""
    return t.view(-1).split(BLOCK_ELEMENTS)


def _check_number(name: str, value: Any, *, positive: bool = True,
                  allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"NTE: {name} must be a finite number, got {value!r}")
    if positive and not (value > 0 or (allow_zero and value == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"NTE: {name} must be {bound}, got {value!r}")
    return float(value)


class NTE(Optimizer):
    """The Neural Tangent Ensemble rule (see the module docstring for the equations and the
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
            ``fast_tol`` (see :data:`FAST_MODES`), or always exact.
        expand: "origin" (theta0 = 0) or "init" (theta0 = initial weights - small noise).
        noise_scale: magnitude scale of the experts at ``expand="init"`` (> 0).
        fast_tol: largest truncation error of the series on a log-magnitude update (> 0).
        min_likelihood: the guard: smallest likelihood of one example under one expert.
        chunk_elements: size of the temporary blocks of the exact per-example computation.
        keep_grad: after each step, set ``p.grad`` to the gradient of the batch-mean loss
            (costs one extra matrix product per layer).
        score_momentum: if set, keep ``state[p]["prune_score"]``, an exponential moving average
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
        self.noise_scale = _check_number("noise_scale", noise_scale)
        self.fast_tol = _check_number("fast_tol", fast_tol)
        self.min_likelihood = _check_number("min_likelihood", min_likelihood)
        if not self.min_likelihood < 1:
            raise ValueError(f"NTE: min_likelihood must be in (0, 1), got {min_likelihood!r}")
        if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) \
                or chunk_elements < 1:
            raise ValueError(f"NTE: chunk_elements must be a positive int, got {chunk_elements!r}")
        self.chunk_elements = chunk_elements
        self.keep_grad = bool(keep_grad)
        if score_momentum is not None:
            _check_number("score_momentum", score_momentum, allow_zero=True)
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
        defaults = dict(beta=beta, eta=eta, max_delta=max_delta, lr=lr, managed=managed, fast=fast)
        self._index_model(model)
        super().__init__(params, defaults)

    # -- construction ------------------------------------------------------------------------
    def _index_model(self, model: nn.Module) -> None:
        self._names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
        self._wrapper_of = {id(m.weight): m for m in model.modules()
                            if isinstance(m, SparseWeightsBase)}
        self._layer_of: Dict[int, Tuple[_Layer, str]] = {}
        self._layers: List[_Layer] = []
        for name, m in model.named_modules():
            if isinstance(m, nn.Linear):
                kind = "linear"
            elif isinstance(m, nn.Conv2d) and conv2d_supported(m):
                kind = "conv2d"
            else:
                continue
            layer = _Layer(m, name, kind)
            self._layers.append(layer)
            for role in ("weight", "bias"):
                p = getattr(m, role, None)
                if isinstance(p, torch.Tensor):
                    self._layer_of[id(p)] = (layer, role)
        self._info: Dict[int, _ParamInfo] = {}

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_group(group)
        self._register_group(group)

    def _check_group(self, group: dict) -> None:
        for key in ("beta", "eta", "max_delta"):
            group[key] = _check_number(f"{key} (param group {len(self.param_groups) - 1})",
                                       group[key])
        if group["fast"] not in FAST_MODES:
            raise ValueError(f"NTE: fast must be one of {sorted(FAST_MODES)}, got "
                             f"{group['fast']!r}")
        if not isinstance(group["managed"], bool):
            raise ValueError(f"NTE: managed must be a bool, got {group['managed']!r}")
        if not group["managed"]:
            if group["lr"] is None:
                raise ValueError("NTE: a param group with managed=False takes plain SGD steps and "
                                 "needs a learning rate: pass lr=... (>= 0)")
            group["lr"] = _check_number("lr", group["lr"], allow_zero=True)

    def _register_group(self, group: dict) -> None:
        for p in group["params"]:
            if id(p) not in self._names:
                raise ValueError(f"NTE: a parameter of shape {tuple(p.shape)} is not a parameter "
                                 f"of the model passed to the optimizer")
            layer, role = self._layer_of.get(id(p), (None, None))
            info = _ParamInfo(self._names[id(p)], group, layer, role, self._wrapper_of.get(id(p)))
            self._info[id(p)] = info
            if layer is not None:
                setattr(layer, role, p)
            if group["managed"] and p.requires_grad:
                self._init_expert(p, info)

    @staticmethod
    def _mask(info: _ParamInfo) -> Optional[torch.Tensor]:
        """The zero mask of a SparseWeights weight (True = held at 0), or None."""
        return info.wrapper.zero_mask if info.wrapper is not None else None

    @staticmethod
    def _dale(info: _ParamInfo) -> Optional[torch.Tensor]:
        """Dale signs broadcast over the weight, or None."""
        return info.wrapper.sign_tensor() if info.wrapper is not None else None

    def _init_expert(self, p: torch.Tensor, info: _ParamInfo) -> None:
        with torch.no_grad():
            if info.wrapper is not None:
                info.wrapper.enforce_constraints()
            w = p.detach()
            mask = self._mask(info)
            dale = self._dale(info)
            info.dale = None if dale is None else info.wrapper.dale_sign.clone()
            state = self.state[p]
            if self.expand == "origin":
                sign = torch.ones(w.shape, dtype=torch.int8, device=w.device)
                if dale is not None:
                    sign.copy_(dale.expand_as(w))
                    dead = (w * dale) <= 0
                else:
                    sign.masked_fill_(w < 0, -1)
                    dead = w == 0
                log_mag = w.abs().log_().masked_fill_(dead, -math.inf)
                live = ~dead if mask is None else ~(dead | mask)
                unmasked = mask is None or not bool(mask.all())
                if unmasked and not bool(live.any()):
                    raise ValueError(
                        f"NTE: parameter '{info.name}' is zero at every unmasked entry. Around "
                        f"the origin (expand='origin') a zero weight is an expert with no mass "
                        f"and can never change multiplicatively. Initialise it non-zero, expand "
                        f"around init (expand='init', nte_expand=init), or leave it to plain SGD "
                        f"(a managed=False group; nte_params=weights)")
                del dead, live
            else:
                xi = torch.randn(w.shape, generator=self._generator, dtype=w.dtype).to(w.device)
                sign = torch.ones(w.shape, dtype=torch.int8, device=w.device)
                if dale is not None:
                    sign.copy_(dale.expand_as(w))
                else:
                    sign.masked_fill_(xi < 0, -1)
                magnitude = xi.abs_().mul_(self.noise_scale)
                theta0 = w - sign * magnitude
                if dale is not None:
                    theta0 = (theta0 * dale).clamp_min_(0.0).mul_(dale)
                if mask is not None:
                    theta0.masked_fill_(mask, 0.0)
                log_mag = magnitude.log_()
                state["theta0"] = theta0
            if mask is not None:
                log_mag.masked_fill_(mask, -math.inf)
            state["log_magnitude"] = log_mag
            state["sign"] = sign
            if self.score_momentum is not None:
                state["prune_score"] = torch.zeros_like(w)
            mass = self._lse([log_mag])
            self._log_total = float(torch.logaddexp(torch.tensor(self._log_total),
                                                    torch.tensor(mass)))
            if self.expand == "init":
                self._write_weight(p)

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
                if p in self.state and "log_magnitude" in self.state[p]]

    def stats(self) -> Dict[str, Any]:
        """Counters for experiment statistics: guard count, steps, live / dead experts, log Z,
        and what the last step did (``last_step``)."""
        live = dead = 0
        for p in self.managed_params():
            info = self._info[id(p)]
            l = self.state[p]["log_magnitude"]
            mask = self._mask(info)
            unmasked = torch.ones_like(l, dtype=torch.bool) if mask is None else ~mask
            finite = torch.isfinite(l)
            live += int((finite & unmasked).sum())
            dead += int((~finite & unmasked).sum())
        return {"guard_count": self._guard_count, "steps": self._steps, "live_experts": live,
                "dead_experts": dead, "log_total": self._log_total,
                "last_step": dict(self.last_step)}

    # -- the step ----------------------------------------------------------------------------
    def step(self,  # type: ignore[override]
             closure: Optional[Callable[[], torch.Tensor]] = None) -> torch.Tensor:
        """Run ``closure`` (forward pass returning the per-example losses) and apply one NTE
        update. Returns the batch-mean loss (detached).

        The closure must return a tensor whose dim 0 indexes the examples (shape (B,), or
        (B, ...) summed per example), e.g. ``F.cross_entropy(logits, y, reduction="none")``.
        It must not call ``backward()``. A 0-dim (mean- or sum-reduced) loss is rejected: the
        rule needs each example's own gradient.
        """
        if closure is None:
            raise ValueError(
                "NTE.step needs a closure that runs the forward pass and returns the per-example "
                "losses, e.g. opt.step(lambda: F.cross_entropy(model(x), y, reduction='none')); "
                "per-example gradients are captured while it runs")
        check_examples_independent(self.model)
        self._check_dale_signs()
        params = [p for g in self.param_groups for p in g["params"] if p.requires_grad]
        for p in params:
            p.grad = None
        hooked = [layer for layer in self._layers if not layer.bypassed
                  and (self._is_managed(layer.weight) or self._is_managed(layer.bias))]
        capture = PerExampleCapture([layer.module for layer in hooked])
        with capture, torch.enable_grad():
            losses = closure()
        losses = self._check_losses(losses, params)
        n_examples = losses.shape[0]
        total = losses.sum()
        fired = self._fired_layers(hooked, capture, n_examples, total)
        generic = [p for p in params if self._is_managed(p) and self._is_generic(p)]
        unmanaged = [p for g in self.param_groups if not g["managed"] for p in g["params"]
                     if p.requires_grad]

        # one backward pass: output gradients of the captured layers (their anchors) and the
        # gradients of the unmanaged parameters; the graph is kept only for the generic path
        unmanaged_grads: List[Optional[torch.Tensor]] = []
        if capture.anchors or unmanaged:
            capture.recording = True
            try:
                grads = torch.autograd.grad(total, capture.anchors + unmanaged,
                                            retain_graph=bool(generic), allow_unused=True)
            finally:
                capture.recording = False
            unmanaged_grads = list(grads[len(capture.anchors):])
            del grads

        # step 1, layer by layer, then for the generic parameters
        active: set = set()
        mean_grads: Dict[int, torch.Tensor] = {}
        want_grad = self.keep_grad or self.score_momentum is not None
        guard = 0
        info_step = {"series_rows": 0, "exact_rows": 0, "series_terms": {}, "generic": []}
        for layer, calls in fired.items():
            with_grad = [c for c in calls if c.output_grad is not None]
            if with_grad:
                guard += self._layer_update(layer, with_grad, active, mean_grads, want_grad,
                                            info_step)
            for c in calls:  # release this layer's activations and output gradients now
                c.input = c.output_grad = None
        if generic:
            guard += self._generic_update(losses, generic, active, mean_grads, want_grad)
            info_step["generic"] = [self._info[id(p)].name for p in generic]

        with torch.no_grad():
            self._apply(active)  # steps 2 and 3, and the weights
            for p, g in zip(unmanaged, unmanaged_grads):
                if g is not None:
                    p.add_(g, alpha=-self._info[id(p)].group["lr"] / n_examples)
                    if self.keep_grad:
                        p.grad = g / n_examples
                    wrapper = self._info[id(p)].wrapper
                    if wrapper is not None:  # masked weights back to 0, Dale projection
                        wrapper.enforce_constraints()
            self._record_gradients(mean_grads, n_examples)
        self._guard_count += guard
        self._steps += 1
        info_step["guard"] = guard
        info_step["updated"] = [self._info[k].name for k in active]
        self.last_step = info_step
        return losses.detach().mean()

    # -- helpers of step ---------------------------------------------------------------------
    def _fired_layers(self, hooked: List[_Layer], capture: PerExampleCapture, n_examples: int,
                      total: torch.Tensor) -> Dict[_Layer, list]:
        """The captured layers that ran, with their calls; checks the calls' batch sizes and,
        the first time a layer runs (or does not), how its parameters enter the graph."""
        fired: Dict[_Layer, list] = {}
        for layer in hooked:
            calls = capture.calls.get(layer.module)
            if calls:
                self._check_calls(layer, calls, n_examples)
                fired[layer] = calls
        unchecked = [layer for layer in hooked
                     if not (layer.checked if layer in fired else layer.checked_silent)]
        if unchecked:
            self._verify_layers(unchecked, fired, total)
            for layer in unchecked:
                if layer.bypassed:
                    fired.pop(layer, None)
        return fired

    def _record_gradients(self, mean_grads: Dict[int, torch.Tensor], n_examples: int) -> None:
        """``keep_grad``: p.grad = gradient of the batch-mean loss; ``score_momentum``: the
        pruning score v <- m v + (1 - m) g s."""
        for p in self.managed_params():
            g = mean_grads.get(id(p))
            if g is None:
                continue
            g = g / n_examples
            if self.keep_grad:
                p.grad = g
            if self.score_momentum is not None:
                st = self.state[p]
                m = self.score_momentum
                for v_blk, g_blk, s_blk in zip(_blocks(st["prune_score"]), _blocks(g.contiguous()),
                                               _blocks(st["sign"])):
                    v_blk.mul_(m).addcmul_(g_blk, s_blk, value=1.0 - m)

    def _is_managed(self, p: Optional[torch.Tensor]) -> bool:
        return p is not None and p.requires_grad and id(p) in self._info \
            and self._info[id(p)].group["managed"]

    def _is_generic(self, p: torch.Tensor) -> bool:
        layer = self._info[id(p)].layer
        return layer is None or layer.bypassed

    def _check_losses(self, losses: Any, params: List[torch.Tensor]) -> torch.Tensor:
        if not isinstance(losses, torch.Tensor):
            raise ValueError(f"NTE.step: the closure must return a tensor of per-example losses, "
                             f"got {type(losses).__name__}")
        if losses.dim() == 0:
            raise ValueError(
                "NTE.step: the closure returned a 0-dim loss. The NTE rule needs every example's "
                "own loss: use reduction='none' (e.g. F.cross_entropy(logits, y, reduction='none'))"
                ", not the batch mean or sum")
        if any(p.grad is not None for p in params):
            raise ValueError("NTE.step: the closure must not call backward(); return the "
                             "per-example losses and step() computes what it needs")
        if not losses.requires_grad:
            raise ValueError("NTE.step: the losses do not require grad; run the forward pass with "
                             "gradients enabled (not under torch.no_grad / inference_mode)")
        if losses.dim() > 1:
            losses = losses.reshape(losses.shape[0], -1).sum(dim=1)
        if not bool(torch.isfinite(losses.detach()).all()):
            raise ValueError("NTE.step: some per-example losses are not finite (NaN or inf); the "
                             "update would be undefined")
        return losses

    def _check_calls(self, layer: _Layer, calls: list, n_examples: int) -> None:
        sizes = [c.input.shape[0] for c in calls]
        if len(calls) == 1:
            if sizes[0] > n_examples:
                raise ValueError(
                    f"NTE.step: layer '{layer.name}' saw {sizes[0]} rows but the closure returned "
                    f"{n_examples} per-example losses; dim 0 of every layer input must index the "
                    f"examples")
        elif any(s != n_examples for s in sizes):
            raise ValueError(
                f"NTE.step: layer '{layer.name}' was called {len(calls)} times with batch sizes "
                f"{sizes} ({n_examples} examples); per-example gradients can combine several calls "
                f"only when each call sees the whole batch in the same order")

    def _check_dale_signs(self) -> None:
        for p in self.managed_params():
            info = self._info[id(p)]
            current = info.wrapper.dale_sign if info.wrapper is not None else None
            if info.dale is None and current is None:
                continue
            if info.dale is None or current is None or not torch.equal(current, info.dale):
                raise ValueError(
                    f"NTE.step: the Dale signs of '{info.name}' changed after the optimizer was "
                    f"built (or last resynchronised); the expert signs must follow them: call "
                    f"optimizer.resync()")

    @staticmethod
    def _layer_sources(layer: _Layer, calls: list) -> Tuple[list, Optional[Callable]]:
        """(input, output_grad as (n, L, out)) per call, and the unfold for conv inputs."""
        m = layer.module
        if layer.kind == "conv2d":
            sources = [(c.input, c.output_grad.flatten(2).transpose(1, 2)) for c in calls]
            return sources, (lambda x: unfold_conv2d_input(m, x))
        sources = []
        for c in calls:
            n = c.input.shape[0]
            sources.append((c.input.reshape(n, -1, c.input.shape[-1]),
                            c.output_grad.reshape(n, -1, c.output_grad.shape[-1])))
        return sources, None

    def _batch_weight_grad(self, layer: _Layer, calls: list) -> torch.Tensor:
        """sum_b g_b of the layer weight (the gradient of the summed losses)."""
        m = layer.module
        total = None
        for c in calls:
            if layer.kind == "conv2d":
                g = torch.nn.grad.conv2d_weight(c.input, m.weight.shape, c.output_grad,
                                                stride=m.stride, padding=conv2d_padding(m),
                                                dilation=m.dilation, groups=m.groups)
            else:
                d = c.output_grad.reshape(-1, c.output_grad.shape[-1])
                a = c.input.reshape(-1, c.input.shape[-1])
                g = d.T @ a
            total = g if total is None else total.add_(g)
        return total

    @staticmethod
    def _bias_grads(layer: _Layer, calls: list) -> torch.Tensor:
        """Per-example bias gradients (n, out): output gradients summed over locations/calls."""
        total = None
        for c in calls:
            d = c.output_grad
            d = d.flatten(2).sum(2) if layer.kind == "conv2d" else \
                d.reshape(d.shape[0], -1, d.shape[-1]).sum(1)
            total = d if total is None else total + d
        return total

    def _verify_layers(self, layers: List[_Layer], fired: Dict[_Layer, list],
                       total: torch.Tensor) -> None:
        """Check in the autograd graph that the managed parameters of ``layers`` enter the loss
        only through the layers' forward calls: in a step where a layer ran, each of its calls
        that reaches the loss accounts for exactly one use of the parameter; in a step where it
        did not run, the parameter is not used at all. Any other use (weight tying, a penalty on
        the weight, ``F.linear(x, layer.weight)`` without calling the layer, a forward that uses
        the weight twice) would make the captured per-example gradients incomplete, so such a
        layer is routed to the generic path for good. Done once per layer in each situation."""
        accumulators = {}
        for layer in layers:
            for p in (layer.weight, layer.bias):
                if self._is_managed(p):
                    accumulators[id(p)] = torch.autograd.graph.get_gradient_edge(p).node
        counts, seen = graph_parents(total.grad_fn, list(accumulators.values()))
        for layer in layers:
            calls = fired.get(layer, [])
            reached = sum(1 for c in calls if c.node_id in seen)
            for p in (layer.weight, layer.bias):
                if id(p) in accumulators and counts[accumulators[id(p)]] != reached:
                    layer.bypassed = True
            if calls:
                layer.checked = True
            else:
                layer.checked_silent = True

    def _layer_update(self, layer: _Layer, calls: list, active: set,
                      mean_grads: Dict[int, torch.Tensor], want_grad: bool, info_step: dict) -> int:
        """Step 1 for the managed parameters of a captured layer: l += eta * sum_b log(...)."""
        guard = 0
        with torch.no_grad():
            if not any(bool(c.output_grad.any()) and bool(c.input.any()) for c in calls):
                return 0  # every per-example gradient is exactly zero: inactive this step
            w = layer.weight
            if self._is_managed(w):
                group = self._info[id(w)].group
                st = self.state[w]
                out = w.shape[0]
                sign = st["sign"].view(out, -1)
                acc = st["log_magnitude"].view(out, -1)
                col_sign = None
                if self._dale(self._info[id(w)]) is not None:
                    col_sign = self._info[id(w)].wrapper.dale_sign
                    if w.dim() > 2:
                        col_sign = col_sign.repeat_interleave(w[0, 0].numel())
                    sign = None
                beta, eta = group["beta"], group["eta"]
                max_terms = FAST_MODES[group["fast"]]
                c0 = calls[0]
                if layer.kind == "linear" and len(calls) == 1 and c0.input.dim() == 2:
                    a, d = c0.input, c0.output_grad
                    x = row_bound(a.unsqueeze(1), d.unsqueeze(1), beta)
                    if max_terms:
                        n_terms, fast = series_terms(x, self.fast_tol / eta, max_terms)
                    else:
                        n_terms, fast = 0, torch.zeros(out, dtype=torch.bool, device=w.device)
                    n_fast = int(fast.sum())
                    if n_fast == out:
                        del x  # not needed by the series: free it before the series' buffers
                        linear_series(a, d, beta, n_terms, sign, col_sign, out=acc, alpha=eta)
                    else:
                        if n_fast:
                            rows = torch.nonzero(fast).flatten()
                            part = linear_series(a, d[:, rows], beta, n_terms,
                                                 None if sign is None else sign[rows], col_sign)
                            acc.index_add_(0, rows, part, alpha=eta)
                        rows = None if n_fast == 0 else torch.nonzero(~fast).flatten()
                        guard += linear_exact(a, d, beta, rows, sign, col_sign,
                                              self.min_likelihood, x, self.chunk_elements,
                                              out=acc, alpha=eta)
                    if n_fast:
                        info_step["series_terms"][layer.name] = n_terms
                    info_step["series_rows"] += n_fast
                    info_step["exact_rows"] += out - n_fast
                else:
                    sources, unfold = self._layer_sources(layer, calls)
                    guard += bmm_exact(sources, beta, sign, col_sign, self.min_likelihood,
                                       self.chunk_elements, out=acc, alpha=eta, unfold=unfold)
                    info_step["exact_rows"] += out
                active.add(id(w))
                if want_grad:
                    mean_grads[id(w)] = self._batch_weight_grad(layer, calls)
            b = layer.bias
            if self._is_managed(b):
                group = self._info[id(b)].group
                g = self._bias_grads(layer, calls)
                part, c = dense_log_likelihood(g, self.state[b]["sign"], group["beta"],
                                               self.min_likelihood)
                self.state[b]["log_magnitude"].add_(part, alpha=group["eta"])
                active.add(id(b))
                guard += c
                if want_grad:
                    mean_grads[id(b)] = g.sum(0)
        return guard

    def _generic_update(self, losses: torch.Tensor, params: List[torch.Tensor], active: set,
                        mean_grads: Dict[int, torch.Tensor], want_grad: bool) -> int:
        """Step 1 for parameters outside captured layers (vmap over the backward pass)."""
        guard = 0
        sums: Dict[int, torch.Tensor] = {}
        gsum: Dict[int, torch.Tensor] = {}
        nonzero = set()
        for _, grads in per_example_grads(losses, params, self.chunk_elements):
            with torch.no_grad():
                for p, g in zip(params, grads):
                    if g is None:
                        continue
                    group = self._info[id(p)].group
                    part, c = dense_log_likelihood(g, self.state[p]["sign"], group["beta"],
                                                   self.min_likelihood)
                    guard += c
                    sums[id(p)] = part if id(p) not in sums else sums[id(p)].add_(part)
                    if bool(g.any()):
                        nonzero.add(id(p))
                    if want_grad:
                        s = g.sum(0)
                        gsum[id(p)] = s if id(p) not in gsum else gsum[id(p)].add_(s)
        with torch.no_grad():
            for p in params:
                if id(p) in nonzero:
                    self.state[p]["log_magnitude"].add_(sums[id(p)],
                                                        alpha=self._info[id(p)].group["eta"])
                    active.add(id(p))
                    if want_grad:
                        mean_grads[id(p)] = gsum[id(p)]
        return guard

    def _apply(self, active_ids: set) -> None:
        """Steps 2-3 on the tensors updated by step 1 (``active_ids``), and the weight write.

        Two passes over each tensor, block by block (a block stays in cache): (a) with m the
        block's largest l, write exp(l - m) into the weight's storage and sum it (the block's
        log-sum-exp, without a second exponential pass later); (b) with the shift c of step 2,
        l <- min(l + c, log max_delta) and |w| <- min(exp(l - m) * exp(c + m), max_delta), then
        the signs (and theta0).
        """
        if not active_ids:
            return
        managed = self.managed_params()
        active = [p for p in managed if id(p) in active_ids]
        inactive = [p for p in managed if id(p) not in active_ids]
        offsets: List[List[float]] = []
        parts: List[float] = []
        with torch.no_grad():
            for p in active:
                st = self.state[p]
                l = st["log_magnitude"]
                mask = self._mask(self._info[id(p)])
                if mask is not None:  # masks may have changed since the last step
                    l.masked_fill_(mask, -math.inf)
                    if "theta0" in st:
                        st["theta0"].masked_fill_(mask, 0.0)
                block_offsets = []
                for l_blk, w_blk in zip(_blocks(l), _blocks(p)):
                    m = float(l_blk.max())
                    block_offsets.append(m)
                    if m == -math.inf:  # no live expert in this block
                        continue
                    torch.sub(l_blk, m, out=w_blk).exp_()
                    parts.append(m + math.log(float(w_blk.sum(dtype=torch.float64))))
                offsets.append(block_offsets)
        lse_active = float(torch.logsumexp(torch.tensor(parts, dtype=torch.float64), 0)) \
            if parts else -math.inf
        target = self._log_total
        if inactive:
            lse_in = self._lse([self.state[p]["log_magnitude"] for p in inactive])
            # Untouched tensors keep their mass; the rest share Z minus it. If they already
            # hold all of Z (only reset_positions can move that much mass into them), the
            # active tensors are not rescaled.
            target = self._log_total + math.log1p(-math.exp(lse_in - self._log_total)) \
                if lse_in < self._log_total else lse_active
        shift = target - lse_active if math.isfinite(lse_active) else 0.0
        with torch.no_grad():
            for p, block_offsets in zip(active, offsets):
                st = self.state[p]
                max_delta = self._info[id(p)].group["max_delta"]
                lmax = math.log(max_delta)
                theta0 = st.get("theta0")
                blocks = zip(_blocks(st["log_magnitude"]), _blocks(p), _blocks(st["sign"]),
                             _blocks(theta0) if theta0 is not None else
                             [None] * len(block_offsets), block_offsets)
                for l_blk, w_blk, s_blk, t_blk, m in blocks:
                    if m == -math.inf:
                        w_blk.zero_()
                    else:
                        l_blk.add_(shift)
                        w_blk.mul_(math.exp(shift + m))
                        if m + shift > lmax:  # the clip binds somewhere in this block
                            l_blk.clamp_(max=lmax)
                            w_blk.clamp_(max=max_delta)
                        w_blk.mul_(s_blk)
                    if t_blk is not None:
                        w_blk.add_(t_blk)

    @staticmethod
    def _lse(tensors: List[torch.Tensor]) -> float:
        """log sum exp over all entries: per block of 2^16 entries in the tensors' dtype, the
        blocks combined in float64."""
        parts = [torch.logsumexp(block, 0).double() for t in tensors for block in _blocks(t)]
        if not parts:
            return -math.inf
        return float(torch.logsumexp(torch.stack(parts), 0))

    def _write_weight(self, p: torch.Tensor) -> None:
        """w = theta0 + s * exp(l), block by block (the int8 signs are cast one block at a
        time)."""
        st = self.state[p]
        theta0 = st.get("theta0")
        with torch.no_grad():
            blocks = zip(_blocks(st["log_magnitude"]), _blocks(st["sign"]), _blocks(p),
                         _blocks(theta0) if theta0 is not None else
                         [None] * (p.numel() // BLOCK_ELEMENTS + 1))
            for l_blk, s_blk, w_blk, t_blk in blocks:
                torch.exp(l_blk, out=w_blk)
                w_blk.mul_(s_blk)
                if t_blk is not None:
                    w_blk.add_(t_blk)

    # -- plasticity --------------------------------------------------------------------------
    def reset_positions(self, param: torch.Tensor, changed_mask: torch.Tensor) -> None:
        """Re-derive the experts of ``param`` at the positions where ``changed_mask`` is True
        from the current weight values (a plasticity schedule pruned or grew them).

        At masked positions the expert is removed (l = -inf, theta0 = 0). Elsewhere
        delta = w - theta0 gives l = log|delta| and s = sign(delta) (the Dale sign for Dale
        layers; a delta of the wrong sign or 0 gives a dead expert, l = -inf). A newly grown
        weight must therefore be non-zero: multiplicative updates cannot move a zero weight.
        The normaliser Z is unchanged; the next step renormalises. Unmanaged parameters keep no
        per-weight state and are left alone.
        """
        if id(param) not in self._info:
            raise ValueError(f"NTE.reset_positions: the parameter of shape {tuple(param.shape)} "
                             f"is not trained by this optimizer")
        if not isinstance(changed_mask, torch.Tensor) or changed_mask.dtype != torch.bool \
                or changed_mask.shape != param.shape:
            raise ValueError(f"NTE.reset_positions: changed_mask must be a bool tensor of shape "
                             f"{tuple(param.shape)}")
        if not self._is_managed(param):
            return
        info = self._info[id(param)]
        st = self.state[param]
        with torch.no_grad():
            changed = changed_mask.to(param.device)
            mask = self._mask(info)
            if mask is not None:
                removed = changed & mask
                changed = changed & ~mask
                st["log_magnitude"].masked_fill_(removed, -math.inf)
                if "theta0" in st:
                    st["theta0"].masked_fill_(removed, 0.0)
            w = param.detach()
            theta0 = st.get("theta0")
            delta = w - theta0 if theta0 is not None else w
            dale = self._dale(info)
            if dale is not None:
                new_sign = dale.expand_as(w).to(torch.int8)
                ok = delta * dale > 0
            else:
                new_sign = torch.where(delta < 0, -1, 1).to(torch.int8)
                new_sign = torch.where(delta != 0, new_sign, st["sign"])
                ok = delta != 0
            new_log = torch.where(ok, delta.abs().log(), torch.full_like(w, -math.inf))
            # Dale: the expert sign is the presynaptic sign, masked or not
            signed = changed_mask.to(param.device) if dale is not None else changed
            st["sign"].copy_(torch.where(signed, new_sign, st["sign"]))
            st["log_magnitude"].copy_(torch.where(changed, new_log, st["log_magnitude"]))
            if theta0 is not None:
                theta0.copy_(torch.where(changed & ~ok, w, theta0))
            if "prune_score" in st:
                st["prune_score"].masked_fill_(changed_mask.to(param.device), 0.0)

    def resync(self) -> None:
        """Re-derive every expert from the current weights (after editing weights or Dale signs
        outside the optimizer). Z is unchanged."""
        for p in self.managed_params():
            info = self._info[id(p)]
            if info.wrapper is not None:
                info.wrapper.enforce_constraints()
                dale = info.wrapper.dale_sign
                info.dale = None if dale is None else dale.clone()
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
                self._info[id(p)].group = group
        for p, st in self.state.items():
            if "sign" in st:
                st["sign"] = st["sign"].to(torch.int8)
        self._log_total = float(extra["log_total"])
        self._guard_count = int(extra["guard_count"])
        self._steps = int(extra["steps"])
        for p in self.managed_params():
            info = self._info[id(p)]
            dale = info.wrapper.dale_sign if info.wrapper is not None else None
            info.dale = None if dale is None else dale.clone()


# ---------------------------------------------------------------------------------------------
# Config wiring
# ---------------------------------------------------------------------------------------------
def _weight_params(model: nn.Module) -> List[torch.Tensor]:
    """The connection weights: ``weight`` of every linear and convolution layer."""
    out, seen = [], set()
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            w = m.weight
            if w.requires_grad and id(w) not in seen:
                seen.add(id(w))
                out.append(w)
    return out


def build_nte_optimizer(model: nn.Module, config: Mapping[str, Any]) -> NTE:
    """The NTE optimizer described by an experiment config (plain dict).

    Keys (schema in :mod:`sparse_nte.config`; defaults used when a key is absent): ``nte_beta`` (0.01),
    ``nte_eta`` (1.0), ``nte_max_delta`` (0.1), ``nte_expand`` ("origin" | "init"),
    ``nte_noise_scale`` (1e-3), ``nte_params`` ("weights": the weights of linear / conv layers,
    everything else takes SGD steps with ``lr``; "all": every parameter), ``nte_fast``
    ("auto" | "on" | "off"), ``lr`` (required when some parameter is not managed), ``seed`` (0).
    With ``plasticity = nte_prune`` and ``nte_prune_rule = score`` the pruning score is tracked
    with momentum ``nte_prune_momentum`` (0.99).
    """
    if config.get("optimizer", "nte") != "nte":
        raise ValueError(f"build_nte_optimizer: config key 'optimizer' is "
                         f"{config.get('optimizer')!r}; it builds the optimizer for 'nte' only")

    def pick(key: str, default: Any, valid: Optional[tuple] = None) -> Any:
        value = config.get(key, default)
        if valid is not None and value not in valid:
            raise ValueError(f"config key '{key}' must be one of {valid}, got {value!r}")
        return value

    which = pick("nte_params", "weights", NTE_PARAMS)
    fast = pick("nte_fast", "auto", tuple(FAST_MODES))
    expand = pick("nte_expand", "origin", EXPANSIONS)
    numbers = {}
    for key, default in (("nte_beta", 0.01), ("nte_eta", 1.0), ("nte_max_delta", 0.1),
                         ("nte_noise_scale", 1e-3)):
        value = config.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"config key '{key}' must be a number > 0, got {value!r}")
        numbers[key] = float(value)
    trainable = [p for p in model.parameters() if p.requires_grad]
    managed = trainable if which == "all" else _weight_params(model)
    managed_ids = {id(p) for p in managed}
    others = [p for p in trainable if id(p) not in managed_ids]
    groups: List[dict] = [{"params": managed, "managed": True}]
    if others:
        lr = config.get("lr")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"config key 'lr' must be a number > 0 (it trains the parameters the "
                             f"NTE rule does not manage with nte_params={which!r}), got {lr!r}")
        groups.append({"params": others, "managed": False, "lr": float(lr)})
    score_momentum = None
    if config.get("plasticity") == "nte_prune" and config.get("nte_prune_rule") == "score":
        score_momentum = float(config.get("nte_prune_momentum", 0.99))
    return NTE(groups, model, beta=numbers["nte_beta"], eta=numbers["nte_eta"],
               max_delta=numbers["nte_max_delta"], fast=fast, expand=expand,
               noise_scale=numbers["nte_noise_scale"], score_momentum=score_momentum,
               seed=int(config.get("seed", 0)))
