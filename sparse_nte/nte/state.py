"""Names of the NTE optimizer's per-parameter state, ``optimizer.state[p][KEY]``.

Every parameter p managed by :class:`~sparse_nte.nte.NTE` is an ensemble of experts
``w_i = theta0_i + s_i * exp(l_i)`` (Benjamin, Pehle & Daruwalla, NeurIPS 2024). Its state:

* :data:`LOG_MAGNITUDE` — l, p's shape and dtype: the log posterior weight (log-magnitude
  ``log|w - theta0|``) of every expert; ``-inf`` for an entry that is not an expert (masked by
  a :class:`~sparse_nte.layers.SparseWeightsBase`, or dead: exactly at theta0).
* :data:`SIGN` — s, int8 of p's shape: the fixed sign of every expert (+1 / -1; the
  presynaptic Dale sign for a Dale layer).
* :data:`THETA0` — theta0, p's shape and dtype, only when expanding around the initial weights
  (``expand="init"``): the expansion point. Absent around the origin (theta0 = 0).
* :data:`PRUNE_SCORE` — p's shape and dtype, only with ``score_momentum``: the running NTE
  pruning score ``v <- m v + (1 - m) g s`` (:mod:`sparse_nte.nte_prune`).

Every module that reads this state (the optimizer, :mod:`sparse_nte.nte_prune`,
:mod:`sparse_nte.plasticity`, :mod:`sparse_nte.optim_state`) uses these names.
"""
from __future__ import annotations

__all__ = ["LOG_MAGNITUDE", "SIGN", "THETA0", "PRUNE_SCORE"]

LOG_MAGNITUDE = "log_magnitude"
SIGN = "sign"
THETA0 = "theta0"
PRUNE_SCORE = "prune_score"
