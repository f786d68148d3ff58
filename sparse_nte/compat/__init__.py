"""nupic.torch's module layout over sparse_nte's layers, for code written for nupic.torch.

Replace the ``nupic.torch`` prefix of an import by ``sparse_nte.compat``::

    from nupic.torch.modules import KWinners             # nupic.torch
    from sparse_nte.compat.modules import KWinners       # sparse_nte

    import nupic.torch.functions as F                    # also .duty_cycle_metrics,
    import sparse_nte.compat.functions as F              # .modules.k_winners, ...

Every module here exports exactly the public names of its nupic.torch counterpart (the classes
and functions are sparse_nte's own, in :mod:`sparse_nte.layers` and
:mod:`sparse_nte.duty_cycle_metrics`; their docstrings list where they differ from nupic.torch:
only fixes of its defects). ``tools/run_nupic_tests.py`` runs nupic.torch's unit tests against
this namespace.
"""
from sparse_nte.compat import duty_cycle_metrics, functions, modules

__all__ = ["modules", "functions", "duty_cycle_metrics"]
