"""``nupic.torch.functions``: :func:`kwinners`, :func:`kwinners2d` (``boost_activations`` is in
the ``k_winners`` submodule, as there)."""
from sparse_nte.compat.functions import k_winners as k_winners  # a submodule, as in nupic.torch
from sparse_nte.compat.functions.k_winners import kwinners, kwinners2d

__all__ = ["kwinners", "kwinners2d"]
