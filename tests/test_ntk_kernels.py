"""Empirical NTK against kernels built from explicit Jacobians of the real model (float64):
every mode, per-layer sums, chunking, masked entries, factored path, state left unchanged."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ntk_cases import (assert_close, inputs, live_columns, make_model, reference_jacobian,
                       reference_kernel)
from sparse_nte.ntk import NetworkFunction, empirical_ntk, jacobian
from sparse_nte.ntk.features import Factored, extract


@pytest.mark.parametrize("case", ["mlp", "cnn", "mlp_dense_relu"])
def test_full_trace_and_diagonal_equal_explicit_jacobian_products(case):
    model = make_model(case)
    x1, t1 = inputs(5, seed=1)
    x2, t2 = inputs(4, seed=2)
    ref = reference_kernel(model, x1, t1, x2, t2)
    assert_close(empirical_ntk(model, x1, x2, t1=t1, t2=t2), ref)
    assert_close(empirical_ntk(model, x1, x2, t1=t1, t2=t2, mode="trace"),
                 torch.einsum("abkk->ab", ref))
    ref_sym = reference_kernel(model, x1, t1)
    assert_close(empirical_ntk(model, x1, t1=t1), ref_sym)
    assert_close(empirical_ntk(model, x1, t1=t1, mode="diagonal"),
                 torch.einsum("aakl->akl", ref_sym))


@pytest.mark.parametrize("case", ["mlp", "cnn"])
def test_per_layer_kernels_are_each_layers_jacobian_block_and_sum_to_total(case):
    model = make_model(case)
    x, t = inputs(4, seed=3)
    layers = empirical_ntk(model, x, t1=t, per_layer=True)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert list(layers) == list(dict.fromkeys(n.rpartition(".")[0] for n, _ in named))
    j = reference_jacobian(model, x, t, live_only=False)
    live = live_columns(model)
    expected, start = {}, 0
    for name, p in named:                      # each tensor's own columns of J
        cols = slice(start, start + p.numel())
        start += p.numel()
        block = j[:, :, cols][:, :, live[cols]]
        layer = name.rpartition(".")[0]
        expected[layer] = expected.get(layer, 0) + torch.einsum("akp,blp->abkl", block, block)
    for layer, kernel in layers.items():
        assert_close(kernel, expected[layer])
    assert_close(sum(layers.values()), empirical_ntk(model, x, t1=t), rtol=1e-12)


@settings(max_examples=12, deadline=None)
@given(n1=st.integers(1, 6), n2=st.integers(1, 5), chunk=st.integers(1, 7),
       mode=st.sampled_from(["full", "trace"]), seed=st.integers(0, 3))
def test_chunking_does_not_change_the_kernel(n1, n2, chunk, mode, seed):
    model = make_model("mlp", seed=seed)
    x1, t1 = inputs(n1, seed=seed)
    x2, t2 = inputs(n2, seed=seed + 10)
    whole = empirical_ntk(model, x1, x2, t1=t1, t2=t2, mode=mode, chunk=max(n1, n2))
    assert_close(empirical_ntk(model, x1, x2, t1=t1, t2=t2, mode=mode, chunk=chunk), whole,
                 rtol=1e-12)
    sym = empirical_ntk(model, x1, t1=t1, mode=mode, chunk=chunk)
    assert_close(sym, empirical_ntk(model, x1, t1=t1, mode=mode, chunk=n1), rtol=1e-12)
    flip = (1, 0, 3, 2) if mode == "full" else (1, 0)
    assert_close(sym, sym.permute(*flip), rtol=1e-12)   # symmetric blocks mirrored correctly


def test_small_budget_gives_the_same_kernel():
    model = make_model("mlp")
    x, t = inputs(6, seed=4)
    ref = empirical_ntk(model, x, t1=t)
    assert_close(empirical_ntk(model, x, t1=t, budget=64), ref, rtol=1e-12)   # tiny blocks


def test_masked_entries_contribute_nothing():
    model = make_model("mlp", dale=False)
    x, t = inputs(4, seed=5)
    sparse = [b.layer for b in model.blocks]
    assert all(bool(layer.zero_mask.any()) for layer in sparse)
    with_masked = reference_jacobian(model, x, t, live_only=False)
    full_kernel = torch.einsum("akp,blp->abkl", with_masked, with_masked)
    kernel = empirical_ntk(model, x, t1=t)
    assert_close(kernel, reference_kernel(model, x, t))
    # the masked columns have non-zero derivatives in the real model: counting them would differ
    assert float((kernel - full_kernel).abs().max()) > 1e-3 * float(kernel.abs().max())
    # the same network with those entries made live (still zero) has the full kernel
    for layer in sparse:
        layer.set_zero_mask(torch.zeros_like(layer.zero_mask))
    assert_close(empirical_ntk(model, x, t1=t), full_kernel)


def test_linear_layers_take_the_factored_path_and_heads_with_mixed_routing_do_not():
    model = make_model("mlp")
    fn = NetworkFunction(model)
    x, t = inputs(6, seed=6)
    assert len(set(t.tolist())) == 2
    feats = extract(fn, x, t)
    kinds = {name: type(f) for name, f in feats.per_param.items()}
    assert all(kinds[n] is Factored for n in fn.names if n.startswith("blocks."))
    assert not any(kinds[n] is Factored for n in kinds if n.startswith("heads."))
    same = extract(fn, x, torch.zeros(6, dtype=torch.long))
    assert all(type(f) is Factored for f in same.per_param.values())
    assert not any(n.startswith("heads.1") for n in same.per_param)   # unused head: no rows


def test_training_mode_kernel_leaves_duty_cycles_and_counters_unchanged():
    model = make_model("mlp").train()
    x, t = inputs(5, seed=7)
    before = {n: b.clone() for n, b in model.named_buffers()}
    counters = [m.learning_iterations for m in model.modules() if hasattr(m, "duty_cycle")]
    k1 = empirical_ntk(model, x, t1=t, chunk=2)
    k2 = empirical_ntk(model, x, t1=t, chunk=5)
    assert all(torch.equal(before[n], b) for n, b in model.named_buffers())
    assert counters == [m.learning_iterations for m in model.modules() if hasattr(m, "duty_cycle")]
    assert_close(k1, k2, rtol=1e-12)
    assert model.training
    # training mode keeps k winners, eval mode k_inference: different networks, different kernels
    assert float((k1 - empirical_ntk(model.eval(), x, t1=t)).abs().max()) > 0


def test_jacobian_matches_reference_with_and_without_masked_columns():
    model = make_model("cnn")
    x, t = inputs(3, seed=8)
    assert_close(jacobian(model, x, t), reference_jacobian(model, x, t))
    full = jacobian(model, x, t, live_only=False)
    ref_full = reference_jacobian(model, x, t, live_only=False)
    live = live_columns(model)
    assert_close(full[:, :, live], ref_full[:, :, live])
    assert bool((full[:, :, ~live] == 0).all())


def test_invalid_arguments_are_explained():
    model = make_model("mlp")
    x, t = inputs(3)
    with pytest.raises(ValueError, match="mode must be one of"):
        empirical_ntk(model, x, t1=t, mode="eigen")
    with pytest.raises(ValueError, match="pass x2=None"):
        empirical_ntk(model, x, x, t1=t, t2=t, mode="diagonal")
    with pytest.raises(ValueError, match="t must be an integer tensor of shape"):
        empirical_ntk(model, x, t1=t[:2])
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        empirical_ntk(model, x, t1=t, chunk=0)
    frozen = make_model("mlp").requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        empirical_ntk(frozen, x, t1=t)
