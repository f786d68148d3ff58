"""Network builders: architectures of the original project, head routing per scenario setting,
activity measured before dropout, determinism, and Dale's law / mask invariants under training."""
import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from models import ADDED_KEYS, CNN, MLP, MODEL_KEYS, ExcitatoryKWinners, NetSpec, build_model
from sparse_nte.dale import constrain_optimizer, num_excitatory
from sparse_nte.layers import KWinners, KWinners2d, SparseWeights, SparseWeights2d, SparseWeightsBase
from sparse_nte.stats import model_stats
from scenario_cases import FakeScenario




def config(**overrides):
    cfg = dict(cnn=False, conv_layers=2, hidden_units=32, hidden_layers=1, dropout=0.0, dropout_draws="all",
               sparsify=False,
               percent_on_fc=0.25, percent_on_conv=0.5, k_inference_factor=1.5, boost_strength=1.0,
               boost_strength_factor=0.9, duty_cycle_period=1000, weight_sparsity_fc=1.0,
               weight_sparsity_conv=1.0, seed=0, dale=False, exc_fraction=0.8, dale_input=False,
               dale_kwta="include", sparse_exec="auto", sparse_init="torch",
               weight_sparsity_head=1.0)
    unknown = set(overrides) - set(cfg)
    assert not unknown, unknown
    cfg.update(overrides)
    return cfg


def batch(scenario, n=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + tuple(scenario.input_shape), generator=g)
    t = torch.randint(0, scenario.num_tasks, (n,), generator=g)
    return x, t


# -- shapes and heads ----------------------------------------------------------------------------
@pytest.mark.parametrize("cnn", [False, True])
@pytest.mark.parametrize("setting", ["task", "domain", "class"])
@pytest.mark.parametrize("dale", [False, True])
def test_output_shape_and_number_of_heads(cnn, setting, dale):
    sc = FakeScenario(setting=setting, head_size=4 if setting == "class" else 2)
    model = build_model(config(cnn=cnn, dale=dale, sparsify=True, hidden_layers=2), sc)
    x, t = batch(sc)
    assert model(x, t).shape == (10, sc.head_size)
    assert len(model.heads) == sc.num_heads
    if sc.num_heads == 1:
        model.eval()                  # (training mode updates duty cycles between calls)
        assert torch.equal(model(x, None), model(x, t))


def test_each_example_goes_to_its_tasks_head():
    sc = FakeScenario(setting="task", num_tasks=3)
    model = build_model(config(hidden_layers=2), sc).eval()
    x, t = batch(sc, n=12)
    assert len(set(t.tolist())) == 3
    out = model(x, t)
    h = x.flatten(1)
    for block in model.blocks:
        h = block(h)
    for b in range(12):
        expected = model.heads[sc.head_of(int(t[b]))](h[b:b + 1])
        torch.testing.assert_close(out[b:b + 1], expected)


def test_all_heads_exist_from_construction_and_only_routed_heads_get_gradients():
    sc = FakeScenario(setting="task", num_tasks=3)
    model = build_model(config(dale=True), sc)
    params = {id(p) for p in model.parameters()}
    assert all(id(p) in params for head in model.heads for p in head.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [head.module.weight.detach().clone() for head in model.heads]
    x, _ = batch(sc, n=8)
    t = torch.full((8,), 1)
    nn.functional.cross_entropy(model(x, t), torch.randint(0, 2, (8,))).backward()
    assert model.heads[0].module.weight.grad is None and model.heads[2].module.weight.grad is None
    assert model.heads[1].module.weight.grad.abs().sum() > 0
    opt.step()
    assert torch.equal(model.heads[0].module.weight, before[0])
    assert not torch.equal(model.heads[1].module.weight, before[1])


def test_task_ids_are_checked():
    sc = FakeScenario(setting="task", num_tasks=3)
    model = build_model(config(), sc)
    x, t = batch(sc, n=4)
    with pytest.raises(ValueError, match="needs the task id"):
        model(x)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        model(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="integer tensor"):
        model(x, t.float())
    with pytest.raises(ValueError, match="integer tensor"):
        model(x, t[:3])
    with pytest.raises(ValueError, match="expects input of shape"):
        model(x[:, :, :11], t)


# -- architectures -----------------------------------------------------------------------------
def test_mlp_layers_match_the_original_simple_mlp():
    sc = FakeScenario(setting="domain", input_shape=(1, 28, 28), head_size=10)
    dense = build_model(config(hidden_units=64, hidden_layers=3, dropout=0.5), sc)
    assert isinstance(dense, MLP)
    layers = [b.layer for b in dense.blocks]
    assert all(type(m) is nn.Linear for m in layers)
    assert [(m.in_features, m.out_features) for m in layers] == [(784, 64), (64, 64), (64, 64)]
    assert all(type(b.activation) is nn.ReLU and b.dropout.p == 0.5 for b in dense.blocks)
    assert type(dense.heads[0]) is nn.Linear and dense.heads[0].in_features == 64

    sparse = build_model(config(hidden_units=64, hidden_layers=2, sparsify=True, percent_on_fc=0.1,
                                weight_sparsity_fc=0.3), sc)
    for block in sparse.blocks:
        assert isinstance(block.layer, SparseWeights)
        fan_in = block.layer.module.in_features
        kept = (~block.layer.zero_mask).sum(dim=1)
        assert bool((kept == round(0.3 * fan_in)).all())            # density per unit, exactly
        kw = block.activation
        assert type(kw) is KWinners and kw.k == round(64 * 0.1) and not kw.relu  # no ReLU, as original
    assert type(sparse.heads[0]) is nn.Linear                       # classifier stays dense


def test_cnn_layers_match_the_original_simple_cnn():
    sc = FakeScenario(setting="domain", input_shape=(3, 14, 14), head_size=10)
    model = build_model(config(cnn=True, hidden_units=16, sparsify=True, percent_on_conv=0.25,
                               weight_sparsity_conv=0.5, weight_sparsity_fc=0.2), sc)
    assert isinstance(model, CNN)
    conv1, conv2, fc = (b.layer for b in model.blocks)
    assert isinstance(conv1, SparseWeights2d) and isinstance(conv2, SparseWeights2d)
    assert (conv1.module.in_channels, conv1.module.out_channels, conv1.module.kernel_size) == (3, 64, (5, 5))
    assert (conv2.module.in_channels, conv2.module.out_channels) == (64, 128)
    assert conv1.module.padding == (0, 0) and conv1.module.stride == (1, 1)
    assert isinstance(fc, SparseWeights) and fc.module.in_features == 128 * 6 * 6
    assert math.isclose(conv2.sparsity, 0.5) and math.isclose(fc.sparsity, 0.8)
    for block, channels in zip(model.blocks[:2], (64, 128)):
        relu, kw = block.activation
        assert type(relu) is nn.ReLU and type(kw) is KWinners2d
        assert kw.local and kw.k == round(channels * 0.25)
    relu, kw = model.blocks[2].activation
    assert type(kw) is KWinners and kw.k == round(16 * 0.25)
    x, t = batch(sc, n=3)
    assert model(x, t).shape == (3, 10)


@pytest.mark.parametrize("mode", ["auto", "on", "off"])
def test_sparse_exec_reaches_every_sparse_linear_layer(mode):
    model = build_model(config(cnn=True, sparse_exec=mode, dale=True, weight_sparsity_fc=0.3,
                               weight_sparsity_conv=0.5), FakeScenario())
    linear = [m for m in model.modules() if isinstance(m, SparseWeights)]
    assert len(linear) == 1 + 3                       # the fc layer and the three Dale heads
    assert all(m.sparse_exec == mode for m in linear)


def test_cnn_without_sparsify_is_conv_relu_dropout():
    sc = FakeScenario(input_shape=(1, 12, 12))
    model = build_model(config(cnn=True, dropout=0.3), sc)
    assert all(type(b.layer) in (nn.Conv2d, nn.Linear) for b in model.blocks)
    assert all(type(b.activation) is nn.ReLU and b.dropout.p == 0.3 for b in model.blocks)


def test_cnn_rejects_inputs_too_small_for_two_valid_convolutions():
    with pytest.raises(ValueError, match="too small"):
        build_model(config(cnn=True), FakeScenario(input_shape=(1, 8, 8)))


def test_density_that_keeps_no_weight_is_rejected():
    with pytest.raises(ValueError, match="weight_sparsity_fc"):
        build_model(config(weight_sparsity_fc=1e-4), FakeScenario())
    with pytest.raises(ValueError, match="weight_sparsity_head=0.01 keeps round.*head 0"):
        build_model(config(weight_sparsity_head=0.01), FakeScenario())   # fan_in 32


# -- output heads' density ---------------------------------------------------------------------
@pytest.mark.parametrize("dale", [False, True])
@pytest.mark.parametrize("cnn", [False, True])
def test_sparse_heads_keep_round_d_fan_in_inputs_and_leave_the_hidden_layers_unchanged(dale, cnn):
    sc = FakeScenario(setting="task", num_tasks=3, input_shape=(1, 12, 12))
    base = config(cnn=cnn, dale=dale, weight_sparsity_fc=0.5, weight_sparsity_conv=0.5,
                  hidden_units=40, sparsify=True)
    dense, sparse = build_model(base, sc), build_model(dict(base, weight_sparsity_head=0.1), sc)
    # the hidden layers (masks, signs, weights) do not depend on the heads' density
    ds, ss = dense.state_dict(), sparse.state_dict()
    for k in ds:
        if k.startswith("blocks."):
            assert torch.equal(ds[k], ss[k]) if torch.is_tensor(ds[k]) else ds[k] == ss[k], k
    assert not dale or all(isinstance(h, SparseWeights) and h.sparsity == 0 for h in dense.heads)
    assert dale or all(type(h) is nn.Linear for h in dense.heads)
    masks = []
    for head in sparse.heads:
        assert isinstance(head, SparseWeights)
        live = ~head.zero_mask
        assert torch.equal(live.sum(1), torch.full((2,), 4))    # round(0.1 * 40) per output unit
        assert int((head.weight.detach()[head.zero_mask] != 0).sum()) == 0
        masks.append(head.zero_mask)
    assert not torch.equal(masks[0], masks[1])                # one mask per head
    if dale:   # every head weight keeps its presynaptic unit's sign
        sign = sparse.unit_signs()[-1]
        for head in sparse.heads:
            assert torch.equal(head.dale_sign, sign)
            assert int((head.weight.detach() * sign < 0).sum()) == 0


# -- config ------------------------------------------------------------------------------------
def test_missing_keys_are_all_named():
    cfg = config()
    del cfg["dale"], cfg["hidden_units"]
    with pytest.raises(ValueError, match="hidden_units, dale"):
        build_model(cfg, FakeScenario())


@pytest.mark.parametrize("key,value", [
    ("hidden_units", 0), ("hidden_layers", 1.0), ("dropout", 1.0), ("sparsify", 1),
    ("percent_on_fc", 0.0), ("weight_sparsity_fc", 0.0), ("weight_sparsity_conv", 1.5),
    ("k_inference_factor", 0), ("boost_strength", -1.0), ("duty_cycle_period", 0),
    ("seed", -1), ("exc_fraction", 1.2), ("dale_kwta", "maybe"), ("dale", "yes"),
    ("sparse_exec", "fast"),
])
def test_invalid_values_name_the_key(key, value):
    with pytest.raises(ValueError, match=f"'{key}'"):
        build_model(config(**{key: value}), FakeScenario())


def test_model_keys_are_the_spec_fields():
    # every key a model reads; those added later (ADDED_KEYS) may be left out of a mapping
    assert set(MODEL_KEYS) - set(ADDED_KEYS) <= set(config()) <= set(MODEL_KEYS)
    assert NetSpec.from_config(dict(config(), lr=0.1)).hidden_units == 32   # other keys ignored


# -- determinism -------------------------------------------------------------------------------
def test_same_seed_same_model_other_seed_other_model_global_rng_untouched():
    sc = FakeScenario()
    cfg = config(dale=True, weight_sparsity_fc=0.5, hidden_layers=2, sparsify=True)
    rng = torch.get_rng_state()
    a, b = build_model(cfg, sc), build_model(cfg, sc)
    assert torch.equal(rng, torch.get_rng_state())
    c = build_model(dict(cfg, seed=1), sc)
    sa, sb, sc_ = a.state_dict(), b.state_dict(), c.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) if torch.is_tensor(sa[k]) else sa[k] == sb[k] for k in sa)
    assert not torch.equal(sa["blocks.1.layer.zero_mask"], sc_["blocks.1.layer.zero_mask"])
    assert not torch.equal(sa["blocks.1.layer.dale_sign"], sc_["blocks.1.layer.dale_sign"])


def test_switching_dale_on_keeps_masks_and_the_free_first_layer():
    sc = FakeScenario()
    cfg = config(weight_sparsity_fc=0.5, hidden_layers=2)
    free, dale = build_model(cfg, sc), build_model(dict(cfg, dale=True), sc)
    for bf, bd in zip(free.blocks, dale.blocks):
        assert torch.equal(bf.layer.zero_mask, bd.layer.zero_mask)
    torch.testing.assert_close(free.blocks[0].layer.module.weight, dale.blocks[0].layer.module.weight)


def test_state_dict_round_trip_reproduces_outputs():
    sc = FakeScenario()
    cfg = config(dale=True, sparsify=True, weight_sparsity_fc=0.5, dale_kwta="exclude")
    model = build_model(cfg, sc)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    x, t = batch(sc, n=16)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x, t), torch.randint(0, 2, (16,))).backward()
        opt.step()
    fresh = build_model(dict(cfg, seed=7), sc)
    fresh.load_state_dict(model.state_dict())
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x, t), model(x, t))
    assert pickle.loads(pickle.dumps(model)) is not None


# -- Dale's law wiring -------------------------------------------------------------------------
def test_unit_signs_apply_to_all_outgoing_weights_including_every_head():
    sc = FakeScenario(setting="task", num_tasks=3)
    model = build_model(config(dale=True, hidden_layers=3, hidden_units=40, exc_fraction=0.75), sc)
    signs = model.unit_signs()
    assert model.input_sign() is None                 # dale_input False: first layer free
    assert type(model.blocks[0].layer) is nn.Linear
    for i, sign in enumerate(signs):
        assert int((sign > 0).sum()) == num_excitatory(40, 0.75) == 30
        if i + 1 < len(signs):
            assert torch.equal(model.blocks[i + 1].layer.dale_sign, sign)
    for head in model.heads:
        assert torch.equal(head.dale_sign, signs[-1])
    assert model_stats(model)["sign_violations"] == 0


def test_cnn_channel_signs_cover_all_their_flattened_features():
    sc = FakeScenario(input_shape=(3, 12, 12))
    model = build_model(config(cnn=True, dale=True, dale_input=True), sc)
    assert model.input_sign().shape == (3,)
    conv_sign = model.unit_signs()[1]
    assert conv_sign.shape == (128,)
    assert torch.equal(model.blocks[2].layer.dale_sign, conv_sign.repeat_interleave(4 * 4))
    assert torch.equal(model.blocks[1].layer.dale_sign, model.unit_signs()[0])


@pytest.mark.parametrize("cnn", [False, True])
def test_dale_kwta_exclude_lets_only_excitatory_units_compete(cnn):
    sc = FakeScenario(input_shape=(1, 12, 12))
    model = build_model(config(cnn=cnn, dale=True, sparsify=True, dale_kwta="exclude",
                               hidden_units=40, percent_on_fc=0.25, percent_on_conv=0.5), sc)
    fc = model.blocks[-1]
    sign = model.unit_signs()[-1]
    act = fc.activation if not cnn else fc.activation[1]
    assert isinstance(act, ExcitatoryKWinners)
    assert act.kwinners.n == 32 and act.kwinners.k == round(32 * 0.25)
    seen = {}
    fc.layer.register_forward_hook(lambda m, i, out: seen.__setitem__("pre", out))
    fc.activation.register_forward_hook(lambda m, i, out: seen.__setitem__("y", out))
    model(*batch(sc, n=20))
    pre, y = seen["pre"], seen["y"]
    torch.testing.assert_close(y[:, sign < 0], torch.relu(pre[:, sign < 0]))   # I: never suppressed
    assert bool(((y[:, sign > 0] != 0).sum(1) <= 8).all())                    # E: k winners at most
    assert int((y[:, sign > 0] != 0).sum()) >= 8                              # and they do win


def test_dale_kwta_include_makes_all_units_compete_with_nonnegative_rates():
    sc = FakeScenario()
    model = build_model(config(dale=True, sparsify=True, dale_kwta="include", hidden_units=40), sc)
    kw = model.blocks[0].activation
    assert type(kw) is KWinners and kw.n == 40 and kw.relu
    y = kw(torch.randn(20, 40))
    assert bool((y >= 0).all()) and bool(((y != 0).sum(1) <= 10).all())


def test_exclude_without_excitatory_units_is_rejected():
    # the schema's range (0, 1] already refuses a layer without excitatory units
    with pytest.raises(ValueError, match="'exc_fraction' = 0.0 is invalid"):
        build_model(config(dale=True, sparsify=True, dale_kwta="exclude", exc_fraction=0.0),
                    FakeScenario())


# -- activity statistics -----------------------------------------------------------------------
@pytest.mark.parametrize("cnn", [False, True])
def test_activity_is_measured_before_dropout(cnn):
    sc = FakeScenario()
    model = build_model(config(cnn=cnn, sparsify=True, dropout=0.5, hidden_units=40,
                               percent_on_fc=0.25, percent_on_conv=0.25), sc).train()
    x, t = batch(sc, n=16)
    with model.record_activity() as rec:
        model(x, t)
        model(x, t)
    summary = rec.summary()
    fc = summary[f"blocks.{len(model.blocks) - 1}"]
    # exactly k of n units win per example; dropout (p=0.5) would halve this if counted
    assert fc["active_fraction"] == pytest.approx(10 / 40)
    assert fc["unit_active_fraction"].shape == (40,)
    assert fc["unit_active_fraction"].sum() == pytest.approx(10)
    assert fc["active_fraction_per_batch"].shape == (2,)
    assert fc["num_positions"] == 32
    if cnn:
        conv = summary["blocks.0"]
        assert conv["unit_active_fraction"].shape == (64,)
        assert conv["active_fraction"] <= 16 / 64 + 1e-9      # <= k of 64 channels per location
    for entry in summary.values():
        for value in entry.values():
            assert isinstance(value, (int, float, np.ndarray)) or value is None


def test_dense_relu_activity_matches_a_direct_count_and_splits_by_sign():
    sc = FakeScenario()
    model = build_model(config(dale=True, dropout=0.5, hidden_units=40), sc).eval()
    x, t = batch(sc, n=16)
    with model.record_activity() as rec:
        model(x, t)
    entry = rec.summary()["blocks.0"]
    active = torch.relu(model.blocks[0].layer(x.flatten(1))) != 0
    assert entry["active_fraction"] == pytest.approx(float(active.float().mean()))
    sign = model.unit_signs()[0]
    assert entry["active_fraction_exc"] == pytest.approx(float(active[:, sign > 0].float().mean()))
    assert entry["active_fraction_inh"] == pytest.approx(float(active[:, sign < 0].float().mean()))


def test_recording_is_scoped_and_not_nested():
    sc = FakeScenario()
    model = build_model(config(), sc)
    x, t = batch(sc)
    with model.record_activity() as rec:
        with pytest.raises(ValueError, match="already recording"):
            with model.record_activity():
                pass
    model(x, t)
    assert rec.summary() == {}
    assert model._recorder is None


# -- invariants under training ----------------------------------------------------------------
@settings(max_examples=12, deadline=None)
@given(cnn=st.booleans(), kind=st.sampled_from(["sgd", "adam"]), hook=st.booleans(),
       density=st.sampled_from([1.0, 0.5, 0.2]), dale_input=st.booleans(),
       kwta=st.sampled_from(["include", "exclude"]), sparsify=st.booleans(),
       head=st.sampled_from([1.0, 0.3]), seed=st.integers(0, 1000))
def test_invariants_hold_under_random_training(cnn, kind, hook, density, dale_input, kwta,
                                                sparsify, head, seed):
    sc = FakeScenario(setting="task", num_tasks=2, input_shape=(2, 10, 10))
    model = build_model(config(cnn=cnn, dale=True, dale_input=dale_input, dale_kwta=kwta,
                               sparsify=sparsify, weight_sparsity_fc=density,
                               weight_sparsity_conv=density, hidden_layers=2, hidden_units=24,
                               dropout=0.2, weight_sparsity_head=head, seed=seed), sc)
    assert all(h.sparsity == pytest.approx(1 - head) for h in model.heads)
    layers = [m for m in model.modules() if isinstance(m, SparseWeightsBase)]
    masks = [m.zero_mask.clone() for m in layers]
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True,
                              weight_decay=1e-3)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=0.05, weight_decay=1e-3)
    if hook:
        constrain_optimizer(opt, model)
    g = torch.Generator().manual_seed(seed)
    for _ in range(15):
        x = torch.randn(8, 2, 10, 10, generator=g) * 2
        t = torch.randint(0, 2, (8,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x, t), torch.randint(0, 2, (8,), generator=g)).backward()
        opt.step()
        if not hook:
            model.state_dict()        # any use of the weights projects them first
        stats = model_stats(model)
        assert stats["sign_violations"] == 0 and stats["mask_violations"] == 0
        assert all(torch.equal(m.zero_mask, mask) for m, mask in zip(layers, masks))


def test_evaluation_under_inference_mode_sees_projected_weights():
    sc = FakeScenario()
    model = build_model(config(dale=True, weight_sparsity_fc=0.5), sc)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    x, t = batch(sc, n=16)
    nn.functional.cross_entropy(model(x, t), torch.randint(0, 2, (16,))).backward()
    opt.step()
    model.eval()
    with torch.inference_mode():
        out = model(x, t)
    assert model_stats(model)["sign_violations"] == 0
    torch.testing.assert_close(out, model(x, t).detach())


@pytest.mark.parametrize("kwta", ["include", "exclude"])
def test_tiny_dale_mlp_learns_a_separable_problem(kwta):
    """Every weight sign-constrained (inputs too), k-WTA on: accuracy far above chance (0.5)."""
    sc = FakeScenario(setting="domain", num_tasks=1, input_shape=(1, 4, 5), head_size=2)
    model = build_model(config(dale=True, dale_input=True, dale_kwta=kwta, sparsify=True,
                               hidden_units=64, percent_on_fc=0.25, boost_strength=0.0), sc)
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(20, generator=g)
    direction /= direction.norm()

    def data(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, 20, generator=g) + 1.5 * (2.0 * y[:, None] - 1.0) * direction
        return x.view(n, 1, 4, 5), y

    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    constrain_optimizer(opt, model)
    for _ in range(150):
        x, y = data(32)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    x, y = data(1000)
    with torch.inference_mode():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy > 0.85            # Bayes accuracy is Phi(1.5) = 0.93; chance is 0.5
    assert model_stats(model)["sign_violations"] == 0


def test_sparse_init_fan_in_scales_for_the_live_inputs():
    """sparse_init = fan_in: a unit's summed input has the variance of a dense layer's, whatever
    the density; torch (default) shrinks it by the density."""
    sc = FakeScenario(input_shape=(1, 20, 20))
    x = torch.randn(512, 1, 20, 20)

    def first_layer_var(**kw):
        model = build_model(config(hidden_units=256, **kw), sc)
        layer = model.blocks[0].layer
        lin = layer.module if hasattr(layer, "module") else layer
        return float(torch.nn.functional.linear(x.flatten(1), lin.weight).var())

    dense = first_layer_var()
    torch_init = first_layer_var(weight_sparsity_fc=0.1)
    fan_in = first_layer_var(weight_sparsity_fc=0.1, sparse_init="fan_in")
    assert torch_init == pytest.approx(0.1 * dense, rel=0.15)
    assert fan_in == pytest.approx(dense, rel=0.15)
    # same masks and same draws: only the scale differs
    a = build_model(config(weight_sparsity_fc=0.1), sc).blocks[0].layer
    b = build_model(config(weight_sparsity_fc=0.1, sparse_init="fan_in"), sc).blocks[0].layer
    assert torch.equal(a.zero_mask, b.zero_mask)
    torch.testing.assert_close(b.module.weight, a.module.weight * (400 / 40) ** 0.5)


# -- optional layer normalisation ----------------------------------------------------------------
def test_layer_norm_is_off_by_default_and_normalises_every_hidden_output_when_on():
    sc = FakeScenario(setting="domain", head_size=3)
    plain = build_model(config(hidden_layers=2, sparsify=True), sc)
    assert all(isinstance(b.norm, nn.Identity) for b in plain.blocks)
    assert set(plain.state_dict()) == set(build_model(dict(config(hidden_layers=2, sparsify=True),
                                                           layer_norm=False), sc).state_dict())
    model = build_model(dict(config(hidden_layers=2, sparsify=True), layer_norm=True), sc).eval()
    x, _ = batch(sc, n=6)
    h = x.flatten(1)
    for block in model.blocks:
        r = block.activation(block.layer(h))
        z = block.norm(r)
        assert torch.allclose(z.mean(1), torch.zeros(6), atol=1e-5)
        assert torch.allclose(z.var(1, unbiased=False), torch.ones(6), atol=1e-3)
        h = z
    assert torch.allclose(model(x, None), model.heads[0](h))
    with model.record_activity() as rec:           # activity is read before the normalisation
        model(x, None)
    k = model.blocks[0].activation.k_inference
    assert rec.summary()["blocks.0"]["active_fraction"] <= k / 32 + 1e-9


def test_channel_layer_norm_normalises_over_channels_at_every_location():
    sc = FakeScenario(input_shape=(1, 12, 12))
    model = build_model(dict(config(cnn=True), layer_norm=True), sc).eval()
    norm = model.blocks[0].norm
    x = torch.randn(2, 64, 3, 3)
    y = norm(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 3, 3), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 3, 3), atol=1e-3)
    assert model(batch(sc)[0], batch(sc)[1]).shape == (10, 2)
