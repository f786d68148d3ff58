"""Empirical neural tangent kernels of sparse_nte networks, linearised networks, NTK-GP
adaptation and per-task kernel diagnostics.

    from sparse_nte.ntk import empirical_ntk, linearize, NTKGaussianProcess
    K = empirical_ntk(model.eval(), x, t1=t, mode="trace")        # (N, N)
    lin = linearize(model)                         # f(x; theta_0) + J (theta - theta_0)
    gp = NTKGaussianProcess(model.eval(), x, y, t_train=t, noise=0.1)
    mean, var = gp.predict(x_test, t_test)

Modules: :mod:`~sparse_nte.ntk.params` (the network as a function of its live parameters),
:mod:`~sparse_nte.ntk.features` and :mod:`~sparse_nte.ntk.contract` (Jacobian rows and their
contractions), :mod:`~sparse_nte.ntk.kernels`, :mod:`~sparse_nte.ntk.products`,
:mod:`~sparse_nte.ntk.linearize`, :mod:`~sparse_nte.ntk.cg`, :mod:`~sparse_nte.ntk.gp`,
:mod:`~sparse_nte.ntk.adaptation`, :mod:`~sparse_nte.ntk.diagnostics` and
:mod:`~sparse_nte.ntk.probe` (the learner's per-task probe).
"""
from sparse_nte.ntk.adaptation import TaskData, fast_adaptation, task_data
from sparse_nte.ntk.cg import CGResult, conjugate_gradients
from sparse_nte.ntk.diagnostics import (GradientAlignment, centered_kernel_alignment,
                                        effective_rank, gradient_alignment, kernel_drift)
from sparse_nte.ntk.gp import NTKGaussianProcess
from sparse_nte.ntk.kernels import empirical_ntk, jacobian
from sparse_nte.ntk.linearize import LinearizedNetwork, linearize
from sparse_nte.ntk.params import NetworkFunction, ParameterPoint, snapshot
from sparse_nte.ntk.probe import (NTK_PROBE_KEYS, NTKProbe, NTKProbeSpec, build_ntk_probe,
                                  ntk_probe_enabled)
from sparse_nte.ntk.products import (fisher_vector_product, jacobian_vector_product,
                                     ntk_vector_product, vector_jacobian_product)

__all__ = [
    "empirical_ntk", "jacobian",
    "ntk_vector_product", "jacobian_vector_product", "vector_jacobian_product",
    "fisher_vector_product",
    "linearize", "LinearizedNetwork",
    "NTKGaussianProcess", "fast_adaptation", "TaskData", "task_data",
    "conjugate_gradients", "CGResult",
    "gradient_alignment", "GradientAlignment", "kernel_drift", "centered_kernel_alignment",
    "effective_rank",
    "NTKProbe", "NTKProbeSpec", "NTK_PROBE_KEYS", "build_ntk_probe", "ntk_probe_enabled",
    "NetworkFunction", "ParameterPoint", "snapshot",
]
