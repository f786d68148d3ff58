"""``nupic.torch.modules.k_winners``: :class:`KWinnersBase`, :class:`KWinners`,
:class:`KWinners2d`, :func:`update_boost_strength`."""
from sparse_nte.layers.k_winners import KWinners, KWinners2d, KWinnersBase, update_boost_strength

__all__ = ["KWinnersBase", "KWinners", "KWinners2d", "update_boost_strength"]
