"""The faster computations of the training loop give exactly what they replace: k-WTA
thresholds from ``topk`` equal ``kthvalue``'s, losers zeroed with ``where`` equal
``masked_fill``'s, and the models' dropout equals ``F.dropout`` bit for bit (output, gradient
and the random generator's state afterwards)."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models import build_model
from models.blocks import Dropout
from sparse_nte.config import config_from_dict
from sparse_nte.layers import KWinners, kwinners, kwinners2d
from sparse_nte.layers.functional import _kth_largest


def _values(draw, shape):
    """Integers in [-3, 3] (many ties) with some NaN and +-inf sprinkled in."""
    n = int(torch.tensor(shape).prod())
    ints = draw(st.lists(st.integers(-3, 3), min_size=n, max_size=n))
    special = draw(st.lists(st.sampled_from([None, None, None, None, float("nan"), float("inf"),
                                             -float("inf")]), min_size=n, max_size=n))
    x = torch.tensor(ints, dtype=torch.float32)
    for i, v in enumerate(special):
        if v is not None:
            x[i] = v
    return x.view(shape)


@st.composite
def _rows_and_k(draw):
    rows = draw(st.integers(1, 4))
    n = draw(st.sampled_from([1, 5, 64, 130, 300]))
    k = draw(st.one_of(st.integers(1, max(1, n // 64)), st.integers(1, n)))
    return _values(draw, (rows, n)), k


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))


@settings(max_examples=150, deadline=None)
@given(_rows_and_k())
def test_kth_largest_equals_kthvalue_with_ties_nan_and_inf(case):
    x, k = case
    n = x.shape[1]
    assert _same(_kth_largest(x, k, 1), x.kthvalue(n - k + 1, dim=1, keepdim=True).values)


def test_kth_largest_along_channels_of_feature_maps():
    x = torch.randn(3, 200, 4, 5)
    x[0, :7] = 1.5                                   # ties among the winners
    for k in (1, 3, 50):
        expected = x.kthvalue(200 - k + 1, dim=1, keepdim=True).values
        assert torch.equal(_kth_largest(x, k, 1), expected)


def _reference_kwinners(x, duty, k, boost, relu):
    """nupic.torch's rule written directly: threshold = kthvalue, losers masked_fill'ed."""
    boosted = x.detach() * torch.exp(-boost * duty) if boost > 0 else x.detach()
    threshold = boosted.kthvalue(x.shape[1] - k + 1, dim=1, keepdim=True).values
    off = boosted < threshold
    if relu:
        off = off | (boosted <= 0)
    return x.masked_fill(off, 0)


@pytest.mark.parametrize("n,k", [(4000, 4), (1000, 15), (1000, 50), (64, 1), (10, 3)])
@pytest.mark.parametrize("relu", [False, True])
def test_kwinners_output_and_gradient_unchanged(n, k, relu):
    gen = torch.Generator().manual_seed(n + k)
    x = torch.randn(16, n, generator=gen).round(decimals=1).requires_grad_()   # ties
    duty = torch.rand(n, generator=gen) * 0.01
    g = torch.randn(16, n, generator=gen)
    ref_x = x.detach().clone().requires_grad_()
    y = kwinners(x, duty, k, 1.0, relu=relu)
    ref = _reference_kwinners(ref_x, duty, k, 1.0, relu)
    assert torch.equal(y, ref)
    y.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad, ref_x.grad)


def test_kwinners2d_local_unchanged():
    x = torch.randn(2, 128, 3, 3).round(decimals=1)
    duty = torch.rand(1, 128, 1, 1) * 0.01
    boosted = x * torch.exp(-duty)
    ref = x.masked_fill(boosted < boosted.kthvalue(128 - 2 + 1, dim=1, keepdim=True).values, 0)
    assert torch.equal(kwinners2d(x, duty, 2, 1.0, local=True), ref)


def test_kwinners_inplace_still_writes_into_the_input():
    x = torch.randn(4, 256)
    y = kwinners(x, torch.zeros(256), 3, 0.0, inplace=True)
    assert y.data_ptr() == x.data_ptr() and int((y != 0).sum()) == 12


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "conv"])
def test_dropout_is_bit_identical_to_functional_dropout(p, layout):
    base = torch.randn(6, 5, 4, 3) if layout == "conv" else torch.randn(37, 129)
    x = base.requires_grad_()
    view = x.transpose(0, 1) if layout == "transposed" else x
    g = torch.randn(view.shape)

    torch.manual_seed(11)
    ref = F.dropout(view, p, training=True)
    ref_after = torch.rand(3)
    (ref_grad,) = torch.autograd.grad(ref, x, g)

    torch.manual_seed(11)
    out = Dropout(p)(view)
    out_after = torch.rand(3)
    (grad,) = torch.autograd.grad(out, x, g)

    assert torch.equal(out, ref) and torch.equal(grad, ref_grad)
    assert torch.equal(out_after, ref_after)            # the generator advanced the same way


def test_dropout_in_eval_mode_and_p_zero_is_identity():
    x = torch.randn(5, 7)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0)(x), x)


def test_model_training_step_matches_torch_dropout():
    """A model step with the models' Dropout equals the same step with nn.Dropout."""
    cfg = dict(config_from_dict({"hidden_units": 64, "hidden_layers": 2, "dropout": 0.5,
                                 "sparsify": True, "percent_on_fc": 0.05}))
    scenario = type("S", (), {"input_shape": (1, 8, 8), "num_heads": 1, "head_size": 10,
                              "tasks": (None,), "head_of": staticmethod(lambda t: 0)})()
    models = [build_model(cfg, scenario) for _ in range(2)]
    for block in models[1].blocks:
        block.dropout = nn.Dropout(block.dropout.p)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    grads = []
    for model in models:
        torch.manual_seed(5)
        F.cross_entropy(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
    assert isinstance(models[0].blocks[0].dropout, Dropout)


def test_kwinners_module_counts_winners_exactly_on_the_topk_path():
    layer = KWinners(4000, percent_on=0.001, boost_strength=0.0)   # k = 4: the topk path
    y = layer(torch.randn(64, 4000))
    assert torch.equal((y != 0).sum(1), torch.full((64,), 4))
