"""A rate reservoir with a linear readout trained online by LMS: the working memory that
learns the IB-Hebbian global signal one sample at a time (Daruwalla & Lipasti, Front. Comput.
Neurosci. 18, 2024, arXiv 2111.13187; the released code's ``ReservoirCell`` and
``create_rmhebb_step``, after the FORCE networks of Sussillo & Abbott, Neuron 63, 2009).

Each sample is presented for ``K = steps`` time steps with a constant input ``v`` (for the
IB-Hebbian rule ``v = [x_N, y_N, z_N]``: input, one-hot label and the layer's output), ``o`` the
readout and ``xi`` the target signal::

    r_k = tanh(u_k)
    o_k = W_o r_k
    u_{k+1} = u_k + (dt / tau) (-u_k + g W_r r_k + W_i v + W_f o_k)

The reservoir DELIVERS ``o_K`` (last time step), computed with the readout learned on the
previous samples only; then, when learning, LMS on the sample's time steps::

    W_o <- W_o - (eta / K) sum_k (o_k - xi) r_k^T

i.e. one step of size ``eta`` on ``(1/2K) sum_k ||o_k - xi||^2``. The tracking error
``||o_K - xi||^2`` is a prediction error. (The released code corrects ``W_o`` after every
time step while the sample is shown and feeds the corrected output back, so the readout it
compares with the target has already been pulled towards that target: a teacher-forced error,
near 0 even for a readout that predicts nothing once frozen.)

Initialisation: ``W_r[i, j] = b_ij n_ij / sqrt(p n)`` with ``n_ij ~ N(0, 1)`` and
``b_ij ~ Bernoulli(p)`` (``p = density``, spectral radius about ``g``), ``W_i, W_f ~ U(-1, 1)``,
``W_o = 0``, ``u = 0`` (``w_rec`` stores ``g W_r``). The released code draws the std for
``p = 0.1`` but keeps 90% of the entries (spectral radius about 3 g); ``density = 0.9,
gain = 3.6`` draws exactly that distribution. The released defaults have no noise, and neither
has this reservoir.

The state ``u`` carries from sample to sample: that is the memory of the last samples.

Execution: a sparse reservoir (``density <= 0.5``) multiplies by ``W_r`` in compressed sparse
row form (32-bit indices), which reads about ``3 p`` of the bytes of the dense matrix; the
recurrent product is memory-bound (``K`` matrix-vector products per sample), so at ``p = 0.1``
and 2,000 units it is about 4x faster than the dense product on one core. The choice depends on
``density`` only, never on the machine, so a configuration always runs the same arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass
import warnings
from typing import Any, Dict, Mapping, Optional

import torch

from sparse_nte.rules.local import check_int, check_number, read_keys

__all__ = ["ReservoirSpec", "Reservoir"]

#: at or below this density the recurrent product runs in compressed sparse row form
SPARSE_DENSITY = 0.5


def _recurrent_operator(w_rec: torch.Tensor, density: float) -> torch.Tensor:
    """``w_rec`` as the tensor the time steps multiply by: CSR with int32 indices when sparse."""
    if density > SPARSE_DENSITY:
        return w_rec
    with warnings.catch_warnings():             # torch marks CSR tensors as beta
        warnings.simplefilter("ignore", UserWarning)
        csr = w_rec.to_sparse_csr()
        return torch.sparse_csr_tensor(csr.crow_indices().to(torch.int32),
                                       csr.col_indices().to(torch.int32), csr.values(),
                                       size=w_rec.shape)


@dataclass(frozen=True)
class ReservoirSpec:
    """Reservoir settings (config keys ``reservoir_<field>``).

    Attributes:
        size: number of reservoir units (the released code: 2000).
        gain: g, the strength of the recurrent connections (1.2).
        density: fraction p of non-zero recurrent weights, in (0, 1] (0.1; see module docstring).
        tau: time constant in seconds (5e-3).
        dt: integration time step in seconds (1e-3); dt <= tau.
        steps: time steps per sample (20).
        lr: LMS learning rate of the readout (5e-4); 0 keeps the readout fixed.
    """

    size: int = 2000
    gain: float = 1.2
    density: float = 0.1
    tau: float = 5e-3
    dt: float = 1e-3
    steps: int = 20
    lr: float = 5e-4

    def __post_init__(self) -> None:
        check_int("reservoir_size", self.size, 1)
        check_number("reservoir_gain", self.gain, 0.0)
        check_number("reservoir_density", self.density, 0.0, 1.0, low_open=True, high_open=False)
        check_number("reservoir_tau", self.tau, 0.0, low_open=True)
        check_number("reservoir_dt", self.dt, 0.0, low_open=True)
        check_int("reservoir_steps", self.steps, 1)
        check_number("reservoir_lr", self.lr, 0.0)
        if self.dt > self.tau:
            raise ValueError(f"config key 'reservoir_dt' = {self.dt} exceeds 'reservoir_tau' = "
                             f"{self.tau}; the Euler step would overshoot (dt <= tau is valid)")

    @classmethod
    def from_config(cls, config: Any) -> "ReservoirSpec":
        names = ("reservoir_size", "reservoir_gain", "reservoir_density", "reservoir_tau",
                 "reservoir_dt", "reservoir_steps", "reservoir_lr")
        v = read_keys(config, names, "reservoir")
        return cls(**{k[len("reservoir_"):]: val for k, val in v.items()})


class Reservoir:
    """One reservoir with ``n_in`` inputs and ``n_out`` readouts (module docstring).

    Args:
        n_in, n_out: input and readout sizes.
        spec: :class:`ReservoirSpec`.
        generator: draws the fixed weights (seed it for reproducible runs).
        dtype: of weights and state (float32 default).
    """

    def __init__(self, n_in: int, n_out: int, spec: ReservoirSpec,
                 generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32) -> None:
        if n_in < 1 or n_out < 1:
            raise ValueError(f"Reservoir: n_in and n_out must be >= 1, got {n_in}, {n_out}")
        self.spec = spec
        self.n_in, self.n_out = int(n_in), int(n_out)
        n = spec.size
        std = 1.0 / (spec.density * n) ** 0.5
        w = torch.randn(n, n, generator=generator, dtype=torch.float64) * std
        keep = torch.rand(n, n, generator=generator, dtype=torch.float64) < spec.density
        self.w_rec = (spec.gain * w * keep).to(dtype)
        self._rec = _recurrent_operator(self.w_rec, spec.density)
        self.w_in = (torch.rand(n, n_in, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype)
        self.w_fb = (torch.rand(n, n_out, generator=generator, dtype=torch.float64) * 2 - 1).to(dtype)
        self.w_out = torch.zeros(n_out, n, dtype=dtype)
        self.u = torch.zeros(n, dtype=dtype)

    def __getstate__(self) -> Dict[str, Any]:     # copy and pickle without the CSR operator
        state = dict(self.__dict__)
        state.pop("_rec")
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._rec = _recurrent_operator(self.w_rec, self.spec.density)

    def reset_state(self) -> None:
        """Forget the recent samples (``u = 0``); the learned readout stays."""
        self.u.zero_()

    @torch.no_grad()
    def present(self, v: torch.Tensor, target: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Present one sample ``v`` (n_in,) for ``steps`` time steps; return the readout (n_out,)
        of the last one; then, if ``target`` (n_out,) is given and ``lr > 0``, learn the readout
        by LMS towards it (module docstring)."""
        if v.shape != (self.n_in,):
            raise ValueError(f"Reservoir.present: input must have shape ({self.n_in},), got "
                             f"{tuple(v.shape)}")
        if target is not None and target.shape != (self.n_out,):
            raise ValueError(f"Reservoir.present: target must have shape ({self.n_out},), got "
                             f"{tuple(target.shape)}")
        spec = self.spec
        drive = self.w_in @ v.to(self.u.dtype)      # constant over the sample's time steps
        leak = spec.dt / spec.tau
        rates = torch.empty(spec.steps, spec.size, dtype=self.u.dtype)
        outs = torch.empty(spec.steps, self.n_out, dtype=self.u.dtype)
        for k in range(spec.steps):
            r = torch.tanh(self.u, out=rates[k])
            out = torch.mv(self.w_out, r, out=outs[k])
            self.u.add_(self._rec @ r + drive + self.w_fb @ out - self.u, alpha=leak)
        if target is not None and spec.lr > 0:
            errors = outs - target.to(self.u.dtype)                           # (K, n_out)
            self.w_out.sub_(errors.t() @ rates, alpha=spec.lr / spec.steps)
        return outs[-1].clone()

    def state_dict(self) -> Dict[str, Any]:
        return {"w_rec": self.w_rec.clone(), "w_in": self.w_in.clone(), "w_fb": self.w_fb.clone(),
                "w_out": self.w_out.clone(), "u": self.u.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name in ("w_rec", "w_in", "w_fb", "w_out", "u"):
            mine, theirs = getattr(self, name), state[name]
            if tuple(theirs.shape) != tuple(mine.shape):
                raise ValueError(f"Reservoir.load_state_dict: {name} has shape "
                                 f"{tuple(theirs.shape)}, expected {tuple(mine.shape)}")
            mine.copy_(theirs)
        self._rec = _recurrent_operator(self.w_rec, self.spec.density)
