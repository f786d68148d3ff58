"""``nupic.torch.functions.k_winners``: :func:`boost_activations`, :func:`kwinners`,
:func:`kwinners2d`."""
from sparse_nte.layers.functional import boost_activations, kwinners, kwinners2d

__all__ = ["boost_activations", "kwinners", "kwinners2d"]
