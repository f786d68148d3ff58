"""Invariants and nupic.torch compatibility of the k-winners and sparse-weights layers."""
import copy
import io
import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_nte.layers import (
    KWinners,
    KWinners2d,
    SparseWeights,
    SparseWeights2d,
    enforce_constraints,
    kwinners,
    kwinners2d,
    rezero_weights,
    update_boost_strength,
)
from sparse_nte.layers.sparse_weights import _MaskGrad

FAST = settings(max_examples=40, deadline=None)


# ---------------------------------------------------------------------------------------------
# A transcription of nupic.torch's documented algorithm (KWinners / KWinners2d, v0.0.6): winners
# from topk of the boosted values, outputs masked, duty cycles averaged over
# period = min(duty_cycle_period, seen). Used as an oracle where nupic.torch is correct.
# ---------------------------------------------------------------------------------------------
class NupicReference:
    def __init__(self, n, percent_on, k_inference_factor, boost_strength, boost_strength_factor,
                 duty_cycle_period):
        self.n, self.k = n, int(round(n * percent_on))
        self.k_inf = int(self.k * k_inference_factor)
        self.bs, self.bsf, self.period = boost_strength, boost_strength_factor, duty_cycle_period
        self.dc = torch.zeros(n)
        self.seen = 0

    def forward(self, x, training):
        k = self.k if training else self.k_inf
        boosted = x.detach() * torch.exp((k / self.n - self.dc) * self.bs)
        _, idx = boosted.topk(k, dim=1)
        keep = torch.zeros_like(x).scatter(1, idx, 1.0)
        y = x * keep
        if training:
            b = x.shape[0]
            self.seen += b
            period = min(self.period, self.seen)
            self.dc = (self.dc * (period - b) + (y > 0).sum(0).float()) / period
        return y

    def decay(self):
        self.bs *= self.bsf


def distinct_batch(b, n, gen):
    """Random batch with distinct values per row (no ties: topk and threshold agree)."""
    return torch.randn(b, n, generator=gen) + torch.arange(n) * 1e-4


@pytest.mark.parametrize("relu", [False])
def test_kwinners_matches_nupic_step_for_step(relu):
    gen = torch.Generator().manual_seed(1)
    n, batch = 50, 16
    ours = KWinners(n, 0.2, k_inference_factor=1.5, boost_strength=1.5, boost_strength_factor=0.9,
                    duty_cycle_period=40)
    ref = NupicReference(n, 0.2, 1.5, 1.5, 0.9, 40)
    for step in range(12):
        x = distinct_batch(batch, n, gen).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        ours.train()
        y = ours(x)
        y_ref = ref.forward(x_ref, training=True)
        torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
        g = torch.randn(batch, n, generator=gen)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)
        torch.testing.assert_close(ours.duty_cycle, ref.dc, rtol=1e-6, atol=1e-7)
        ours.eval()
        xe = distinct_batch(batch, n, gen)
        torch.testing.assert_close(ours(xe), ref.forward(xe, training=False), rtol=0, atol=0)
        if step % 4 == 3:
            update_boost_strength(ours)
            ref.decay()
    assert ours.learning_iterations == 12 * batch


@FAST
@given(b=st.integers(1, 6), n=st.integers(2, 40), frac=st.floats(0.05, 1.0), seed=st.integers(0, 999),
       ties=st.booleans())
def test_break_ties_gives_exactly_k_winners(b, n, frac, seed, ties):
    gen = torch.Generator().manual_seed(seed)
    k = max(1, int(round(n * frac)))
    x = torch.randint(-2, 3, (b, n), generator=gen).float() if ties else torch.randn(b, n, generator=gen)
    x = x + 10.0  # all positive, so every winner stays non-zero
    y = kwinners(x, torch.zeros(n), k, 0.0, break_ties=True)
    assert ((y != 0).sum(1) == k).all()
    # the winners are a top-k set: every winner >= every loser
    for row_x, row_y in zip(x, y):
        win, lose = row_x[row_y != 0], row_x[row_y == 0]
        if len(lose):
            assert win.min() >= lose.max()


@FAST
@given(b=st.integers(1, 6), n=st.integers(2, 40), frac=st.floats(0.05, 1.0), seed=st.integers(0, 999))
def test_without_break_ties_all_tied_at_threshold_win(b, n, frac, seed):
    gen = torch.Generator().manual_seed(seed)
    k = max(1, int(round(n * frac)))
    x = torch.randint(1, 4, (b, n), generator=gen).float()  # many ties, all positive
    y = kwinners(x, torch.zeros(n), k, 0.0, break_ties=False)
    kth = x.topk(k, dim=1).values[:, -1:]
    assert torch.equal(y != 0, x >= kth)
    assert ((y != 0).sum(1) >= k).all()


@FAST
@given(b=st.integers(1, 5), n=st.integers(2, 30), seed=st.integers(0, 999), bs=st.floats(0, 3),
       relu=st.booleans(), break_ties=st.booleans())
def test_gradient_flows_through_winners_only(b, n, seed, bs, relu, break_ties):
    gen = torch.Generator().manual_seed(seed)
    k = max(1, n // 3)
    x = torch.randn(b, n, generator=gen, requires_grad=True)
    dc = torch.rand(n, generator=gen)
    y = kwinners(x, dc, k, bs, break_ties=break_ties, relu=relu)
    g = torch.randn(b, n, generator=gen)
    y.backward(g)
    winners = y.detach() != 0
    assert torch.equal(x.grad[~winners], torch.zeros_like(x.grad[~winners]))
    assert torch.equal(x.grad[winners], g[winners])
    # outputs keep the original (unboosted) values
    assert torch.equal(y.detach()[winners], x.detach()[winners])
    if relu:
        assert (y.detach() >= 0).all()


def test_boosting_changes_winners_not_values():
    x = torch.tensor([[1.0, 0.9, 0.1]])
    dc = torch.tensor([1.0, 0.0, 0.0])  # unit 0 has been active all the time
    y = kwinners(x, dc, 1, boost_strength=1.0)
    assert torch.equal(y, torch.tensor([[0.0, 0.9, 0.0]]))  # 1*e^-1 < 0.9
    y0 = kwinners(x, dc, 1, boost_strength=0.0)
    assert torch.equal(y0, torch.tensor([[1.0, 0.0, 0.0]]))


def test_boosting_applies_in_eval_mode():
    kw = KWinners(3, percent_on=0.34, k_inference_factor=1.0, boost_strength=1.0)
    kw.duty_cycle.copy_(torch.tensor([1.0, 0.0, 0.0]))
    kw.eval()
    assert torch.equal(kw(torch.tensor([[1.0, 0.9, 0.1]])), torch.tensor([[0.0, 0.9, 0.0]]))


def test_inplace_modifies_input():
    x = torch.tensor([[3.0, 1.0, 2.0]])
    y = kwinners(x, torch.zeros(3), 1, 0.0, inplace=True)
    assert y.data_ptr() == x.data_ptr() and torch.equal(x, torch.tensor([[3.0, 0.0, 0.0]]))


# ---------------------------------------------------------------------------------------------
# Duty cycles
# ---------------------------------------------------------------------------------------------
def test_duty_cycle_arithmetic_by_hand():
    kw = KWinners(4, percent_on=0.5, boost_strength=0.0, duty_cycle_period=4)
    # Positive values so that the winners are exactly the chosen units.
    b1 = torch.tensor([[4.0, 3.0, 1.0, 0.5], [4.0, 0.5, 3.0, 1.0]])     # active: 0,1 | 0,2
    kw(b1)  # seen=2, period=2: dc = (0*0 + [2,1,1,0]) / 2
    torch.testing.assert_close(kw.duty_cycle, torch.tensor([1.0, 0.5, 0.5, 0.0]))
    b2 = torch.tensor([[0.5, 1.0, 3.0, 4.0]])                            # active: 2,3
    kw(b2)  # seen=3, period=3: dc = (dc*2 + [0,0,1,1]) / 3
    torch.testing.assert_close(kw.duty_cycle, torch.tensor([2 / 3, 1 / 3, 2 / 3, 1 / 3]))
    b3 = torch.tensor([[1.0, 4.0, 0.5, 3.0], [4.0, 3.0, 1.0, 0.5]])     # active: 1,3 | 0,1
    kw(b3)  # seen=5, period=min(4,5)=4: dc = (dc*2 + [1,2,0,1]) / 4
    expected = (torch.tensor([2 / 3, 1 / 3, 2 / 3, 1 / 3]) * 2 + torch.tensor([1.0, 2.0, 0.0, 1.0])) / 4
    torch.testing.assert_close(kw.duty_cycle, expected)
    assert kw.learning_iterations == 5


def test_duty_cycle_batch_larger_than_period_is_batch_average():
    kw = KWinners(4, percent_on=0.5, boost_strength=0.0, duty_cycle_period=2)
    kw(torch.tensor([[4.0, 3.0, 1.0, 0.5]]))
    batch = torch.tensor([[4.0, 3.0, 1.0, 0.5], [4.0, 0.5, 3.0, 1.0], [0.5, 1.0, 3.0, 4.0]])
    kw(batch)  # batch 3 > period 2: nupic.torch would multiply by -1; here d = counts / 3
    torch.testing.assert_close(kw.duty_cycle, torch.tensor([2 / 3, 1 / 3, 2 / 3, 1 / 3]))
    assert (kw.duty_cycle >= 0).all() and (kw.duty_cycle <= 1).all()


def test_duty_cycle_not_updated_in_eval():
    kw = KWinners(10, 0.3)
    kw.eval()
    kw(torch.randn(5, 10))
    assert kw.learning_iterations == 0 and torch.equal(kw.duty_cycle, torch.zeros(10))


def test_kwinners2d_duty_cycle_is_fraction_of_locations():
    kw = KWinners2d(2, percent_on=0.5, boost_strength=0.0, local=True, duty_cycle_period=100)
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0] = torch.tensor([[2.0, 2.0], [2.0, 0.5]])  # channel 0 wins at 3 of 4 locations
    x[0, 1] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    y = kw(x)
    assert ((y != 0).sum(1) == 1).all()
    torch.testing.assert_close(kw.duty_cycle.view(-1), torch.tensor([0.75, 0.25]))


@FAST
@given(b=st.integers(1, 3), c=st.integers(2, 8), h=st.integers(1, 4), frac=st.floats(0.1, 0.9),
       seed=st.integers(0, 99))
def test_kwinners2d_local_and_global_counts(b, c, h, frac, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, c, h, h, generator=gen) + 0.1
    if int(round(c * frac)) >= 1:
        local = KWinners2d(c, frac, boost_strength=0.0, local=True, break_ties=True)
        assert ((local(x) != 0).sum(1) == local.k).all()
    n = c * h * h
    if int(round(n * frac)) >= 1:
        glob = KWinners2d(c, frac, boost_strength=0.0, local=False, break_ties=True)
        assert ((glob(x) != 0).reshape(b, -1).sum(1) == glob.k).all() and glob.n == n


def test_kwinners2d_functional_matches_module():
    x = torch.randn(2, 4, 3, 3)
    dc = torch.rand(1, 4, 1, 1)
    y = kwinners2d(x, dc, 2, 1.0, local=True)
    kw = KWinners2d(4, 0.5, boost_strength=1.0, local=True)
    kw.duty_cycle.copy_(dc)
    kw.eval()
    kw.k_inference = 2
    assert torch.equal(kw(x), y)


# ---------------------------------------------------------------------------------------------
# k at inference, validation
# ---------------------------------------------------------------------------------------------
def test_k_inference_capped_at_n():
    kw = KWinners(10, percent_on=0.8, k_inference_factor=1.5)  # 8 * 1.5 = 12 > 10
    assert kw.k_inference == 10
    kw.eval()
    x = torch.rand(3, 10) + 0.1
    assert torch.equal(kw(x), x)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n=10, percent_on=0.0), "percent_on"),
    (dict(n=10, percent_on=1.5), "percent_on"),
    (dict(n=10, percent_on=0.01), "k = round"),
    (dict(n=10, percent_on=0.1, k_inference_factor=0.5), "k at inference"),
    (dict(n=10, percent_on=0.1, boost_strength=-1.0), "boost_strength"),
    (dict(n=10, percent_on=0.1, boost_strength_factor=1.5), "boost_strength_factor"),
    (dict(n=10, percent_on=0.1, duty_cycle_period=0), "duty_cycle_period"),
    (dict(n=0, percent_on=0.1), "positive int"),
])
def test_kwinners_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        KWinners(**kwargs)


def test_wrong_input_rank_is_value_error():
    with pytest.raises(ValueError, match=r"\(batch, 10\)"):
        KWinners(10, 0.3)(torch.randn(2, 10, 1))
    with pytest.raises(ValueError, match="channels=3"):
        KWinners2d(3, 0.3)(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="batch, n"):
        kwinners(torch.randn(3), torch.zeros(3), 1, 0.0)


@pytest.mark.parametrize("sparsity", [-0.1, 1.0, 1.5])
def test_sparse_weights_bad_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity"):
        SparseWeights(nn.Linear(4, 3), sparsity=sparsity)


def test_sparse_weights_extremes_allowed_on_request():
    sw = SparseWeights(nn.Linear(4, 3), sparsity=1.0, allow_extremes=True)
    assert sw.zero_mask.all() and (sw.weight == 0).all()


def test_sparse_weights_wrong_module():
    with pytest.raises(ValueError, match="2-d weight"):
        SparseWeights(nn.Conv2d(1, 2, 3), sparsity=0.5)
    with pytest.raises(ValueError, match="4-d weight"):
        SparseWeights2d(nn.Linear(3, 2), sparsity=0.5)


# ---------------------------------------------------------------------------------------------
# Sparse weights
# ---------------------------------------------------------------------------------------------
@FAST
@given(n_in=st.integers(1, 60), n_out=st.integers(1, 20), sparsity=st.floats(0.0, 0.99),
       seed=st.integers(0, 10_000))
def test_zero_count_per_unit_exact(n_in, n_out, sparsity, seed):
    g = torch.Generator().manual_seed(seed)
    sw = SparseWeights(nn.Linear(n_in, n_out), sparsity=sparsity, generator=g)
    expected = n_in - int(round((1 - sparsity) * n_in))
    assert (sw.zero_mask.sum(1) == expected).all()
    assert (sw.weight[sw.zero_mask] == 0).all()


@FAST
@given(c_in=st.integers(1, 6), c_out=st.integers(1, 6), ks=st.integers(1, 3),
       sparsity=st.floats(0.0, 0.95))
def test_zero_count_per_channel_exact_2d(c_in, c_out, ks, sparsity):
    sw = SparseWeights2d(nn.Conv2d(c_in, c_out, ks), sparsity=sparsity)
    fan_in = c_in * ks * ks
    expected = fan_in - int(round((1 - sparsity) * fan_in))
    assert (sw.zero_mask.reshape(c_out, -1).sum(1) == expected).all()


def test_mask_is_seedable():
    a = SparseWeights(nn.Linear(30, 10), sparsity=0.7, generator=torch.Generator().manual_seed(5))
    b = SparseWeights(nn.Linear(30, 10), sparsity=0.7, generator=torch.Generator().manual_seed(5))
    c = SparseWeights(nn.Linear(30, 10), sparsity=0.7, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.zero_mask, b.zero_mask) and not torch.equal(a.zero_mask, c.zero_mask)


def test_weight_sparsity_is_deprecated_fraction_of_nonzeros():
    with pytest.warns(DeprecationWarning, match="weight_sparsity"):
        sw = SparseWeights(nn.Linear(10, 4), weight_sparsity=0.3)
    assert sw.sparsity == pytest.approx(0.7)
    assert (sw.zero_mask.sum(1) == 7).all()


def _train(module, make_opt, steps, x_shape, seed=0, change_mask_at=None):
    gen = torch.Generator().manual_seed(seed)
    opt = make_opt(module.parameters())
    for step in range(steps):
        if step == change_mask_at:
            # a plasticity event: new zeros where momentum / Adam state is non-zero
            new = module.zero_mask.clone()
            live = (~new).nonzero()
            pick = live[torch.randperm(len(live), generator=gen)[: max(1, len(live) // 3)]]
            new[tuple(pick.t())] = True
            module.set_zero_mask(new)
        opt.zero_grad()
        out = module(torch.randn(*x_shape, generator=gen))
        (out ** 2).mean().backward()
        opt.step()
        # read through the public paths a user has: forward and state_dict
        assert (module.state_dict()["module.weight"][module.zero_mask] == 0).all()
    return module


OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-2),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_masked_weights_stay_exactly_zero_under_optimizers(name):
    torch.manual_seed(1)
    sw = SparseWeights(nn.Linear(20, 8), sparsity=0.6)
    _train(sw, OPTIMIZERS[name], 60, (16, 20))
    # without any call to rezero_weights: the tensor itself is exact after the last step
    assert (sw.module.weight.detach()[sw.zero_mask] == 0).all()
    assert (sw.module.weight.detach()[~sw.zero_mask] != 0).float().mean() > 0.9


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_mask_change_with_live_optimizer_state_never_revives(name):
    torch.manual_seed(2)
    sw = SparseWeights2d(nn.Conv2d(3, 4, 3), sparsity=0.5)
    _train(sw, OPTIMIZERS[name], 40, (4, 3, 6, 6), change_mask_at=15)
    out_weight = sw.weight.detach()
    assert (out_weight[sw.zero_mask] == 0).all()


@FAST
@given(seed=st.integers(0, 10_000), sparsity=st.floats(0.1, 0.95), momentum=st.floats(0.0, 0.99))
def test_property_sgd_momentum_weight_decay_keeps_zeros(seed, sparsity, momentum):
    g = torch.Generator().manual_seed(seed)
    sw = SparseWeights(nn.Linear(12, 6), sparsity=sparsity, generator=g)
    opt = torch.optim.SGD(sw.parameters(), lr=0.1, momentum=momentum, weight_decay=1e-3)
    for _ in range(25):
        opt.zero_grad()
        sw(torch.randn(8, 12, generator=g)).pow(2).sum().backward()
        assert (sw.module.weight.grad[sw.zero_mask] == 0).all()
        opt.step()
        assert (sw.module.weight.detach()[sw.zero_mask] == 0).all()


def test_direct_edit_of_masked_weight_is_undone_before_use():
    sw = SparseWeights(nn.Linear(6, 3), sparsity=0.5)
    with torch.no_grad():
        sw.module.weight.fill_(1.0)
    x = torch.ones(1, 6)
    expected = (~sw.zero_mask).float().sum(1) + sw.module.bias.detach()
    torch.testing.assert_close(sw(x)[0], expected)
    with torch.inference_mode():
        sw.module.weight.fill_(2.0)
        assert (sw(x) != 0).all() and (sw.module.weight[sw.zero_mask] == 0).all()


def test_deepcopy_and_pickle_keep_the_guarantee():
    sw = SparseWeights(nn.Linear(10, 5), sparsity=0.5)
    for clone in (copy.deepcopy(sw), _roundtrip_pickle(sw)):
        clone(torch.randn(4, 10)).sum().backward()
        assert (clone.module.weight.grad[clone.zero_mask] == 0).all()
        assert clone.module.weight is not sw.module.weight


def _roundtrip_pickle(module):
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(module, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def test_rezero_helpers_walk_like_nupic():
    model = nn.Sequential(SparseWeights(nn.Linear(8, 8), sparsity=0.5), nn.ReLU(),
                          SparseWeights(nn.Linear(8, 2), sparsity=0.5))
    for layer in (model[0], model[2]):
        layer.module.weight.data.fill_(1.0)  # .data edits are invisible to autograd's version counter
    model.apply(rezero_weights)
    assert all((m.module.weight.data[m.zero_mask] == 0).all() for m in (model[0], model[2]))
    model[0].module.weight.data.fill_(1.0)
    enforce_constraints(model)
    assert (model[0].module.weight.data[model[0].zero_mask] == 0).all()


def test_update_boost_strength_via_apply_decays_each_layer_once():
    model = nn.Sequential(nn.Linear(5, 20), KWinners(20, 0.25, boost_strength=2.0,
                                                     boost_strength_factor=0.5),
                          nn.Sequential(KWinners(20, 0.25, boost_strength=1.0, boost_strength_factor=0.9)))
    model.apply(update_boost_strength)
    assert model[1].boost_strength_cpu == pytest.approx(1.0)
    assert float(model[1].boost_strength) == pytest.approx(1.0)
    assert model[2][0].boost_strength_cpu == pytest.approx(0.9)


# ---------------------------------------------------------------------------------------------
# State dict
# ---------------------------------------------------------------------------------------------
def _net(seed):
    torch.manual_seed(seed)
    return nn.Sequential(SparseWeights(nn.Linear(12, 30), sparsity=0.6), KWinners(30, 0.2, duty_cycle_period=50),
                         SparseWeights(nn.Linear(30, 4), sparsity=0.3))


def test_state_dict_round_trip_resumes_identically():
    gen = torch.Generator().manual_seed(3)
    batches = [torch.randn(16, 12, generator=gen) for _ in range(10)]
    a = _net(0)
    for x in batches[:5]:
        a(x)
    a[1].update_boost_strength()
    state = copy.deepcopy(a.state_dict())
    b = _net(99)  # different masks, weights and no history
    b.load_state_dict(state)
    assert b[1].learning_iterations == a[1].learning_iterations == 80
    assert b[1].boost_strength_cpu == pytest.approx(a[1].boost_strength_cpu)
    assert torch.equal(b[0].zero_mask, a[0].zero_mask)
    for x in batches[5:]:
        torch.testing.assert_close(b(x), a(x), rtol=0, atol=0)
        torch.testing.assert_close(b[1].duty_cycle, a[1].duty_cycle, rtol=0, atol=0)


def test_nupic_state_dict_without_counter_loads():
    a = _net(0)
    state = a.state_dict()
    legacy = {k: v.half() if k.endswith("zero_mask") else v for k, v in state.items()
              if not k.endswith("_extra_state")}
    b = _net(1)
    b.load_state_dict(legacy)  # strict: nupic.torch's half-precision masks and no counter
    assert b[1].learning_iterations == 0
    assert torch.equal(b[0].zero_mask, a[0].zero_mask)


def test_kwinners2d_global_state_dict_before_first_forward():
    a = KWinners2d(3, 0.25)
    a(torch.rand(2, 3, 4, 4))
    b = KWinners2d(3, 0.25)
    b.load_state_dict(a.state_dict())
    assert (b.n, b.k, b.k_inference) == (a.n, a.k, a.k_inference) == (48, 12, 18)


def test_masked_weights_stay_exactly_zero_when_training_diverges():
    """NaN * 0 is NaN: the masks must still give exact zeros when a gradient blows up."""
    sw = SparseWeights(nn.Linear(8, 4), sparsity=0.5)
    opt = torch.optim.SGD(sw.parameters(), lr=0.1, momentum=0.9)
    sw(torch.randn(2, 8)).sum().backward()
    sw.module.weight.grad.fill_(float("nan"))   # as a diverged backward pass would leave it
    _MaskGrad(sw)(sw.module.weight)             # the post-accumulate-grad hook
    assert (sw.module.weight.grad[sw.zero_mask] == 0).all()
    assert sw.module.weight.grad[~sw.zero_mask].isnan().all()
    opt.step()
    assert (sw.weight[sw.zero_mask] == 0).all()          # exact zeros where masked
    with torch.no_grad():
        sw.module.weight.fill_(float("inf"))
    sw.enforce_constraints()
    assert (sw.module.weight[sw.zero_mask] == 0).all()


def test_layers_are_freed_when_dropped():
    """The gradient hook must not keep its layer (and its weights) alive."""
    import gc
    import weakref as wr

    sw = SparseWeights(nn.Linear(50, 40), sparsity=0.5)
    sw(torch.randn(3, 50)).sum().backward()          # installs the hook
    ref = wr.ref(sw)
    del sw
    gc.collect()
    assert ref() is None
