"""Compact sparse layers (``sparse_exec = "compact"``: only the live weights are stored and
trained) compute, train, prune, grow and checkpoint exactly like the masked-dense layer.

Every comparison runs twin models from the same seed, one masked-dense (``sparse_exec="off"``)
and one compact, in float64, and compares outputs, gradients, weights, masks and optimizer
state to float rounding.
"""
import copy
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_nte.config import config_from_dict
from sparse_nte.dale import constrain_optimizer
from sparse_nte.layers import SparseWeights
from sparse_nte.layers.compact import CompactLinear
from sparse_nte.nte import NTE
from sparse_nte.optim_state import remap_positions, reset_positions
from sparse_nte.plasticity import PlasticitySpec, build_schedule
from sparse_nte.sparse_exec import (AUTO_COMPACT_MAX_DENSITY, AUTO_MIN_WEIGHTS, prefers_compact,
                                    resolve_sparse_exec)

FAST = settings(max_examples=40, deadline=None)
TOL = dict(rtol=1e-10, atol=1e-12)
F64 = torch.float64


def layer(n_in, n_out, sparsity, mode, seed=0, bias=True, dale=False):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias, dtype=F64)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=g, dtype=F64))
        if bias:
            lin.bias.copy_(torch.randn(n_out, generator=g, dtype=F64))
    out = SparseWeights(lin, sparsity=sparsity, allow_extremes=True, generator=g,
                        sparse_exec="off")
    if dale:
        sign = torch.where(torch.rand(n_in, generator=g) < 0.6, 1.0, -1.0).to(F64)
        out.set_presynaptic_sign(sign)
        with torch.no_grad():
            lin.weight.copy_(lin.weight.abs() * sign)
        out.enforce_constraints()
    out.sparse_exec = mode
    return out


def mlp(mode, seed=0, dale=False, density=0.3, n_in=12, hidden=16):
    torch.manual_seed(seed)
    net = nn.Sequential(layer(n_in, hidden, 1 - density, "off", seed, dale=dale), nn.ReLU(),
                        layer(hidden, 10, 1 - density, "off", seed + 1, dale=dale), nn.ReLU(),
                        nn.Linear(10, 3, dtype=F64))
    with torch.no_grad():
        g = torch.Generator().manual_seed(seed + 7)
        net[4].weight.copy_(torch.randn(3, 10, generator=g, dtype=F64) * 0.3)
    for m in (net[0], net[2]):
        m.sparse_exec = mode
    return net


def dense_weights(net):
    return [m.weight.detach().clone() for m in net if isinstance(m, SparseWeights)]


def assert_twins(a, b, tol=TOL):
    for la, lb in zip([m for m in a.modules() if isinstance(m, SparseWeights)],
                      [m for m in b.modules() if isinstance(m, SparseWeights)]):
        assert torch.equal(la.zero_mask, lb.zero_mask)
        torch.testing.assert_close(la.weight.detach(), lb.weight.detach(), **tol)
        if la.bias is not None:
            torch.testing.assert_close(la.bias.detach(), lb.bias.detach(), **tol)


# ---------------------------------------------------------------------------------------------
# Products and gradients
# ---------------------------------------------------------------------------------------------
@FAST
@given(n_in=st.integers(1, 24), n_out=st.integers(1, 24), batch=st.integers(0, 9),
       sparsity=st.sampled_from([0.0, 0.3, 0.7, 0.95, 1.0]), bias=st.booleans(),
       dale=st.booleans(), lead=st.sampled_from([(), (2,)]), x_grad=st.booleans(),
       seed=st.integers(0, 2**16))
def test_forward_and_gradients_equal_masked_dense(n_in, n_out, batch, sparsity, bias, dale,
                                                  lead, x_grad, seed):
    dense = layer(n_in, n_out, sparsity, "off", seed, bias, dale)
    compact = layer(n_in, n_out, sparsity, "compact", seed, bias, dale)
    assert compact.compact and not dense.compact
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(*lead, batch, n_in, generator=g, dtype=F64)
    gy = torch.randn(*lead, batch, n_out, generator=g, dtype=F64)
    xd, xc = x.clone().requires_grad_(x_grad), x.clone().requires_grad_(x_grad)
    yd, yc = dense(xd), compact(xc)
    torch.testing.assert_close(yc, yd, **TOL)
    wanted = [compact.module.values] + ([xc] if x_grad else []) + ([compact.bias] if bias else [])
    wanted_d = [dense.module.weight] + ([xd] if x_grad else []) + ([dense.bias] if bias else [])
    gc = torch.autograd.grad(yc, wanted, gy, allow_unused=True)
    gd = torch.autograd.grad(yd, wanted_d, gy, allow_unused=True)
    live = ~dense.zero_mask
    gv = gc[0] if gc[0] is not None else torch.zeros(compact.module.values.shape, dtype=F64)
    gw = gd[0] if gd[0] is not None else torch.zeros(n_out, n_in, dtype=F64)
    torch.testing.assert_close(gv, gw[live], **TOL)
    for a, b in zip(gc[1:], gd[1:]):
        torch.testing.assert_close(a if a is not None else torch.zeros_like(b),
                                   b if b is not None else torch.zeros_like(a), **TOL)


def test_only_live_weights_are_stored_and_trained():
    net = layer(100, 40, 0.9, "compact")
    params = dict(net.named_parameters())
    assert set(params) == {"module.values", "module.bias"}
    assert params["module.values"].shape == (400,)          # 10 of 100 inputs for 40 units
    assert isinstance(net.module, CompactLinear)
    torch.testing.assert_close(net.module.values, net.weight[~net.zero_mask])
    assert torch.equal(net.weight[net.zero_mask], torch.zeros(3600, dtype=F64))


def test_gradcheck_of_the_compact_product():
    from sparse_nte.layers.compact import compact_linear
    net = layer(6, 5, 0.5, "compact", seed=3)
    x = torch.randn(4, 6, dtype=F64, requires_grad=True)
    v = net.module.values.detach().clone().requires_grad_()
    b = net.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, v, b: compact_linear(x, v, b, net.module.live),
                                    (x, v, b))


def test_torch_func_transforms_give_per_example_gradients_of_the_live_weights():
    dense, compact = layer(9, 7, 0.6, "off", 4), layer(9, 7, 0.6, "compact", 4)
    x = torch.randn(5, 9, dtype=F64)

    def per_example(net, name):
        params = {k: v.detach() for k, v in net.named_parameters()}

        def loss(p, xi):
            return torch.func.functional_call(net, p, (xi[None],)).pow(2).sum()

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)[name]

    gd = per_example(dense, "module.weight")
    gc = per_example(compact, "module.values")
    torch.testing.assert_close(gc, gd[:, ~dense.zero_mask], **TOL)


# ---------------------------------------------------------------------------------------------
# Training: optimizers, Dale's law, state
# ---------------------------------------------------------------------------------------------
OPTIMIZERS = {
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True,
                                                 weight_decay=1e-3),
    "sgd": lambda p: torch.optim.SGD(p, lr=0.2),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1),
}


def train(net, opt, steps, seed=0, n_in=12):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, n_in, generator=g, dtype=F64)
        y = torch.randint(0, 3, (8,), generator=g)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dale", [False, True])
def test_training_follows_the_masked_dense_trajectory(name, dale):
    nets = [mlp(mode, dale=dale) for mode in ("off", "compact")]
    opts = [OPTIMIZERS[name](n.parameters()) for n in nets]
    for n, o in zip(nets, opts):
        constrain_optimizer(o, n)
    for n, o in zip(nets, opts):
        train(n, o, 25)
    assert_twins(*nets)
    # the optimizer state of a compact layer has one entry per live weight
    values = nets[1][0].module.values
    state = opts[1].state[values]
    for key, t in state.items():
        if t.dim():
            assert t.shape == values.shape, key
    if dale:
        for m in (nets[1][0], nets[1][2]):
            assert int((m.weight * m.sign_tensor() < 0).sum()) == 0


def test_nte_follows_the_masked_dense_trajectory_on_both_paths():
    for dale in (False, True):
        for fast in ("auto", "off"):
            for expand in ("origin", "init"):
                nets = [mlp(mode, dale=dale) for mode in ("off", "compact")]
                opts = [NTE(n.parameters(), n, beta=0.05, fast=fast, expand=expand, lr=0.1)
                        for n in nets]
                for n, o in zip(nets, opts):
                    constrain_optimizer(o, n)
                g = torch.Generator().manual_seed(1)
                for _ in range(6):
                    x = torch.randn(16, 12, generator=g, dtype=F64)
                    y = torch.randint(0, 3, (16,), generator=g)
                    for n, o in zip(nets, opts):
                        o.step(lambda: F.cross_entropy(n(x), y, reduction="none"))
                assert_twins(*nets)
                assert opts[0].last_step["series_rows"] == opts[1].last_step["series_rows"]
                assert opts[0].stats()["live_experts"] == opts[1].stats()["live_experts"]
                assert opts[0].log_total == pytest.approx(opts[1].log_total, rel=1e-12)


def test_state_dicts_use_the_dense_layout_and_load_across_storages():
    dense, compact = mlp("off"), mlp("compact")
    train(compact, torch.optim.SGD(compact.parameters(), lr=0.1), 5)
    sd = compact.state_dict()
    assert set(sd) == set(dense.state_dict())
    for k, v in dense.state_dict().items():
        assert sd[k].shape == v.shape, k
    dense.load_state_dict(sd)
    assert_twins(dense, compact, dict(rtol=0, atol=0))
    # and back, with another mask: the compact layer adopts it
    other = mlp("off", seed=5)
    fresh = mlp("compact", seed=9)
    fresh.load_state_dict(other.state_dict())
    assert_twins(fresh, other, dict(rtol=0, atol=0))
    assert fresh[0].module.values.shape == (int((~other[0].zero_mask).sum()),)


def test_copies_pickles_and_dtype_moves():
    net = mlp("compact")
    x = torch.randn(3, 12, dtype=F64)
    y = net(x)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    for other in (copy.deepcopy(net), pickle.loads(pickle.dumps(net)),
                  torch.load(buf, weights_only=False)):
        assert other[0].compact
        torch.testing.assert_close(other(x), y, **TOL)
        assert other[0].module.live is not net[0].module.live
    single = copy.deepcopy(net).float()
    torch.testing.assert_close(single(x.float()), y.float(), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# The dense view
# ---------------------------------------------------------------------------------------------
def test_edits_of_the_dense_view_reach_the_live_weights():
    net = layer(8, 6, 0.5, "compact")
    ref = layer(8, 6, 0.5, "off")
    for m in (net, ref):
        with torch.no_grad():
            m.weight.mul_(3.0).add_(1.0)       # also writes masked positions: dropped
    torch.testing.assert_close(net.weight, ref.weight, **TOL)
    x = torch.randn(4, 8, dtype=F64)
    torch.testing.assert_close(net(x), ref(x), **TOL)
    # nn.init on the module's weight, as nupic.torch's normalize_sparse_weights does
    torch.nn.init.zeros_(net.module.weight)
    torch.testing.assert_close(net(x), net.bias.expand(4, 6), **TOL)   # used from the next read
    assert not bool(net.module.values.any())


def test_an_edit_of_a_stale_view_is_an_error_not_a_silent_loss():
    net = layer(8, 6, 0.5, "compact")
    w = net.weight
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net(torch.randn(2, 8, dtype=F64)).sum().backward()
    opt.step()                                  # the values change ...
    with torch.no_grad():
        w.add_(1.0)                             # ... and the old view is edited
    with pytest.raises(ValueError, match="stale view"):
        net(torch.randn(2, 8, dtype=F64))


def test_storage_cannot_change_under_an_attached_optimizer():
    net = layer(8, 6, 0.5, "compact")
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    constrain_optimizer(opt, net)
    with pytest.raises(ValueError, match="before building the optimizer"):
        net.sparse_exec = "off"
    net.sparse_exec = "compact"                 # same storage: fine


# ---------------------------------------------------------------------------------------------
# Connectivity changes move the optimizer state
# ---------------------------------------------------------------------------------------------
def test_mask_change_moves_momentum_as_reset_positions_does_for_dense():
    nets = [mlp(mode) for mode in ("off", "compact")]
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
            for n in nets]
    for n, o in zip(nets, opts):
        constrain_optimizer(o, n)
        train(n, o, 5)
    g = torch.Generator().manual_seed(3)
    new_mask = torch.rand(16, 12, generator=g) < 0.6
    for n, o in zip(nets, opts):
        old = n[0].zero_mask.clone()
        with torch.no_grad():                   # grown weights start at 0.5, as a schedule writes
            w = n[0].weight
            w.copy_(torch.where(old & ~new_mask, torch.full_like(w, 0.5), w))
        n[0].set_zero_mask(new_mask)
        if not n[0].compact:
            reset_positions(o, n[0].module.weight, old ^ new_mask)
    assert_twins(*nets)
    for n, o in zip(nets, opts):
        train(n, o, 5, seed=1)
    assert_twins(*nets)


def test_remap_positions_moves_and_resets_every_state_key():
    p = nn.Parameter(torch.arange(4.0))
    opt = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    p.data = torch.zeros(3)
    remap_positions(opt, p, torch.tensor([2, -1, 0]))
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(opt.state[p][key], torch.stack([before[key][2], torch.tensor(0.0),
                                                           before[key][0]]))
    assert torch.equal(opt.state[p]["step"], before["step"])
    with pytest.raises(ValueError, match="int64"):
        remap_positions(opt, p, torch.tensor([0.0, 1.0, 2.0]))


def plasticity_spec(kind, **kw):
    base = dict(kind=kind, interval=3, end_fraction=0.9, set_zeta=0.3, rigl_alpha=0.3,
                erk=False, gmp_final_sparsity=0.9, gmp_start=0, gmp_n=4, grow_start_density=0.1,
                grow_end_density=0.5, grow_old_lr=1.0, init_scale=1e-2,
                nte_prune_rule="magnitude", nte_prune_rate=0.05, nte_prune_z=2.33, seed=0)
    base.update(kw)
    return PlasticitySpec(**base)


def nte_opt(net, momentum=None):
    return NTE(net.parameters(), net, beta=0.05, lr=0.05, score_momentum=momentum)


CASES = [
    ("set", "sgd", {}), ("rigl", "sgd", {}), ("gmp", "sgd", {}),
    ("grow", "sgd", {"grow_old_lr": 0.5}), ("grow", "sgd", {"grow_old_lr": 0.0}),
    ("set", "nte", {}), ("rigl", "nte", {}), ("grow", "nte", {"grow_old_lr": 0.5}),
    ("nte_prune", "nte", {}), ("nte_prune", "nte_score", {"nte_prune_rule": "score",
                                                         "nte_prune_z": 1.0}),
    ("set", "sgd", {"erk": True}),
]


@pytest.mark.parametrize("kind,rule,extra", CASES, ids=[f"{k}-{r}-{sorted(e)}" for k, r, e in CASES])
@pytest.mark.parametrize("dale", [False, True])
def test_schedules_on_compact_layers_follow_the_dense_parameter_run(kind, rule, extra, dale):
    """The twin keeps the dense parameter and computes with the same sparse kernels
    (``sparse_exec="on"``, itself equal to masked-dense, test_sparse_exec.py): plasticity ranks
    connections, and exact ties (dead inputs have gradient exactly 0) would be broken by
    rounding noise between different kernels."""
    steps, tasks = 9, 2
    nets = [mlp(mode, dale=dale, density=0.1 if kind == "grow" else 0.3)
            for mode in ("on", "compact")]
    if rule == "sgd":
        opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
                for n in nets]
    else:
        opts = [nte_opt(n, 0.9 if rule == "nte_score" else None) for n in nets]
    for n, o in zip(nets, opts):
        constrain_optimizer(o, n)
    schedules = [build_schedule(plasticity_spec(kind, **extra), n, o, steps, tasks)
                 for n, o in zip(nets, opts)]
    g = torch.Generator().manual_seed(0)
    step = 0
    for task in range(tasks):
        for s in schedules:
            s.on_task_start(task)
        for _ in range(steps):
            x = torch.randn(8, 12, generator=g, dtype=F64)
            y = torch.randint(0, 3, (8,), generator=g)
            for n, o, s in zip(nets, opts, schedules):
                if rule == "sgd":
                    o.zero_grad()
                    F.cross_entropy(n(x), y).backward()
                    s.after_backward(step)
                    o.step()
                else:
                    s.after_backward(step)
                    o.step(lambda: F.cross_entropy(n(x), y, reduction="none"))
                s.after_step(step)
            step += 1
    events = [[h for h in s.history if h["pruned"] or h["grown"]] for s in schedules]
    assert events[0], "the schedule never changed a mask: the test would be vacuous"
    assert events[0] == events[1]
    assert_twins(*nets, tol=dict(rtol=1e-9, atol=1e-11))
    for m in (nets[1][0], nets[1][2]):
        assert m.module.values.shape == (int((~m.zero_mask).sum()),)
        if dale:
            assert int((m.weight * m.sign_tensor() < 0).sum()) == 0
    if rule != "sgd":   # the experts moved with their weights
        for m_d, m_c in zip((nets[0][0], nets[0][2]), (nets[1][0], nets[1][2])):
            l_d = opts[0].state[m_d.module.weight]["log_magnitude"][~m_d.zero_mask]
            l_c = opts[1].state[m_c.module.values]["log_magnitude"]
            torch.testing.assert_close(l_c, l_d, rtol=1e-9, atol=1e-11)


def test_set_rewiring_with_momentum_equals_the_masked_dense_run():
    nets = [mlp(mode) for mode in ("off", "compact")]
    opts = [torch.optim.SGD(n.parameters(), lr=0.1, momentum=0.9) for n in nets]
    for n, o in zip(nets, opts):
        constrain_optimizer(o, n)
    schedules = [build_schedule(plasticity_spec("set"), n, o, 12, 1) for n, o in zip(nets, opts)]
    g = torch.Generator().manual_seed(0)
    for s in schedules:
        s.on_task_start(0)
    for step in range(12):
        x = torch.randn(8, 12, generator=g, dtype=F64)
        y = torch.randint(0, 3, (8,), generator=g)
        for n, o, s in zip(nets, opts, schedules):
            o.zero_grad()
            F.cross_entropy(n(x), y).backward()
            s.after_backward(step)
            o.step()
            s.after_step(step)
    assert sum(h["grown"] for h in schedules[0].history) > 0
    assert schedules[0].history == schedules[1].history
    assert_twins(*nets)


# ---------------------------------------------------------------------------------------------
# The configuration rule
# ---------------------------------------------------------------------------------------------
def test_the_config_rule_picks_compact_storage_by_size_and_density():
    cpu = torch.device("cpu")
    w = AUTO_MIN_WEIGHTS
    d = AUTO_COMPACT_MAX_DENSITY
    assert prefers_compact(d, w, cpu, torch.float32)
    assert not prefers_compact(d + 1e-3, w, cpu, torch.float32)
    assert not prefers_compact(0.05, w - 1, cpu, torch.float32)
    assert not prefers_compact(0.05, w, cpu, torch.bfloat16)
    assert not prefers_compact(0.0, w, cpu, torch.float32)
    assert resolve_sparse_exec("auto", 0.05, w, cpu, torch.float32) == "compact"
    assert resolve_sparse_exec("auto", 0.05, w - 1, cpu, torch.float32) == "auto"
    assert resolve_sparse_exec("compact", 0.9, 10, cpu, torch.float32) == "compact"
    assert resolve_sparse_exec("compact", 1.0, 10, cpu, torch.float32) == "auto"
    for mode in ("on", "off"):
        assert resolve_sparse_exec(mode, 0.05, w, cpu, torch.float32) == mode


def test_build_model_makes_large_sparse_layers_compact_by_default(tmp_path):
    from benchmarks import build_scenario
    from benchmarks.synthetic import write_synthetic_dataset
    from models import build_model
    write_synthetic_dataset("mnist", tmp_path, num_train=64, num_test=32)
    scenario = build_scenario("mnist", num_tasks=2, data_root=tmp_path, download=False,
                              progress=False)
    base = dict(dataset="mnist", num_batch=2, hidden_units=300, hidden_layers=2,
                weight_sparsity_fc=0.1)
    auto = build_model(config_from_dict(base), scenario)
    off = build_model(config_from_dict({**base, "sparse_exec": "off"}), scenario)
    assert [b.layer.compact for b in auto.blocks] == [True, False]   # 784x300; 300x300 < 2^17
    x = torch.randn(5, 1, 28, 28)
    torch.testing.assert_close(auto(x), off(x), rtol=1e-5, atol=1e-5)
    assert_twins(auto, off, dict(rtol=0, atol=0))


def test_evaluation_without_gradient_may_use_the_dense_view_and_agrees():
    from sparse_nte.layers.compact import INFERENCE_DENSITY_BY_BATCH
    net = layer(300, 200, 0.5, "compact")                 # density 0.5: above every crossover
    assert all(0.5 > d for _, d in INFERENCE_DENSITY_BY_BATCH)
    x = torch.randn(1100, 300, dtype=F64)
    y_grad = net(x)
    with torch.inference_mode():
        y_eval = net(x)
    torch.testing.assert_close(y_eval, y_grad.detach(), **TOL)
    before = net.module.values.detach().clone()
    with torch.no_grad():
        net(x)
    assert torch.equal(net.module.values.detach(), before)


def test_per_example_gradient_norms_of_data_selection_see_the_live_weights():
    """GraNd (selection) reaches a compact layer's values through the generic per-example path
    (torch.func): the same norms as the masked-dense layer's masked gradients."""
    from sparse_nte.selection.grand import per_example_grad_norms
    dense, compact = mlp("off"), mlp("compact")
    x = torch.randn(6, 12, dtype=F64)
    y = torch.randint(0, 3, (6,))
    torch.testing.assert_close(per_example_grad_norms(compact, x, y),
                               per_example_grad_norms(dense, x, y), rtol=1e-10, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{"linearize": True}, {"record_ntk": True,
                                                         "ntk_probe_size": 24}])
def test_linearized_networks_and_the_ntk_probe_run_on_compact_layers(tmp_path, extra):
    """The NTK tools differentiate the model with torch.func / batched backward passes: a
    compact layer computes them densely and gives the masked-dense layer's numbers."""
    from benchmarks.synthetic import write_synthetic_dataset
    from sparse_nte.runner import run_trial
    write_synthetic_dataset("mnist", tmp_path, num_train=200, num_test=60, seed=0)
    res = {}
    for mode in ("off", "auto"):
        base = dict(name="c", dataset="mnist", num_batch=2, hidden_units=200, hidden_layers=1,
                    weight_sparsity_fc=0.1, mb_size=32, data_root=str(tmp_path), **extra)
        if not extra.get("linearize"):
            base["sparse_exec"] = mode
        elif mode == "off":
            continue          # linearize: sparse_exec has no effect; auto gives compact layers
        res[mode] = run_trial(config_from_dict(base), tmp_path / mode, progress=False,
                              log=lambda m: None)
        assert res[mode]["status"] == "done"
    if "off" in res:
        np.testing.assert_array_equal(res["off"]["acc_matrix"], res["auto"]["acc_matrix"])
        a, b = (r["stats"]["per_task"][-1]["ntk"] for r in (res["off"], res["auto"]))
        np.testing.assert_allclose(a["kernel_drift"], b["kernel_drift"], rtol=1e-4)
