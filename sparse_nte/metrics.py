"""Continual-learning metrics from a task x task accuracy matrix.

``R[i, j]`` is the test accuracy on task ``j`` after training on tasks ``0..i`` (row ``i`` = after
task ``i``). The full matrix, including tasks not trained yet (``j > i``), is stored; the metrics
below use only the rows of tasks that were trained (``n`` rows, ``n <= T``) and, where the
definition says so, only the tasks trained by then.

With ``n`` trained tasks and ``b_j`` the accuracy of the randomly initialised network on task j:

- average accuracy (Lopez-Paz & Ranzato 2017, "GEM"):  ``ACC = 1/n sum_{j<n} R[n-1, j]``
- backward transfer (GEM):                              ``BWT = 1/(n-1) sum_{j<n-1} R[n-1, j] - R[j, j]``
- forgetting (Chaudhry et al. 2018, "RWalk"):           ``F = 1/(n-1) sum_{j<n-1} max_{j<=l<n-1} R[l, j] - R[n-1, j]``
- forward transfer (GEM):                               ``FWT = 1/(n-1) sum_{1<=j<n} R[j-1, j] - b_j``
- plasticity: the accuracy on each task right after learning it, ``R[j, j]``; their mean is the
  learning accuracy (just-learned accuracy; Riemer et al. 2019, "Learning to learn without
  forgetting by maximizing transfer and minimizing interference"): ``LA = 1/n sum_{j<n} R[j, j]``.

With a single trained task, BWT, forgetting and FWT are undefined and reported as NaN.

Entries no metric reads may be NaN (the runner evaluates only the needed ones by default,
:mod:`sparse_nte.evaluation`): the trained rows' tasks seen so far (``R[i, j]``, ``j <= i``),
``R[j-1, j]`` and ``b_j`` for FWT. The forgetting maximum runs over the rows since task j was
learned (``l >= j``): an accuracy measured before training on the task is not one it can
forget (it used to include ``l < j``; the two differ only when an untrained task scored above
everything after it was learned).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["continual_metrics"]


def continual_metrics(acc_matrix: np.ndarray, trained: Optional[int] = None,
                      random_init_acc: Optional[np.ndarray] = None) -> dict:
    """Metrics of the first ``trained`` rows of ``acc_matrix`` (all rows by default).

    Returns a dict of builtins and numpy arrays: ``avg_acc``, ``bwt``, ``forgetting``, ``fwt``
    (floats, NaN where undefined), ``learning_acc`` (mean of ``R[j, j]``), ``plasticity`` (array of
    ``R[j, j]``) and ``avg_acc_curve``
    (average accuracy over the tasks seen so far, after each trained task).
    """
    r = np.asarray(acc_matrix, dtype=np.float64)
    if r.ndim != 2 or r.shape[0] != r.shape[1]:
        raise ValueError(f"acc_matrix must be square (tasks x tasks), got shape {r.shape}")
    t = r.shape[0]
    n = t if trained is None else int(trained)
    if not 1 <= n <= t:
        raise ValueError(f"trained must be in [1, {t}], got {trained}")
    seen = np.tril(np.ones((n, n), dtype=bool))
    if np.isnan(r[:n, :n][seen]).any():
        i, j = np.argwhere(np.isnan(r[:n, :n]) & seen)[0]
        raise ValueError(f"acc_matrix has NaN entries among the trained rows' seen tasks "
                         f"(R[{i}, {j}] is NaN; every metric needs R[i, j] for j <= i)")
    final = r[n - 1, :n]
    diag = np.diag(r)[:n].copy()
    nan = float("nan")
    if n > 1:
        bwt = float(np.mean(final[:-1] - diag[:-1]))
        best = [r[j:n - 1, j].max() for j in range(n - 1)]
        forgetting = float(np.mean(np.array(best) - final[:-1]))
        if random_init_acc is not None:
            b = np.asarray(random_init_acc, dtype=np.float64)
            if b.shape != (t,):
                raise ValueError(f"random_init_acc must have shape ({t},), got {b.shape}")
            terms = np.array([r[j - 1, j] - b[j] for j in range(1, n)])
            if np.isnan(terms).any():
                j = int(np.argwhere(np.isnan(terms))[0, 0]) + 1
                raise ValueError(f"forward transfer needs R[{j - 1}, {j}] and random_init_acc"
                                 f"[{j}], and one of them is NaN")
            fwt = float(np.mean(terms))
        else:
            fwt = nan
    else:
        bwt = forgetting = fwt = nan
    curve = np.array([r[i, : i + 1].mean() for i in range(n)])
    return {
        "avg_acc": float(final.mean()),
        "bwt": bwt,
        "forgetting": forgetting,
        "fwt": fwt,
        "learning_acc": float(diag.mean()),
        "plasticity": diag,
        "avg_acc_curve": curve,
    }
