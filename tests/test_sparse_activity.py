"""k-WTA selection on the winners only, and dropout drawn for the active units only.

* The compact k-WTA selection (scatter the k winners into zeros) gives exactly the output,
  input gradient and duty cycles of the general rule (threshold at the k-th largest boosted
  value, losers zeroed), and falls back to it on ties and NaN.
* ``dropout_draws = active`` is dropout: every non-zero unit is kept independently with
  probability 1 - p and scaled by 1 / (1 - p); zeros stay zero; the k-WTA + dropout fused on the
  winners equals the same draws applied one after the other.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models.blocks import Dropout, HiddenBlock
from sparse_nte.layers import KWinners
from sparse_nte.layers.functional import kwinners, kwinners_with_indices, winner_indices

FAST = settings(max_examples=60, deadline=None)


def reference(x, duty, k, boost, relu):
    """nupic.torch's rule written directly: threshold by kthvalue, losers masked."""
    boosted = x.detach() * torch.exp(-boost * duty)
    threshold = boosted.kthvalue(x.shape[1] - k + 1, dim=1, keepdim=True).values
    off = boosted < threshold
    if relu:
        off = off | (boosted <= 0)
    return x.masked_fill(off, 0)


@FAST
@given(rows=st.integers(1, 6), n=st.sampled_from([2, 9, 64, 300]), frac=st.floats(0.0, 0.5),
       boost=st.sampled_from([0.0, 1.5]), relu=st.booleans(), seed=st.integers(0, 2**16))
def test_compact_selection_equals_the_threshold_rule(rows, n, frac, boost, relu, seed):
    k = max(1, int(frac * n))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=g).requires_grad_()
    duty = torch.rand(n, generator=g) * 0.2
    y, idx = kwinners_with_indices(x, duty, k, boost, relu=relu)
    assert idx is not None               # continuous values: no ties, the compact path ran
    ref_x = x.detach().clone().requires_grad_()
    ref = reference(ref_x, duty, k, boost, relu)
    assert torch.equal(y, ref)
    gy = torch.randn(rows, n, generator=g)
    y.backward(gy)
    ref.backward(gy)
    assert torch.equal(x.grad, ref_x.grad)


def test_ties_and_nan_take_the_general_path():
    x = torch.tensor([[3.0, 2.0, 2.0, 1.0], [4.0, 0.0, -1.0, 5.0]])
    assert winner_indices(x, 2) is None                 # a tie at the threshold of row 0
    y = kwinners(x, torch.zeros(4), 2, 0.0)
    assert torch.equal(y, torch.tensor([[3.0, 2.0, 2.0, 0.0], [4.0, 0.0, 0.0, 5.0]]))
    nan = torch.tensor([[1.0, float("nan"), 0.5, 0.2]])
    assert winner_indices(nan, 1) is None
    assert torch.equal(kwinners(nan, torch.zeros(4), 1, 0.0).isnan(), nan.isnan())


def test_duty_cycles_count_the_same_winners_on_both_paths():
    torch.manual_seed(0)
    fast, slow = KWinners(500, 0.02, boost_strength=1.0), KWinners(500, 0.02, boost_strength=1.0)

    class Recording(KWinners):   # an overridden update_duty_cycle forces the general count
        def update_duty_cycle(self, y):
            super().update_duty_cycle(y)

    slow = Recording(500, 0.02, boost_strength=1.0)
    for _ in range(5):
        x = torch.randn(32, 500)
        assert torch.equal(fast(x), slow(x))
        assert torch.equal(fast.duty_cycle, slow.duty_cycle)
    assert int((fast.duty_cycle > 0).sum()) > 10


def test_active_dropout_keeps_units_with_the_documented_probability_and_scale():
    torch.manual_seed(1)
    p = 0.3
    drop = Dropout(p, draws="active")
    x = torch.zeros(400, 500)
    x[:, ::5] = torch.rand(400, 100) + 0.5                 # 20% active units
    y = drop(x)
    assert torch.equal(y[x == 0], torch.zeros(int((x == 0).sum())))
    kept = (y != 0) & (x != 0)
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    frac = float(kept.sum()) / float((x != 0).sum())
    assert abs(frac - (1 - p)) < 4 * ((p * (1 - p)) / float((x != 0).sum())) ** 0.5
    # gradient: through kept units only, scaled
    xr = x.clone().requires_grad_()
    torch.manual_seed(2)
    yr = drop(xr)
    yr.backward(torch.ones_like(yr))
    torch.testing.assert_close(xr.grad, (yr.detach() != 0).float() / (1 - p))


def test_active_draws_one_uniform_per_nonzero_unit():
    x = torch.zeros(3, 1000)
    x[:, :7] = 1.0
    torch.manual_seed(3)
    Dropout(0.5, draws="active")(x)
    after = torch.rand(1)
    torch.manual_seed(3)
    torch.rand(21, dtype=torch.float64)
    assert torch.equal(after, torch.rand(1))


def test_kwta_and_dropout_fused_on_the_winners_is_the_same_operation():
    """The fused block draws one uniform per winner; applying those draws to the unfused
    k-WTA output gives the same result."""
    layer = torch.nn.Identity()
    kw = KWinners(300, 0.02, boost_strength=0.5)
    block = HiddenBlock(layer, kw, 0.5, dropout_draws="active").train()
    x = torch.randn(16, 300)
    torch.manual_seed(4)
    fused = block(x)
    ref_kw = KWinners(300, 0.02, boost_strength=0.5)
    winners = ref_kw(x)
    _, idx = kwinners_with_indices(x, torch.zeros(300), 6, 0.0)
    assert idx is not None
    torch.manual_seed(4)
    scale = (torch.rand(idx.shape, dtype=torch.float64) < 0.5).float() * 2.0
    expected = torch.zeros_like(x).scatter(1, idx, winners.gather(1, idx) * scale)
    assert torch.equal(fused, expected)
    assert torch.equal(block.activation.duty_cycle, ref_kw.duty_cycle)   # before the dropout


def test_dropout_draws_all_is_still_torch_dropout_and_bad_values_are_refused():
    x = torch.randn(20, 30)
    torch.manual_seed(5)
    ref = F.dropout(x, 0.4, training=True)
    torch.manual_seed(5)
    assert torch.equal(Dropout(0.4, draws="all")(x), ref)
    with pytest.raises(ValueError, match="draws must be one of"):
        Dropout(0.4, draws="some")


@pytest.mark.parametrize("relu", [False, True])
def test_kwta_then_dropout_with_all_draws_is_torch_dropout_bit_for_bit(relu):
    """The default draws: HiddenBlock's k-WTA + dropout (fused on the winners where the mask
    is drawn as uniform doubles) equals k-WTA followed by F.dropout: output, gradient and the
    generator's state afterwards."""
    kw = KWinners(400, 0.01, boost_strength=1.0, relu=relu)
    ref_kw = KWinners(400, 0.01, boost_strength=1.0, relu=relu)
    block = HiddenBlock(torch.nn.Identity(), kw, 0.4).train()
    for seed in range(3):
        x = torch.randn(32, 400).requires_grad_()
        xr = x.detach().clone().requires_grad_()
        g = torch.randn(32, 400)
        torch.manual_seed(seed)
        y = block(x)
        after = torch.rand(2)
        torch.manual_seed(seed)
        ref = F.dropout(ref_kw(xr), 0.4, training=True)
        ref_after = torch.rand(2)
        assert torch.equal(y, ref) and torch.equal(after, ref_after)
        y.backward(g)
        ref.backward(g)
        assert torch.equal(x.grad, xr.grad)
        assert torch.equal(kw.duty_cycle, ref_kw.duty_cycle)
