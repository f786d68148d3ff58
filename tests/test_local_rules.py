"""Local learning rules without backprop: the HSIC bottleneck and the IB-Hebbian rule with a
working memory. Kernels and estimators against their definitions, the global signal against
autograd, updates against hand-written factorisations, the reservoir on a windowed signal,
constraints (masks, Dale's law, k-WTA) as properties, checkpoints, and the batched streams
against separate single-stream runs."""
import copy
import math
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models import build_model
from sparse_nte.dale import constrain_optimizer
from sparse_nte.layers import SparseWeights
from sparse_nte.rules.hsic import HSICBottleneck, HSICSpec, build_hsic
from sparse_nte.rules.ib_hebbian import IBHebbian, IBHebbianSpec, build_ib_hebbian
from sparse_nte.rules.kernels import (centering_diag, gaussian_kernel, gaussian_kernel_row, hsic,
                                      ib_modulation, ib_signal, normalized_hsic,
                                      normalized_hsic_factor, one_hot)
from sparse_nte.rules.local import LocalOptimizerSpec, build_local_optimizer
from sparse_nte.rules.reservoir import Reservoir, ReservoirSpec
from sparse_nte.rules.streams import IBHebbianStreams
from sparse_nte.seams import Batch, BuildEnv, Objective, Strategy
from scenario_cases import FakeScenario as _FakeScenario

D = torch.float64


@dataclass(frozen=True)
class FakeScenario(_FakeScenario):
    """The shared stand-in at this module's sizes."""
    num_tasks: int = 2
    input_shape: tuple = (1, 4, 4)
    head_size: int = 3


def net(scenario=FakeScenario(), dtype=D, **overrides):
    cfg = dict(cnn=False, hidden_units=12, hidden_layers=2, dropout=0.0, sparsify=False,
               percent_on_fc=0.25, percent_on_conv=0.5, k_inference_factor=1.5,
               boost_strength=1.0, boost_strength_factor=0.9, duty_cycle_period=50,
               weight_sparsity_fc=1.0, weight_sparsity_conv=1.0, seed=0, dale=False,
               exc_fraction=0.8, dale_input=False, dale_kwta="include", sparse_exec="off",
               sparse_init="torch", layer_norm=True)
    cfg.update(overrides)
    return build_model(cfg, scenario).to(dtype).train()


def ib_rule(model, opt=LocalOptimizerSpec(optimizer="sgd", lr=0.05, weight_decay=0.0), **spec):
    optimizer = build_local_optimizer(opt, model.parameters())
    constrain_optimizer(optimizer, model)
    reservoir = spec.pop("reservoir", None)
    return IBHebbian(model, IBHebbianSpec(**spec), optimizer, reservoir)


def hsic_rule(model, opt=LocalOptimizerSpec(optimizer="sgd", lr=0.05, weight_decay=0.0), **spec):
    optimizer = build_local_optimizer(opt, model.parameters())
    constrain_optimizer(optimizer, model)
    return HSICBottleneck(model, HSICSpec(**spec), optimizer)


def batch(n, task=0, seed=0, scenario=FakeScenario(), dtype=D):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + tuple(scenario.input_shape), generator=g, dtype=dtype)
    y = torch.randint(0, scenario.head_size, (n,), generator=g)
    return Batch(x, y, torch.full((n,), task), torch.arange(n))


def nothing():
    pass


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D)


# -- kernels and estimators ------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 7), d=st.integers(1, 5), sigma=st.floats(0.2, 3.0), seed=st.integers(0, 99))
def test_gaussian_kernel_is_its_definition_and_batches_independently(n, d, sigma, seed):
    a = randn(3, n, d, seed=seed)
    k = gaussian_kernel(a, sigma)
    for s in range(3):
        for i in range(n):
            for j in range(n):
                want = math.exp(-float(((a[s, i] - a[s, j]) ** 2).sum()) / (2 * sigma ** 2 * d))
                assert k[s, i, j].item() == pytest.approx(want, rel=1e-12, abs=1e-14)
        assert torch.allclose(gaussian_kernel(a[s], sigma), k[s], rtol=0, atol=1e-14)
    assert torch.allclose(gaussian_kernel_row(a, sigma), k[:, -1], rtol=0, atol=1e-14)


def test_hsic_and_normalized_hsic_are_the_trace_formulas():
    n = 6
    ka, kb = gaussian_kernel(randn(n, 3, seed=1), 1.0), gaussian_kernel(randn(n, 2, seed=2), 0.7)
    h = torch.eye(n, dtype=D) - torch.ones(n, n, dtype=D) / n
    assert hsic(ka, kb).item() == pytest.approx(float(torch.trace(ka @ h @ kb @ h)) / (n - 1) ** 2,
                                                 rel=1e-12)
    eps = 1e-2
    ra = ka @ h @ torch.linalg.inv(ka @ h + eps * n * torch.eye(n, dtype=D))
    rb = kb @ h @ torch.linalg.inv(kb @ h + eps * n * torch.eye(n, dtype=D))
    assert torch.allclose(normalized_hsic_factor(ka, eps), ra, atol=1e-10)
    assert normalized_hsic(normalized_hsic_factor(ka, eps), normalized_hsic_factor(kb, eps)).item() \
        == pytest.approx(float(torch.trace(ra @ rb)), rel=1e-10)


def test_kernel_arguments_are_checked():
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_kernel(randn(1, 3), 1.0)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_kernel(randn(4, 3), 0.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        one_hot(torch.tensor([0, 3]), 3, D)


# -- the global signal ------------------------------------------------------------------------
def _window(n, dx, dz, classes, seed):
    x, z = randn(n, dx, seed=seed), randn(n, dz, seed=seed + 1)
    y = one_hot(torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed)),
                classes, D)
    return x, y, z


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 8), dz=st.integers(1, 6), gamma=st.floats(0.0, 10.0),
       sx=st.floats(0.2, 2.0), sy=st.floats(0.1, 2.0), sz=st.floats(0.3, 3.0), seed=st.integers(0, 999))
def test_signal_is_twice_the_autograd_gradient_of_the_diagonal_hsic_objective(n, dz, gamma, sx, sy,
                                                                             sz, seed):
    """xi = 2 d/dz_N sum_j (kbar_x[j] - gamma kbar_y[j]) kbar_z[j] / (N - 1)^2, the terms
    (K H)_jj of HSIC(x, z) - gamma HSIC(y, z)."""
    x, y, z = _window(n, 4, dz, 3, seed)
    kx, ky = gaussian_kernel(x, sx), gaussian_kernel(y, sy)
    z = z.clone().requires_grad_(True)
    kz = gaussian_kernel(z, sz)
    objective = ((centering_diag(kx) - gamma * centering_diag(ky)) * centering_diag(kz)).sum() \
        / (n - 1) ** 2
    (grad,) = torch.autograd.grad(objective, z)
    xi = ib_signal(ib_modulation(kx, ky, gamma), gaussian_kernel_row(z.detach(), sz), z.detach(), sz)
    assert torch.allclose(xi, 2 * grad[-1], rtol=1e-9, atol=1e-15)
    assert torch.all(grad[:-1].abs() >= 0)          # (only row N is the rule's concern)


def test_signal_descends_the_full_hsic_objective_on_average():
    """The diagonal terms are not the whole objective, but the rule must point the same way: on
    random windows the cosine between xi and the autograd gradient of the full
    HSIC(x, z) - gamma HSIC(y, z) with respect to z_N is positive on average (a sign error in
    the signal would make it negative)."""
    cosines = []
    for seed in range(60):
        x, y, z = _window(8, 20, 16, 10, seed)
        kx, ky = gaussian_kernel(x, 0.5), gaussian_kernel(y, 0.1)
        z = z.clone().requires_grad_(True)
        kz = gaussian_kernel(z, 1.0)
        (grad,) = torch.autograd.grad(hsic(kx, kz) - 2.0 * hsic(ky, kz), z)
        xi = ib_signal(ib_modulation(kx, ky, 2.0), gaussian_kernel_row(z.detach(), 1.0),
                       z.detach(), 1.0)
        cosines.append(float(F.cosine_similarity(xi, grad[-1], dim=0)))
    cosines = torch.tensor(cosines)
    assert float(cosines.mean()) > 0.3 and float((cosines > 0).to(D).mean()) > 0.75


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 8), dz=st.integers(1, 5), gamma=st.floats(0.0, 5.0), seed=st.integers(0, 999))
def test_prefix_bug_drops_exactly_the_first_term(n, dz, gamma, seed):
    x, y, z = _window(n, 3, dz, 4, seed)
    kx, ky, sz = gaussian_kernel(x, 0.8), gaussian_kernel(y, 0.5), 1.3
    c = ib_modulation(kx, ky, gamma)
    kzn = gaussian_kernel_row(z, sz)
    # the terms written out, one sample at a time
    alpha = [2 * kzn[j] / (sz ** 2 * dz) * (z[-1] - z[j]) for j in range(n)]
    first = sum(c[j] * alpha[j] for j in range(n - 1)) / n / (n - 1) ** 2
    second = c[-1] * sum(alpha[j] for j in range(n - 1)) / n / (n - 1) ** 2
    fixed = ib_signal(c, kzn, z, sz)
    released = ib_signal(c, kzn, z, sz, prefix_bug=True)
    assert torch.allclose(released, second, rtol=1e-12, atol=1e-16)
    assert torch.allclose(fixed - released, first, rtol=1e-9, atol=1e-15)


# -- the IB-Hebbian update --------------------------------------------------------------------
def _capture(model):
    grads = []

    def before_update():
        grads.append({name: None if p.grad is None else p.grad.detach().clone()
                      for name, p in model.named_parameters()})
    return grads, before_update


@pytest.mark.parametrize("sparsify", [False, True])
@pytest.mark.parametrize("layer_norm", [False, True])
def test_hidden_update_is_presynaptic_x_postsynaptic_x_signal_and_heads_get_window_ce(sparsify,
                                                                                   layer_norm):
    model = net(sparsify=sparsify, layer_norm=layer_norm, boost_strength=0.0)
    spec = dict(window=4, gamma=1.5, sigma_x=0.9, sigma_y=0.6, sigma_z=1.1)
    rule = ib_rule(model, **spec)
    b = batch(4, task=1)
    before = copy.deepcopy(model)
    grads, hook = _capture(model)
    rule.step(b, Objective(model), hook)
    assert len(grads) == 1                              # warm-up samples do not update
    got = grads[0]

    # independent forward of the window with the weights before the update
    x = b.x.flatten(1)
    yo = one_hot(b.y, 3, D)
    c = ib_modulation(gaussian_kernel(x, 0.9), gaussian_kernel(yo, 0.6), 1.5)
    h = x
    for i, block in enumerate(before.blocks):
        w, bias = block.layer.weight.detach(), block.layer.bias.detach()
        a = h @ w.T + bias
        if sparsify:
            k = block.activation.k
            winners = torch.zeros_like(a, dtype=torch.bool)
            winners.scatter_(1, a.topk(k, dim=1).indices, True)
            r, act_grad = torch.where(winners, a, torch.zeros_like(a)), winners.to(D)
        else:
            r, act_grad = torch.relu(a), (a > 0).to(D)
        z = F.layer_norm(r, (r.shape[1],)) if layer_norm else r
        xi = ib_signal(c, gaussian_kernel_row(z, 1.1), z, 1.1)
        if layer_norm:
            jac = torch.autograd.functional.jacobian(lambda v: F.layer_norm(v, (v.shape[0],)), r[-1])
            post = act_grad[-1] * (jac.T @ xi)
        else:
            post = act_grad[-1] * xi
        assert torch.allclose(got[f"blocks.{i}.layer.weight"], torch.outer(post, h[-1]),
                              rtol=1e-9, atol=1e-14)
        assert torch.allclose(got[f"blocks.{i}.layer.bias"], post, rtol=1e-9, atol=1e-14)
        h = z
    feats = h.detach()
    head = before.heads[1]
    w = head.weight.detach().clone().requires_grad_(True)
    bb = head.bias.detach().clone().requires_grad_(True)
    gw, gb = torch.autograd.grad(F.cross_entropy(feats @ w.T + bb, b.y), (w, bb))
    assert torch.allclose(got["heads.1.weight"], gw, rtol=1e-9, atol=1e-14)
    assert torch.allclose(got["heads.1.bias"], gb, rtol=1e-9, atol=1e-14)
    assert got["heads.0.weight"] is None            # the other task's head is not touched


def test_window_carries_across_batches_and_is_emptied_at_task_start():
    def run(sizes, task_start_after=None):
        model = net()
        rule = ib_rule(model, window=3)
        updates, seen = [], 0
        full = batch(sum(sizes), seed=5)
        for i, n in enumerate(sizes):
            part = Batch(full.x[seen:seen + n], full.y[seen:seen + n], full.t[seen:seen + n],
                         full.index[seen:seen + n])
            count = []
            rule.step(part, Objective(model), lambda: count.append(1))
            updates.append(len(count))
            seen += n
            if task_start_after == i:
                rule.on_task_start(None)
        return model, updates

    one, u1 = run([6])
    split, u2 = run([2, 1, 3])
    assert u1 == [4] and u2 == [0, 1, 3]          # N - 1 = 2 warm-up samples, then one per sample
    for p, q in zip(one.parameters(), split.parameters()):
        assert torch.equal(p, q)
    _, u3 = run([3, 3], task_start_after=0)
    assert u3 == [1, 1]                            # the window refills after the task start


def test_returned_losses_are_the_ce_just_before_each_update():
    model = net()
    rule = ib_rule(model, window=2)
    b = batch(3, seed=2)
    snapshots = [copy.deepcopy(model)]
    losses = rule.step(b, Objective(model),
                       lambda: snapshots.append(copy.deepcopy(model)))
    # row 0: warm-up (no update); row 1: first update; row 2: after one update
    with torch.no_grad():
        want = [F.cross_entropy(snapshots[0](b.x[i:i + 1], b.t[i:i + 1]), b.y[i:i + 1]).item()
                for i in range(2)]
    assert losses[:2].tolist() == pytest.approx(want, rel=1e-12)
    assert not losses.requires_grad and losses.shape == (3,)


class _EWCLike(Strategy):
    uses_loss = True


class _ReplayLike(Strategy):
    pass


@pytest.mark.parametrize("make", [ib_rule, hsic_rule])
def test_local_rules_refuse_strategies_with_loss_terms(make):
    model = net()
    rule = make(model)
    with pytest.raises(ValueError, match="_EWCLike.*backprop"):
        rule.step(batch(4), Objective(model, [_EWCLike()]), nothing)
    rule.step(batch(4), Objective(model, [_ReplayLike()]), nothing)


def test_reservoir_signal_drives_the_hidden_updates_and_its_error_is_reported():
    """A reservoir that has learned nothing (lr = 0, readout 0) delivers xi_hat = 0: the hidden
    layers do not move, the heads still learn, and the tracking error is exactly 1."""
    model = net()
    rule = ib_rule(model, window=3, signal="reservoir",
                   reservoir=ReservoirSpec(size=20, lr=0.0, steps=3))
    grads, hook = _capture(model)
    rule.step(batch(5), Objective(model), hook)
    assert len(grads) == 3
    for g in grads:
        assert torch.count_nonzero(g["blocks.0.layer.weight"]) == 0
        assert torch.count_nonzero(g["blocks.1.layer.weight"]) == 0
        assert torch.count_nonzero(g["heads.0.weight"]) > 0
    assert rule.stats()["reservoir_error"] == [1.0, 1.0]


def test_ib_stats_report_hsic_terms_per_layer():
    model = net()
    rule = ib_rule(model, window=3)
    rule.step(batch(6), Objective(model), nothing)
    s = rule.stats()
    assert s["ib_updates"] == 4 and s["ib_warmup_samples"] == 2
    assert len(s["ib_hsic_x"]) == len(s["ib_hsic_y"]) == len(s["ib_signal_norm"]) == 2
    assert all(v > 0 for v in s["ib_hsic_x"] + s["ib_signal_norm"])
    rule.on_task_start(None)
    assert rule.stats() == {}


# -- the reservoir ----------------------------------------------------------------------------
def test_reservoir_delivers_its_prediction_before_learning_and_learns_by_lms():
    spec = ReservoirSpec(size=30, steps=4, lr=1e-2)
    res = Reservoir(5, 2, spec, torch.Generator().manual_seed(0), dtype=D)
    res.w_out.copy_(randn(2, 30, seed=3) * 0.1)
    twin = copy.deepcopy(res)
    v, target = randn(5, seed=4), randn(2, seed=5)
    out = res.present(v, target)
    # the twin, without a target, delivers the same readout and keeps its weights
    assert torch.equal(twin.present(v), out)
    # the LMS step written out from the twin's rates
    u = torch.zeros(30, dtype=D)
    rates = []
    for _ in range(4):
        r = torch.tanh(u)
        rates.append(r)
        o = twin.w_out @ r
        u = u + 0.2 * (-u + twin.w_rec @ r + twin.w_in @ v + twin.w_fb @ o)
    want = twin.w_out - 1e-2 / 4 * sum(torch.outer(twin.w_out @ r - target, r) for r in rates)
    assert torch.allclose(res.w_out, want, rtol=1e-12, atol=1e-15)
    assert torch.allclose(res.u, twin.u)


def test_reservoir_learns_a_signal_that_needs_memory():
    """Target: the mean of the last 4 inputs. A readout without memory can at best predict
    x_t / 4 (relative error 3/4); the reservoir, predicting before it learns from each sample,
    must do much better."""
    torch.manual_seed(0)
    res = Reservoir(3, 3, ReservoirSpec(size=300, steps=10, lr=5e-4, tau=5e-3, dt=1e-3),
                    torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    recent, err, var = [], 0.0, 0.0
    for t in range(2400):
        v = torch.rand(3, generator=g) * 2 - 1
        recent = (recent + [v])[-4:]
        target = torch.stack(recent).mean(0)
        out = res.present(v, target)
        if t >= 1600:
            err += float(((out - target) ** 2).sum())
            var += float((target ** 2).sum())
    assert err / var < 0.5


def test_reservoir_spec_checks_its_keys():
    with pytest.raises(ValueError, match="reservoir_dt"):
        ReservoirSpec(dt=1e-2, tau=5e-3)
    with pytest.raises(ValueError, match="reservoir_density"):
        ReservoirSpec(density=0.0)
    with pytest.raises(ValueError, match="reservoir_lr"):
        ReservoirSpec.from_config(SimpleNamespace(**{f"reservoir_{k}": v for k, v in dict(
            size=10, gain=1.0, density=0.5, tau=5e-3, dt=1e-3, steps=2).items()}))


# -- the HSIC bottleneck ----------------------------------------------------------------------
def test_hsic_steps_each_block_on_its_own_loss_in_turn_then_formats_the_heads():
    model = net(hidden_layers=3)
    lr, beta, sigma, eps = 0.05, 7.0, 2.0, 1e-3
    rule = hsic_rule(model, LocalOptimizerSpec(optimizer="sgd", lr=lr, weight_decay=0.0),
                     beta=beta, sigma=sigma, epsilon=eps)
    b = batch(9, task=1)
    replay = copy.deepcopy(model)
    grads, hook = _capture(model)
    losses = rule.step(b, Objective(model), hook)
    assert len(grads) == 4                        # three blocks, then the heads

    def nhsic_factor(a):
        m = a.shape[0]
        h = torch.eye(m, dtype=D) - 1.0 / m
        k = torch.exp(-torch.cdist(a, a) ** 2 / (2 * sigma ** 2 * a.shape[1])) @ h
        return k @ torch.linalg.inv(k + eps * m * torch.eye(m, dtype=D))

    x = b.x.flatten(1)
    rx, ry = nhsic_factor(x), nhsic_factor(one_hot(b.y, 3, D))
    h = x
    for i, block in enumerate(replay.blocks):
        w = block.layer.weight.detach().clone().requires_grad_(True)
        bias = block.layer.bias.detach().clone().requires_grad_(True)
        z = F.layer_norm(torch.relu(h @ w.T + bias), (w.shape[0],))
        rz = nhsic_factor(z)
        loss = torch.trace(rz @ rx) - beta * torch.trace(rz @ ry)
        gw, gb = torch.autograd.grad(loss, (w, bias))
        assert torch.allclose(grads[i][f"blocks.{i}.layer.weight"], gw, rtol=1e-7, atol=1e-10)
        assert torch.allclose(grads[i][f"blocks.{i}.layer.bias"], gb, rtol=1e-7, atol=1e-10)
        others = [n for n, g in grads[i].items() if g is not None and not n.startswith(f"blocks.{i}.")]
        assert others == []                       # no error reaches another layer
        with torch.no_grad():                     # the step, then the block's new output goes on
            w -= lr * gw
            bias -= lr * gb
            h = F.layer_norm(torch.relu(h @ w.T + bias), (w.shape[0],))
    head = replay.heads[1]
    w = head.weight.detach().clone().requires_grad_(True)
    bb = head.bias.detach().clone().requires_grad_(True)
    ce = F.cross_entropy(h @ w.T + bb, b.y, reduction="none")
    gw, gb = torch.autograd.grad(ce.mean(), (w, bb))
    assert torch.allclose(grads[3]["heads.1.weight"], gw, rtol=1e-9, atol=1e-12)
    assert [n for n, g in grads[3].items() if g is not None] == ["heads.1.weight", "heads.1.bias"]
    assert torch.allclose(losses, ce.detach(), rtol=1e-9)


def test_hsic_with_a_single_row_trains_the_heads_only():
    model = net()
    rule = hsic_rule(model)
    grads, hook = _capture(model)
    rule.step(batch(1), Objective(model), hook)
    assert len(grads) == 1 and grads[0]["blocks.0.layer.weight"] is None
    assert rule.stats()["hsic_skipped_batches"] == 1


# -- constraints: masks, Dale's law, k-WTA -----------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(kind=st.sampled_from(["ib", "hsic"]), density=st.sampled_from([0.3, 0.6, 1.0]),
       dale=st.booleans(), sparsify=st.booleans(), seed=st.integers(0, 50))
def test_masked_weights_stay_zero_and_dale_signs_never_flip(kind, density, dale, sparsify, seed):
    model = net(dtype=torch.float32, weight_sparsity_fc=density, dale=dale, sparsify=sparsify,
                seed=seed, percent_on_fc=0.34)
    opt = LocalOptimizerSpec(optimizer="adamw", lr=0.2, weight_decay=0.1)
    rule = ib_rule(model, opt, window=3) if kind == "ib" else hsic_rule(model, opt, beta=10.0)
    masks = {n: m.zero_mask.clone() for n, m in model.named_modules() if isinstance(m, SparseWeights)}
    for step in range(4):
        rule.step(batch(6, seed=seed + step, dtype=torch.float32), Objective(model), nothing)
        for name, m in model.named_modules():
            if not isinstance(m, SparseWeights):
                continue
            w = m.module.weight.detach()
            assert torch.equal(m.zero_mask, masks[name])
            assert torch.count_nonzero(w[m.zero_mask]) == 0
            if m.dale_sign is not None:
                assert bool((w * m.dale_sign.view(1, -1) >= 0).all())
    if sparsify:
        x = batch(8, seed=99, dtype=torch.float32).x.flatten(1)
        for block in model.blocks:
            a = block.layer(x)
            r = block.activation(a)
            assert bool(((r != 0).sum(1) <= block.activation.k).all())
            x = block.norm(r)


# -- checkpoints ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["ib", "ib_reservoir", "hsic"])
def test_state_round_trip_resumes_exactly(kind):
    def make():
        model = net(sparsify=True, weight_sparsity_fc=0.5, dale=True)
        opt = LocalOptimizerSpec(optimizer="adamw", lr=0.01)
        if kind == "hsic":
            return model, hsic_rule(model, opt)
        extra = dict(signal="reservoir", reservoir=ReservoirSpec(size=25, steps=3, lr=1e-3)) \
            if kind == "ib_reservoir" else {}
        return model, ib_rule(model, opt, window=4, **extra)

    batches = [batch(3, seed=s) for s in range(4)]       # window 4: saved while half full
    model, rule = make()
    for b in batches[:2]:
        rule.step(b, Objective(model), nothing)
    saved = copy.deepcopy((model.state_dict(), rule.state_dict()))
    straight = [rule.step(b, Objective(model), nothing) for b in batches[2:]]

    model2, rule2 = make()
    model2.load_state_dict(saved[0])
    rule2.load_state_dict(saved[1])
    resumed = [rule2.step(b, Objective(model2), nothing) for b in batches[2:]]
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)
    for (n, p), (_, q) in zip(model.state_dict().items(), model2.state_dict().items()):
        assert torch.equal(p, q) if torch.is_tensor(p) else p == q, n
    assert rule.stats() == rule2.stats()


# -- config specs and builders ---------------------------------------------------------------
def _config(**overrides):
    values = dict(optimizer="adamw", lr=1e-4, weight_decay=1e-4, momentum=0.0, nesterov=False,
                  adam_beta2=0.99, seed=3, ib_window=6, ib_gamma=2.0, ib_sigma_x=0.5,
                  ib_sigma_y=0.1, ib_sigma_z=1.0, ib_signal="exact", ib_prefix_bug=True,
                  hsic_beta=100.0, hsic_sigma=5.0, hsic_epsilon=1e-5, hsic_head_lr=0.0,
                  fused_optimizer=False, reservoir_size=10,
                  reservoir_gain=1.2, reservoir_density=0.1, reservoir_tau=5e-3,
                  reservoir_dt=1e-3, reservoir_steps=2, reservoir_lr=5e-4)
    values.update(overrides)
    return SimpleNamespace(**values)


def test_builders_read_typed_specs_from_the_config():
    model = net()
    env = BuildEnv(model=model, scenario=None, steps_per_task=[10, 10])
    rule = build_ib_hebbian(_config(), env)
    assert rule.spec == IBHebbianSpec(window=6, prefix_bug=True)
    assert isinstance(rule.optimizer, torch.optim.AdamW)
    assert rule.optimizer.defaults["betas"] == (0.9, 0.99)
    assert len(build_ib_hebbian(_config(ib_signal="reservoir"), env).reservoirs) == 2
    assert build_hsic(_config(optimizer="sgd"), env).spec == HSICSpec(beta=100.0)


@pytest.mark.parametrize("key,value,match", [
    ("ib_window", 1, "'ib_window' = 1 .*int >= 2"), ("ib_signal", "guess", "valid: exact, reservoir"),
    ("ib_sigma_z", 0.0, "'ib_sigma_z'"), ("ib_prefix_bug", 1, "'ib_prefix_bug'"),
    ("optimizer", "nte", "cannot step a local learning rule"), ("adam_beta2", 1.0, "'adam_beta2'"),
])
def test_invalid_keys_are_named(key, value, match):
    env = BuildEnv(model=net(), scenario=None, steps_per_task=[10])
    with pytest.raises(ValueError, match=match):
        build_ib_hebbian(_config(**{key: value}), env)


def test_missing_keys_are_listed():
    cfg = _config()
    del cfg.hsic_sigma, cfg.hsic_beta
    with pytest.raises(ValueError, match="lacks the key.*hsic_beta, hsic_sigma"):
        HSICSpec.from_config(cfg)


# -- streams ----------------------------------------------------------------------------------
def test_streams_equal_separate_single_stream_runs():
    scenario = FakeScenario()
    spec = IBHebbianSpec(window=4, gamma=1.5, sigma_x=0.8, sigma_y=0.4, sigma_z=1.2)
    opt = LocalOptimizerSpec(optimizer="adamw", lr=1e-2, weight_decay=1e-3)
    kinds = dict(sparsify=True, weight_sparsity_fc=0.5, dale=True, duty_cycle_period=7)
    nets = [net(scenario, seed=s, **kinds) for s in range(3)]
    streams = IBHebbianStreams([copy.deepcopy(n) for n in nets], spec, opt)
    rules = [ib_rule(n, opt, **vars(spec)) for n in nets]
    g = torch.Generator().manual_seed(0)
    for task in range(2):
        streams.on_task_start()
        for r in rules:
            r.on_task_start(None)
        for _ in range(3):
            x = torch.randn(3, 5, 1, 4, 4, generator=g, dtype=D)
            y = torch.randint(0, 3, (3, 5), generator=g)
            t = torch.full((3, 5), task)
            got = streams.step(x, y, t)
            want = torch.stack([r.step(Batch(x[i], y[i], t[i], torch.arange(5)), Objective(n), nothing)
                                for i, (r, n) in enumerate(zip(rules, nets))])
            assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)
    exported = [copy.deepcopy(n) for n in nets]
    streams.write_back(exported)
    for a, b in zip(nets, exported):
        for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
            if not torch.is_tensor(p):
                assert p == q, name               # the k-WTA sample counters
            elif p.is_floating_point():
                assert torch.allclose(p, q, rtol=1e-9, atol=1e-12), name
    x = torch.randn(3, 7, 1, 4, 4, generator=g, dtype=D)
    t = torch.ones(3, 7, dtype=torch.long)
    want = torch.stack([n.eval()(x[i], t[i]) for i, n in enumerate(nets)])
    assert torch.allclose(streams.logits(x, t), want, rtol=1e-9, atol=1e-12)


def test_streams_state_round_trip_and_unsupported_networks():
    spec = IBHebbianSpec(window=3)
    opt = LocalOptimizerSpec(lr=1e-2)
    make = lambda: IBHebbianStreams([net(seed=s) for s in range(2)], spec, opt)   # noqa: E731
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(2, 2, 1, 4, 4, generator=g, dtype=D), torch.randint(0, 3, (2, 2), generator=g))
            for _ in range(4)]
    zeros = torch.zeros(2, 2, dtype=torch.long)
    a = make()
    for x, y in data[:2]:
        a.step(x, y, zeros)
    saved = copy.deepcopy(a.state_dict())
    straight = [a.step(x, y, zeros) for x, y in data[2:]]
    b = make()
    b.load_state_dict(saved)
    assert all(torch.equal(p, q) for p, q in zip(straight, [b.step(x, y, zeros) for x, y in data[2:]]))
    with pytest.raises(ValueError, match="dropout = 0"):
        IBHebbianStreams([net(dropout=0.5)], spec, opt)
    with pytest.raises(ValueError, match="exact"):
        IBHebbianStreams([net()], replace(spec, signal="reservoir"), opt)
    with pytest.raises(ValueError, match="MLPs only"):
        IBHebbianStreams([net(FakeScenario(input_shape=(1, 12, 12)), cnn=True)], spec, opt)


# -- toy tasks of the reference ---------------------------------------------------------------
def _toy(task):
    """The reference's XOR (noisy binary pairs) and linearly separable sets, 900 / 100 rows."""
    g = torch.Generator().manual_seed(42)
    if task == "xor":
        bits = torch.randint(0, 2, (1000, 2), generator=g).to(D)
        y = (bits[:, 0] != bits[:, 1]).long()
        x = bits + 0.1 * torch.randn(1000, 2, generator=g, dtype=D)
    else:
        x = torch.rand(1000, 2, generator=g, dtype=D) * 2 - 1
        y = (x @ torch.randn(2, generator=g, dtype=D) > 0).long()
    return x[:900], y[:900], x[900:], y[900:]


@pytest.mark.slow
@pytest.mark.parametrize("task,units,layers,sigmas,lr,epochs", [
    ("xor", 10, 2, (0.3, 0.25, 2.0), 1e-4, 5),
    ("linear", 4, 1, (0.5, 0.25, 1.0), 1e-3, 4),
])
def test_toy_tasks_reach_the_reference_accuracy(task, units, layers, sigmas, lr, epochs):
    """Window 64, gamma 10 and the kernel widths of the reference's toy runs, AdamW (weight
    decay 1e-4, beta2 0.99); the reference reports 90-95% mean test accuracy over seeds (sd 5-10
    points) after 25 epochs. Hidden layers [10, 10] for XOR (the reference: [10, 4]) and [4] for
    the linear task; the linear task runs at lr 1e-3 for 4 epochs instead of the reference's
    1e-4 for 25, to keep the test short."""
    xtr, ytr, xte, yte = _toy(task)
    scenario = FakeScenario(num_tasks=1, input_shape=(1, 1, 2), head_size=2)
    seeds = 6
    nets = [net(scenario, hidden_units=units, hidden_layers=layers, seed=s) for s in range(seeds)]
    spec = IBHebbianSpec(window=64, gamma=10.0, sigma_x=sigmas[0], sigma_y=sigmas[1],
                         sigma_z=sigmas[2])
    streams = IBHebbianStreams(nets, spec, LocalOptimizerSpec(lr=lr, weight_decay=1e-4,
                                                              adam_beta2=0.99))
    g = torch.Generator().manual_seed(0)
    for epoch in range(epochs):
        order = torch.stack([torch.randperm(900, generator=g) for _ in range(seeds)])
        streams.step(xtr[order].view(seeds, 900, 1, 1, 2), ytr[order], torch.zeros_like(order))
    logits = streams.logits(xte.expand(seeds, 100, 2).reshape(seeds, 100, 1, 1, 2),
                            torch.zeros(seeds, 100, dtype=torch.long))
    acc = (logits.argmax(-1) == yte).to(D).mean(1)
    assert float(acc.mean()) >= 0.9, acc.tolist()
