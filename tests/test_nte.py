"""The NTE optimizer (sparse_nte.nte) and its per-example machinery (sparse_nte.per_example).

The oracle is a direct transcription of the rule of Benjamin, Pehle & Daruwalla (NeurIPS 2024)
computed from torch.func per-example gradients::

    l_i <- l_i + eta * sum_b log(1 - beta s_i g_{b,i})
    l_i <- l_i + log Z - logsumexp_j l_j
    l_i <- min(l_i, log max_delta);   w_i = theta0_i + s_i exp(l_i)
"""
import copy
import inspect
import math
from dataclasses import replace

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.func import grad, vmap

from sparse_nte.config import SCHEMA, config_from_dict
from sparse_nte.layers import KWinners, SparseWeights, SparseWeights2d
from sparse_nte.nte import (DEFAULTS, LOG_MAGNITUDE, NTE, SIGN, NTESpec, build_nte_optimizer,
                            is_expert_ensemble)
from sparse_nte.optim_state import reset_positions
from sparse_nte.per_example import linear_exact, linear_series, row_bound, series_terms

FAST = settings(max_examples=25, deadline=None)


# ---------------------------------------------------------------------------------------------
# Models and the oracle
# ---------------------------------------------------------------------------------------------
def make_mlp(sizes, sparsity=0.0, dale=False, seed=0, dtype=torch.float32):
    """ReLU MLP; hidden/output layers wrapped in SparseWeights when sparse or Dale. Dale layers
    get w = s_j |w| (presynaptic sign of input j), so no weight is zeroed by the projection."""
    g = torch.Generator().manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        lin = nn.Linear(a, b).to(dtype)
        with torch.no_grad():
            lin.weight.uniform_(-0.6, 0.6, generator=g)
            lin.bias.uniform_(-0.3, 0.3, generator=g)
        if sparsity or dale:
            lin = SparseWeights(lin, sparsity=sparsity, generator=g)
            if dale:
                sign = torch.where(torch.rand(a, generator=g) < 0.7, 1.0, -1.0).to(dtype)
                with torch.no_grad():
                    lin.module.weight.abs_().mul_(sign)
                lin.set_presynaptic_sign(sign)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def linears(model):
    return [m.module if isinstance(m, SparseWeights) else m for m in model
            if isinstance(m, (nn.Linear, SparseWeights))]


def mlp_params(model):
    """name -> parameter, with names used by the functional forward."""
    out = {}
    for i, lin in enumerate(linears(model)):
        out[f"w{i}"] = lin.weight
        out[f"b{i}"] = lin.bias
    return out


def mlp_forward(p, x, n):
    h = x
    for i in range(n):
        h = F.linear(h, p[f"w{i}"], p[f"b{i}"])
        if i < n - 1:
            h = torch.relu(h)
    return h


def func_grads(forward, params, x, y):
    """Per-example gradients of the cross-entropy of each example, with torch.func."""
    detached = {k: v.detach() for k, v in params.items()}

    def loss(p, xb, yb):
        return F.cross_entropy(forward(p, xb.unsqueeze(0)), yb.unsqueeze(0))

    g = vmap(grad(loss), in_dims=(None, 0, 0))(detached, x, y)
    return {k: v.double() for k, v in g.items()}


def group_of(opt, p):
    return next(g for g in opt.param_groups if any(q is p for q in g["params"]))


def transcription(opt, params, grads, floor=None):
    """The rule written out from per-example gradients; returns name -> expected new value."""
    new_l, out = {}, {}
    for name, p in params.items():
        group = group_of(opt, p)
        if group["managed"]:
            st_ = opt.state[p]
            s = st_["sign"].double()
            like = 1.0 - group["beta"] * s * grads[name]
            if floor is not None:
                like = like.clamp(min=floor)
            new_l[name] = st_["log_magnitude"].double() + group["eta"] * like.log().sum(0)
        else:
            out[name] = p.detach().double() - group["lr"] * grads[name].mean(0)
    lse = torch.logsumexp(torch.cat([v.flatten() for v in new_l.values()]), 0)
    for name, l in new_l.items():
        p = params[name]
        st_ = opt.state[p]
        l = (l + opt.log_total - lse).clamp(max=math.log(group_of(opt, p)["max_delta"]))
        w = st_["sign"].double() * l.exp()
        if "theta0" in st_:
            w = w + st_["theta0"].double()
        out[name] = w
    return out


def ce_closure(model, x, y):
    return lambda: F.cross_entropy(model(x), y, reduction="none")


def max_err(params, expected):
    return max(float((params[k].detach().double() - v).abs().max()) for k, v in expected.items())


def build(model, expand="origin", managed="all", fast="off", **kw):
    if managed == "all":
        return NTE(model.parameters(), model, expand=expand, fast=fast, **kw)
    ws = [lin.weight for lin in linears(model)]
    bs = [lin.bias for lin in linears(model)]
    return NTE([{"params": ws}, {"params": bs, "managed": False, "lr": 0.2}], model,
               expand=expand, fast=fast, **kw)


# ---------------------------------------------------------------------------------------------
# One step equals the transcription
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", ["off", "on"])
@pytest.mark.parametrize("managed", ["all", "weights"])
@pytest.mark.parametrize("expand", ["origin", "init"])
@pytest.mark.parametrize("sparsity,dale", [(0.0, False), (0.5, False), (0.0, True), (0.4, True)])
def test_step_equals_transcription(sparsity, dale, expand, managed, fast):
    model = make_mlp([6, 9, 7, 3], sparsity, dale, seed=1)
    opt = build(model, expand, managed, fast, beta=0.05, eta=0.7, max_delta=0.45)
    params = mlp_params(model)
    gen = torch.Generator().manual_seed(2)
    for _ in range(3):
        x = torch.randn(11, 6, generator=gen)
        y = torch.randint(0, 3, (11,), generator=gen)
        expected = transcription(opt, params, func_grads(lambda p, xb: mlp_forward(p, xb, 3),
                                                         params, x, y))
        loss = opt.step(ce_closure(model, x, y))
        assert max_err(params, expected) < 1e-6
        assert loss.dim() == 0
    if fast == "on":
        assert opt.last_step["series_rows"] > 0
    else:
        assert opt.last_step["series_rows"] == 0


@pytest.mark.parametrize("fast", ["off", "on"])
def test_step_in_float64_is_tight(fast):
    """In float64 the only differences left are rounding (and a series truncation below
    fast_tol = 1e-14)."""
    model = make_mlp([5, 8, 4], 0.3, True, seed=3, dtype=torch.float64)
    opt = NTE(model.parameters(), model, beta=0.1, fast=fast, fast_tol=1e-14)
    params = mlp_params(model)
    x = torch.randn(16, 5, dtype=torch.float64)
    y = torch.randint(0, 4, (16,))
    expected = transcription(opt, params, func_grads(lambda p, xb: mlp_forward(p, xb, 2),
                                                     params, x, y))
    opt.step(ce_closure(model, x, y))
    assert max_err(params, expected) < 1e-12
    assert (opt.last_step["series_rows"] > 0) == (fast == "on")


# ---------------------------------------------------------------------------------------------
# The power series
# ---------------------------------------------------------------------------------------------
@FAST
@given(seed=st.integers(0, 10_000), scale=st.floats(1e-3, 3.0),
       tol=st.sampled_from([1e-9, 1e-7, 1e-5]), col=st.booleans())
def test_series_within_stated_tolerance(seed, scale, tol, col):
    """Rows that series_terms accepts are within tol of the exact sums (float64 isolates the
    truncation from rounding); rows it rejects are the ones whose bound fails."""
    g = torch.Generator().manual_seed(seed)
    n, out, k = 12, 9, 7
    a = torch.randn(n, k, generator=g, dtype=torch.float64)
    d = torch.randn(n, out, generator=g, dtype=torch.float64) * scale
    d[:, 0] *= 50  # one row with large gradients
    beta = 0.05
    sign = torch.where(torch.rand(out, k, generator=g) < 0.5, -1, 1).to(torch.int8)
    col_sign = torch.where(torch.rand(k, generator=g) < 0.5, -1.0, 1.0).double() if col else None
    x = row_bound(a.unsqueeze(1), d.unsqueeze(1), beta)
    n_terms, fast = series_terms(x, tol, 16)
    exact = torch.zeros(out, k, dtype=torch.float64)
    linear_exact(a, d, beta, None, None if col else sign, col_sign, 1e-300, x, 1 << 12, out=exact)
    if fast.any():
        rows = torch.nonzero(fast).flatten()
        approx = linear_series(a, d[:, rows], beta, n_terms,
                               None if col else sign[rows], col_sign)
        assert float((approx - exact[rows]).abs().max()) <= tol * (1 + 1e-6) + 1e-13
    # the rejected rows really are beyond reach of 16 terms (or diverge)
    for j in torch.nonzero(~fast).flatten().tolist():
        xj = x[:, j]
        bound = (xj ** 17 / (17 * (1 - xj))).sum() if bool((xj < 1).all()) else math.inf
        assert bound > tol / (1 + 1e-5) * (1 - 1e-9)


@pytest.mark.parametrize("col", [False, True])
def test_series_ignores_examples_with_an_all_zero_input(col):
    """An example whose layer input is all zero has a zero gradient at every weight: it adds
    exactly nothing, however large beta * d is (a silent layer below: k-WTA, ReLU, pruning).
    Its output gradient must not enter the powers (beta * d = 18.7 here: X^31 overflowed
    float32 and 0 * inf made the whole row NaN)."""
    g = torch.Generator().manual_seed(3)
    a = torch.rand(8, 6, generator=g) * 0.02
    a[3] = 0.0                                        # a silent example
    d = torch.randn(8, 2, generator=g).clamp(-0.7, 0.7)
    d[3] = 0.3333
    beta = 56.0
    sign = torch.where(torch.rand(2, 6, generator=g) < 0.5, -1, 1).to(torch.int8)
    col_sign = torch.where(torch.rand(6, generator=g) < 0.5, -1.0, 1.0) if col else None
    keep = torch.arange(8) != 3
    got = linear_series(a, d, beta, 31, None if col else sign, col_sign)
    want = linear_series(a[keep], d[keep], beta, 31, None if col else sign, col_sign)
    assert bool(torch.isfinite(got).all())
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-9)


def test_compact_series_ignores_examples_with_an_all_zero_input():
    from sparse_nte.per_example import compact_series
    from sparse_nte.sparse_exec import LiveConnections

    g = torch.Generator().manual_seed(4)
    mask = torch.rand(2, 6, generator=g) < 0.6
    live = LiveConnections(~mask)                      # True = masked
    a = torch.rand(8, 6, generator=g) * 0.02
    a[5] = 0.0
    d = torch.randn(8, 2, generator=g).clamp(-0.7, 0.7)
    d[5] = -0.6
    sign = torch.where(torch.rand(live.nnz, generator=g) < 0.5, -1.0, 1.0)
    keep = torch.arange(8) != 5
    got = compact_series(a, d, 56.0, 31, live, sign)
    want = compact_series(a[keep], d[keep], 56.0, 31, live, sign)
    assert bool(torch.isfinite(got).all())
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-9)


def test_exact_equals_log1p_sum():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(40, 6, generator=g, dtype=torch.float64)
    d = torch.randn(40, 5, generator=g, dtype=torch.float64)
    sign = torch.where(torch.rand(5, 6, generator=g) < 0.5, -1, 1).to(torch.int8)
    beta = 0.3
    x = row_bound(a.unsqueeze(1), d.unsqueeze(1), beta)
    out = torch.zeros(5, 6, dtype=torch.float64)
    clamped = linear_exact(a, d, beta, None, sign, None, 1e-6, x, 64, out=out)
    per_example = d.unsqueeze(2) * a.unsqueeze(1)
    like = (1 - beta * sign.double() * per_example)
    expected = like.clamp(min=1e-6).log().sum(0)
    assert torch.allclose(out, expected, rtol=0, atol=1e-12)
    assert clamped == int((like < 1e-6).sum())


# ---------------------------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------------------------
@FAST
@given(seed=st.integers(0, 10_000), sparsity=st.sampled_from([0.0, 0.3, 0.7]), dale=st.booleans(),
       expand=st.sampled_from(["origin", "init"]), beta=st.floats(1e-3, 0.5),
       fast=st.sampled_from(["off", "auto"]))
def test_signs_masks_and_total(seed, sparsity, dale, expand, beta, fast):
    model = make_mlp([5, 8, 6, 3], sparsity, dale, seed=seed)
    opt = NTE(model.parameters(), model, beta=beta, max_delta=100.0, expand=expand, fast=fast,
              seed=seed)
    params = list(opt.managed_params())
    signs = [opt.state[p]["sign"].clone() for p in params]
    theta0 = [opt.state[p].get("theta0") for p in params]
    masks = {id(m.weight): m.zero_mask.clone() for m in model if isinstance(m, SparseWeights)}
    gen = torch.Generator().manual_seed(seed)
    for _ in range(3):
        x = torch.randn(10, 5, generator=gen)
        y = torch.randint(0, 3, (10,), generator=gen)
        opt.step(ce_closure(model, x, y))
    total = sum(float(opt.state[p]["log_magnitude"].double().exp().sum()) for p in params)
    assert total == pytest.approx(math.exp(opt.log_total), rel=1e-5)
    for p, s0, t0 in zip(params, signs, theta0):
        delta = p.detach() - (t0 if t0 is not None else 0.0)
        assert torch.equal(opt.state[p]["sign"], s0)  # expert signs never change
        assert bool((delta * s0 >= 0).all())  # the weight never crosses theta0
        assert bool(torch.isfinite(p).all())
        if id(p) in masks:
            assert bool((p.detach()[masks[id(p)]] == 0).all())  # masked weights stay exact zeros
        if t0 is None:
            live = torch.isfinite(opt.state[p]["log_magnitude"])
            assert torch.allclose(p.detach().abs()[live].sum().double(),
                                  opt.state[p]["log_magnitude"][live].double().exp().sum(),
                                  rtol=1e-5)
    if dale:
        for m in model:
            if isinstance(m, SparseWeights):
                assert bool((m.weight * m.sign_tensor() >= 0).all())


def test_clip_bounds_magnitudes_and_total_never_exceeds_z():
    model = make_mlp([5, 8, 3], 0.0, False, seed=4)
    opt = NTE(model.parameters(), model, beta=0.2, max_delta=0.25)
    x = torch.randn(20, 5)
    y = torch.randint(0, 3, (20,))
    for _ in range(5):
        opt.step(ce_closure(model, x, y))
        total = sum(float(opt.state[p]["log_magnitude"].double().exp().sum())
                    for p in opt.managed_params())
        assert total <= math.exp(opt.log_total) * (1 + 1e-6)
        assert all(float(p.detach().abs().max()) <= 0.25 * (1 + 1e-6)
                   for p in opt.managed_params())


def guard_model():
    """A linear 'loss' whose per-example gradient is the input: g_b = x_b."""
    lin = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.5, -0.25, 0.125]]))
    return lin


def test_guard_clamps_counts_and_stays_finite():
    lin = guard_model()
    opt = NTE(lin.parameters(), lin, beta=1.0, max_delta=10.0, min_likelihood=1e-3)
    x = torch.tensor([[2.0, -3.0, 0.1],    # s*g = 2 (clamped), 3 (clamped), 0.1
                      [0.5, 0.5, 0.5]])    # 0.5, -0.5, 0.5
    s = opt.state[lin.weight]["sign"].double()
    l0 = opt.state[lin.weight]["log_magnitude"].double().clone()
    z = opt.log_total
    opt.step(lambda: lin(x).sum(1))
    assert opt.guard_count == 2 and opt.last_step["guard"] == 2
    like = (1 - s * x.double()).clamp(min=1e-3)
    l1 = l0 + like.log().sum(0)
    l1 = l1 + z - torch.logsumexp(l1.flatten(), 0)
    assert torch.allclose(opt.state[lin.weight]["log_magnitude"].double(), l1, atol=1e-6)
    assert bool(torch.isfinite(lin.weight).all())
    assert torch.equal(torch.sign(lin.weight.detach()), s.float())


@FAST
@given(seed=st.integers(0, 1000), beta=st.floats(5.0, 200.0), fast=st.sampled_from(["off", "on"]))
def test_no_nan_when_guard_is_needed(seed, beta, fast):
    model = make_mlp([4, 6, 3], 0.3, seed % 2 == 0, seed=seed)
    opt = NTE(model.parameters(), model, beta=beta, fast=fast)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(8, 4, generator=gen) * 5
    y = torch.randint(0, 3, (8,), generator=gen)
    for _ in range(2):
        opt.step(ce_closure(model, x, y))
    assert opt.guard_count > 0
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert all(bool(torch.isfinite(opt.state[p]["log_magnitude"]).any())
               for p in opt.managed_params())


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fast", ["auto", "off"])
def test_learns_a_separable_task(fast):
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 20, generator=gen) * 2.0
    y = torch.randint(0, 4, (1024,), generator=gen)
    x = centers[y] + torch.randn(1024, 20, generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 4))
    opt = NTE(model.parameters(), model, beta=0.05, fast=fast)
    for epoch in range(3):
        for i in range(0, 1024, 64):
            opt.step(ce_closure(model, x[i:i + 64], y[i:i + 64]))
    with torch.no_grad():
        acc = float((model(x).argmax(1) == y).float().mean())
    assert acc > 0.85  # chance is 0.25


# ---------------------------------------------------------------------------------------------
# Layer types and routing
# ---------------------------------------------------------------------------------------------
class TwoHeads(nn.Module):
    """Trunk and one head per task; each example goes to head t (``subset``: each head runs on
    its own examples only; otherwise every head runs on the whole batch and is gathered)."""

    def __init__(self, subset: bool):
        super().__init__()
        self.trunk = nn.Linear(5, 7)
        self.heads = nn.ModuleList([nn.Linear(7, 3), nn.Linear(7, 3)])
        self.subset = subset

    def forward(self, x, t):
        h = torch.relu(self.trunk(x))
        if not self.subset:
            out = torch.stack([head(h) for head in self.heads], 1)
            return out[torch.arange(len(t)), t]
        out = h.new_zeros(len(t), 3)
        for i, head in enumerate(self.heads):
            sel = t == i
            if bool(sel.any()):
                out = out.index_put((sel,), head(h[sel]))
        return out


def two_heads_forward(p, x, t):
    h = torch.relu(F.linear(x, p["trunk.weight"], p["trunk.bias"]))
    outs = torch.stack([F.linear(h, p[f"heads.{i}.weight"], p[f"heads.{i}.bias"])
                        for i in range(2)], 1)
    return outs[torch.arange(x.shape[0]), t]


@pytest.mark.parametrize("fast", ["off", "on"])
def test_layer_with_an_all_zero_input_takes_part_as_in_the_reference(fast):
    """Every example's input is 0: the first weight's per-example gradients are all zero, its
    bias's are not. As in the reference every tensor is updated (a zero term for the weight),
    renormalised and clipped; keep_grad leaves the (zero) gradient in .grad."""
    model = make_mlp([6, 9, 3], 0.0, False, seed=4)
    opt = NTE(model.parameters(), model, beta=0.1, max_delta=0.3, fast=fast, keep_grad=True)
    params = mlp_params(model)
    x = torch.zeros(7, 6)
    y = torch.randint(0, 3, (7,))
    grads = func_grads(lambda p, xb: mlp_forward(p, xb, 2), params, x, y)
    assert float(grads["w0"].abs().max()) == 0.0 and float(grads["b0"].abs().max()) > 0.0
    expected = transcription(opt, params, grads)
    opt.step(ce_closure(model, x, y))
    assert max_err(params, expected) < 1e-6
    assert set(opt.last_step["updated"]) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert torch.equal(params["w0"].grad, torch.zeros_like(params["w0"]))
    assert torch.allclose(params["b0"].grad.double(), grads["b0"].mean(0), atol=1e-7)


def test_all_hidden_units_dead_still_renormalise_and_clip_as_in_the_reference():
    """Every hidden ReLU is dead for the whole batch: only the output bias has non-zero
    per-example gradients. The reference still renormalises and clips every tensor, so an
    output bias of -20 (magnitude above max_delta) is clipped to -max_delta."""
    model = make_mlp([4, 5, 3], 0.0, False, seed=5)
    with torch.no_grad():
        model[0].bias.fill_(-50.0)     # pre-activations < 0 for every example below
        model[2].bias[1] = -20.0
    opt = NTE(model.parameters(), model, beta=0.05, max_delta=0.1)
    params = mlp_params(model)
    x = torch.rand(8, 4)
    y = torch.randint(0, 3, (8,))
    grads = func_grads(lambda p, xb: mlp_forward(p, xb, 2), params, x, y)
    assert all(float(grads[k].abs().max()) == 0.0 for k in ("w0", "b0", "w1"))
    expected = transcription(opt, params, grads)
    opt.step(ce_closure(model, x, y))
    assert max_err(params, expected) < 1e-6
    assert float(model[2].bias.detach()[1]) == pytest.approx(-0.1, rel=1e-6)
    assert float(model[0].bias.detach().abs().max()) == pytest.approx(0.1, rel=1e-6)
    assert len(opt.last_step["updated"]) == 4


def test_head_that_did_not_run_does_not_change_and_total_is_kept():
    """The documented exception to the reference: a head no example was routed to (its layer
    did not run) is left out of the step; the others are renormalised to Z minus its mass."""
    torch.manual_seed(0)
    model = TwoHeads(subset=True)
    opt = NTE(model.parameters(), model, beta=0.1, max_delta=10.0)  # no clipping: exact total
    head1 = [p.detach().clone() for p in model.heads[1].parameters()]
    x = torch.randn(9, 5)
    t = torch.zeros(9, dtype=torch.long)
    y = torch.randint(0, 3, (9,))
    for _ in range(3):
        opt.step(lambda: F.cross_entropy(model(x, t), y, reduction="none"))
    assert all(torch.equal(a, b) for a, b in zip(head1, model.heads[1].parameters()))
    assert "heads.1.weight" not in opt.last_step["updated"]
    total = sum(float(opt.state[p]["log_magnitude"].double().exp().sum())
                for p in opt.managed_params())
    assert total == pytest.approx(math.exp(opt.log_total), rel=1e-6)


def test_head_that_ran_without_gradient_is_renormalised_as_in_the_reference():
    """Every head runs on the whole batch and the outputs are gathered: head 1 ran but no
    example's loss depends on it (zero per-example gradients). As in the reference it takes part
    in the renormalisation and the clip, with a zero likelihood term."""
    torch.manual_seed(0)
    model = TwoHeads(subset=False)
    opt = NTE(model.parameters(), model, beta=0.1, max_delta=0.3)
    params = dict(model.named_parameters())
    x = torch.randn(9, 5)
    t = torch.zeros(9, dtype=torch.long)
    y = torch.randint(0, 3, (9,))
    detached = {k: v.detach() for k, v in params.items()}

    def loss(p, xb, tb, yb):
        return F.cross_entropy(two_heads_forward(p, xb[None], tb[None]), yb[None])

    for _ in range(2):
        g = vmap(grad(loss), in_dims=(None, 0, 0, 0))(detached, x, t, y)
        assert float(g["heads.1.weight"].abs().max()) == 0.0
        expected = transcription(opt, params, {k: v.double() for k, v in g.items()})
        head1 = model.heads[1].weight.detach().clone()
        opt.step(lambda: F.cross_entropy(model(x, t), y, reduction="none"))
        assert max_err(params, expected) < 1e-6
        assert not torch.equal(head1, model.heads[1].weight)
        assert "heads.1.weight" in opt.last_step["updated"]


@pytest.mark.parametrize("subset", [False, True])
def test_mixed_heads_equal_transcription(subset):
    torch.manual_seed(1)
    model = TwoHeads(subset)
    opt = NTE(model.parameters(), model, beta=0.1, fast="on")
    params = dict(model.named_parameters())
    x = torch.randn(10, 5)
    t = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 0])
    y = torch.randint(0, 3, (10,))
    detached = {k: v.detach() for k, v in params.items()}

    def loss(p, xb, tb, yb):
        return F.cross_entropy(two_heads_forward(p, xb[None], tb[None]), yb[None])

    g = vmap(grad(loss), in_dims=(None, 0, 0, 0))(detached, x, t, y)
    expected = transcription(opt, params, {k: v.double() for k, v in g.items()})
    opt.step(lambda: F.cross_entropy(model(x, t), y, reduction="none"))
    assert max_err(params, expected) < 1e-6


class ConvNet(nn.Module):
    def __init__(self, dale: bool):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.conv = SparseWeights2d(nn.Conv2d(2, 4, 3, padding=1, stride=2), sparsity=0.3,
                                    generator=g)
        self.fc = nn.Linear(4 * 3 * 3, 3)
        if dale:
            sign = torch.tensor([1.0, -1.0])
            with torch.no_grad():
                self.conv.module.weight.abs_().mul_(sign.view(1, -1, 1, 1))
            self.conv.set_presynaptic_sign(sign)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def conv_forward(p, x):
    h = torch.relu(F.conv2d(x, p["conv.module.weight"], p["conv.module.bias"], stride=2,
                            padding=1))
    return F.linear(h.flatten(1), p["fc.weight"], p["fc.bias"])


@pytest.mark.parametrize("dale", [False, True])
def test_conv_equals_transcription(dale):
    model = ConvNet(dale)
    opt = NTE(model.parameters(), model, beta=0.2, chunk_elements=300)
    params = dict(model.named_parameters())
    x = torch.randn(7, 2, 6, 6)
    y = torch.randint(0, 3, (7,))
    expected = transcription(opt, params, func_grads(conv_forward, params, x, y))
    opt.step(ce_closure(model, x, y))
    assert max_err(params, expected) < 1e-6
    assert bool((model.conv.weight[model.conv.zero_mask] == 0).all())


class SeqNet(nn.Module):
    """A linear layer on (B, T, in) inputs, a layer called twice on the whole batch, and a
    parameter outside any linear layer (per-feature gain)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.shared = nn.Linear(6, 6)
        self.gain = nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.proj(x)).mean(1)  # (B, 6)
        h = torch.tanh(self.shared(torch.tanh(self.shared(h))))
        return self.out(h * self.gain)


def seq_forward(p, x):
    h = torch.tanh(F.linear(x, p["proj.weight"], p["proj.bias"])).mean(1)
    for _ in range(2):
        h = torch.tanh(F.linear(h, p["shared.weight"], p["shared.bias"]))
    return F.linear(h * p["gain"], p["out.weight"], p["out.bias"])


def test_locations_shared_layers_and_generic_params_equal_transcription():
    torch.manual_seed(2)
    model = SeqNet()
    opt = NTE(model.parameters(), model, beta=0.2, chunk_elements=64)
    params = dict(model.named_parameters())
    x = torch.randn(9, 5, 4)
    y = torch.randint(0, 3, (9,))
    expected = transcription(opt, params, func_grads(seq_forward, params, x, y))
    opt.step(ce_closure(model, x, y))
    assert max_err(params, expected) < 1e-6
    assert opt.last_step["generic"] == ["gain"]


class Tied(nn.Module):
    """enc.weight is used by enc AND directly (as a decoder); dec_only is used only through
    F.linear (its module is never called)."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(4, 6)
        self.dec_only = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.enc(x))
        back = F.linear(h, self.enc.weight.t())  # (B, 4)
        return F.linear(back, self.dec_only.weight, self.dec_only.bias)


def tied_forward(p, x):
    h = torch.relu(F.linear(x, p["enc.weight"], p["enc.bias"]))
    return F.linear(F.linear(h, p["enc.weight"].t()), p["dec_only.weight"], p["dec_only.bias"])


def test_weight_used_outside_its_module_goes_to_generic_path():
    torch.manual_seed(3)
    model = Tied()
    opt = NTE(model.parameters(), model, beta=0.2)
    params = dict(model.named_parameters())
    x = torch.randn(8, 4)
    y = torch.randint(0, 3, (8,))
    for _ in range(2):
        expected = transcription(opt, params, func_grads(tied_forward, params, x, y))
        opt.step(ce_closure(model, x, y))
        assert max_err(params, expected) < 1e-6
    assert set(opt.last_step["generic"]) == {"enc.weight", "enc.bias", "dec_only.weight",
                                             "dec_only.bias"}


def test_kwinners_and_masks_equal_per_example_loop():
    """k-WTA with boosting: per-example gradients from one autograd pass per example, each on
    a copy of the model in the state before the batch (duty cycles update after a forward)."""
    torch.manual_seed(4)
    model = nn.Sequential(SparseWeights(nn.Linear(6, 12), sparsity=0.5), KWinners(12, 0.25,
                          boost_strength=1.5), nn.Linear(12, 3))
    model.train()
    x = torch.randn(10, 6)
    y = torch.randint(0, 3, (10,))
    model(torch.randn(30, 6))  # non-trivial duty cycles
    opt = NTE(model.parameters(), model, beta=0.2, fast="on")
    params = dict(model.named_parameters())
    grads = {k: [] for k in params}
    for b in range(10):
        twin = copy.deepcopy(model)
        twin_params = dict(twin.named_parameters())
        loss = F.cross_entropy(twin(x[b:b + 1]), y[b:b + 1])
        for k, g in zip(twin_params, torch.autograd.grad(loss, list(twin_params.values()))):
            grads[k].append(g.double())
    expected = transcription(opt, params, {k: torch.stack(v) for k, v in grads.items()})
    opt.step(ce_closure(model, x, y))
    assert max_err(params, expected) < 1e-6


def test_dropout_runs_and_keeps_invariants():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))
    opt = NTE(model.parameters(), model, beta=0.1)
    signs = [torch.sign(p.detach()) for p in model.parameters()]
    x = torch.randn(12, 6)
    y = torch.randint(0, 3, (12,))
    for _ in range(3):
        opt.step(ce_closure(model, x, y))
    assert all(torch.equal(torch.sign(p.detach()), s) for p, s in zip(model.parameters(), signs))


# ---------------------------------------------------------------------------------------------
# Plasticity, state, gradients
# ---------------------------------------------------------------------------------------------
def sparse_pair(dale=False, expand="origin"):
    torch.manual_seed(6)
    model = make_mlp([5, 8, 3], 0.5, dale, seed=6)
    opt = NTE(model.parameters(), model, beta=0.1, expand=expand)
    return model, opt


@pytest.mark.parametrize("expand", ["origin", "init"])
def test_reset_positions_prunes_and_grows(expand):
    model, opt = sparse_pair(expand=expand)
    layer = model[0]
    w = layer.weight
    live = torch.nonzero(~layer.zero_mask)
    dead = torch.nonzero(layer.zero_mask)
    prune_at, grow_at = tuple(live[0].tolist()), tuple(dead[0].tolist())
    new_mask = layer.zero_mask.clone()
    new_mask[prune_at] = True
    new_mask[grow_at] = False
    changed = new_mask != layer.zero_mask
    layer.set_zero_mask(new_mask)
    with torch.no_grad():
        w[grow_at] = -1e-3
    reset_positions(opt, w, changed)  # the plasticity entry point delegates to the optimizer
    st_ = opt.state[w]
    assert st_["log_magnitude"][prune_at] == -math.inf
    assert st_["log_magnitude"][grow_at] == pytest.approx(math.log(1e-3))
    assert st_["sign"][grow_at] == -1
    x = torch.randn(6, 5)
    y = torch.randint(0, 3, (6,))
    opt.step(ce_closure(model, x, y))
    assert w[prune_at] == 0
    assert w[grow_at] < 0


def test_reset_positions_dale_wrong_sign_is_dead():
    model, opt = sparse_pair(dale=True)
    layer = model[0]
    w = layer.weight
    pos = tuple(torch.nonzero(layer.zero_mask)[0].tolist())
    s = float(layer.dale_sign[pos[1]])
    mask = layer.zero_mask.clone()
    mask[pos] = False
    changed = mask != layer.zero_mask
    layer.zero_mask.copy_(mask)  # unmask without projecting yet
    with torch.no_grad():
        w[pos] = -s * 1e-3  # wrong sign for its presynaptic unit
    opt.reset_positions(w, changed)
    assert opt.state[w]["log_magnitude"][pos] == -math.inf
    assert opt.state[w]["sign"][pos] == s


def test_state_dict_round_trip_resumes_identically():
    model, opt = sparse_pair()
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(6, 5, generator=gen) * 4, torch.randint(0, 3, (6,), generator=gen))
            for _ in range(4)]
    opt.param_groups[0]["beta"] = 3.0  # large enough for the guard to fire
    for x, y in data[:2]:
        opt.step(ce_closure(model, x, y))
    assert opt.guard_count > 0
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    for x, y in data[2:]:
        opt.step(ce_closure(model, x, y))
    model2 = make_mlp([5, 8, 3], 0.5, False, seed=99)
    model2.load_state_dict(saved_model)
    opt2 = NTE(model2.parameters(), model2, beta=0.1)
    opt2.load_state_dict(saved_opt)
    assert opt2.guard_count == saved_opt["nte"]["guard_count"]
    assert opt2.state[model2[0].weight]["sign"].dtype == torch.int8
    for x, y in data[2:]:
        opt2.step(ce_closure(model2, x, y))
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert opt2.guard_count == opt.guard_count


def test_keep_grad_and_prune_score():
    model = make_mlp([5, 8, 3], 0.0, False, seed=7)
    opt = NTE(model.parameters(), model, beta=0.1, keep_grad=True, score_momentum=0.9)
    params = mlp_params(model)
    x = torch.randn(6, 5)
    y = torch.randint(0, 3, (6,))
    score = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in params.items()}
    for _ in range(2):
        g = func_grads(lambda p, xb: mlp_forward(p, xb, 2), params, x, y)
        signs = {k: opt.state[p]["sign"].double() for k, p in params.items()}
        opt.step(ce_closure(model, x, y))
        for k, p in params.items():
            assert torch.allclose(p.grad.double(), g[k].mean(0), atol=1e-6)
            score[k] = 0.9 * score[k] + 0.1 * g[k].mean(0) * signs[k]
            assert torch.allclose(opt.state[p]["prune_score"].double(), score[k], atol=1e-6)


def test_init_expansion_keeps_the_network_and_dale():
    model = make_mlp([5, 8, 3], 0.3, True, seed=8)
    before = [p.detach().clone() for p in model.parameters()]
    opt = NTE(model.parameters(), model, expand="init", noise_scale=1e-3, seed=3)
    for m in model:
        if isinstance(m, SparseWeights):
            assert bool((m.weight * m.sign_tensor() >= 0).all())
            assert bool((opt.state[m.weight]["theta0"] * m.sign_tensor() >= 0).all())
    for p, b in zip(model.parameters(), before):
        # unchanged except Dale entries smaller than the noise, which move to the noise scale
        assert float((p.detach() - b).abs().max()) <= 1e-3 * 6


# ---------------------------------------------------------------------------------------------
# Misuse and configuration
# ---------------------------------------------------------------------------------------------
def small():
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    return model, torch.randn(6, 4), torch.randint(0, 3, (6,))


def test_rejects_mean_loss_missing_closure_and_backward_in_closure():
    model, x, y = small()
    opt = NTE(model.parameters(), model)
    with pytest.raises(ValueError, match="reduction='none'"):
        opt.step(lambda: F.cross_entropy(model(x), y))
    with pytest.raises(ValueError, match="closure"):
        opt.step()

    def closure():
        loss = F.cross_entropy(model(x), y, reduction="none")
        loss.sum().backward(retain_graph=True)
        return loss

    with pytest.raises(ValueError, match="backward"):
        opt.step(closure)
    with pytest.raises(ValueError, match="not finite"):
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none") * float("nan"))
    with pytest.raises(ValueError, match="require grad"):
        opt.step(lambda: F.cross_entropy(model(x), y, reduction="none").detach())


def test_rejects_batchnorm_in_training_mode():
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 3))
    linear = [p for i in (0, 2) for p in model[i].parameters()]
    opt = NTE([{"params": linear}, {"params": model[1].parameters(), "managed": False, "lr": 0.1}],
              model)
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    with pytest.raises(ValueError, match="BatchNorm1d"):
        opt.step(ce_closure(model, x, y))
    model.eval()
    opt.step(ce_closure(model, x, y))  # eval-mode batch norm is per example


def test_rejects_bad_construction():
    model, _, _ = small()
    with pytest.raises(ValueError, match="beta"):
        NTE(model.parameters(), model, beta=-1.0)
    with pytest.raises(ValueError, match="expand"):
        NTE(model.parameters(), model, expand="zero")
    with pytest.raises(ValueError, match="fast"):
        NTE(model.parameters(), model, fast="yes")
    with pytest.raises(ValueError, match="learning rate"):
        NTE([{"params": model[0].parameters(), "managed": False}], model)
    with pytest.raises(ValueError, match="not a parameter of the model"):
        NTE([nn.Parameter(torch.ones(2))], model)
    with torch.no_grad():
        model[2].bias.zero_()
    with pytest.raises(ValueError, match="'2.bias' is zero"):
        NTE(model.parameters(), model)
    NTE(model.parameters(), model, expand="init")  # fine around init


def test_layer_called_on_different_subsets_twice_is_rejected():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 3)

        def forward(self, x):
            return torch.cat([self.lin(x[:2]), self.lin(x[2:])])

    model = Twice()
    opt = NTE(model.parameters(), model)
    with pytest.raises(ValueError, match="called 2 times"):
        opt.step(ce_closure(model, torch.randn(5, 4), torch.randint(0, 3, (5,))))


def test_build_from_config():
    model = make_mlp([6, 8, 3], 0.5, False, seed=0)
    cfg = config_from_dict({
        "optimizer": "nte", "nte_beta": 0.02, "nte_eta": 0.5, "nte_max_delta": 0.2,
        "nte_expand": "init", "nte_noise_scale": 1e-4, "nte_params": "weights",
        "nte_fast": "off", "lr": 0.05, "seed": 1, "plasticity": "nte_prune",
        "nte_prune_rule": "score", "nte_prune_momentum": 0.9, "weight_sparsity_fc": 0.5})
    opt = build_nte_optimizer(model, cfg)
    managed, other = opt.param_groups
    assert managed["managed"] and not other["managed"]
    assert {id(p) for p in managed["params"]} == {id(lin.weight) for lin in linears(model)}
    assert other["lr"] == 0.05 and managed["beta"] == 0.02 and managed["eta"] == 0.5
    assert managed["max_delta"] == 0.2 and managed["fast"] == "off"
    assert opt.expand == "init" and opt.noise_scale == 1e-4 and opt.score_momentum == 0.9
    opt_all = build_nte_optimizer(model, config_from_dict({"optimizer": "nte",
                                                           "nte_params": "all"}))
    assert len(opt_all.param_groups) == 1 and opt_all.param_groups[0]["beta"] == 0.01
    assert opt_all.score_momentum is None   # no schedule prunes by the score
    spec = NTESpec.from_config(cfg)
    from_spec = build_nte_optimizer(make_mlp([6, 8, 3], 0.5, False, seed=0), spec)
    for a, b in zip(opt.param_groups, from_spec.param_groups):
        assert {k: v for k, v in a.items() if k != "params"} == \
            {k: v for k, v in b.items() if k != "params"}
    assert (from_spec.expand, from_spec.noise_scale, from_spec.score_momentum, from_spec.seed) \
        == ("init", 1e-4, 0.9, 1)
    with pytest.raises(ValueError, match="nte_fast"):
        config_from_dict({"optimizer": "nte", "nte_fast": "maybe"})
    with pytest.raises(ValueError, match="'lr'"):
        build_nte_optimizer(model, replace(spec, lr=0.0))
    with pytest.raises(ValueError, match="optimizer"):
        build_nte_optimizer(model, config_from_dict({"optimizer": "sgd"}))
    with pytest.raises(TypeError, match="config_from_dict"):
        build_nte_optimizer(model, {"optimizer": "nte"})   # plain mappings are not validated


def test_schema_defaults_are_the_optimizers_own():
    """The nte_* keys of the config schema default to the NTE constructor's defaults."""
    signature = inspect.signature(NTE.__init__).parameters
    for name in ("beta", "eta", "max_delta", "expand", "noise_scale", "fast"):
        assert DEFAULTS[name] == signature[name].default
        assert SCHEMA[f"nte_{name}"].default == DEFAULTS[name]
    assert SCHEMA["nte_params"].default == DEFAULTS["params"] == "weights"


def test_expert_ensemble_protocol():
    model = make_mlp([5, 8, 3], 0.3, False, seed=0)
    ws = [lin.weight for lin in linears(model)]
    bs = [lin.bias for lin in linears(model)]
    opt = NTE([{"params": ws}, {"params": bs, "managed": False, "lr": 0.1}], model)
    assert is_expert_ensemble(opt) and opt.takes_example_losses
    assert not is_expert_ensemble(torch.optim.SGD(model.parameters(), lr=0.1))
    assert all(opt.multiplicative(w) for w in ws)
    assert not any(opt.multiplicative(b) for b in bs)
    assert set(opt.state[ws[0]]) == {LOG_MAGNITUDE, SIGN}


def test_dale_sign_change_needs_resync():
    model = make_mlp([5, 8, 3], 0.3, True, seed=10)
    opt = NTE(model.parameters(), model, beta=0.1)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    opt.step(ce_closure(model, x, y))
    layer = model[0]
    flipped = layer.dale_sign.clone()
    flipped[0] = -flipped[0]
    layer.set_presynaptic_sign(flipped)
    with pytest.raises(ValueError, match="resync"):
        opt.step(ce_closure(model, x, y))
    opt.resync()
    opt.step(ce_closure(model, x, y))
    assert bool((layer.weight * layer.sign_tensor() >= 0).all())
    col = opt.state[layer.weight]["sign"][:, 0]
    assert bool((col == flipped[0]).all())


def test_reset_positions_arguments():
    model = make_mlp([5, 8, 3], 0.3, False, seed=11)
    ws = [lin.weight for lin in linears(model)]
    bs = [lin.bias for lin in linears(model)]
    opt = NTE([{"params": ws}, {"params": bs, "managed": False, "lr": 0.1}], model)
    opt.reset_positions(bs[0], torch.ones_like(bs[0], dtype=torch.bool))  # unmanaged: no state
    with pytest.raises(ValueError, match="bool tensor"):
        opt.reset_positions(ws[0], torch.ones_like(ws[0]))
    with pytest.raises(ValueError, match="not trained"):
        opt.reset_positions(nn.Parameter(torch.ones(2)), torch.ones(2, dtype=torch.bool))


def test_unmanaged_sparse_weights_keep_their_constraints():
    """A SparseWeights weight left to plain SGD (managed=False) still has exact zeros at masked
    entries and Dale-consistent signs right after the step."""
    model = make_mlp([5, 8, 3], 0.5, True, seed=12)
    lins = linears(model)
    opt = NTE([{"params": [lins[1].weight, lins[1].bias]},
               {"params": [lins[0].weight, lins[0].bias], "managed": False, "lr": 5.0}], model)
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    before = lins[0].weight.detach().clone()
    opt.step(ce_closure(model, x, y))
    layer = model[0]
    assert not torch.equal(before, layer.module.weight)
    assert bool((layer.module.weight[layer.zero_mask] == 0).all())
    assert bool((layer.module.weight * layer.sign_tensor() >= 0).all())


class TwoConvs(nn.Module):
    """'same' padding (captured, unfold path) and a grouped convolution (generic path)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 4, 3, padding="same")
        self.b = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(torch.tanh(self.b(torch.tanh(self.a(x)))).flatten(1))


def two_convs_forward(p, x):
    h = torch.tanh(F.conv2d(x, p["a.weight"], p["a.bias"], padding="same"))
    h = torch.tanh(F.conv2d(h, p["b.weight"], p["b.bias"], padding=1, groups=2))
    return F.linear(h.flatten(1), p["fc.weight"], p["fc.bias"])


def test_same_padding_and_grouped_convolutions_equal_transcription():
    torch.manual_seed(13)
    model = TwoConvs()
    opt = NTE(model.parameters(), model, beta=0.2)
    params = dict(model.named_parameters())
    x = torch.randn(6, 2, 5, 5)
    y = torch.randint(0, 3, (6,))
    expected = transcription(opt, params, func_grads(two_convs_forward, params, x, y))
    opt.step(ce_closure(model, x, y))
    assert max_err(params, expected) < 1e-6
    assert set(opt.last_step["generic"]) == {"b.weight", "b.bias"}
