"""Conjugate gradients, the NTK-GP posterior against the dense closed-form solve, and fast
adaptation on a small synthetic scenario."""
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import build_scenario
from benchmarks.synthetic import write_synthetic_dataset
from ntk_cases import assert_close, inputs, make_model, reference_jacobian
from models import build_model
from sparse_nte.dale import constrain_optimizer
from sparse_nte.ntk import NTKGaussianProcess, conjugate_gradients, fast_adaptation


# -- conjugate gradients -------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), m=st.integers(1, 3), seed=st.integers(0, 1000),
       precondition=st.booleans())
def test_cg_solves_random_spd_systems_to_its_tolerance(n, m, seed, precondition):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = q @ q.T + 0.5 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, m, generator=g, dtype=torch.float64)
    d = a.diagonal()
    res = conjugate_gradients(lambda v: a @ v, b, tol=1e-10, max_iter=10 * n,
                              preconditioner=(lambda r: r / d.unsqueeze(1)) if precondition
                              else None)
    assert res.converged and res.iterations <= 10 * n
    true = ((b - a @ res.solution).norm(dim=0) / b.norm(dim=0)).max()
    assert float(true) <= 1e-9
    assert_close(res.solution, torch.linalg.solve(a, b), rtol=1e-6)


def test_cg_warns_with_the_true_residual_when_the_cap_binds():
    g = torch.Generator().manual_seed(0)
    a = torch.diag(torch.logspace(0, 3, 50, dtype=torch.float64))
    b = torch.randn(50, generator=g, dtype=torch.float64)
    with pytest.warns(RuntimeWarning, match=r"iteration cap max_iter=5, with relative residual"):
        res = conjugate_gradients(lambda v: a @ v, b, tol=1e-8, max_iter=5)
    true = float((b - a @ res.solution).norm() / b.norm())
    assert not res.converged and res.iterations == 5
    assert res.residual == pytest.approx(true)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        conjugate_gradients(lambda v: a @ v, b, tol=1e-8, max_iter=200)   # converges: silent


def test_cg_zero_right_hand_side_and_bad_arguments():
    a = torch.eye(3, dtype=torch.float64)
    res = conjugate_gradients(lambda v: a @ v, torch.zeros(3, dtype=torch.float64))
    assert res.converged and res.iterations == 0 and bool((res.solution == 0).all())
    with pytest.raises(ValueError, match="max_iter must be an int >= 1"):
        conjugate_gradients(lambda v: v, torch.ones(3), max_iter=0)
    with pytest.raises(ValueError, match="tol must be > 0"):
        conjugate_gradients(lambda v: v, torch.ones(3), tol=0.0)


# -- the GP posterior ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def problem():
    model = make_model("mlp", hidden_units=8)
    x, t = inputs(9, seed=1)
    xs, ts = inputs(4, seed=2)
    y = torch.randint(0, 3, (9,), generator=torch.Generator().manual_seed(3))
    return model, x, t, y, xs, ts


def _closed_form(model, x, t, y, xs, ts, noise):
    """Dense GP solve with the kernel from the reference Jacobians."""
    j = reference_jacobian(model, x, t)
    js = reference_jacobian(model, xs, ts)
    n, c, p = j.shape
    k = j.reshape(n * c, p) @ j.reshape(n * c, p).T
    ks = js.reshape(-1, p) @ j.reshape(n * c, p).T
    kss = js.reshape(-1, p) @ js.reshape(-1, p).T
    with torch.no_grad():
        f0, fs = model(x, t), model(xs, ts)
    r = (F.one_hot(y, c).double() - f0).reshape(-1)
    a = k + noise * torch.eye(n * c, dtype=torch.float64)
    mean = fs.reshape(-1) + ks @ torch.linalg.solve(a, r)
    var = (kss - ks @ torch.linalg.solve(a, ks.T)).diagonal()
    return mean.view(-1, c), var.view(-1, c)


@pytest.mark.parametrize("method", ["parameter", "kernel", "function"])
@pytest.mark.parametrize("noise", [0.05, 2.0])
def test_posterior_mean_and_variance_equal_the_dense_solve(problem, method, noise):
    model, x, t, y, xs, ts = problem
    mean, var = _closed_form(model, x, t, y, xs, ts, noise)
    gp = NTKGaussianProcess(model, x, y, t_train=t, noise=noise, method=method, cg_tol=1e-12,
                            cg_max_iter=2000, chunk=4 if method == "parameter" else None)
    assert gp.method == method
    got_mean, got_var = gp.predict(xs, ts)
    assert_close(got_mean, mean)
    assert_close(got_var, var, rtol=1e-7)
    assert bool((got_var >= 0).all())
    no_var = gp.predict(xs, ts, variance=False)
    assert no_var[1] is None and torch.equal(no_var[0], got_mean)


def test_training_targets_are_fitted_as_the_noise_vanishes(problem):
    model, x, t, y, _, _ = problem
    gp = NTKGaussianProcess(model, x, y, t_train=t, noise=1e-9, method="parameter")
    mean, var = gp.predict(x, t)
    assert_close(mean, F.one_hot(y, 3).double(), rtol=1e-5)
    assert float(var.max()) < 1e-6


def test_function_space_cg_warns_when_its_cap_binds(problem):
    model, x, t, y, _, _ = problem
    with pytest.warns(RuntimeWarning, match="CG solve of the posterior mean stopped after 2"):
        gp = NTKGaussianProcess(model, x, y, t_train=t, noise=1e-6, method="function",
                                cg_tol=1e-12, cg_max_iter=2)
    assert not gp.cg.converged


def test_auto_method_and_the_model_is_not_changed(problem):
    model, x, t, y, xs, ts = problem
    before = [p.detach().clone() for p in model.parameters()]
    small = NTKGaussianProcess(model, x, y, t_train=t, noise=0.1, max_parameters=10 ** 6)
    formed = NTKGaussianProcess(model, x, y, t_train=t, noise=0.1, max_parameters=10,
                                max_kernel=27)                        # N C = 9 x 3 = 27
    large = NTKGaussianProcess(model, x, y, t_train=t, noise=0.1, max_parameters=10,
                               max_kernel=26)
    assert (small.method, formed.method, large.method) == ("parameter", "kernel", "function")
    for gp in (formed, large):
        assert_close(gp.predict(xs, ts, variance=False)[0],
                     small.predict(xs, ts, variance=False)[0], rtol=1e-6)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    # the posterior is fixed at construction: later changes of the network do not move it
    mean = small.predict(xs, ts, variance=False)[0]
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    try:
        assert torch.equal(small.predict(xs, ts, variance=False)[0], mean)
    finally:
        with torch.no_grad():
            for p, q in zip(model.parameters(), before):
                p.copy_(q)


def test_gp_argument_errors(problem):
    model, x, t, y, _, _ = problem
    with pytest.raises(ValueError, match="noise"):
        NTKGaussianProcess(model, x, y, t_train=t, noise=0.0)
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        NTKGaussianProcess(model, x, y + 3, t_train=t, noise=0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        NTKGaussianProcess(model, x, y, t_train=t, noise=0.1, method="dense")


# -- fast adaptation -----------------------------------------------------------------------------
def test_fast_adaptation_on_a_synthetic_split_scenario(tmp_path):
    write_synthetic_dataset("mnist", tmp_path, num_train=300, num_test=100, seed=0)
    sc = build_scenario("mnist", mode="split", num_tasks=5, setting="task", data_root=tmp_path,
                        download=False, progress=False)
    cfg = dict(cnn=False, hidden_units=32, hidden_layers=1, dropout=0.0, sparsify=True,
               percent_on_fc=0.25, percent_on_conv=0.5, k_inference_factor=1.0,
               boost_strength=0.0, boost_strength_factor=1.0, duty_cycle_period=1000,
               weight_sparsity_fc=0.5, weight_sparsity_conv=1.0, seed=0, dale=True,
               exc_fraction=0.8, dale_input=False, dale_kwta="include", sparse_exec="auto",
               sparse_init="torch")
    model = build_model(cfg, sc)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    constrain_optimizer(opt, model)
    for task in range(2):
        for x, y, t in sc.batches(task, "train", batch_size=32,
                                  generator=torch.Generator().manual_seed(task)):
            opt.zero_grad()
            F.cross_entropy(model(x, t), y).backward()
            opt.step()
    before = [p.detach().clone() for p in model.parameters()]
    out = fast_adaptation(model, sc, new_task=2, examples_per_class=(2, 8), noise=0.1,
                          finetune_steps=30, gp_options={"method": "function", "cg_max_iter": 500})
    assert out["new_task"] == 2 and out["old_tasks"] == [0, 1]
    assert [r["k"] for r in out["results"]] == [2, 8]
    assert [r["n_train"] for r in out["results"]] == [4, 16]        # 2 classes per task
    for r in out["results"]:
        assert r["gp"]["old"] == out["before"]["old"]                 # the network is untouched
        for acc in [r["gp"]["new"], r["finetune"]["new"], *r["finetune"]["old"]]:
            assert 0.0 <= acc <= 1.0
        assert r["gp"]["method"] == "function" and r["gp"]["cg_converged"]
    # the synthetic classes are separable: both adapters learn the new task from 8 per class
    assert out["results"][1]["gp"]["new"] > 0.8 and out["results"][1]["finetune"]["new"] > 0.8
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    again = fast_adaptation(model, sc, new_task=2, examples_per_class=(2, 8), noise=0.1,
                            finetune_steps=30, gp_options={"method": "function", "cg_max_iter": 500})
    assert again == out                                               # seeded: reproducible
    formed = fast_adaptation(model, sc, new_task=2, examples_per_class=(2, 8), noise=0.1,
                             finetune_steps=30)                       # auto: the kernel is formed
    for r, f in zip(out["results"], formed["results"]):
        assert f["gp"]["method"] == "kernel" and f["finetune"] == r["finetune"]
        assert f["gp"]["new"] == r["gp"]["new"]     # the same posterior (CG converged to 1e-5)
    assert np.isfinite(out["before"]["new"])
