"""Growth and pruning schedules: exact densities, Dale's law, optimizer state, protection of old
connections, and the schedule formulas of the papers they come from."""
import copy
import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_nte.config import config_from_dict
from sparse_nte.layers import SparseWeights, SparseWeights2d
from sparse_nte.nte import build_nte_optimizer
from sparse_nte.plasticity import (
    SET,
    GradualMagnitudePruning,
    PlasticitySpec,
    RigL,
    DenseGradient,
    StaticConnectivity,
    TaskwiseGrowth,
    apply_erk,
    build_schedule,
    erk_densities,
    gmp_sparsity,
    growth_density,
    live_counts,
    plastic_layers,
    rigl_drop_fraction,
)
from sparse_nte.plasticity.ranking import random_per_row, top_k_per_row

FAST = settings(max_examples=30, deadline=None)


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
class ExpGrad(torch.optim.Optimizer):
    """A multiplicative rule for tests (exponentiated gradient on magnitudes):
    ``w <- w * exp(-lr * sign(w) * g)`` for weights (dim >= 2), plain SGD for the rest. A weight
    at 0 never moves, which is why schedules must start new weights at a signed magnitude."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    def multiplicative(self, param):
        return param.dim() >= 2

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if self.multiplicative(p):
                    p.mul_(torch.exp(-group["lr"] * torch.sign(p) * p.grad))
                else:
                    p.sub_(group["lr"] * p.grad)


def signs(n, exc=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.where(torch.rand(n, generator=g) < exc, 1.0, -1.0)
    s[0], s[-1] = 1.0, -1.0   # both groups present
    return s


def linear(n_in, n_out, density, dale=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(n_in, n_out)
    layer = SparseWeights(lin, sparsity=1.0 - density, generator=g)
    if dale:
        sign = signs(n_in, seed=seed + 1000)   # independent of the mask
        with torch.no_grad():   # every live weight non-zero with its presynaptic sign
            lin.weight.copy_(lin.weight.abs() * sign)
        layer.set_presynaptic_sign(sign)
    return layer


def mlp(dale=False, density=0.3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(linear(12, 16, density, dale, seed), nn.ReLU(),
                         linear(16, 10, density, dale, seed + 1), nn.ReLU(), nn.Linear(10, 3))


def rows(t):
    return t.reshape(t.shape[0], -1)


def live(layer):
    return rows(~layer.zero_mask)


def exc_cols(layer):
    return rows(layer.sign_tensor().expand_as(layer.weight) > 0)


def violations(model):
    """(non-zero weights at masked positions, weights whose sign contradicts Dale)."""
    mask_v = sign_v = 0
    for _, layer in plastic_layers(model):
        w = layer.weight.detach()
        mask_v += int((w[layer.zero_mask] != 0).sum())
        s = layer.sign_tensor()
        if s is not None:
            sign_v += int((w * s < 0).sum())
    return mask_v, sign_v


def nte(model):
    """The NTE optimizer managing the weights (biases: SGD), as build_nte_optimizer does."""
    return build_nte_optimizer(model, config_from_dict({"optimizer": "nte", "nte_beta": 0.05,
                                                        "lr": 0.05}))


def run(schedule, model, opt, steps, step0=0, n_in=12, check=None, gen_seed=0):
    """Train ``model`` on random data for ``steps`` steps, driving ``schedule`` the way the
    runner does (NTE's step runs forward and backward itself, from a closure)."""
    g = torch.Generator().manual_seed(gen_seed + step0)
    for step in range(step0, step0 + steps):
        x = torch.randn(8, n_in, generator=g)
        y = torch.randint(0, 3, (8,), generator=g)
        if getattr(opt, "takes_example_losses", False):
            schedule.after_backward(step)
            opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"))
        else:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            schedule.after_backward(step)
            opt.step()
        schedule.after_step(step)
        if check is not None:
            check(step)
    return step0 + steps


def config(**kw):
    """A validated Config (the models of these tests are built by hand: weight_sparsity_fc only
    makes the sparse schedules consistent in the config's eyes)."""
    base = dict(plasticity="none", plasticity_interval=100, plasticity_end=0.75, set_zeta=0.3,
                rigl_alpha=0.3, erk=False, gmp_final_sparsity=0.9, gmp_start=0, gmp_n=10,
                grow_start_density=0.1, grow_end_density=0.5, grow_old_lr=1.0,
                grow_init_scale=1e-3, nte_prune_rule="magnitude", nte_prune_rate=0.01,
                nte_prune_momentum=0.99, nte_prune_z=2.33, seed=0, num_batch=2)
    base.update(kw)
    if base["plasticity"] != "grow":
        base.setdefault("weight_sparsity_fc", 0.99)
    return config_from_dict(base)


# ---------------------------------------------------------------------------------------------
# Schedule formulas
# ---------------------------------------------------------------------------------------------
def test_rigl_drop_fraction_is_the_cosine_of_the_paper():
    for t in (0, 1, 10, 37, 74):
        assert rigl_drop_fraction(t, 75, 0.3) == pytest.approx(0.15 * (1 + math.cos(math.pi * t / 75)))
    assert rigl_drop_fraction(0, 75, 0.3) == pytest.approx(0.3)
    assert rigl_drop_fraction(75, 75, 0.3) == 0.0 and rigl_drop_fraction(90, 75, 0.3) == 0.0


def test_gmp_sparsity_is_the_cubic_of_the_paper():
    s_i, s_f, t0, n, dt = 0.5, 0.95, 200, 10, 100
    for j in range(n + 1):
        t = t0 + j * dt
        expected = s_f + (s_i - s_f) * (1 - j / n) ** 3
        assert gmp_sparsity(t, s_i, s_f, t0, n, dt) == pytest.approx(expected, abs=1e-12)
    assert gmp_sparsity(0, s_i, s_f, t0, n, dt) == s_i
    assert gmp_sparsity(10 ** 6, s_i, s_f, t0, n, dt) == s_f


def test_growth_density_is_linear_over_tasks():
    assert [growth_density(k, 5, 0.02, 0.1) for k in range(5)] == pytest.approx(
        [0.02, 0.04, 0.06, 0.08, 0.1])
    assert growth_density(0, 1, 0.02, 0.1) == 0.02
    with pytest.raises(ValueError):
        growth_density(5, 5, 0.02, 0.1)


@FAST
@given(st.lists(st.tuples(st.integers(1, 300), st.integers(1, 300)), min_size=1, max_size=4),
       st.floats(0.01, 1.0))
def test_erk_keeps_the_total_and_scales_with_the_er_ratio(shapes, density):
    d = erk_densities(shapes, density)
    numel = [a * b for a, b in shapes]
    assert sum(di * n for di, n in zip(d, numel)) == pytest.approx(density * sum(numel), rel=1e-9)
    assert all(0 < di <= 1 + 1e-12 for di in d)
    sparse = [i for i, di in enumerate(d) if di < 1 - 1e-12]
    ratios = [d[i] / ((shapes[i][0] + shapes[i][1]) / numel[i]) for i in sparse]
    assert all(r == pytest.approx(ratios[0], rel=1e-9) for r in ratios)


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------
@FAST
@given(st.integers(1, 6), st.integers(1, 20), st.integers(0, 2 ** 31 - 1))
def test_top_k_picks_exactly_k_of_the_best_eligible(n_rows, n_cols, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 4, (n_rows, n_cols), generator=g).float()   # many ties
    eligible = torch.rand(n_rows, n_cols, generator=g) < 0.7
    k = (torch.rand(n_rows, generator=g) * (eligible.sum(1) + 1)).long().clamp(max=eligible.sum(1))
    sel = top_k_per_row(scores.masked_fill(~eligible, -math.inf), k, g)
    assert not bool((sel & ~eligible).any())
    assert torch.equal(sel.sum(1), k)
    for r in range(n_rows):
        if 0 < k[r] < eligible[r].sum():
            assert scores[r][sel[r]].min() >= scores[r][eligible[r] & ~sel[r]].max()


@FAST
@given(st.integers(1, 6), st.integers(1, 40), st.floats(0.05, 1.0), st.integers(0, 2 ** 31 - 1))
def test_random_per_row_picks_exactly_k_eligible(n_rows, n_cols, p, seed):
    g = torch.Generator().manual_seed(seed)
    eligible = torch.rand(n_rows, n_cols, generator=g) < p
    k = (torch.rand(n_rows, generator=g) * (eligible.sum(1) + 1)).long().clamp(max=eligible.sum(1))
    sel = random_per_row(eligible, k, g)
    assert not bool((sel & ~eligible).any())
    assert torch.equal(sel.sum(1), k)


@pytest.mark.parametrize("n_cols", [6, 400])   # 400: the sampling path; 6: random keys
def test_random_per_row_is_uniform_over_subsets(n_cols):
    g = torch.Generator().manual_seed(0)
    eligible = torch.zeros(1, n_cols, dtype=torch.bool)
    eligible[0, [0, 2, 3, 5]] = True
    pairs = {}
    trials = 2400
    for _ in range(trials):
        chosen = tuple(torch.nonzero(random_per_row(eligible, torch.tensor([2]), g)[0]).flatten().tolist())
        pairs[chosen] = pairs.get(chosen, 0) + 1
    assert set(pairs) == {(0, 2), (0, 3), (0, 5), (2, 3), (2, 5), (3, 5)}
    for count in pairs.values():   # each of the 6 subsets with probability 1/6 (sd 0.0076)
        assert abs(count / trials - 1 / 6) < 0.035, pairs


# ---------------------------------------------------------------------------------------------
# SET
# ---------------------------------------------------------------------------------------------
@FAST
@given(st.integers(2, 12), st.integers(4, 30), st.floats(0.05, 0.9), st.booleans(),
       st.floats(0.0, 1.0), st.integers(0, 1000))
def test_set_event_keeps_counts_signs_and_drops_the_smallest(n_out, n_in, density, dale, zeta, seed):
    layer = linear(n_in, n_out, density, dale, seed)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before_live = live(layer).clone()
    w_before = rows(layer.weight.detach()).clone()
    sched = SET([("l", layer)], opt, zeta=zeta, interval=1, end_fraction=1.0, steps_per_task=10,
                num_tasks=1, seed=seed)
    sched.on_task_start(0)
    sched.after_backward(0)
    sched.after_step(0)   # one event
    after = live(layer)
    assert torch.equal(after.sum(1), before_live.sum(1))                 # per-unit counts kept
    event = sched.history[-1]
    dropped, grown = before_live & ~after, after & ~before_live
    assert event["pruned"] == int(dropped.sum()) == event["grown"] == int(grown.sum())
    assert event["density"] == float(after.sum()) / after.numel()
    assert bool((rows(layer.weight.detach())[~after] == 0).all())
    assert bool((rows(layer.weight.detach())[grown] == 0).all())         # additive: start at 0
    groups = ([exc_cols(layer), ~exc_cols(layer)] if dale else
              [w_before >= 0, w_before < 0])
    for gmask in groups:
        if dale:
            assert torch.equal((after & gmask).sum(1), (before_live & gmask).sum(1))
        mag = w_before.abs()
        for r in range(n_out):   # every dropped weight is no larger than every kept one
            d = dropped[r] & gmask[r]
            kept = before_live[r] & after[r] & gmask[r]
            if d.any() and kept.any():
                assert mag[r][d].max() <= mag[r][kept].min()


def test_set_in_a_conv_dale_layer_balances_per_channel_and_sign():
    conv = nn.Conv2d(6, 5, 3)
    layer = SparseWeights2d(conv, sparsity=0.7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        conv.weight.copy_(conv.weight.abs() * signs(6).view(1, -1, 1, 1))
    layer.set_presynaptic_sign(signs(6))
    opt = ExpGrad(layer.parameters())
    e = exc_cols(layer)
    before = live(layer).clone()
    sched = SET([("c", layer)], opt, zeta=0.5, interval=1, end_fraction=1.0, steps_per_task=10,
                num_tasks=1, init_scale=1e-3)
    sched.on_task_start(0)
    x = torch.randn(2, 6, 8, 8)
    layer(x).square().sum().backward()
    sched.after_backward(0)
    opt.step()
    sched.after_step(0)
    after = live(layer)
    assert torch.equal((after & e).sum(1), (before & e).sum(1))
    assert torch.equal((after & ~e).sum(1), (before & ~e).sum(1))
    grown = after & ~before
    assert sched.history[-1]["grown"] == int(grown.sum()) > 0
    w = rows(layer.weight.detach())
    s = rows(layer.sign_tensor().expand_as(layer.weight))
    torch.testing.assert_close(w[grown], s[grown] * 1e-3)   # multiplicative: sign * init_scale


# ---------------------------------------------------------------------------------------------
# RigL
# ---------------------------------------------------------------------------------------------
def _backward_with_dense_grad(layer, seed):
    """A backward pass through ``layer`` whose dense weight gradient is ``delta^T x`` (returned);
    ``layer.weight.grad`` is masked by SparseWeights, the schedule must see the dense one."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, layer.weight.shape[1], generator=g)
    delta = torch.randn(5, layer.weight.shape[0], generator=g)
    (layer(x) * delta).sum().backward()
    assert bool((layer.weight.grad[layer.zero_mask] == 0).all())
    return delta.t() @ x


def _rigl_one_event(layer, opt, seed, alpha=0.5, **kw):
    """One RigL update at task step 1; returns the schedule, f(1) and the dense gradient."""
    sched = RigL([("l", layer)], opt, alpha=alpha, interval=1, end_fraction=1.0,
                 steps_per_task=10 ** 6, num_tasks=1, **kw)
    sched.on_task_start(0)
    opt.zero_grad()
    grad = _backward_with_dense_grad(layer, seed)
    sched.after_backward(0)
    sched.after_step(0)   # no optimizer step: the mask update alone is under test
    return sched, alpha / 2 * (1 + math.cos(math.pi * 1 / 10 ** 6)), grad


def test_rigl_grows_where_the_dense_gradient_is_largest():
    layer = linear(20, 6, 0.25, seed=3)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    before = live(layer).clone()
    w0 = rows(layer.weight.detach()).clone()
    sched, f, grad = _rigl_one_event(layer, opt, 7)
    after = live(layer)
    k = torch.round(f * before.sum(1)).long()
    for r in range(6):
        n_drop = int(k[r])
        drop = (-w0[r].abs()).masked_fill(~before[r], -math.inf).topk(n_drop).indices
        grow = grad[r].abs().masked_fill(before[r], -math.inf).topk(n_drop).indices
        expected = before[r].clone()
        expected[drop] = False
        expected[grow] = True
        assert torch.equal(after[r], expected), r
    assert sched.history[-1]["pruned"] == int(k.sum()) > 0


def test_rigl_in_a_dale_layer_grows_only_where_the_gradient_pushes_the_allowed_sign():
    layer = linear(30, 8, 0.2, dale=True, seed=4)
    opt = ExpGrad(layer.parameters())
    e = exc_cols(layer)
    before = live(layer).clone()
    _, _, grad = _rigl_one_event(layer, opt, 5, init_scale=2e-3)
    after = live(layer)
    grown = after & ~before
    assert grown.any()
    s = torch.where(e, 1.0, -1.0)
    favourable = ~before & (-s * grad > 0)               # score max(0, -s g) > 0
    for r in range(8):
        for g in (e[r], ~e[r]):
            n_grown, n_fav = int((grown[r] & g).sum()), int((favourable[r] & g).sum())
            if n_fav >= n_grown:   # enough candidates the gradient pushes the allowed way
                assert bool((favourable[r] | ~(grown[r] & g)).all())
            else:                  # all of them grow; the rest are ties at score 0
                assert bool((grown[r] | ~(favourable[r] & g)).all())
    assert int((grown & favourable).sum()) > 0
    w = rows(layer.weight.detach())
    torch.testing.assert_close(w[grown], s[grown] * 2e-3)
    assert torch.equal((after & e).sum(1), (before & e).sum(1))
    assert torch.equal((after & ~e).sum(1), (before & ~e).sum(1))


def test_rigl_multiplicative_growth_without_dale_starts_in_the_descent_direction():
    layer = linear(20, 5, 0.3, seed=6)
    opt = ExpGrad(layer.parameters())
    before = live(layer).clone()
    _, _, grad = _rigl_one_event(layer, opt, 8)
    grown = live(layer) & ~before
    w = rows(layer.weight.detach())
    torch.testing.assert_close(w[grown], -torch.sign(grad[grown]) * 1e-3)


@pytest.mark.parametrize("conv", [False, True])
def test_dense_gradient_equals_the_unmasked_autograd_gradient(conv):
    torch.manual_seed(0)
    if conv:
        layer = SparseWeights2d(nn.Conv2d(3, 4, 3, stride=2, padding=1), sparsity=0.8)
        x = torch.randn(2, 3, 9, 9)
    else:
        layer = SparseWeights(nn.Linear(7, 5), sparsity=0.8)
        x = torch.randn(2, 6, 7)   # leading dimensions are part of the batch
    capture = DenseGradient(layer)
    capture.arm(True)
    out = layer(x)
    target = torch.randn_like(out)
    (out * target).sum().backward(retain_graph=True)
    (out * target).sum().backward()   # a second pass through the same graph is not counted
    w = layer.weight.detach().clone().requires_grad_(True)
    m = layer.module
    ref_out = (F.conv2d(x, w, m.bias, m.stride, m.padding) if conv else F.linear(x, w, m.bias))
    (ref_out * target).sum().backward()
    torch.testing.assert_close(capture.grad, w.grad)
    assert bool((w.grad[layer.zero_mask] != 0).any())
    capture.arm(False)
    layer(x).sum().backward()
    assert capture.grad is None   # nothing captured while disarmed
    capture.close()


def test_rigl_timing_and_drop_counts_follow_the_cosine_and_restart_per_task():
    model = mlp(density=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = RigL(plastic_layers(model), opt, alpha=0.3, interval=10, end_fraction=0.75,
                 steps_per_task=[100, 60], num_tasks=2)
    expected_steps = []
    step = 0
    for task, n in enumerate((100, 60)):
        sched.on_task_start(task)
        counts = {name: live_counts(l).clone() for name, l in plastic_layers(model)}
        step0 = step
        step = run(sched, model, opt, n, step0)
        expected_steps += [step0 + d - 1 for d in range(10, n, 10) if d < 0.75 * n]
        for name, l in plastic_layers(model):
            assert torch.equal(live_counts(l), counts[name])
    seen = sorted({h["step"] for h in sched.history})
    assert seen == expected_steps
    for h in sched.history:
        task_len = 100 if h["task"] == 0 else 60
        done = h["step"] - (0 if h["task"] == 0 else 100) + 1
        f = 0.15 * (1 + math.cos(math.pi * done / (0.75 * task_len)))
        fan_in = 12 if h["layer"] == "0" else 16
        n_out = 16 if h["layer"] == "0" else 10
        per_unit = round(0.5 * fan_in)
        assert h["pruned"] == h["grown"] == n_out * min(round(f * per_unit), fan_in - per_unit)


# ---------------------------------------------------------------------------------------------
# Invariants during training, optimizer state
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["set", "rigl"])
@pytest.mark.parametrize("opt_name", ["adam", "sgd", "expgrad", "nte"])
def test_training_with_rewiring_keeps_every_invariant(kind, opt_name):
    model = mlp(dale=True, density=0.3)
    params = list(model.parameters())
    opt = {"adam": lambda: torch.optim.Adam(params, lr=1e-2, weight_decay=1e-3),
           "sgd": lambda: torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3),
           "expgrad": lambda: ExpGrad(params, lr=0.05),
           "nte": lambda: nte(model)}[opt_name]()
    cls = SET if kind == "set" else RigL
    sched = cls(plastic_layers(model), opt, interval=5, end_fraction=1.0, steps_per_task=60,
                num_tasks=1)
    layers = plastic_layers(model)
    state = {"live": [live(l).clone() for _, l in layers], "events": 0}

    def check(step):
        assert violations(model) == (0, 0)
        for i, (_, l) in enumerate(layers):
            now = live(l)
            newly = now & ~state["live"][i]
            events = [h for h in sched.history if h["step"] == step and h["layer"] == layers[i][0]]
            # A position becomes live only in an event, and exactly as many as it reports grown.
            assert int(newly.sum()) == sum(h["grown"] for h in events)
            state["live"][i] = now.clone()

    sched.on_task_start(0)
    run(sched, model, opt, 60, check=check)
    assert len(sched.history) == 2 * 11 and sum(h["grown"] for h in sched.history) > 0


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimizer_state_is_reset_exactly_at_changed_positions(opt_name):
    layer = linear(12, 10, 0.4, seed=2)
    opt = (torch.optim.SGD(layer.parameters(), lr=0.05, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(layer.parameters(), lr=1e-2))
    sched = SET([("l", layer)], opt, zeta=0.3, interval=4, end_fraction=1.0, steps_per_task=8,
                num_tasks=1)
    sched.on_task_start(0)
    g = torch.Generator().manual_seed(0)
    for step in range(4):
        opt.zero_grad()
        layer(torch.randn(6, 12, generator=g)).square().sum().backward()
        sched.after_backward(step)
        opt.step()
        if step == 3:
            keys = ["momentum_buffer"] if opt_name == "sgd" else ["exp_avg", "exp_avg_sq"]
            saved = {k: opt.state[layer.weight][k].clone() for k in keys}
            before = ~layer.zero_mask.clone()
        sched.after_step(step)
    changed = before ^ ~layer.zero_mask
    assert changed.any()
    for k, v in saved.items():
        now = opt.state[layer.weight][k]
        assert bool((now[changed] == 0).all()), k
        assert torch.equal(now[~changed], v[~changed]), k


# ---------------------------------------------------------------------------------------------
# Gradual magnitude pruning
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dale", [False, True])
def test_gmp_density_follows_the_cubic_schedule_exactly(dale):
    model = mlp(dale=dale, density=0.8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    t0, n, dt, s_f = 6, 4, 5, 0.75
    sched = GradualMagnitudePruning(plastic_layers(model), opt, final_sparsity=s_f, start=t0, n=n,
                                    interval=dt, steps_per_task=20, num_tasks=2)
    layers = plastic_layers(model)
    s_i = [1 - float(live(l).sum()) / live(l).numel() for _, l in layers]
    pruned_ever = [torch.zeros_like(live(l)) for _, l in layers]
    ei = [((live(l) & exc_cols(l)).sum(1), (live(l) & ~exc_cols(l)).sum(1)) if dale else None
          for _, l in layers]

    def check(step):
        assert violations(model) == (0, 0)
        for i, (_, l) in enumerate(layers):
            assert not bool((pruned_ever[i] & live(l)).any())   # pruned never come back
            pruned_ever[i] |= ~live(l)

    step = 0
    for task in range(2):
        sched.on_task_start(task)
        step = run(sched, model, opt, 20, step, check=check)
    assert sorted({h["step"] for h in sched.history}) == [t0 + j * dt - 1 for j in range(1, n + 1)]
    for h in sched.history:
        i = [name for name, _ in layers].index(h["layer"])
        fan_in = live(layers[i][1]).shape[1]
        s_t = s_f + (s_i[i] - s_f) * (1 - (h["step"] + 1 - t0) / (n * dt)) ** 3
        assert h["density"] == round((1 - s_t) * fan_in) / fan_in
    for i, (_, l) in enumerate(layers):
        assert torch.equal(live_counts(l), torch.full_like(live_counts(l), round(0.25 * live(l).shape[1])))
        if dale:   # the E/I split follows each unit's initial proportion to within one synapse
            e0, i0 = ei[i]
            n_new = live_counts(l)
            e_new = (live(l) & exc_cols(l)).sum(1)
            assert bool(((e_new - n_new * e0 / (e0 + i0)).abs() <= 1).all())


def test_gmp_prunes_the_smallest_magnitudes_of_each_unit():
    layer = linear(20, 6, 0.6, seed=9)
    w0 = rows(layer.weight.detach()).clone()
    before = live(layer).clone()
    sched = GradualMagnitudePruning([("l", layer)], None, final_sparsity=0.8, start=0, n=1,
                                    interval=1, steps_per_task=5, num_tasks=1)
    sched.on_task_start(0)
    sched.after_backward(0)
    sched.after_step(0)
    after = live(layer)
    assert torch.equal(after.sum(1), torch.full((6,), 4))
    for r in range(6):
        assert w0[r][before[r] & ~after[r]].abs().max() <= w0[r][after[r]].abs().min()


# ---------------------------------------------------------------------------------------------
# Task-wise growth
# ---------------------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "expgrad": lambda p: ExpGrad(p, lr=0.05),
    "nte": None,   # built from the model
}


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dale", [False, True])
def test_growth_freezes_old_connections_across_a_task(opt_name, dale):
    model = mlp(dale=dale, density=0.25)
    opt = nte(model) if opt_name == "nte" else OPTIMIZERS[opt_name](model.parameters())
    sched = TaskwiseGrowth(plastic_layers(model), opt, start_density=0.25, end_density=0.75,
                           old_lr=0.0, steps_per_task=15, num_tasks=3, init_scale=1e-3)
    layers = plastic_layers(model)
    step = 0
    for task in range(3):
        sched.on_task_start(task)
        for name, l in layers:
            fan_in = live(l).shape[1]
            target = round(growth_density(task, 3, 0.25, 0.75) * fan_in)
            assert torch.equal(live_counts(l), torch.full_like(live_counts(l), target))
            owner = sched.owner[name]
            assert torch.equal(owner >= 0, ~l.zero_mask)
            assert int(owner.max()) == task
            new = owner == task
            w = l.weight.detach()
            if task > 0:   # every optimizer: grown weights start at sign * init_scale
                torch.testing.assert_close(w[new].abs(), torch.full_like(w[new], 1e-3))
                if dale:
                    assert bool((w[new] * l.sign_tensor().expand_as(w)[new] > 0).all())
        old = {name: (sched.owner[name] >= 0) & (sched.owner[name] < task) for name, _ in layers}
        frozen = {name: l.weight.detach()[old[name]].clone() for name, l in layers}
        new_before = {name: l.weight.detach()[sched.owner[name] == task].clone() for name, l in layers}
        step = run(sched, model, opt, 15, step, check=lambda s: assert_ok(model))
        for name, l in layers:
            assert torch.equal(l.weight.detach()[old[name]], frozen[name])           # frozen
            assert not torch.equal(l.weight.detach()[sched.owner[name] == task], new_before[name])
    assert [h["task"] for h in sched.history] == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_grown_weights_into_units_that_never_win_stay_live_under_additive_optimizers(opt_name):
    """The defect growth had under SGD: a weight grown at 0 into a hidden unit that never wins
    its k-WTA gets no gradient and stays 0 for ever, so the mask counts a connection the network
    does not have. Grown weights now start at +-init_scale (random signs without Dale's law) and
    the history reports the non-zero density beside the mask density."""
    torch.manual_seed(0)
    layer = linear(40, 30, 0.1, seed=3)
    silent = torch.arange(30) >= 2        # only units 0 and 1 can ever win (k = 1)

    class OnlyTwoCompete(nn.Module):
        def forward(self, h):
            h = h.masked_fill(silent, -math.inf)
            top = h.topk(1, dim=1).indices
            return torch.zeros_like(h).scatter(1, top, 1.0) * h.masked_fill(silent, 0.0)

    model = nn.Sequential(layer, OnlyTwoCompete(), nn.Linear(30, 3))
    opt = (torch.optim.SGD(model.parameters(), lr=0.1) if opt_name == "sgd"
           else torch.optim.Adam(model.parameters(), lr=1e-2))
    sched = TaskwiseGrowth([("l", layer)], opt, start_density=0.1, end_density=0.5, old_lr=1.0,
                           steps_per_task=10, num_tasks=2, init_scale=2e-3, seed=1)
    sched.on_task_start(0)
    step = run(sched, model, opt, 10, n_in=40)
    before = live(layer).clone()
    sched.on_task_start(1)
    grown = live(layer) & ~before
    w = rows(layer.weight.detach())
    assert int(grown.sum()) == 30 * (20 - 4)                         # round(0.5 * 40) - 4 per unit
    torch.testing.assert_close(w[grown].abs(), torch.full_like(w[grown], 2e-3))
    assert 0.35 < float((w[grown] > 0).double().mean()) < 0.65       # random signs, both present
    event = sched.history[-1]
    assert event["grown"] == int(grown.sum())
    assert event["nonzero_density"] == float((w != 0).sum()) / w.numel() == event["density"]
    run(sched, model, opt, 10, step, n_in=40)
    w = rows(layer.weight.detach())
    into_silent = grown & silent.unsqueeze(1)
    # no gradient ever reaches them: they keep their start values exactly, and stay live
    torch.testing.assert_close(w[into_silent].abs(), torch.full_like(w[into_silent], 2e-3),
                               rtol=0, atol=0)
    assert not bool((w[live(layer)] == 0).any())


def test_history_reports_the_nonzero_density_below_the_mask_density():
    layer = linear(10, 6, 0.5, seed=0)
    with torch.no_grad():
        layer.module.weight[~layer.zero_mask] = 0.0          # allowed but all at 0
        layer.module.weight[0, (~layer.zero_mask[0]).nonzero()[0]] = 0.3
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    sched = TaskwiseGrowth([("l", layer)], opt, start_density=0.5, end_density=0.8,
                           steps_per_task=1, num_tasks=2, init_scale=1e-3)
    sched.on_task_start(0)
    sched.after_backward(0)
    sched.after_step(0)
    sched.on_task_start(1)
    grown = sched.history[-1]["grown"]
    assert grown == 6 * (8 - 5)
    assert sched.history[-1]["density"] == 0.8
    assert sched.history[-1]["nonzero_density"] == (1 + grown) / 60


def assert_ok(model):
    assert violations(model) == (0, 0)


def _manual_sgd(w, buf, g, lr_map, mu, wd):
    g = g + wd * w
    buf = g.clone() if buf is None else mu * buf + g
    return w - lr_map * buf, buf


def _manual_adam(w, m, v, g, t, lr_map, b1=0.9, b2=0.999, eps=1e-8):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    step = (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
    return w - lr_map * step, m, v


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_grow_old_lr_is_an_exact_per_weight_learning_rate_factor(opt_name):
    """Protected weights follow the optimizer run with lr * old_lr at their positions (also
    for Adam, whose step does not scale with the gradient)."""
    torch.manual_seed(3)
    layer = linear(10, 4, 0.3, seed=11)
    opt = (torch.optim.SGD([layer.weight], lr=0.1, momentum=0.9, weight_decay=0.01)
           if opt_name == "sgd" else torch.optim.Adam([layer.weight], lr=0.05))
    sched = TaskwiseGrowth([("l", layer)], opt, start_density=0.3, end_density=0.6, old_lr=0.25,
                           steps_per_task=6, num_tasks=2)
    x = torch.randn(16, 10)
    target = torch.randn(16, 4)

    def loss_of(w):
        return (F.linear(x, w * (~layer.zero_mask)) - target).square().mean()

    step = 0
    for task in range(2):
        sched.on_task_start(task)
        if task == 1:   # reference starts here from the same weights, fresh state
            w_ref = layer.weight.detach().clone()
            old = (sched.owner["l"] == 0)
            lr = 0.1 if opt_name == "sgd" else 0.05
            lr_map = torch.where(old, 0.25 * lr, lr)
            opt.state.clear()
            buf = m = v = None
        for _ in range(6):
            opt.zero_grad()
            loss_of(layer.weight).backward()
            sched.after_backward(step)
            opt.step()
            sched.after_step(step)
            step += 1
            if task == 1:
                wr = w_ref.clone().requires_grad_(True)
                loss_of(wr).backward()
                g = wr.grad * (~layer.zero_mask)
                if opt_name == "sgd":
                    w_ref, buf = _manual_sgd(w_ref, buf, g, lr_map, 0.9, 0.01)
                else:
                    m = torch.zeros_like(g) if m is None else m
                    v = torch.zeros_like(g) if v is None else v
                    w_ref, m, v = _manual_adam(w_ref, m, v, g, step - 6, lr_map)
                w_ref = w_ref * (~layer.zero_mask)
                torch.testing.assert_close(layer.weight.detach(), w_ref, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# ERK, construction, history, determinism
# ---------------------------------------------------------------------------------------------
def test_apply_erk_reallocates_density_and_keeps_the_fan_in_scaled_variance():
    model = mlp(density=0.3)
    layers = plastic_layers(model)
    total_live = sum(int(live(l).sum()) for _, l in layers)
    w_before = [l.weight.detach().clone() for _, l in layers]
    live_before = [~l.zero_mask.clone() for _, l in layers]
    d_before = [float(live(l).sum()) / live(l).numel() for _, l in layers]
    events = apply_erk(layers, None, torch.Generator().manual_seed(0))
    targets = erk_densities([tuple(l.weight.shape) for _, l in layers], total_live / sum(
        l.weight.numel() for _, l in layers))
    for (name, l), ev, d_t, w0, l0, d0 in zip(layers, events, targets, w_before, live_before, d_before):
        fan_in = live(l).shape[1]
        assert ev["density"] == round(d_t * fan_in) / fan_in
        kept = l0 & ~l.zero_mask
        torch.testing.assert_close(l.weight.detach()[kept], w0[kept] * math.sqrt(d0 / ev["density"]))
    assert abs(sum(int(live(l).sum()) for _, l in layers) - total_live) <= sum(
        l.weight.shape[0] for _, l in layers)


def test_build_schedule_from_config_and_its_errors():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    static = build_schedule(config(), model, opt, 100, 2)
    assert isinstance(static, StaticConnectivity) and static.history == []
    masks = [l.zero_mask.clone() for _, l in plastic_layers(model)]
    static.on_task_start(0)
    run(static, model, opt, 5)
    assert all(torch.equal(a, l.zero_mask) for a, (_, l) in zip(masks, plastic_layers(model)))
    assert isinstance(build_schedule(config(), nn.Linear(3, 3), None, 100, 2), StaticConnectivity)
    assert isinstance(build_schedule(config(plasticity="set"), model, opt, 100, 2), SET)
    m2 = mlp()
    rigl = build_schedule(config(plasticity="rigl", erk=True), m2,
                          torch.optim.SGD(m2.parameters(), lr=0.1), 100, 2)
    masks = [l.zero_mask.clone() for _, l in plastic_layers(m2)]
    assert isinstance(rigl, RigL) and rigl.history == []   # ERK waits for task 0
    assert all(torch.equal(a, l.zero_mask) for a, (_, l) in zip(masks, plastic_layers(m2)))
    rigl.on_task_start(0)
    assert [h["schedule"] for h in rigl.history] == ["erk", "erk"]
    assert isinstance(build_schedule(config(plasticity="grow", grow_start_density=0.3),
                                     model, opt, 100, 2), TaskwiseGrowth)
    gmp = build_schedule(config(plasticity="gmp", gmp_n=3, plasticity_interval=10), model, opt, 100, 2)
    assert isinstance(gmp, GradualMagnitudePruning)
    set_spec = PlasticitySpec.from_config(config(plasticity="set"))
    with pytest.raises(ValueError, match="plasticity"):
        build_schedule(replace(set_spec, kind="magic"), model, opt, 100, 2)
    with pytest.raises(TypeError, match="config_from_dict"):   # plain mappings are not validated
        build_schedule({"plasticity": "set", "grow_init_scale": 1e-3}, model, opt, 100, 2)
    spec = PlasticitySpec.from_config(config(plasticity="set", set_zeta=0.2))
    assert isinstance(build_schedule(spec, model, opt, 100, 2), SET)
    assert (spec.kind, spec.set_zeta, spec.interval, spec.end_fraction) == ("set", 0.2, 100, 0.75)
    with pytest.raises(ValueError, match="beyond"):
        build_schedule(config(plasticity="gmp", gmp_n=10, plasticity_interval=100), model, opt, 100, 2)
    with pytest.raises(ValueError, match="initial sparsity"):
        build_schedule(config(plasticity="gmp", gmp_final_sparsity=0.5, gmp_n=2), model, opt, 500, 2)
    with pytest.raises(ValueError, match="grow_end_density"):   # the schedule's own check
        build_schedule(replace(set_spec, kind="grow", grow_start_density=0.5,
                               grow_end_density=0.2), model, opt, 100, 2)
    with pytest.raises(ValueError, match="not trained"):
        build_schedule(config(plasticity="set"), model, torch.optim.SGD([nn.Parameter(torch.ones(1))],
                                                                        lr=0.1), 100, 2)
    with pytest.raises(ValueError, match="no SparseWeights"):
        build_schedule(config(plasticity="set"), nn.Linear(3, 3), None, 100, 2)
    sched = build_schedule(config(plasticity="set"), model, opt, 100, 2)
    with pytest.raises(ValueError, match="on_task_start"):
        sched.after_step(0)
    sched.on_task_start(0)
    with pytest.raises(ValueError, match="increasing order"):
        sched.on_task_start(0)


def test_plastic_layers_leave_the_heads_alone():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = linear(6, 5, 0.5)
            self.heads = nn.ModuleList([linear(5, 2, 1.0, dale=True) for _ in range(2)])

    assert [name for name, _ in plastic_layers(Net())] == ["body"]


def test_history_is_plain_builtins_and_runs_are_deterministic():
    def once():
        model = mlp(dale=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        sched = build_schedule(config(plasticity="rigl", plasticity_interval=5, seed=4), model,
                               opt, 30, 2)
        step = 0
        for task in range(2):
            sched.on_task_start(task)
            step = run(sched, model, opt, 30, step)
        return sched.history, [l.zero_mask.clone() for _, l in plastic_layers(model)]

    h1, m1 = once()
    h2, m2 = once()
    assert h1 == h2 and all(torch.equal(a, b) for a, b in zip(m1, m2))
    keys = {"schedule", "task", "step", "layer", "pruned", "grown", "density", "nonzero_density"}
    for h in h1:
        assert set(h) == keys
        assert all(type(v) in (int, float, str) for v in h.values())


def test_state_dict_resumes_a_growth_schedule_identically():
    def make():
        model = mlp(density=0.2)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, TaskwiseGrowth(plastic_layers(model), opt, start_density=0.2,
                                          end_density=0.6, old_lr=0.5, steps_per_task=10,
                                          num_tasks=3)

    model, opt, sched = make()
    sched.on_task_start(0)
    run(sched, model, opt, 10)
    saved = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()),
             copy.deepcopy(sched.state_dict()))
    for task in (1, 2):
        sched.on_task_start(task)
        step_end = run(sched, model, opt, 10, 10 * task)
    model2, opt2, sched2 = make()
    model2.load_state_dict(saved[0])
    opt2.load_state_dict(saved[1])
    sched2.load_state_dict(saved[2])
    for task in (1, 2):
        sched2.on_task_start(task)
        run(sched2, model2, opt2, 10, 10 * task)
    assert sched.history == sched2.history and step_end == 30
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)
    for name in sched.owner:
        assert torch.equal(sched.owner[name], sched2.owner[name])


def test_erk_allocates_the_targets_of_gmp_and_growth_too():
    model = mlp(density=0.6)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    layers = plastic_layers(model)
    shapes = [tuple(l.weight.shape) for _, l in layers]
    gmp = build_schedule(config(plasticity="gmp", erk=True, gmp_final_sparsity=0.8, gmp_n=2,
                                plasticity_interval=3), model, opt, 10, 1)
    gmp.on_task_start(0)
    run(gmp, model, opt, 10)
    for (_, l), d in zip(layers, erk_densities(shapes, 0.2)):
        fan_in = live(l).shape[1]
        assert float(live(l).sum()) / live(l).numel() == round(d * fan_in) / fan_in

    model = mlp(density=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    layers = plastic_layers(model)
    grow = build_schedule(config(plasticity="grow", erk=True, grow_start_density=0.2,
                                 grow_end_density=0.6), model, opt, 5, 3)
    step = 0
    for task in range(3):
        grow.on_task_start(task)
        for (_, l), d in zip(layers, erk_densities(shapes, growth_density(task, 3, 0.2, 0.6))):
            fan_in = live(l).shape[1]
            assert float(live(l).sum()) / live(l).numel() == round(d * fan_in) / fan_in
        step = run(grow, model, opt, 5, step)


# ---------------------------------------------------------------------------------------------
# The combination: SparseWeights + Dale's law + NTE + RigL, built from a config
# ---------------------------------------------------------------------------------------------
def test_sparse_dale_nte_rigl_trains_hundreds_of_steps_without_a_violation():
    from types import SimpleNamespace

    from models import build_model

    cfg = config_from_dict({
        "dale": True, "optimizer": "nte", "nte_beta": 0.05, "plasticity": "rigl",
        "plasticity_interval": 25, "rigl_alpha": 0.4, "weight_sparsity_fc": 0.2,
        "hidden_units": 32, "hidden_layers": 2, "sparsify": True, "percent_on_fc": 0.25,
        "grow_init_scale": 1e-3, "num_batch": 2, "seed": 3})
    scenario = SimpleNamespace(input_shape=(1, 6, 6), num_heads=1, head_size=4,
                               tasks=(None, None), head_of=lambda t: 0)
    model = build_model(cfg, scenario)
    opt = build_nte_optimizer(model, cfg)
    steps = 300
    sched = build_schedule(cfg, model, opt, steps, 1)
    layers = plastic_layers(model)
    assert isinstance(sched, RigL) and len(layers) == 2
    assert layers[0][1].dale_sign is None and layers[1][1].dale_sign is not None
    all_sparse = [m for m in model.modules() if isinstance(m, SparseWeights)]
    counts = [live_counts(l).clone() for _, l in layers]
    exc = [(live(l) & exc_cols(l)).sum(1) if l.dale_sign is not None else None for _, l in layers]
    log_total = opt.log_total

    g = torch.Generator().manual_seed(0)
    templates = torch.randn(4, 1, 6, 6, generator=g)
    events = 0
    sched.on_task_start(0)
    for step in range(steps):
        y = torch.randint(0, 4, (32,), generator=g)
        x = templates[y] + 0.5 * torch.randn(32, 1, 6, 6, generator=g)
        before = [live(l).clone() for _, l in layers]
        sched.after_backward(step)
        opt.step(lambda: F.cross_entropy(model(x, None), y, reduction="none"))
        sched.after_step(step)
        for m in all_sparse:   # zero violations, every step, every constrained layer
            w = m.weight.detach()
            assert int((w[m.zero_mask] != 0).sum()) == 0
            s = m.sign_tensor()
            assert s is None or int((w * s < 0).sum()) == 0
        for i, (_, l) in enumerate(layers):
            assert torch.equal(live_counts(l), counts[i])
            if exc[i] is not None:
                assert torch.equal((live(l) & exc_cols(l)).sum(1), exc[i])
            grown = live(l) & ~before[i]
            pruned = before[i] & ~live(l)
            if grown.any():
                events += 1
                w = rows(l.weight.detach())
                st = rows(opt.state[l.weight]["log_magnitude"])
                assert torch.equal(w[grown].abs(), torch.full_like(w[grown], 1e-3))
                torch.testing.assert_close(st[grown], torch.full_like(st[grown], math.log(1e-3)))
                if l.dale_sign is not None:
                    assert bool((w[grown] * rows(l.sign_tensor().expand_as(l.weight))[grown] > 0).all())
            assert bool(torch.isneginf(rows(opt.state[l.weight]["log_magnitude"])[pruned]).all())
    assert events >= 2 * 5 and sum(h["grown"] for h in sched.history) > 0
    assert opt.log_total == log_total                   # growth and pruning leave Z alone
    assert [h["step"] for h in sched.history][::2] == list(range(24, int(0.75 * steps) - 1, 25))


# ---------------------------------------------------------------------------------------------
# NTE posterior pruning
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["magnitude", "score"])
def test_nte_prune_removes_what_the_posterior_rule_selects(rule):
    from sparse_nte.nte_prune import prune_mask

    model = mlp(dale=True, density=0.5)
    cfg = config(plasticity="nte_prune", nte_prune_rule=rule, nte_prune_rate=0.1,
                 nte_prune_z=1.0, plasticity_interval=4, plasticity_end=0.75, optimizer="nte",
                 nte_beta=0.05, lr=0.05)
    opt = build_nte_optimizer(model, cfg)
    sched = build_schedule(cfg, model, opt, 40, 1)
    layers = plastic_layers(model)
    log_total = opt.log_total
    removed_ever = [torch.zeros_like(l.zero_mask) for _, l in layers]
    sched.on_task_start(0)
    g = torch.Generator().manual_seed(1)
    for step in range(40):
        x, y = torch.randn(8, 12, generator=g), torch.randint(0, 3, (8,), generator=g)
        sched.after_backward(step)
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none"))
        expected = [prune_mask(l, opt, rule, 0.1, 1.0) for _, l in layers]
        masks = [l.zero_mask.clone() for _, l in layers]
        n_live = [int((~l.zero_mask).sum()) for _, l in layers]
        sched.after_step(step)
        event = (step + 1) % 4 == 0 and step + 1 < 30
        for i, (_, l) in enumerate(layers):
            removed_now = expected[i] if event else torch.zeros_like(expected[i])
            assert torch.equal(l.zero_mask, masks[i] | removed_now)
            assert not bool((removed_ever[i] & ~l.zero_mask).any())   # never come back
            if event and rule == "magnitude":
                assert int(removed_now.sum()) == round(0.1 * n_live[i])
            assert bool((l.weight.detach()[l.zero_mask] == 0).all())
            assert bool(torch.isneginf(opt.state[l.weight]["log_magnitude"][l.zero_mask]).all())
            removed_ever[i] |= l.zero_mask
    assert sorted({h["step"] for h in sched.history}) == [3, 7, 11, 15, 19, 23, 27]
    assert sum(h["pruned"] for h in sched.history) > 0
    assert all(h["grown"] == 0 for h in sched.history)
    assert opt.log_total == log_total


def test_nte_prune_needs_the_nte_optimizer_and_its_score():
    model = mlp()
    with pytest.raises(ValueError, match="optimizer = nte"):
        build_schedule(config(plasticity="nte_prune", optimizer="nte"), model,
                       torch.optim.SGD(model.parameters(), lr=0.1), 100, 1)
    with pytest.raises(ValueError, match="score_momentum"):
        build_schedule(config(plasticity="nte_prune", nte_prune_rule="score", optimizer="nte"),
                       model, nte(model), 100, 1)


def test_rigl_resumed_mid_task_matches_an_uninterrupted_run():
    def make():
        model = mlp(dale=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        return model, opt, RigL(plastic_layers(model), opt, interval=5, end_fraction=1.0,
                                steps_per_task=30, num_tasks=1)

    model, opt, sched = make()
    sched.on_task_start(0)
    run(sched, model, opt, 14)
    saved = [copy.deepcopy(x.state_dict()) for x in (model, opt, sched)]
    run(sched, model, opt, 16, 14)
    model2, opt2, sched2 = make()
    for obj, state in zip((model2, opt2, sched2), saved):
        obj.load_state_dict(state)
    run(sched2, model2, opt2, 16, 14)   # step 14 ends with an update: capture must be armed
    assert sched2.history == sched.history and len(sched.history) == 2 * 5
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("expand", ["origin", "init"])
def test_grow_old_lr_scales_the_nte_log_magnitude_step(expand):
    def make(old_lr):
        model = mlp(dale=True, density=0.3)
        opt = build_nte_optimizer(model, config_from_dict({"optimizer": "nte", "nte_beta": 0.05,
                                                           "lr": 0.05, "nte_expand": expand}))
        sched = TaskwiseGrowth(plastic_layers(model), opt, start_density=0.3, end_density=0.6,
                               old_lr=old_lr, steps_per_task=3, num_tasks=2)
        sched.on_task_start(0)
        run(sched, model, opt, 3)
        sched.on_task_start(1)
        return model, opt, sched

    model, opt, sched = make(0.5)
    free_model, free_opt, free_sched = make(1.0)
    layers = plastic_layers(model)
    log_before = [opt.state[l.weight]["log_magnitude"].clone() for _, l in layers]
    run(sched, model, opt, 1, 3)
    run(free_sched, free_model, free_opt, 1, 3)
    for (name, l), (_, fl), lb in zip(layers, plastic_layers(free_model), log_before):
        old = sched.owner[name] == 0
        st, free = opt.state[l.weight], free_opt.state[fl.weight]
        finite = old & torch.isfinite(lb)
        torch.testing.assert_close(st["log_magnitude"][finite],
                                   lb[finite] + 0.5 * (free["log_magnitude"][finite] - lb[finite]))
        w = st["sign"].float() * st["log_magnitude"].exp() + st.get("theta0", 0.0)
        torch.testing.assert_close(l.weight.detach()[old], w[old])    # weights follow the experts
        new = sched.owner[name] == 1
        torch.testing.assert_close(st["log_magnitude"][new], free["log_magnitude"][new])
