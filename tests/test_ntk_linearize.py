"""Linearised networks: equal to the model at theta_0, first-order accurate nearby, exactly
linear in theta, trainable by torch optimizers and by NTE with masks and Dale signs kept."""
import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from ntk_cases import assert_close, inputs, make_model
from sparse_nte.dale import constrain_optimizer
from sparse_nte.layers import SparseWeightsBase, update_boost_strength
from sparse_nte.nte import NTE
from sparse_nte.ntk import empirical_ntk, jacobian_vector_product, linearize, snapshot


def _set(module, values):
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(values[name])


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_equals_the_model_at_theta0_and_trains_only_theta(case):
    model = make_model(case)
    x, t = inputs(6, seed=1)
    lin = linearize(model).eval()
    assert_close(lin(x, t), model(x, t), rtol=1e-14)
    names = [n for n, _ in model.named_parameters()]
    assert [n for n, _ in lin.named_parameters()] == ["net." + n for n in names]
    assert list(lin.base.parameters()) == []
    assert all(torch.equal(lin.theta0()[n], p) for n, p in model.named_parameters())


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_is_the_first_order_taylor_expansion(case):
    model = make_model(case)
    x, t = inputs(4, seed=2)
    lin = linearize(model).eval()
    g = torch.Generator().manual_seed(0)
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    # relative moves theta_0 (1 + eps r): no weight changes sign (Dale) or leaves its mask
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) * p
                 for n, p in theta0.items()}
    errors = []
    for eps in (1e-5, 1e-6):
        moved = {n: theta0[n] + eps * direction[n] for n in theta0}
        _set(lin.net, moved)
        other = copy.deepcopy(model)
        _set(other, moved)
        with torch.no_grad():
            errors.append(float((lin(x, t) - other(x, t)).abs().max()))
            # f_lin - f(theta_0) is exactly J(theta_0) delta
            assert_close(lin(x, t) - model(x, t),
                         jacobian_vector_product(model, x, {n: eps * d for n, d in
                                                            direction.items()}, t=t), rtol=1e-9)
    # error O(eps^2): a tenfold smaller step, a hundredfold smaller error (no winner switched)
    assert 0 < errors[1] < errors[0]
    assert errors[0] / errors[1] == pytest.approx(100.0, rel=0.1)


@settings(max_examples=8, deadline=None)
@given(a=st.floats(-3, 3), b=st.floats(-3, 3), seed=st.integers(0, 5))
def test_is_affine_in_theta(a, b, seed):
    model = make_model("mlp", seed=seed, dale=False)     # no sign constraint: any direction
    x, t = inputs(3, seed=seed)
    lin = linearize(model).eval()
    theta0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(seed)
    d1 = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta0.items()}
    d2 = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in theta0.items()}
    with torch.no_grad():
        base = lin(x, t)
        outs = []
        for c1, c2 in ((1, 0), (0, 1), (a, b)):
            _set(lin.net, {n: theta0[n] + c1 * d1[n] + c2 * d2[n] for n in theta0})
            outs.append(lin(x, t) - base)
    scale = (abs(a) + abs(b) + 1) * max(float(outs[0].abs().max()), float(outs[1].abs().max()))
    assert float((outs[2] - (a * outs[0] + b * outs[1])).abs().max()) <= 1e-9 * scale


def test_sgd_with_momentum_keeps_masks_zero_and_dale_signs():
    model = make_model("mlp")
    lin = linearize(model).train()
    opt = torch.optim.SGD(lin.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-3)
    constrain_optimizer(opt, lin)
    layers = [m for m in lin.net.modules() if isinstance(m, SparseWeightsBase)]
    assert any(m.dale_sign is not None for m in layers) and any(bool(m.zero_mask.any())
                                                                 for m in layers)
    x, t = inputs(16, seed=3)
    y = torch.randint(0, 3, (16,))
    start = [m.module.weight.detach().clone() for m in layers]
    for _ in range(25):
        opt.zero_grad()
        F.cross_entropy(lin(x, t), y).backward()
        for m in layers:
            assert bool((m.module.weight.grad[m.zero_mask] == 0).all())
        opt.step()
        for m in layers:
            w = m.module.weight
            assert bool((w[m.zero_mask] == 0).all())
            s = m.sign_tensor()
            if s is not None:
                assert bool((w * s >= 0).all())
    assert any(not torch.equal(m.module.weight, w0) for m, w0 in zip(layers, start))
    # the loss went down and theta_0 did not move
    with torch.no_grad():
        assert F.cross_entropy(lin(x, t), y) < F.cross_entropy(model(x, t), y)
    assert all(torch.equal(lin.theta0()[n], p) for n, p in model.named_parameters())


def test_nte_trains_it_through_its_generic_path_like_the_model_at_theta0():
    # At theta = theta_0 the linearised network has the model's per-example gradients, so one
    # exact NTE step (nte_fast off) must move both to the same weights, though NTE computes them
    # by two different paths (per-layer capture for the model, vmap for the linearisation).
    model = make_model("mlp").train()
    lin = linearize(model).train()
    x, t = inputs(12, seed=4)
    y = torch.randint(0, 3, (12,))
    copy_ = copy.deepcopy(model)

    def nte(net):   # weights managed by NTE, biases plain SGD (nte_params = weights)
        weights = [p for n, p in net.named_parameters() if n.endswith("weight")]
        others = [p for n, p in net.named_parameters() if not n.endswith("weight")]
        return NTE([{"params": weights}, {"params": others, "managed": False, "lr": 0.05}], net,
                   beta=0.05, fast="off")

    opt_model, opt_lin = nte(copy_), nte(lin)
    opt_model.step(lambda: F.cross_entropy(copy_(x, t), y, reduction="none"))
    opt_lin.step(lambda: F.cross_entropy(lin(x, t), y, reduction="none"))
    assert sorted(opt_lin.last_step["generic"]) == sorted(
        "net." + n for n, p in model.named_parameters() if n.endswith("weight"))
    moved = max(float((p - q).abs().max()) for p, q in zip(copy_.parameters(),
                                                           model.parameters()))
    assert moved > 1e-3
    for (name, p), q in zip(copy_.named_parameters(), lin.net.parameters()):
        assert_close(q.detach(), p.detach(), rtol=1e-10)
    # and it keeps training: a second step changes theta again, signs kept
    before = [p.detach().clone() for p in lin.parameters()]
    opt_lin.step(lambda: F.cross_entropy(lin(x, t), y, reduction="none"))
    assert any(not torch.equal(p, b) for p, b in zip(lin.parameters(), before))
    for m in lin.net.modules():
        if isinstance(m, SparseWeightsBase) and m.dale_sign is not None:
            assert bool((m.module.weight * m.sign_tensor() >= 0).all())


def test_expansion_point_from_a_snapshot_and_frozen_buffers():
    model = make_model("mlp").train()
    x, t = inputs(8, seed=5)
    point = snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
        model(x, t)                                  # training forward: duty cycles move
    lin = linearize(model, point).eval()
    reference = make_model("mlp").eval()             # same seed: the network at the snapshot
    assert_close(lin(x, t), reference(x, t), rtol=1e-12)
    duty = [b.clone() for n, b in lin.base.named_buffers() if "duty" in n]
    lin.train()
    lin(x, t)
    assert all(torch.equal(a, b) for a, b in
               zip(duty, [b for n, b in lin.base.named_buffers() if "duty" in n]))

    with pytest.raises(ValueError, match="not parameters of the model"):
        linearize(model, {"nope": torch.zeros(1)})


def test_boost_strength_updates_do_not_move_the_expansion_point():
    model = make_model("mlp", boost_strength=3.0, boost_strength_factor=0.1).train()
    x, t = inputs(32, seed=6)
    for _ in range(3):
        model(x, t)                            # duty cycles now differ between units
    model.eval()
    lin = linearize(model).eval()
    out, before = lin(x, t), model(x, t)
    for _ in range(3):
        lin.apply(update_boost_strength)       # what the runner does after every epoch
        model.apply(update_boost_strength)
    assert not torch.equal(model(x, t), before)   # the boost does change the network ...
    assert torch.equal(lin(x, t), out)            # ... but not the linearisation around theta_0


def test_its_tangent_kernel_is_the_models_kernel_at_theta0_wherever_theta_is():
    model = make_model("mlp")
    x, t = inputs(5, seed=7)
    lin = linearize(model).eval()
    with torch.no_grad():
        for p in lin.net.parameters():
            p.mul_(1.3)                               # far from theta_0: f_lin is affine anyway
    assert_close(empirical_ntk(lin, x, t1=t), empirical_ntk(model, x, t1=t), rtol=1e-10)
    assert all(isinstance(p, torch.nn.Parameter) for p in lin.net.parameters())
