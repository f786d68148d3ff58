"""Small networks and an independent Jacobian for the NTK tests.

The reference Jacobian differentiates the REAL model (its sparse-weights layers, k-WTA, head
routing) one example and one output at a time with ``torch.autograd.grad`` and then drops the
columns of masked weights, which by definition are not parameters. It shares no code with
:mod:`sparse_nte.ntk`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models import build_model
from sparse_nte.layers import SparseWeightsBase
from scenario_cases import FakeScenario as _FakeScenario


@dataclass(frozen=True)
class FakeScenario(_FakeScenario):
    """The shared stand-in at this module's sizes."""
    num_tasks: int = 2
    input_shape: tuple = (1, 12, 12)
    head_size: int = 3


def config(**overrides):
    """k-WTA, 50% dense fc/conv weights and Dale's law on, by default."""
    cfg = dict(cnn=False, hidden_units=16, hidden_layers=2, dropout=0.0, sparsify=True,
               percent_on_fc=0.25, percent_on_conv=0.5, k_inference_factor=1.5,
               boost_strength=1.0, boost_strength_factor=0.9, duty_cycle_period=1000,
               weight_sparsity_fc=0.5, weight_sparsity_conv=0.5, seed=0, dale=True,
               exc_fraction=0.8, dale_input=False, dale_kwta="include", sparse_exec="auto",
               sparse_init="torch")
    cfg.update(overrides)
    return cfg


CASES = {
    "mlp": dict(),
    "cnn": dict(cnn=True, hidden_layers=1, hidden_units=8),
    "mlp_dense_relu": dict(sparsify=False, dale=False, weight_sparsity_fc=1.0),
}


def make_model(case: str = "mlp", setting: str = "task", seed: int = 0, **overrides):
    """A float64 model in eval mode built with models.build_model."""
    cfg = config(**{**CASES[case], "seed": seed, **overrides})
    return build_model(cfg, FakeScenario(setting=setting)).double().eval()


def inputs(n: int, seed: int = 0, num_tasks: int = 2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, 12, generator=g, dtype=torch.float64)
    t = torch.randint(0, num_tasks, (n,), generator=g)
    return x, t


def live_columns(model) -> torch.Tensor:
    """Bool mask over the concatenated trainable parameters: True for live entries."""
    masks = {id(m.module.weight): m.zero_mask for m in model.modules()
             if isinstance(m, SparseWeightsBase)}
    cols = []
    for p in model.parameters():
        if p.requires_grad:
            z = masks.get(id(p))
            cols.append(torch.ones(p.numel(), dtype=torch.bool) if z is None
                        else ~z.reshape(-1))
    return torch.cat(cols)


def reference_jacobian(model, x, t=None, live_only: bool = True) -> torch.Tensor:
    """(N, C, P) by autograd on the real model, one example and output at a time."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for b in range(x.shape[0]):
        out = model(x[b:b + 1], None if t is None else t[b:b + 1])[0]
        per_out = []
        for c in range(out.shape[0]):
            grads = torch.autograd.grad(out[c], params, retain_graph=True, allow_unused=True)
            per_out.append(torch.cat([torch.zeros(p.numel(), dtype=p.dtype) if g is None
                                      else g.reshape(-1) for p, g in zip(params, grads)]))
        rows.append(torch.stack(per_out))
    jac = torch.stack(rows)
    if live_only:
        jac = jac[:, :, live_columns(model)]
    return jac


def reference_kernel(model, x1, t1, x2=None, t2=None) -> torch.Tensor:
    """(N1, N2, C, C) from the reference Jacobians."""
    j1 = reference_jacobian(model, x1, t1)
    j2 = j1 if x2 is None else reference_jacobian(model, x2, t2)
    return torch.einsum("akp,blp->abkl", j1, j2)


def assert_close(actual, expected, rtol=1e-8):
    """|actual - expected| <= rtol * max|expected| (elementwise, relative to the scale)."""
    actual, expected = actual.detach(), expected.detach()
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    assert err <= rtol * max(scale, 1e-300), f"max error {err:.3g} vs scale {scale:.3g}"
