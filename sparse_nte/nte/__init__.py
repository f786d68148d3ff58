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
    4. w_i  = theta0_i + s_i * exp(l_i)

Defaults follow the reference: beta (inverse temperature) 0.01, eta 1, max_delta 0.1, expansion
around the origin. A weight's sign never flips; it only shrinks or grows relative to the others.

Usage (the closure returns the PER-EXAMPLE losses, ``reduction="none"``)::

    opt = NTE(model.parameters(), model)                  # or build_nte_optimizer(model, cfg)
    for x, y, t in batches:
        loss = opt.step(lambda: F.cross_entropy(model(x, t), y, reduction="none"))
        # with a continual-learning strategy's parameter term R(theta), e.g. EWC's:
        # opt.step(closure, penalty=lambda: ewc.penalty())

A penalty R(theta) (``step(closure, penalty)``) is one more observation. EWC's term
(lambda/2) sum_i F_i (theta_i - theta*_i)^2 is the Laplace approximation of the negative
log-likelihood of the earlier tasks' data, i.e. the loss of one more (aggregate) observation whose
loss gradient is g_R = dR/dtheta; in the ensemble its likelihood is linearised exactly like an
example's, so step 1 gains ONE factor per expert::

    1'. l_i <- l_i + eta * log(1 - beta * s_i * g_R,i)     (guarded and counted like the others)

To first order in beta, steps 1 and 1' move the experts along -(sum_b g_b + g_R): R is weighed
against the batch's SUMMED loss, as a single observation is. Parameters the rule does not manage
take their SGD step on (batch-mean loss + R), the objective of :class:`sparse_nte.seams.Objective`.

``step`` runs the closure with forward hooks on the linear / conv layers, runs one backward pass
of the summed losses that stops at the layer outputs (no weight gradients are formed), and
computes the sums over examples layer by layer (:mod:`sparse_nte.per_example`, dispatched in
:mod:`~sparse_nte.nte.likelihood`): exactly, or for
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
* Several heads. As in the reference, every managed tensor of a layer that ran in the forward
  pass takes part in steps 1-4, even when all its per-example gradients are zero (an all-zero
  input, dead ReLUs, an output that does not reach the loss): its likelihood term is then 0 but it
  is renormalised and clipped. The one exception is a layer that did not run at all (a head no
  example was routed to; for parameters outside linear / conv layers: not used by the losses),
  unless the penalty depends on it: its tensors are left untouched, and the renormalisation
  acts on the others with target ``Z - sum_{untouched} exp(l)``, so the total is still Z. This
  keeps an earlier task's read-out exactly as it was trained.
* Normaliser. Z is fixed when the optimizer is built (as in the reference) and is not changed by
  pruning or growth (:meth:`reset_positions`): after a pruning event the surviving experts are
  renormalised to the same total, as a posterior is after hypotheses are removed.
* eta is the exponent of the likelihood (the reference's latest version); the experimental
  periodic reset of the Taylor expansion point (``reset_taylor_steps``) is not implemented.
* Penalty. The reference has no parameter penalty; 1' above is this implementation's reading.
* max_delta clips the magnitudes after the renormalisation (reference's log-space version); an
  earlier reference version clipped the signed deltas from above only. The total can therefore
  fall below Z when the clip binds; the next renormalisation restores it before clipping again.

Modules: :mod:`~sparse_nte.nte.optimizer` (the :class:`NTE` class: param groups, the step,
checkpoints), :mod:`~sparse_nte.nte.likelihood` (step 1), :mod:`~sparse_nte.nte.posterior`
(steps 2-4), :mod:`~sparse_nte.nte.experts` (creating and re-deriving experts),
:mod:`~sparse_nte.nte.model_index` (which layer owns each parameter), :mod:`~sparse_nte.nte.state`
(the names of the per-parameter state), :mod:`~sparse_nte.nte.protocol` (what plasticity needs
from an expert-ensemble optimizer), :mod:`~sparse_nte.nte.options` and :mod:`~sparse_nte.nte.build`
(:class:`NTESpec`, :func:`build_nte_optimizer`, :data:`DEFAULTS`).
"""
from sparse_nte.nte.build import DEFAULTS, NTESpec, build_nte_optimizer
from sparse_nte.nte.optimizer import NTE
from sparse_nte.nte.options import EXPANSIONS, FAST_MODES, NTE_PARAMS
from sparse_nte.nte.protocol import ExpertEnsemble, is_expert_ensemble
from sparse_nte.nte.state import LOG_MAGNITUDE, PRUNE_SCORE, SIGN, THETA0

__all__ = ["NTE", "build_nte_optimizer", "NTESpec", "DEFAULTS", "FAST_MODES", "EXPANSIONS",
           "NTE_PARAMS", "ExpertEnsemble", "is_expert_ensemble", "LOG_MAGNITUDE", "SIGN", "THETA0",
           "PRUNE_SCORE"]
