"""``nupic.torch.duty_cycle_metrics``: :func:`binary_entropy`, :func:`max_entropy`."""
from sparse_nte.duty_cycle_metrics import binary_entropy, max_entropy

__all__ = ["binary_entropy", "max_entropy"]
