"""sparse_nte: biological constraints and catastrophic forgetting in continual learning.

Layers (nupic.torch-compatible k-winners and sparse weights; nupic.torch's module layout in
sparse_nte.compat), Dale's law, the Neural Tangent Ensemble learning rule, connection
growth/pruning schedules and the experiment runner.

Run an experiment from Python with :func:`run_experiment` (the command line is ``sparse-nte`` /
``python run_exps.py``). The library reports progress through the ``sparse_nte`` logger (a
trial's per-task lines at INFO); it installs no handler but a ``NullHandler``, so configure
``logging`` to see them (the command line does).
"""
import logging as _logging
from sparse_nte.layers import (
    Flatten,
    HasRezeroWeights,
    KWinners,
    KWinners2d,
    KWinnersBase,
    PrunableSparseWeights,
    PrunableSparseWeights2d,
    SparseWeights,
    SparseWeights2d,
    SparseWeightsBase,
    boost_activations,
    enforce_constraints,
    kwinners,
    kwinners2d,
    normalize_sparse_weights,
    rezero_weights,
    update_boost_strength,
)
from sparse_nte.nte import NTE, build_nte_optimizer  # noqa: E402  (needs the layers above)

from sparse_nte.api import run_experiment  # noqa: E402

__version__ = "0.1.0"

_logging.getLogger(__name__).addHandler(_logging.NullHandler())

__all__ = [
    "Flatten", "HasRezeroWeights", "KWinners", "KWinners2d", "KWinnersBase",
    "PrunableSparseWeights", "PrunableSparseWeights2d", "SparseWeights",
    "SparseWeights2d", "SparseWeightsBase", "boost_activations", "enforce_constraints",
    "kwinners", "kwinners2d", "normalize_sparse_weights", "rezero_weights",
    "update_boost_strength", "NTE", "build_nte_optimizer", "run_experiment", "__version__",
]
