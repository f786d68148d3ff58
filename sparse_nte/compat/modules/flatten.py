"""``nupic.torch.modules.flatten``: :class:`Flatten`."""
from sparse_nte.layers.flatten import Flatten

__all__ = ["Flatten"]
