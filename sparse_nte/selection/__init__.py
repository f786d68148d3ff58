"""Data selection (dynamic and static data pruning): which training examples of the current task
each epoch uses, as :class:`sparse_nte.seams.Selection` implementations.

=================  ==============================================  ==========================
``data_pruning``   selector                                        module
=================  ==============================================  ==========================
none               no selection object: every epoch uses all rows  (``build`` returns None)
uniform            k uniformly at random at each selection         :mod:`.uniform`
epsilon_greedy     top (1 - eps) k by the loss average + eps k     :mod:`.bandit`
                   uniformly from the rest (Raju et al. 2021)
ucb                top k by loss average + c x loss variance       :mod:`.bandit`
                   (Raju et al. 2021)
el2n               top k by early-training error norm (Paul et     :mod:`.data_diet`
                   al. 2021)
grand              top k by per-example gradient norm (Paul et     :mod:`.data_diet`,
                   al. 2021)                                       :mod:`.grand`
forgetting         top k by forgetting events (Toneva et al. 2019) :mod:`.forgetting`
=================  ==============================================  ==========================

k = floor((1 - data_prune_rate) N) for a task of N training examples; the epochs that prune
and select are in :mod:`.spec`, the draws and inclusion probabilities in :mod:`.sampling`, the
shared per-task machinery (loss rescaling, statistics, checkpoints) in :mod:`.base`, the static
selectors' scoring run in :mod:`.scoring`.

``SELECTORS`` maps each choice to its builder ``build(config, env) -> Selection``;
:func:`build_selection` also accepts ``none``. The config schema takes the choices of
``data_pruning`` from :data:`CHOICES`.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from sparse_nte.seams import BuildEnv, Selection
from sparse_nte.selection.bandit import EpsilonGreedySelection, UCBSelection
from sparse_nte.selection.base import PrunedSelection
from sparse_nte.selection.data_diet import EL2NSelection, GraNdSelection
from sparse_nte.selection.forgetting import ForgettingSelection
from sparse_nte.selection.spec import SELECTION_KEYS, SelectionSpec, planned_rows, schedule_warning
from sparse_nte.selection.uniform import UniformSelection

__all__ = ["SELECTORS", "CHOICES", "build_selection", "SelectionSpec", "SELECTION_KEYS",
           "PrunedSelection", "UniformSelection", "EpsilonGreedySelection", "UCBSelection",
           "EL2NSelection", "GraNdSelection", "ForgettingSelection", "planned_rows",
           "schedule_warning"]


def _builder(cls: type) -> Callable[[Any, BuildEnv], Selection]:
    def build(config: Any, env: BuildEnv) -> Selection:
        spec = SelectionSpec.from_config(config)
        if spec.data_pruning != cls.name:
            raise ValueError(f"data selection: the {cls.name} builder got data_pruning = "
                             f"{spec.data_pruning!r}")
        return cls(spec)

    build.__name__ = f"build_{cls.name}"
    build.__doc__ = f"Build the {cls.name} selector from the config's data_prune* keys."
    return build


SELECTORS: Dict[str, Callable[[Any, BuildEnv], Selection]] = {
    cls.name: _builder(cls)
    for cls in (UniformSelection, EpsilonGreedySelection, UCBSelection, EL2NSelection,
                GraNdSelection, ForgettingSelection)
}

#: The values of the ``data_pruning`` key.
CHOICES = ("none",) + tuple(SELECTORS)


def build_selection(config: Any, env: BuildEnv) -> Optional[Selection]:
    """The selector the config asks for, or None for ``data_pruning = none`` (the config is
    still checked)."""
    spec = SelectionSpec.from_config(config)
    if spec.data_pruning == "none":
        return None
    return SELECTORS[spec.data_pruning](config, env)
