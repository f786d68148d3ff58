"""nupic.torch compatibility: duty-cycle entropies, prunable sparse weights, Flatten, the k-winners
base class's hooks, the ``sparse_nte.compat`` namespace and the tool that runs nupic.torch's own
tests through it. Expected values are computed here by hand or with ``math`` in float64."""
import ast
import inspect
import math
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import sparse_nte.layers as layers
from sparse_nte import stats
from sparse_nte.duty_cycle_metrics import binary_entropy, max_entropy
from sparse_nte.layers import (
    Flatten,
    HasRezeroWeights,
    KWinners,
    KWinners2d,
    KWinnersBase,
    PrunableSparseWeights,
    PrunableSparseWeights2d,
    SparseWeights,
    SparseWeights2d,
    normalize_sparse_weights,
    rezero_weights,
    update_boost_strength,
)

ROOT = Path(__file__).resolve().parent.parent
FAST = settings(max_examples=40, deadline=None)


def h_bits(p: float) -> float:
    """Binary entropy in bits, from the definition."""
    if p in (0.0, 1.0):
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


# ---------------------------------------------------------------------------------------------
# duty_cycle_metrics
# ---------------------------------------------------------------------------------------------
def test_binary_entropy_hand_values():
    p = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=torch.float64)
    entropy, total = binary_entropy(p)
    # H(1/4) = 2 - (3/4) log2 3
    quarter = 2 - 0.75 * math.log2(3)
    expected = torch.tensor([0.0, quarter, 1.0, quarter, 0.0], dtype=torch.float64)
    torch.testing.assert_close(entropy, expected, rtol=0, atol=1e-15)
    assert entropy[0].item() == 0.0 and entropy[4].item() == 0.0   # exact, not 1e-12-ish
    assert total.item() == pytest.approx(1 + 2 * quarter, abs=1e-14)
    assert entropy.dtype == torch.float64 and entropy.shape == p.shape


def test_binary_entropy_outside_unit_interval_is_nan_and_ints_are_converted():
    entropy, _ = binary_entropy(torch.tensor([-0.1, 1.5, 0.5]))
    assert entropy[:2].isnan().all() and entropy[2].item() == pytest.approx(1.0)
    entropy, total = binary_entropy(torch.tensor([0, 1, 1]))
    assert entropy.is_floating_point() and total.item() == 0.0


@FAST
@given(p=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30))
def test_binary_entropy_property_matches_definition(p):
    x = torch.tensor(p, dtype=torch.float64)
    entropy, total = binary_entropy(x)
    expected = [h_bits(v) for v in p]
    torch.testing.assert_close(entropy, torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    assert total.item() == pytest.approx(sum(expected), rel=1e-12, abs=1e-12)
    assert ((entropy >= 0) & (entropy <= 1)).all()
    torch.testing.assert_close(binary_entropy(1 - x)[0], entropy, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n, k, expected", [
    (4, 2, 4.0),
    (4, 1, 4 * (2 - 0.75 * math.log2(3))),
    (8, 1, 8 * h_bits(1 / 8)),
    (1, 0, 0.0), (1, 1, 0.0), (0, 0, 0.0), (100, 100, 0.0),
])
def test_max_entropy_hand_values(n, k, expected):
    assert max_entropy(n, k) == pytest.approx(expected, abs=1e-12)
    assert isinstance(max_entropy(n, k), float)


@pytest.mark.parametrize("n, k, match", [(4, 5, r"k .* \[0, n=4\]"), (4, -1, "k"), (-1, 0, "n")])
def test_max_entropy_bad_arguments(n, k, match):
    with pytest.raises(ValueError, match=match):
        max_entropy(n, k)


@FAST
@given(n=st.integers(2, 40), frac=st.floats(0.05, 0.95), seed=st.integers(0, 999),
       spread=st.floats(0.0, 1.0))
def test_max_entropy_bounds_every_duty_cycle_with_that_mean(n, frac, seed, spread):
    """With k of n units active per example the duty cycles average k/n; no such vector has more
    entropy than max_entropy(n, k) (concavity of H)."""
    k = max(1, min(n - 1, round(n * frac)))
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, generator=g, dtype=torch.float64)
    mean = k / n
    centred = u - u.mean()
    d = mean + spread * min(mean, 1 - mean) * centred / max(1e-12, float(centred.abs().max()))
    assert d.sum().item() == pytest.approx(k) and (d >= 0).all() and (d <= 1).all()
    assert binary_entropy(d)[1].item() <= max_entropy(n, k) + 1e-9


# ---------------------------------------------------------------------------------------------
# Entropy of k-winners layers
# ---------------------------------------------------------------------------------------------
def test_kwinners_max_entropy_uses_the_winners_the_layer_keeps():
    kw = KWinners(10, percent_on=0.15)    # k = round(1.5) = 2; nupic.torch's int(1.5) = 1
    assert kw.k == 2 and kw.winners_per_example() == 2
    kw.duty_cycle.fill_(0.2)              # every unit used equally often: the maximum
    assert float(kw.entropy()) == pytest.approx(10 * h_bits(0.2), rel=1e-6)
    assert kw.max_entropy() == pytest.approx(10 * h_bits(0.2), rel=1e-12)
    assert 10 * h_bits(0.1) < float(kw.entropy())   # above nupic.torch's "maximum" (4.69 bits)


def _half_on_map():
    """(1, 4, 3, 3) map in which, at every location, exactly two of the four channels are
    largest, and over the nine locations every channel is among them at a known count."""
    x = torch.zeros(1, 4, 3, 3)
    winners = [(0, 1), (2, 3), (0, 2), (1, 3), (0, 3), (1, 2), (0, 1), (2, 3), (0, 1)]
    for loc, pair in enumerate(winners):
        x[0, :, loc // 3, loc % 3] = 1.0
        x[0, list(pair), loc // 3, loc % 3] = 5.0 + loc
    counts = [sum(c in pair for pair in winners) for c in range(4)]   # [5, 4, 4, 5]
    return x, counts


def test_kwinners2d_local_counts_n_over_the_whole_map():
    """n = C*H*W as in nupic.torch; entropy = (H*W) sum_c H(d_c); max = n H(k/C)."""
    kw = KWinners2d(4, percent_on=0.4, local=True, boost_strength=0.0, break_ties=True)
    assert (kw.n, kw.k) == (0, 2) and kw.max_entropy() == 0.0 and float(kw.entropy()) == 0.0
    x, counts = _half_on_map()
    y = kw(x)
    assert ((y != 0).sum(1) == 2).all()
    d = [c / 9 for c in counts]
    torch.testing.assert_close(kw.duty_cycle.view(-1), torch.tensor(d))
    assert kw.n == 36 and kw.winners_per_example() == 18
    assert float(kw.entropy()) == pytest.approx(9 * sum(h_bits(v) for v in d), rel=1e-6)
    assert kw.max_entropy() == pytest.approx(36 * h_bits(0.5), rel=1e-12)   # 36 bits
    # nupic.torch's max_entropy(36, int(36 * 0.4) = 14) = 34.73 bits would be exceeded by an
    # evenly used layer (every d_c = 1/2 gives 36 bits); ours is that layer's entropy.
    kw.duty_cycle.fill_(0.5)
    assert float(kw.entropy()) == pytest.approx(kw.max_entropy(), rel=1e-6)
    assert 36 * h_bits(14 / 36) < kw.max_entropy()


def test_kwinners2d_local_takes_n_from_the_latest_map_and_global_from_the_first():
    local = KWinners2d(4, percent_on=0.5, local=True)
    local(torch.rand(2, 4, 3, 3))
    local(torch.rand(2, 4, 5, 2))
    assert local.n == 40 and local.winners_per_example() == 20
    glob = KWinners2d(4, percent_on=0.25, local=False)
    glob(torch.rand(2, 4, 3, 3))
    assert (glob.n, glob.k, glob.winners_per_example()) == (36, 9, 9)
    assert glob.max_entropy() == pytest.approx(36 * h_bits(0.25))
    with pytest.raises(ValueError, match="sized for C\\*H\\*W=36"):
        glob(torch.rand(2, 4, 5, 2))


def test_stats_record_the_local_conv_layer_like_the_layer():
    kw = KWinners2d(4, percent_on=0.4, local=True, boost_strength=0.0, break_ties=True)
    model = nn.Sequential(nn.Conv2d(1, 4, 1), kw)
    kw(_half_on_map()[0])
    rec = stats.kwinners_entropy(model)["1"]
    assert rec == {"entropy": pytest.approx(float(kw.entropy())),
                   "max_entropy": pytest.approx(kw.max_entropy()),
                   "n": 36, "k": 2, "winners": 18}
    assert rec["entropy"] <= rec["max_entropy"]


def test_kwinners2d_state_dict_carries_n():
    a = KWinners2d(4, percent_on=0.5, local=True)
    a(torch.rand(3, 4, 2, 2))
    b = KWinners2d(4, percent_on=0.5, local=True)
    b.load_state_dict(a.state_dict())
    assert (b.n, b.k, b.learning_iterations) == (16, 2, 3)
    assert b.max_entropy() == pytest.approx(a.max_entropy())


# ---------------------------------------------------------------------------------------------
# KWinnersBase: update_duty_cycle, _cached_boost_strength
# ---------------------------------------------------------------------------------------------
def test_update_duty_cycle_counts_positive_outputs_over_the_period():
    kw = KWinners(3, percent_on=0.34, duty_cycle_period=4)
    kw.update_duty_cycle(torch.tensor([[1.0, 0.0, -2.0], [3.0, 2.0, 0.0]]))   # -2 is not active
    torch.testing.assert_close(kw.duty_cycle, torch.tensor([1.0, 0.5, 0.0]))  # period 2
    kw.update_duty_cycle(torch.tensor([[0.0, 0.0, 5.0]]))                     # period 3
    torch.testing.assert_close(kw.duty_cycle, torch.tensor([2 / 3, 1 / 3, 1 / 3]))
    kw.update_duty_cycle(torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0]]))   # seen 5, period 4
    torch.testing.assert_close(kw.duty_cycle,
                               torch.tensor([(2 / 3 * 2 + 1) / 4, (1 / 3 * 2 + 2) / 4,
                                             1 / 3 * 2 / 4]))
    assert kw.learning_iterations == 5


def test_kwinners2d_update_duty_cycle_is_fraction_of_active_locations():
    kw = KWinners2d(2, percent_on=0.5, local=True, duty_cycle_period=10)
    x = torch.zeros(2, 2, 2, 2)
    x[0, 0] = torch.tensor([[1.0, 1.0], [1.0, 0.0]])   # 3 of 4 locations
    x[1, 1] = torch.tensor([[1.0, 0.0], [0.0, 0.0]])   # 1 of 4
    kw.update_duty_cycle(x)
    torch.testing.assert_close(kw.duty_cycle.view(-1), torch.tensor([3 / 8, 1 / 8]))


def test_kwinners_base_is_abstract_and_subclasses_written_for_nupic_work():
    class NoUpdate(KWinnersBase):
        def forward(self, x):
            return x

    with pytest.raises(TypeError, match="update_duty_cycle"):
        NoUpdate(0.5)

    class RowWinners(KWinnersBase):
        """A nupic.torch-style subclass: its own forward, reading _cached_boost_strength."""

        def __init__(self, n):
            super().__init__(percent_on=0.5, boost_strength=2.0, boost_strength_factor=0.5)
            self.n, self.k = n, n // 2
            self.register_buffer("duty_cycle", torch.zeros(n))

        def forward(self, x):
            y = layers.kwinners(x, self.duty_cycle, self.k, self._cached_boost_strength)
            self.update_duty_cycle(y)
            return y

        def update_duty_cycle(self, x):
            self._update_duty_cycle(x.gt(0).sum(0, dtype=torch.float), x.shape[0])

    m = RowWinners(4)
    m(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    torch.testing.assert_close(m.duty_cycle, torch.tensor([1.0, 1.0, 0.0, 0.0]))
    nn.Sequential(m).apply(update_boost_strength)
    assert m._cached_boost_strength == 1.0 and float(m.boost_strength) == 1.0
    assert m.max_entropy() == pytest.approx(4.0)


def test_forward_in_training_calls_the_overridable_update_duty_cycle():
    calls = []

    class Recording(KWinners):
        def update_duty_cycle(self, x):
            calls.append(x.detach().clone())
            super().update_duty_cycle(x)

    kw = Recording(4, percent_on=0.5, boost_strength=0.0)
    y = kw(torch.tensor([[1.0, 4.0, 3.0, 2.0]]))
    assert len(calls) == 1 and torch.equal(calls[0], y.detach())
    kw.eval()
    kw(torch.tensor([[1.0, 4.0, 3.0, 2.0]]))
    assert len(calls) == 1


def test_cached_boost_strength_drives_forward_and_follows_the_buffer():
    kw = KWinners(2, percent_on=0.5, k_inference_factor=1.0, boost_strength=0.0,
                  boost_strength_factor=0.5)
    kw.duty_cycle.copy_(torch.tensor([1.0, 0.0]))
    kw.eval()
    x = torch.tensor([[1.0, 0.5]])
    assert torch.equal(kw(x), torch.tensor([[1.0, 0.0]]))   # no boosting
    kw._cached_boost_strength = 1.0                          # 1 * e^-1 < 0.5 * e^0
    assert torch.equal(kw(x), torch.tensor([[0.0, 0.5]]))
    assert kw.boost_strength_cpu == 1.0                      # the project's alias
    other = KWinners(2, percent_on=0.5, boost_strength=3.0)
    other.update_boost_strength()
    kw.load_state_dict(other.state_dict())
    assert kw._cached_boost_strength == pytest.approx(3.0 * 0.9) == float(kw.boost_strength)


# ---------------------------------------------------------------------------------------------
# Prunable sparse weights
# ---------------------------------------------------------------------------------------------
OFF_4X4 = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])


def test_prunable_extremes_dense_and_empty():
    dense = PrunableSparseWeights(nn.Linear(6, 3), sparsity=0.0)
    assert not dense.off_mask.any() and dense.sparsity == 0.0
    empty = PrunableSparseWeights(nn.Linear(6, 3), sparsity=1.0)
    assert empty.off_mask.all() and empty.sparsity == 1.0
    assert (empty.module.weight == 0).all()
    x = torch.randn(5, 6)
    torch.testing.assert_close(empty(x), empty.module.bias.detach().expand(5, 3))


def test_off_mask_assignment_prunes_at_once_and_sets_sparsity():
    lin = nn.Linear(4, 4).double()
    sw = PrunableSparseWeights(lin, sparsity=0.0)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(16, dtype=torch.float64).view(4, 4) + 1)
    sw.off_mask = OFF_4X4                                  # an int tensor, as nupic users write
    assert sw.sparsity == 6 / 16
    assert torch.equal(sw.off_mask, OFF_4X4.bool()) and sw.off_mask.dtype == torch.bool
    w_expected = (torch.arange(16, dtype=torch.float64).view(4, 4) + 1) * (1 - OFF_4X4)
    assert torch.equal(lin.weight.detach(), w_expected)   # no rezero_weights() needed
    x = torch.randn(3, 4, dtype=torch.float64)
    torch.testing.assert_close(sw(x), x @ w_expected.T + lin.bias.detach())


def test_off_mask_is_a_copy_and_bool_masks_work_for_conv():
    sw = PrunableSparseWeights2d(nn.Conv2d(2, 2, 2, 2), sparsity=0.0)
    got = sw.off_mask
    got.fill_(True)
    assert not sw.zero_mask.any()                          # editing the copy changed nothing
    sw.off_mask = OFF_4X4.bool().view(2, 2, 2, 2)
    assert sw.sparsity == 6 / 16
    with torch.no_grad():
        sw.module.weight.fill_(1.0)
    sw.rezero_weights()
    assert sw.weight.sum().item() == 10


def test_sparsity_follows_every_change_of_the_mask():
    sw = PrunableSparseWeights(nn.Linear(5, 4), sparsity=0.4)
    assert sw.sparsity == pytest.approx(8 / 20)
    new = torch.zeros(4, 5, dtype=torch.bool)
    new[0] = True
    sw.set_zero_mask(new)
    assert sw.sparsity == 5 / 20
    sw.zero_mask[1, :2] = True                             # in-place edit of the buffer
    assert sw.sparsity == 7 / 20
    other = PrunableSparseWeights(nn.Linear(5, 4), sparsity=1.0)
    sw.load_state_dict(other.state_dict())
    assert sw.sparsity == 1.0 and (sw.module.weight == 0).all()
    sw.sparsity = 1.0                                      # consistent: accepted (schedules do it)
    with pytest.raises(ValueError, match="follows the mask"):
        sw.sparsity = 0.5


@pytest.mark.parametrize("mask, match", [
    (torch.zeros(4, 3), "shape"),
    (torch.full((4, 4), 2), "0/1"),
    (torch.full((4, 4), 0.5), "0/1"),
])
def test_bad_off_mask_is_value_error(mask, match):
    sw = PrunableSparseWeights(nn.Linear(4, 4), sparsity=0.5)
    before = sw.zero_mask.clone()
    with pytest.raises(ValueError, match=match):
        sw.off_mask = mask
    assert torch.equal(sw.zero_mask, before)


@pytest.mark.parametrize("mode", ["plain", "constrain_optimizer", "reset_positions"])
def test_pruned_weights_stay_zero_under_momentum_and_regrown_ones_learn(mode):
    """Momentum built up before the pruning keeps pushing the stored pruned weights; every read
    path (forward, .weight, state_dict) still sees exact zeros, and with constrain_optimizer, or
    the optimizer state reset at the pruned positions, so do the stored values."""
    from sparse_nte.dale import constrain_optimizer
    from sparse_nte.optim_state import reset_positions

    torch.manual_seed(3)
    sw = PrunableSparseWeights(nn.Linear(8, 6).double(), sparsity=0.0)
    opt = torch.optim.SGD(sw.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    if mode == "constrain_optimizer":
        constrain_optimizer(opt, sw)
    x = torch.randn(16, 8, dtype=torch.float64)

    def step():
        opt.zero_grad()
        sw(x).pow(2).mean().backward()
        opt.step()

    for _ in range(5):
        step()                                             # momentum everywhere
    off = torch.rand(6, 8) < 0.5
    sw.off_mask = off
    if mode == "reset_positions":
        reset_positions(opt, sw.module.weight, off)
    for _ in range(5):
        step()
        if mode != "plain":
            assert (sw.module.weight.detach()[off] == 0).all()
        w = sw.weight.detach()
        assert (w[off] == 0).all() and (sw.state_dict()["module.weight"][off] == 0).all()
        torch.testing.assert_close(sw(x), x @ w.T + sw.module.bias.detach(), rtol=0, atol=0)
    sw.off_mask = torch.zeros(6, 8, dtype=torch.bool)      # regrow everything
    step()
    assert (sw.weight.detach()[off] != 0).all()


def test_prunable_keeps_dale_signs_and_accepts_the_deprecated_argument():
    with pytest.warns(DeprecationWarning, match="weight_sparsity"):
        sw = PrunableSparseWeights(nn.Linear(4, 3), weight_sparsity=0.25)
    assert sw.sparsity == 0.75
    sw.set_presynaptic_sign(torch.tensor([1.0, -1.0, 1.0, -1.0]))
    sw.off_mask = torch.zeros(3, 4)
    with torch.no_grad():
        sw.module.weight.fill_(1.0)
    w = sw.weight.detach()
    assert (w[:, [0, 2]] == 1).all() and (w[:, [1, 3]] == 0).all()
    assert isinstance(sw, SparseWeights) and isinstance(sw, HasRezeroWeights)


# ---------------------------------------------------------------------------------------------
# Flatten, sparse-weights arguments, normalize_sparse_weights, HasRezeroWeights
# ---------------------------------------------------------------------------------------------
def test_flatten():
    x = torch.arange(24.0).view(2, 3, 4)
    y = Flatten()(x)
    assert y.shape == (2, 12) and torch.equal(y[1], torch.arange(12.0, 24.0))
    assert y.data_ptr() == x.data_ptr()                   # a view, as nupic.torch's
    xt = x.transpose(1, 2)                                 # non-contiguous: nupic.torch's fails
    assert torch.equal(Flatten()(xt), torch.stack([r.T.reshape(-1) for r in x]))
    assert Flatten()(torch.zeros(0, 3, 2)).shape == (0, 6)
    assert Flatten()(torch.arange(3.0)).shape == (3, 1)
    with pytest.raises(ValueError, match="batch dimension"):
        Flatten()(torch.tensor(1.0))


def test_weight_sparsity_and_sparsity_together_is_an_error():
    with pytest.raises(ValueError, match="not both"):
        SparseWeights(nn.Linear(4, 4), weight_sparsity=0.5, sparsity=0.0)


@pytest.mark.parametrize("make", [lambda: SparseWeights(nn.Linear(400, 50), sparsity=0.75),
                                  lambda: SparseWeights2d(nn.Conv2d(16, 50, 5), sparsity=0.75)])
def test_normalize_sparse_weights_bounds_from_live_fan_in(make):
    sw = make()
    normalize_sparse_weights(sw)
    fan = int(400 * 0.25)                                  # 16 * 5 * 5 = 400 inputs per unit too
    bound = math.sqrt(3.0) * math.sqrt(2.0 / (1 + 5)) / math.sqrt(fan)
    w = sw.module.weight.detach()
    live = w[~sw.zero_mask]
    assert (w[sw.zero_mask] == 0).all()
    assert live.abs().max() <= bound and live.abs().max() > 0.95 * bound
    b = sw.module.bias.detach()
    assert b.abs().max() <= 1 / math.sqrt(fan)


def test_has_rezero_weights_is_abstract_and_rezero_weights_walks_custom_layers():
    with pytest.raises(TypeError):
        HasRezeroWeights()

    class Custom(nn.Module, HasRezeroWeights):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def rezero_weights(self):
            self.calls += 1

    model = nn.Sequential(Custom(), nn.Sequential(Custom()))
    model.apply(rezero_weights)
    assert model[0].calls == 1 and model[1][0].calls == 1


# ---------------------------------------------------------------------------------------------
# The sparse_nte.compat namespace: nupic.torch's names and signatures
# ---------------------------------------------------------------------------------------------
# nupic.torch's public API (master a29d44f): module -> {name: leading parameters (name, default)}.
# Ours may add parameters after these, never change or reorder them.
_ = inspect.Parameter.empty
NUPIC_API = {
    "modules": {
        "KWinners": [("n", _), ("percent_on", _), ("k_inference_factor", 1.5),
                     ("boost_strength", 1.0), ("boost_strength_factor", 0.9),
                     ("duty_cycle_period", 1000), ("break_ties", False), ("relu", False),
                     ("inplace", False)],
        "KWinners2d": [("channels", _), ("percent_on", 0.1), ("k_inference_factor", 1.5),
                       ("boost_strength", 1.0), ("boost_strength_factor", 0.9),
                       ("duty_cycle_period", 1000), ("local", False), ("break_ties", False),
                       ("relu", False), ("inplace", False)],
        "SparseWeights": [("module", _), ("weight_sparsity", None), ("sparsity", None),
                          ("allow_extremes", False)],
        "SparseWeights2d": [("module", _), ("weight_sparsity", None), ("sparsity", None),
                            ("allow_extremes", False)],
        "PrunableSparseWeights": [("module", _), ("weight_sparsity", None), ("sparsity", None)],
        "PrunableSparseWeights2d": [("module", _), ("weight_sparsity", None), ("sparsity", None)],
        "Flatten": [],
        "update_boost_strength": [("m", _)],
        "rezero_weights": [("m", _)],
        "normalize_sparse_weights": [("m", _)],
    },
    "modules.k_winners": {
        "KWinnersBase": [("percent_on", _), ("k_inference_factor", 1.0), ("boost_strength", 1.0),
                         ("boost_strength_factor", 1.0), ("duty_cycle_period", 1000)],
    },
    "modules.sparse_weights": {"SparseWeightsBase": [("module", _), ("weight_sparsity", None),
                                                     ("sparsity", None)],
                               "HasRezeroWeights": []},
    "modules.prunable_sparse_weights": {"PrunableSparseWeightBase": []},
    "functions": {
        "kwinners": [("x", _), ("duty_cycles", _), ("k", _), ("boost_strength", _),
                     ("break_ties", False), ("relu", False), ("inplace", False)],
        "kwinners2d": [("x", _), ("duty_cycles", _), ("k", _), ("boost_strength", _),
                       ("local", True), ("break_ties", False), ("relu", False), ("inplace", False)],
    },
    "functions.k_winners": {"boost_activations": [("x", _), ("duty_cycles", _),
                                                  ("boost_strength", _)]},
    "duty_cycle_metrics": {"binary_entropy": [("x", _)], "max_entropy": [("n", _), ("k", _)]},
}


@pytest.mark.parametrize("module", sorted(NUPIC_API))
def test_compat_exports_nupic_names_with_their_signatures(module):
    import importlib

    mod = importlib.import_module(f"sparse_nte.compat.{module}")
    for name, params in NUPIC_API[module].items():
        obj = getattr(mod, name)
        if inspect.isclass(obj) and not params:
            continue
        sig = list(inspect.signature(obj).parameters.values())
        got = [(p.name, p.default) for p in sig[:len(params)]]
        assert got == params, f"{module}.{name}"
        assert all(p.default is not _ or p.kind == p.VAR_POSITIONAL for p in sig[len(params):]), (
            f"{module}.{name}: added parameters must be optional")


def test_compat_objects_are_sparse_nte_layers():
    from sparse_nte.compat import duty_cycle_metrics, functions, modules

    assert modules.KWinners is layers.KWinners and modules.Flatten is layers.Flatten
    assert modules.PrunableSparseWeights2d is layers.PrunableSparseWeights2d
    assert modules.k_winners.KWinnersBase is layers.KWinnersBase
    assert functions.kwinners is layers.kwinners and functions.k_winners.boost_activations \
        is layers.boost_activations
    assert duty_cycle_metrics.max_entropy is max_entropy
    assert set(modules.__all__) == set(NUPIC_API["modules"])
    assert set(functions.__all__) == {"kwinners", "kwinners2d"}


def test_sparse_exec_does_not_import_the_layers():
    """layers -> sparse_exec only: sparse_exec knows SparseWeights through a protocol."""
    tree = ast.parse((ROOT / "sparse_nte" / "sparse_exec.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                 for a in node.names}
    assert not {m for m in imported if m and m.startswith("sparse_nte")}, imported
    from sparse_nte.sparse_exec import SparseExecutable, set_sparse_exec

    model = nn.Sequential(PrunableSparseWeights(nn.Linear(4, 4), sparsity=0.5), nn.ReLU(),
                          SparseWeights2d(nn.Conv2d(1, 1, 1), sparsity=0.0), KWinners(4, 0.5))
    assert [isinstance(m, SparseExecutable) for m in model] == [True, False, False, False]
    assert set_sparse_exec(model, "off") == 1 and model[0].sparse_exec == "off"


# ---------------------------------------------------------------------------------------------
# tools/run_nupic_tests.py, on a stand-in checkout written here
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def tool():
    """tools/run_nupic_tests.py as a module (registered while the test runs: dataclasses
    look their module up in sys.modules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_nupic_tests",
                                                  ROOT / "tools" / "run_nupic_tests.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_run_nupic_tests_maps_nupic_torch_to_sparse_nte(tool, tmp_path, capsys):
    (tmp_path / "src" / "nupic" / "torch").mkdir(parents=True)
    # A "real" nupic.torch on the path must never be imported.
    (tmp_path / "src" / "nupic" / "__init__.py").write_text("raise RuntimeError('real nupic')\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "standin_test.py").write_text(textwrap.dedent("""
        import unittest
        import nupic.torch.functions as F
        from nupic.torch.modules import KWinners, PrunableSparseWeights
        from nupic.torch.modules.k_winners import KWinnersBase
        from nupic.torch.duty_cycle_metrics import max_entropy
        import sparse_nte.layers

        class StandIn(unittest.TestCase):
            def test_names_are_sparse_nte(self):
                self.assertIs(KWinners, sparse_nte.layers.KWinners)
                self.assertIs(KWinnersBase, sparse_nte.layers.KWinnersBase)
                self.assertIs(F.kwinners, sparse_nte.layers.kwinners)
                self.assertEqual(max_entropy(4, 2), 4.0)

            def test_failing(self):
                for i in range(2):
                    with self.subTest(i=i):
                        self.assertEqual(i, -1)

            def test_missing_module(self):
                with self.assertRaisesRegex(ImportError, "no sparse_nte counterpart"):
                    import nupic.torch.models  # noqa: F401
    """))
    sys.path.insert(0, str(tmp_path / "src"))
    meta_before = list(sys.meta_path)
    try:
        code = tool.main([str(tmp_path)])
    finally:
        sys.path.remove(str(tmp_path / "src"))
    out = capsys.readouterr().out
    assert code == 1
    assert "2 of 3 passed, 1 failed, 0 errors" in out
    assert "FAILED standin_test.StandIn.test_failing" in out
    assert sys.meta_path == meta_before
    assert not [m for m in sys.modules if m == "nupic" or m.startswith("nupic.")]
    assert "standin_test" not in sys.modules
    assert tool.main([str(tmp_path / "nowhere")]) == 2
