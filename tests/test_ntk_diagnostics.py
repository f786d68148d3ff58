"""Kernel diagnostics against direct computations: the NTE demo's gradient alignment, kernel
drift, centred kernel alignment and effective rank."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ntk_cases import inputs, make_model
from sparse_nte.dale import constrain_optimizer
from sparse_nte.layers import SparseWeightsBase
from sparse_nte.ntk import (centered_kernel_alignment, effective_rank, gradient_alignment,
                            kernel_drift, snapshot)


def _per_example_grads(model, x, y, t):
    """name -> (B, *shape): each example's own cross-entropy gradient, one backward each, masked
    entries zeroed (they are not parameters)."""
    masks = {id(m.module.weight): m.zero_mask for m in model.modules()
             if isinstance(m, SparseWeightsBase)}
    named = [(n, p) for n, p in model.named_parameters()]
    out = {n: [] for n, _ in named}
    for b in range(x.shape[0]):
        loss = F.cross_entropy(model(x[b:b + 1], t[b:b + 1]), y[b:b + 1])
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for (n, p), g in zip(named, grads):
            g = torch.zeros_like(p) if g is None else g.clone()
            if id(p) in masks:
                g[masks[id(p)]] = 0.0
            out[n].append(g)
    return {n: torch.stack(v) for n, v in out.items()}


def _demo_alignment(model0, model, x, y, t):
    """The notebook's measure, written out: one cosine per tensor over the stacked per-example
    gradients, averaged with weights = live entries of the tensor / all live entries."""
    g0 = _per_example_grads(model0, x, y, t)
    g1 = _per_example_grads(model, x, y, t)
    masks = {id(m.module.weight): m.zero_mask for m in model.modules()
             if isinstance(m, SparseWeightsBase)}
    cos, live = {}, {}
    for n, p in model.named_parameters():
        a, b = g1[n], g0[n]
        if float(a.norm()) == 0 or float(b.norm()) == 0:
            continue
        cos[n] = float((a * b).sum() / (a.norm() * b.norm()))
        live[n] = p.numel() - (int(masks[id(p)].sum()) if id(p) in masks else 0)
    total = sum(live.values())
    return sum(cos[n] * live[n] / total for n in cos), cos


@pytest.mark.parametrize("case,batch", [("mlp_dense_relu", 24), ("mlp", 24), ("cnn", 6)])
def test_gradient_alignment_equals_the_demo_definition_computed_directly(case, batch):
    model0 = make_model(case)
    model = copy.deepcopy(model0).train()
    x, t = inputs(batch, seed=1)                    # the demo's batch: 24
    y = torch.randint(0, 3, (batch,), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    constrain_optimizer(opt, model)
    for _ in range(15):
        opt.zero_grad()
        F.cross_entropy(model(x, t), y).backward()
        opt.step()
    model.eval()
    expected, per_tensor = _demo_alignment(model0, model, x, y, t)
    got = gradient_alignment(model, x, y, t=t, reference=snapshot(model0))
    assert got.value == pytest.approx(expected, abs=1e-10)
    assert set(got.per_tensor) == set(per_tensor)
    for n, c in per_tensor.items():
        assert got.per_tensor[n] == pytest.approx(c, abs=1e-10)
    assert sum(got.weights.values()) == pytest.approx(1.0)
    assert got.value < 1 - 1e-4                      # the network moved: gradients rotated
    same = gradient_alignment(model0, x, y, t=t, reference=snapshot(model0))
    assert same.value == pytest.approx(1.0, abs=1e-12)


def test_gradient_alignment_drops_tensors_without_gradient():
    model = make_model("mlp")
    x, _ = inputs(6, seed=3)
    t = torch.zeros(6, dtype=torch.long)             # head 1 is never used
    y = torch.randint(0, 3, (6,))
    got = gradient_alignment(model, x, y, t=t, reference=snapshot(model))
    assert not any(n.startswith("heads.1") for n in got.per_tensor)
    assert math.isclose(sum(got.weights.values()), 1.0)
    with pytest.raises(ValueError, match="int64 labels of shape"):
        gradient_alignment(model, x, y.float(), t=t, reference=snapshot(model))


def test_kernel_drift_by_hand():
    k0 = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    assert kernel_drift(k, k0) == pytest.approx(math.sqrt(3.0) / math.sqrt(5.0))
    assert kernel_drift(k0, k0) == 0.0
    with pytest.raises(ValueError, match="reference kernel is zero"):
        kernel_drift(k, torch.zeros(2, 2))


def _cka_explicit(k, l):
    n = k.shape[0]
    h = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    hsic = lambda a, b: torch.trace(a @ h @ b @ h)   # noqa: E731
    return float(hsic(k, l) / torch.sqrt(hsic(k, k) * hsic(l, l)))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 7), d=st.integers(1, 4), seed=st.integers(0, 10 ** 6),
       scale=st.floats(1e-3, 1e3), shift=st.floats(-5, 5))
def test_cka_is_the_normalised_hsic_invariant_to_scale_and_constant_shifts(n, d, seed, scale,
                                                                            shift):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = torch.randn(n, d, generator=g, dtype=torch.float64)
    k, l = a @ a.T, b @ b.T
    value = centered_kernel_alignment(k, l)
    if math.isnan(value):                             # a centred kernel vanished
        return
    assert value == pytest.approx(_cka_explicit(k, l), abs=1e-9)
    assert -1e-12 <= value <= 1 + 1e-12               # PSD kernels: in [0, 1]
    assert centered_kernel_alignment(l, k) == pytest.approx(value, abs=1e-12)
    assert centered_kernel_alignment(scale * k + shift, l) == pytest.approx(value, abs=1e-7)
    assert centered_kernel_alignment(k, k) == pytest.approx(1.0, abs=1e-12)


def test_cka_reads_full_kernels_as_matrices_and_constant_kernels_are_nan():
    g = torch.Generator().manual_seed(0)
    j = torch.randn(3, 2, 5, generator=g, dtype=torch.float64)
    full = torch.einsum("akp,blp->abkl", j, j)
    matrix = j.reshape(6, 5) @ j.reshape(6, 5).T
    assert centered_kernel_alignment(full, full * 2) == pytest.approx(1.0)
    assert centered_kernel_alignment(full, matrix) == pytest.approx(1.0)
    assert math.isnan(centered_kernel_alignment(torch.ones(3, 3), matrix[:3, :3]))


def test_effective_rank_by_hand():
    assert effective_rank(torch.eye(5)) == pytest.approx(5.0)
    v = torch.tensor([1.0, 2.0, 3.0])
    assert effective_rank(torch.outer(v, v)) == pytest.approx(1.0, abs=1e-6)
    p = torch.tensor([0.5, 0.25, 0.25])
    expected = math.exp(-float((p * p.log()).sum()))
    assert effective_rank(torch.diag(4 * p)) == pytest.approx(expected)
    q = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))[0]
    assert effective_rank(q @ torch.diag(4 * p.double()) @ q.T) == pytest.approx(expected)
    assert effective_rank(torch.zeros(4, 4)) == 0.0
