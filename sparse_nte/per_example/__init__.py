"""Per-example log-likelihood sums for the Neural Tangent Ensemble rule, without a
batch x parameters tensor for the whole model.

The NTE update (Benjamin, Pehle & Daruwalla, "Continual learning with the neural tangent
ensemble", NeurIPS 2024) needs, for every parameter i and every example b of a batch, the
per-example gradient g_{b,i} of that example's own loss, and then only the sum::

    S_i = sum_b log(1 - beta * s_i * g_{b,i})                                       (1)

This package computes S layer by layer:

* ``nn.Linear`` (input ``(n, in)``): g_{b,jk} = D_bj A_bk, with A the layer input and D the
  gradient of the summed loss at the layer output (captured by :class:`PerExampleCapture`,
  :mod:`~sparse_nte.per_example.capture`; it is each example's own output gradient because
  examples do not interact in the forward pass). Two ways to evaluate (1):

  - exact (:func:`linear_exact`, :mod:`~sparse_nte.per_example.exact`): the likelihoods are
    formed chunk by chunk in float64 and reduced with one logarithm per group of examples;
  - power series (:func:`linear_series`, :mod:`~sparse_nte.per_example.series`):
    log(1 - x) = -sum_n x^n / n turns the sum over the batch into matrix products::

        S_jk = -sum_{n=1}^{N} (beta^n / n) s_jk^n [ (D^n)^T A^n ]_jk                 (2)

    used only for output rows where the truncation error is provably below a tolerance
    (:func:`series_terms`).

* ``nn.Conv2d`` and linear layers applied to ``(n, ..., in)`` inputs: per-example gradients
  ``D_b^T A_b`` over the L locations (the input unfolded with ``F.unfold`` for convolutions,
  :mod:`~sparse_nte.per_example.geometry`), formed with ``bmm`` in chunks of examples and
  output rows (:func:`bmm_exact`). The series does not factorise over locations, so these layers
  always take the exact path.

* compact sparse linear layers (:mod:`~sparse_nte.per_example.compact`): the same sums at the
  live entries only, from sampled products (series) or chunks of live entries (exact).

* anything else (:func:`per_example_grads`, :mod:`~sparse_nte.per_example.generic`):
  ``torch.func.vmap`` over the backward pass gives the per-example gradients of the remaining
  parameters, in chunks of examples.

The conditions under which the captured gradients are exact and complete (examples independent,
per-example losses, each parameter used only through its layer's calls) are checked in
:mod:`~sparse_nte.per_example.checks`.

Guard: the linearised likelihood ``1 - beta s g`` can be <= 0 when ``beta |g| >= 1`` (the
reference implementation then produces NaN). It is clamped to ``min_likelihood`` (> 0) and the
number of clamped (example, parameter) terms is returned so it can be reported.
"""
from sparse_nte.per_example.blocks import BLOCK_ELEMENTS, blocks
from sparse_nte.per_example.capture import LayerCall, PerExampleCapture
from sparse_nte.per_example.compact import compact_exact, compact_series, compact_weight_grad
from sparse_nte.per_example.checks import (calls_account_for_uses, check_example_losses,
                                           check_examples_independent, check_layer_calls,
                                           check_penalty, graph_parents)
from sparse_nte.per_example.exact import (add_log_likelihood, bmm_exact, dense_log_likelihood,
                                          linear_exact)
from sparse_nte.per_example.generic import per_example_grads
from sparse_nte.per_example.geometry import conv2d_padding, conv2d_supported, unfold_conv2d_input
from sparse_nte.per_example.series import linear_series, row_bound, series_terms

__all__ = [
    "BLOCK_ELEMENTS",
    "blocks",
    "LayerCall",
    "PerExampleCapture",
    "check_examples_independent",
    "check_example_losses",
    "check_penalty",
    "check_layer_calls",
    "calls_account_for_uses",
    "graph_parents",
    "conv2d_supported",
    "conv2d_padding",
    "unfold_conv2d_input",
    "row_bound",
    "series_terms",
    "linear_series",
    "linear_exact",
    "bmm_exact",
    "dense_log_likelihood",
    "add_log_likelihood",
    "per_example_grads",
    "compact_series",
    "compact_exact",
    "compact_weight_grad",
]
