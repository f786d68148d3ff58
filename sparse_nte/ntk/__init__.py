"""Empirical NTK, linearised networks, NTK-GP adaptation and per-task kernel diagnostics."""
from sparse_nte.ntk.kernels import empirical_ntk, jacobian
from sparse_nte.ntk.params import NetworkFunction, ParameterPoint, snapshot

__all__ = ["empirical_ntk", "jacobian", "NetworkFunction", "ParameterPoint", "snapshot"]
