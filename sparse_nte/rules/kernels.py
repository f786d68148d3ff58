"""Gaussian kernels and the HSIC estimators of the local learning rules.

Every function takes any number of leading batch dimensions (independent streams, seeds) in
front of the sample dimension ``N``; ``a`` is ``(..., N, d)`` with the features flattened.

Gaussian kernel with the width scaled by the square root of the dimension (both references,
Ma et al. 2020 and Daruwalla & Lipasti 2024, scale it so)::

    K_a[i, j] = exp(-||a_i - a_j||^2 / (2 sigma_a^2 d_a))

HSIC (Gretton et al. 2005, the biased estimator of Daruwalla & Lipasti's objective)::

    HSIC(a, b) = tr(K_a H K_b H) / (N - 1)^2,        H = I - 11^T / N

Normalised HSIC of the HSIC bottleneck (Ma, Lewis & Kleijn, AAAI 2020, eq. 6 with the
estimator of their released code)::

    nHSIC(a, b) = tr(R_a R_b),    R = Kc (Kc + eps N I)^{-1},    Kc = K H

The global signal of the IB-Hebbian rule (Daruwalla & Lipasti, Front. Comput. Neurosci. 18,
2024, arXiv 2111.13187; the released code's ``global_error``) for the newest sample N of a
window of N samples, with kbar_a[j] = K_a[j, j] - (1/N) sum_k K_a[j, k]::

    c_j     = kbar_x[j] - gamma kbar_y[j]                                  (modulation)
    alpha_j = (2 K_z[N, j] / (sigma_z^2 d_z)) (z_N - z_j)                  (alpha_N = 0)
    abar    = (1/N) sum_{j<N} alpha_j
    xi      = [ (1/N) sum_{j<N} c_j alpha_j  +  c_N abar ] / (N - 1)^2

``xi`` is twice the gradient with respect to z_N of the diagonal part of the objective,
``S = sum_j c_j kbar_z[j] / (N - 1)^2`` (the terms (KH)_jj of tr(K_x H K_z H) - gamma
tr(K_y H K_z H)), i.e. of the terms whose dependence on z_N a synapse can follow with the
current sample only. The code released before 2024-10-22 used ``alpha_N`` (= 0) in the first
term, so its signal is ``c_N abar / (N - 1)^2`` (``prefix_bug=True``); the published figures were
produced with it.
"""
from __future__ import annotations

import torch

__all__ = ["sq_distances", "gaussian_kernel", "gaussian_kernel_row", "centering_diag", "hsic",
           "normalized_hsic_factor", "normalized_hsic", "ib_modulation", "ib_signal",
           "one_hot"]


def _check_samples(a: torch.Tensor, name: str) -> None:
    if a.dim() < 2:
        raise ValueError(f"{name} must have shape (..., N, d) (samples, then features), got "
                         f"{tuple(a.shape)}")
    if a.shape[-2] < 2:
        raise ValueError(f"{name} holds {a.shape[-2]} sample(s); kernels need N >= 2")


def _check_sigma(sigma: float, name: str) -> None:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f"{name} must be a number > 0, got {sigma!r}")


def sq_distances(a: torch.Tensor) -> torch.Tensor:
    """``D[..., i, j] = ||a_i - a_j||^2`` for ``a`` (..., N, d), from the Gram matrix (one GEMM);
    clamped at 0 and with an exact 0 diagonal (the Gram form rounds there)."""
    sq = (a * a).sum(-1)
    d = torch.baddbmm(sq.unsqueeze(-1) + sq.unsqueeze(-2), a, a.transpose(-1, -2), alpha=-2.0) \
        if a.dim() == 3 else sq.unsqueeze(-1) + sq.unsqueeze(-2) - 2.0 * (a @ a.transpose(-1, -2))
    d = d.clamp_min(0.0)
    if not d.requires_grad:
        d.diagonal(dim1=-2, dim2=-1).zero_()
        return d
    return d * (1.0 - torch.eye(a.shape[-2], dtype=a.dtype, device=a.device))


def gaussian_kernel(a: torch.Tensor, sigma: float) -> torch.Tensor:
    """``K[..., i, j] = exp(-||a_i - a_j||^2 / (2 sigma^2 d))`` for ``a`` (..., N, d)."""
    _check_samples(a, "gaussian_kernel: a")
    _check_sigma(sigma, "gaussian_kernel: sigma")
    return torch.exp(sq_distances(a) / (-2.0 * sigma * sigma * a.shape[-1]))


def gaussian_kernel_row(a: torch.Tensor, sigma: float) -> torch.Tensor:
    """The last row of :func:`gaussian_kernel`: ``K[..., N, j]`` (..., N), from differences
    (O(N d), exact at j = N)."""
    _check_samples(a, "gaussian_kernel_row: a")
    _check_sigma(sigma, "gaussian_kernel_row: sigma")
    diff = a - a[..., -1:, :]
    return torch.exp((diff * diff).sum(-1) / (-2.0 * sigma * sigma * a.shape[-1]))


def centering_diag(k: torch.Tensor) -> torch.Tensor:
    """``kbar[..., j] = K[j, j] - (1/N) sum_k K[j, k]``: the diagonal of ``K H``."""
    return k.diagonal(dim1=-2, dim2=-1) - k.mean(-1)


def _centered(k: torch.Tensor) -> torch.Tensor:
    """``K H`` (every row minus its mean)."""
    return k - k.mean(-1, keepdim=True)


def hsic(ka: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
    """``tr(K_a H K_b H) / (N - 1)^2`` (...,) for kernel matrices (..., N, N)."""
    n = ka.shape[-1]
    if n < 2:
        raise ValueError(f"hsic needs N >= 2 samples, got {n}")
    # tr(A H B H) = sum_ij (HAH)_ij B_ji, and HAH is A with row and column means removed.
    kac = _centered(_centered(ka).transpose(-1, -2)).transpose(-1, -2)
    return (kac * kb.transpose(-1, -2)).sum((-1, -2)) / float((n - 1) ** 2)


def normalized_hsic_factor(k: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``R = K H (K H + eps N I)^{-1}`` (..., N, N) of Ma et al.'s normalised HSIC."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"normalized_hsic_factor: eps must be a number > 0, got {eps!r}")
    n = k.shape[-1]
    kc = _centered(k)
    a = kc + (eps * n) * torch.eye(n, dtype=k.dtype, device=k.device)
    return torch.linalg.solve(a, kc, left=False)        # X with X a = kc


def normalized_hsic(ra: torch.Tensor, rb: torch.Tensor) -> torch.Tensor:
    """``tr(R_a R_b)`` (...,) from two :func:`normalized_hsic_factor` results."""
    return (ra * rb.transpose(-1, -2)).sum((-1, -2))


def ib_modulation(kx: torch.Tensor, ky: torch.Tensor, gamma: float) -> torch.Tensor:
    """``c_j = kbar_x[j] - gamma kbar_y[j]`` (..., N): the input/label part of the IB signal."""
    return centering_diag(kx) - gamma * centering_diag(ky)


def ib_signal(c: torch.Tensor, kz_row: torch.Tensor, z: torch.Tensor, sigma_z: float,
              prefix_bug: bool = False) -> torch.Tensor:
    """The global signal ``xi`` (..., d) of the newest sample of the window (module docstring).

    Args:
        c: (..., N) modulation from :func:`ib_modulation`.
        kz_row: (..., N) ``K_z[N, j]`` (:func:`gaussian_kernel_row` of ``z`` with ``sigma_z``).
        z: (..., N, d) the layer's outputs on the window, newest last (features flattened).
        sigma_z: the kernel width of ``z`` (before the sqrt(d) scaling).
        prefix_bug: drop the first term, as the code released before 2024-10-22 did.
    """
    _check_samples(z, "ib_signal: z")
    _check_sigma(sigma_z, "ib_signal: sigma_z")
    n, d = z.shape[-2], z.shape[-1]
    if c.shape[-1] != n or kz_row.shape[-1] != n:
        raise ValueError(f"ib_signal: c {tuple(c.shape)} and kz_row {tuple(kz_row.shape)} must "
                         f"have the window's N = {n} entries in their last dimension")
    alpha = (2.0 / (sigma_z * sigma_z * d)) * kz_row.unsqueeze(-1) * (z[..., -1:, :] - z)
    alpha_bar = alpha[..., :-1, :].sum(-2) / n
    xi = c[..., -1:] * alpha_bar
    if not prefix_bug:
        xi = xi + (c[..., :-1].unsqueeze(-1) * alpha[..., :-1, :]).sum(-2) / n
    return xi / float((n - 1) ** 2)


def one_hot(y: torch.Tensor, num_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """Labels (...,) -> one-hot (..., num_classes) in ``dtype`` (the label kernel's input)."""
    if num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be >= 1, got {num_classes}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be in [0, {num_classes}), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return torch.nn.functional.one_hot(y.long(), num_classes).to(dtype)
