"""EL2N and GraNd static pruning (Paul, Ganguli & Dziugaite, "Deep Learning on a Data Diet:
Finding Important Examples Early in Training", NeurIPS 2021)::

    EL2N(x, y)  = E || softmax(f(x)) - onehot(y) ||_2
    GraNd(x, y) = E || M . grad_theta CE(f(x), y) ||_2          (sparse_nte.selection.grand)

the expectation taken over the repeats of the scoring run (:mod:`sparse_nte.selection.scoring`),
each scored after ``data_prune_score_epochs`` epochs of SGD on the task, the network in eval
mode, the softmax over the whole head the training loss uses. Both keep the k HIGHEST scores:
the paper shows that the examples with small early-training error or gradient norm are the
easy ones, which can be dropped with the least loss of test accuracy, while high scores mark
the hard and informative ones (at very high pruning rates the paper finds that keeping the
very hardest also keeps mislabelled examples; that regime is not special-cased here).

Inclusion probabilities: 1 for the top k, 0 for the rest (ties at the threshold share the
remaining places at random), so these selectors admit no unbiased loss rescaling.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from sparse_nte.seams import TaskContext
from sparse_nte.selection.grand import per_example_grad_norms
from sparse_nte.selection.scoring import SCORE_BATCH, StaticSelection, task_grouped_batches

__all__ = ["EL2NSelection", "GraNdSelection", "el2n_scores"]


@torch.no_grad()
def el2n_scores(model: nn.Module, ctx: TaskContext, batch_size: int = SCORE_BATCH) -> torch.Tensor:
    """Float64 (N,) EL2N of every training example of the task under ``model`` (eval mode)."""
    n = ctx.scenario.tasks[ctx.task].num_train
    out = torch.zeros(n, dtype=torch.float64)
    model.eval()
    for x, y, t, rows in task_grouped_batches(ctx, batch_size):
        p = torch.softmax(model(x, t).double(), dim=1)
        p[torch.arange(len(y), device=p.device), y] -= 1.0
        out[rows.cpu()] = p.norm(dim=1).cpu()
    return out


def grand_scores(model: nn.Module, ctx: TaskContext, batch_size: int = 256) -> torch.Tensor:
    """Float64 (N,) GraNd of every training example of the task under ``model`` (eval mode)."""
    n = ctx.scenario.tasks[ctx.task].num_train
    out = torch.zeros(n, dtype=torch.float64)
    model.eval()
    for x, y, t, rows in task_grouped_batches(ctx, batch_size):
        out[rows.cpu()] = per_example_grad_norms(model, x, y, t)
    return out


class EL2NSelection(StaticSelection):
    """Keep the k examples of largest EL2N."""

    name = "el2n"

    def _score_copy(self, model: nn.Module, ctx: TaskContext, repeat: int) -> torch.Tensor:
        return el2n_scores(model, ctx)


class GraNdSelection(StaticSelection):
    """Keep the k examples of largest GraNd."""

    name = "grand"

    def _score_copy(self, model: nn.Module, ctx: TaskContext, repeat: int) -> torch.Tensor:
        return grand_scores(model, ctx)
