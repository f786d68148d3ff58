"""Pruning the Neural Tangent Ensemble: removing experts (connections) from the ensemble.

In the NTE view (Benjamin, Pehle & Daruwalla, "Continual learning with the neural tangent
ensemble", NeurIPS 2024) every weight is an expert whose magnitude |w - theta0| = exp(l) is its
posterior weight, so pruning is removing hypotheses from a Bayesian ensemble. Two rules, each a
single operation that a plasticity schedule calls at its pruning events; both act per layer on
the :class:`~sparse_nte.layers.SparseWeightsBase` layers whose weight the
:class:`~sparse_nte.nte.NTE` optimizer manages, and update their masks:

* ``"magnitude"``: remove the ``round(rate * n_live)`` live experts of the layer with the
  smallest posterior weight (log-magnitude l; dead experts, l = -inf, go first).
* ``"score"`` (the reference's ``pytorch_demo/demo_pruning.ipynb``, ``NTKPruner`` with
  ``cutoff_method="gaussian"``): the score of an expert is an exponential moving average of
  ``grad * sign`` (momentum 0.99, kept by the optimizer when built with ``score_momentum``)::

      v_i <- m v_i + (1 - m) g_i s_i            g = gradient of the batch-mean loss (plus
                                                the penalty R of NTE.step, if any)

  A positive score means the data keep pushing the expert's magnitude down. The experts with
  ``v_i >= mean(v) + z * std(v)`` over the live experts of the layer are removed; z = 2.33 is
  the standard-normal quantile of 0.99, i.e. about ``rate = 0.01`` of the experts per event if
  the scores were Gaussian. (The notebook also subtracts a per-column log-sum-exp from the
  score, marked TODO there; it is not part of the rule and is left out.)

After pruning, :meth:`NTE.reset_positions` removes the experts (l = -inf, weight exactly 0).
The normaliser Z of the ensemble is unchanged, so at the next step the surviving experts are
renormalised to the same total, as a posterior is after hypotheses are eliminated.
"""
from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from sparse_nte.layers import SparseWeightsBase
from sparse_nte.nte.protocol import ExpertEnsemble, is_expert_ensemble
from sparse_nte.nte.state import LOG_MAGNITUDE, PRUNE_SCORE

__all__ = ["PRUNE_RULES", "prunable_layers", "prune_mask", "nte_prune"]

PRUNE_RULES = ("magnitude", "score")


def _check(optimizer: ExpertEnsemble, rule: str, rate: float, z: float) -> None:
    if not is_expert_ensemble(optimizer):
        raise ValueError(f"NTE pruning needs the NTE optimizer (an expert ensemble: it reads the "
                         f"experts' log-magnitudes), got {type(optimizer).__name__}")
    if rule not in PRUNE_RULES:
        raise ValueError(f"nte_prune_rule must be one of {PRUNE_RULES}, got {rule!r}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
        raise ValueError(f"nte_prune_rate must be a number in [0, 1], got {rate!r}")
    if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z):
        raise ValueError(f"nte_prune_z must be a finite number, got {z!r}")
    if rule == "score" and optimizer.score_momentum is None:
        raise ValueError("nte_prune_rule='score' needs the pruning score: build the optimizer "
                         "with score_momentum=nte_prune_momentum (build_nte_optimizer does so when "
                         "plasticity=nte_prune and nte_prune_rule=score)")


def prunable_layers(model: nn.Module, optimizer: ExpertEnsemble) -> List[Tuple[str, SparseWeightsBase]]:
    """(name, layer) of the sparse-weights layers of ``model`` whose weight ``optimizer`` manages
    (plain ``nn.Linear`` layers have no mask to prune)."""
    managed = {id(p) for p in optimizer.managed_params()}
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, SparseWeightsBase) and id(m.weight_param) in managed]


def prune_mask(layer: SparseWeightsBase, optimizer: ExpertEnsemble, rule: str = "magnitude",
               rate: float = 0.01, z: float = 2.33) -> torch.Tensor:
    """Bool mask of the live weights of ``layer`` that ``rule`` removes now (not applied).

    ``"magnitude"``: the ``round(rate * n_live)`` smallest log-magnitudes. ``"score"``: scores
    ``>= mean + z * std`` over the live weights (nothing if fewer than 2 are live or the scores
    are all equal).
    """
    _check(optimizer, rule, rate, z)
    st = optimizer.state.get(layer.weight_param)
    if not st or LOG_MAGNITUDE not in st:
        raise ValueError("prune_mask: the layer's weight is not managed by this NTE optimizer")
    live = ~layer.zero_mask
    n_live = int(live.sum())
    prune = torch.zeros_like(live)
    if rule == "magnitude":
        k = int(round(rate * n_live))
        if k == 0:
            return prune
        key = layer.to_dense_layout(st[LOG_MAGNITUDE], math.inf).masked_fill(~live, math.inf)
        key = key.flatten()
        idx = torch.topk(key, k, largest=False, sorted=False).indices
        prune.view(-1)[idx] = True
        return prune
    if n_live < 2:
        return prune
    score = layer.to_dense_layout(st[PRUNE_SCORE])
    values = score[live].double()
    std = float(values.std())
    if not std > 0:
        return prune
    cutoff = float(values.mean()) + z * std
    return live & (score.double() >= cutoff)


def nte_prune(model: nn.Module, optimizer: ExpertEnsemble, rule: str = "magnitude", rate: float = 0.01,
              z: float = 2.33) -> Dict[str, int]:
    """One pruning event: for every prunable layer, compute :func:`prune_mask`, add it to the
    layer's mask (``set_zero_mask``: the weights become exactly 0) and remove the experts from
    the optimizer (``reset_positions``). Returns the number of weights pruned per layer name.

    Config keys: ``nte_prune_rule`` (rule), ``nte_prune_rate`` (rate), ``nte_prune_z`` (z),
    ``nte_prune_momentum`` (the optimizer's ``score_momentum``).
    """
    _check(optimizer, rule, rate, z)
    pruned: Dict[str, int] = {}
    for name, layer in prunable_layers(model, optimizer):
        mask = prune_mask(layer, optimizer, rule, rate, z)
        count = int(mask.sum())
        if count:
            if getattr(layer, "compact", False):   # the experts move with the live set
                layer.attach_optimizer(optimizer)
                layer.set_zero_mask(layer.zero_mask | mask)
            else:
                layer.set_zero_mask(layer.zero_mask | mask)
                optimizer.reset_positions(layer.weight, mask)
        pruned[name] = count
    return pruned
