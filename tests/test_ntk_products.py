"""Jacobian-vector, vector-Jacobian, NTK-vector and Fisher-vector products against the explicit
Jacobian of the real model (float64), chunked or not, flat or by name."""
import pytest
import torch
import torch.nn.functional as F

from ntk_cases import assert_close, inputs, live_columns, make_model, reference_jacobian
from sparse_nte.ntk import (fisher_vector_product, jacobian_vector_product, ntk_vector_product,
                            vector_jacobian_product)


@pytest.fixture(params=["mlp", "cnn"])
def setup(request):
    model = make_model(request.param)
    x, t = inputs(5, seed=11)
    j = reference_jacobian(model, x, t, live_only=False)
    j[:, :, ~live_columns(model)] = 0.0          # masked entries are not parameters
    return model, x, t, j


def _vector(model, seed):
    g = torch.Generator().manual_seed(seed)
    size = sum(p.numel() for p in model.parameters())
    return torch.randn(size, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("chunk", [None, 2])
def test_jvp_and_vjp_equal_explicit_products(setup, chunk):
    model, x, t, j = setup
    v = _vector(model, 0)
    assert_close(jacobian_vector_product(model, x, v, t=t, chunk=chunk), j @ v)
    u = torch.randn(x.shape[0], j.shape[1], dtype=torch.float64)
    flat = vector_jacobian_product(model, x, u, t=t, chunk=chunk, flat=True)
    assert_close(flat, torch.einsum("nc,ncp->p", u, j))
    by_name = vector_jacobian_product(model, x, u, t=t, chunk=chunk)
    assert list(by_name) == [n for n, _ in model.named_parameters()]
    assert_close(torch.cat([g.reshape(-1) for g in by_name.values()]), flat, rtol=1e-14)


def test_masked_entries_of_a_tangent_are_ignored_and_of_a_gradient_are_zero(setup):
    model, x, t, j = setup
    live = live_columns(model)
    v = _vector(model, 1)
    noisy = v.clone()
    noisy[~live] = 1e6
    assert_close(jacobian_vector_product(model, x, noisy, t=t),
                 jacobian_vector_product(model, x, v, t=t), rtol=1e-12)
    u = torch.ones(x.shape[0], j.shape[1], dtype=torch.float64)
    g = vector_jacobian_product(model, x, u, t=t, flat=True)
    assert bool((g[~live] == 0).all())


@pytest.mark.parametrize("chunk", [None, 3])
def test_ntk_vector_product_equals_j_jt_v(setup, chunk):
    model, x, t, j = setup
    n, c, p = j.shape
    v = torch.randn(n, c, dtype=torch.float64)
    jf = j.reshape(n * c, p)
    expected = (jf @ (jf.T @ v.reshape(-1))).view(n, c)
    assert_close(ntk_vector_product(model, x, v, t=t, chunk=chunk), expected)


@pytest.mark.parametrize("chunk", [None, 2])
def test_fisher_vector_product_equals_jt_h_j_v_formed_explicitly(setup, chunk):
    model, x, t, j = setup
    n, c, p = j.shape
    v = _vector(model, 2)
    with torch.no_grad():
        prob = torch.softmax(model(x, t), dim=1)
    h = torch.diag_embed(prob) - prob.unsqueeze(2) * prob.unsqueeze(1)     # (n, C, C)
    expected = torch.einsum("ncp,ncd,nd->p", j, h, j @ v) / n     # J^T H J v, J and H explicit
    out = fisher_vector_product(model, x, v, t=t, chunk=chunk)
    assert_close(out, expected)
    params = dict(model.named_parameters())
    pieces = torch.split(v, [q.numel() for q in params.values()])
    named = fisher_vector_product(model, x, {n: piece.view(q.shape) for (n, q), piece in
                                             zip(params.items(), pieces)}, t=t)
    assert_close(torch.cat([g.reshape(-1) for g in named.values()]), out, rtol=1e-12)


def test_fisher_is_the_hessian_of_the_cross_entropy_of_a_linear_model():
    # For f = W x the GGN is the exact Hessian of the mean cross-entropy (f is linear in W).
    torch.manual_seed(3)
    lin = torch.nn.Linear(4, 3, bias=False).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    w = lin.weight.detach().clone()

    def loss(flat_w):
        return F.cross_entropy(x @ flat_w.view(3, 4).T, y)

    hess = torch.autograd.functional.hessian(loss, w.reshape(-1))
    v = torch.randn(12, dtype=torch.float64)
    assert_close(fisher_vector_product(lin, x, v), hess @ v)


def test_shape_errors_name_the_argument(setup):
    model, x, t, j = setup
    with pytest.raises(ValueError, match=r"v must be an \(N, C\) tensor"):
        ntk_vector_product(model, x, torch.zeros(x.shape[0], j.shape[1] + 1), t=t)
    with pytest.raises(ValueError, match="1-d vector of"):
        jacobian_vector_product(model, x, torch.zeros(7), t=t)
    with pytest.raises(ValueError, match="missing"):
        fisher_vector_product(model, x, {"nope": torch.zeros(1)}, t=t)
