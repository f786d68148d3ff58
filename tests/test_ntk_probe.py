"""The per-task NTK probe on a small synthetic scenario: what it records, that it leaves
training unchanged, checkpoints, and its config keys."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from benchmarks import build_scenario
from benchmarks.synthetic import write_synthetic_dataset
from models import build_model
from sparse_nte.dale import constrain_optimizer
from sparse_nte.ntk import (NTK_PROBE_KEYS, NTKProbe, NTKProbeSpec, build_ntk_probe,
                            centered_kernel_alignment, empirical_ntk, gradient_alignment,
                            kernel_drift, ntk_probe_enabled, snapshot)
from sparse_nte.ntk.probe import probe_rows
from sparse_nte.seams import Probe, TaskContext

MODEL = dict(cnn=False, hidden_units=24, hidden_layers=1, dropout=0.25, sparsify=True,
             percent_on_fc=0.25, percent_on_conv=0.5, k_inference_factor=1.5, boost_strength=1.0,
             boost_strength_factor=0.9, duty_cycle_period=100, weight_sparsity_fc=0.5,
             weight_sparsity_conv=1.0, seed=0, dale=True, exc_fraction=0.8, dale_input=False,
             dale_kwta="include", sparse_exec="auto", sparse_init="torch")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_synthetic_dataset("mnist", root, num_train=200, num_test=60, seed=0)
    return build_scenario("mnist", mode="permutations", num_tasks=3, data_root=root,
                          download=False, progress=False)


def _ctx(scenario, model, task):
    return TaskContext(task=task, num_tasks=scenario.num_tasks, scenario=scenario, model=model,
                       device="cpu", seed=0, steps=7, epochs=1, batch_size=32)


def _train(scenario, probe=None, tasks=3, stop_after=None, on_step=None):
    """SGD on each task in turn (dropout and k-WTA duty cycles on), with the probe's events;
    ``on_step(task, steps_into_task, model)`` after every step."""
    torch.manual_seed(0)
    model = build_model(MODEL, scenario)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    constrain_optimizer(opt, model)
    stats = []
    step = 0
    for task in range(tasks):
        ctx = _ctx(scenario, model, task)
        if probe is not None:
            probe.on_task_start(ctx)
        model.train()
        g = torch.Generator().manual_seed(task)
        for i, (x, y, t) in enumerate(scenario.batches(task, "train", batch_size=32, generator=g)):
            opt.zero_grad()
            F.cross_entropy(model(x, t), y).backward()
            opt.step()
            step += 1
            if probe is not None:
                probe.after_step(step)
            if on_step is not None:
                on_step(task, i + 1, model)
        if probe is not None:
            probe.on_task_end(ctx)
            stats.append(probe.stats())
        if stop_after is not None and task == stop_after:
            break
    return model, stats


def _spec(**kw):
    return NTKProbeSpec(**{"record_ntk": True, "ntk_probe_size": 16, "ntk_align_batch": 8, **kw})


def test_probe_records_plain_data_for_every_seen_task(scenario):
    probe = NTKProbe(_spec())
    assert isinstance(probe, Probe)
    _, stats = _train(scenario, probe)
    assert [s["task"] for s in stats] == [0, 1, 2]
    for s in stats:
        seen = s["seen"]
        assert seen == list(range(s["task"] + 1))
        for key in ("grad_alignment", "kernel_drift", "cka_init", "cka_learned",
                    "effective_rank", "effective_rank_init", "kernel_mean_diag", "probe_size"):
            assert len(s[key]) == len(seen) and all(isinstance(v, (int, float)) for v in s[key])
        assert s["probe_size"] == [16] * len(seen)
        # the current task: its kernel is the one it was learned with
        assert s["cka_learned"][-1] == pytest.approx(1.0, abs=1e-12)
        assert all(d > 0 for d in s["kernel_drift"])
        assert all(-1 <= a <= 1 for a in s["grad_alignment"] + s["cka_init"])
        assert all(1 <= r <= 16 for r in s["effective_rank"])
    # after task 2, task 0's kernel has moved further from its end-of-task-0 kernel
    assert stats[2]["cka_learned"][0] < 1.0
    assert stats[2]["kernel_drift"][0] > stats[0]["kernel_drift"][0]


def test_values_equal_direct_computations_from_a_copy_at_theta0(scenario):
    torch.manual_seed(0)
    model0 = build_model(MODEL, scenario).eval()         # the network at theta_0 (same seed)
    probe = NTKProbe(_spec())
    model, stats = _train(scenario, probe, stop_after=0)
    model.eval()
    rows = probe_rows(0, 0, scenario.tasks[0].num_train, 16)
    x, y, t = next(iter(scenario.batches(0, "train", batch_size=16, shuffle=False, rows=rows)))
    k_now = empirical_ntk(model, x, t1=t, mode="trace")
    k_init = empirical_ntk(model0, x, t1=t, mode="trace")
    s = stats[0]
    assert s["kernel_drift"][0] == pytest.approx(kernel_drift(k_now, k_init), rel=1e-5)
    assert s["cka_init"][0] == pytest.approx(centered_kernel_alignment(k_now, k_init), rel=1e-5)
    expected = gradient_alignment(model, x[:8], y[:8], t=t[:8], reference=snapshot(model0))
    assert s["grad_alignment"][0] == pytest.approx(expected.value, rel=1e-5)


def test_probe_does_not_change_training(scenario):
    plain, _ = _train(scenario, None)
    probed, _ = _train(scenario, NTKProbe(_spec()))
    a, b = plain.state_dict(), probed.state_dict()
    assert list(a) == list(b)
    for n in a:       # weights, duty cycles and the k-WTA sample counters (extra state)
        assert (torch.equal(a[n], b[n]) if isinstance(a[n], torch.Tensor) else a[n] == b[n]), n


def test_state_dict_resumes_to_the_same_measures(scenario):
    probe = NTKProbe(_spec())
    model, first = _train(scenario, probe, stop_after=1)
    saved = copy.deepcopy(probe.state_dict())
    resumed = NTKProbe(_spec())
    resumed.load_state_dict(saved)
    ctx = _ctx(scenario, model, 1)
    resumed.on_task_start(ctx)                           # already initialised: no new theta_0
    probe.on_task_end(ctx)
    resumed.on_task_end(ctx)
    assert resumed.stats() == probe.stats()
    with pytest.raises(ValueError, match="without a saved state"):
        NTKProbe(_spec()).on_task_start(_ctx(scenario, model, 1))


def test_disabled_probe_does_nothing(scenario):
    probe = NTKProbe(_spec(record_ntk=False))
    _, stats = _train(scenario, probe, tasks=1)
    assert stats == [{}] and probe.state_dict() == {}


def test_spec_from_config_and_its_errors():
    cfg = SimpleNamespace(record_ntk=True, ntk_probe_size=32, ntk_align_batch=24,
                          ntk_probe_split="test", seed=3, ntk_probe_every=5)
    spec = NTKProbeSpec.from_config(cfg)
    assert spec == NTKProbeSpec(True, 32, 24, "test", 3, 5)
    assert NTK_PROBE_KEYS == ("record_ntk", "ntk_probe_size", "ntk_align_batch",
                              "ntk_probe_split", "seed", "ntk_probe_every")
    assert isinstance(build_ntk_probe(cfg, env=None), NTKProbe) and ntk_probe_enabled(cfg)
    assert not ntk_probe_enabled(SimpleNamespace(**{**vars(cfg), "record_ntk": False}))
    with pytest.raises(ValueError, match="lacks the key"):
        NTKProbeSpec.from_config(SimpleNamespace(record_ntk=True))
    with pytest.raises(ValueError, match="'ntk_align_batch' .* conflict"):
        _spec(ntk_align_batch=20)
    # types and ranges: the config schema, which names the key and where it was written
    from sparse_nte.config import ConfigError, config_from_dict
    for bad in ({"ntk_probe_split": "valid"}, {"ntk_probe_size": 1, "ntk_align_batch": 1},
                {"record_ntk": "maybe"}, {"ntk_probe_every": -1}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            config_from_dict(bad)
    with pytest.raises(ConfigError, match="ntk_align_batch.*conflict"):
        config_from_dict({"record_ntk": True, "ntk_probe_size": 8, "ntk_align_batch": 16})


def test_within_task_measures_equal_direct_computations_at_those_steps(scenario):
    """ntk_probe_every = 3: task t measured at its start and after its steps 3, 6 (7 steps of
    32 on 200 examples); each value equals the alignment and drift computed from a copy of the
    network taken at that step."""
    torch.manual_seed(0)
    model0 = build_model(MODEL, scenario).eval()
    copies = {}

    def keep(task, steps, model):
        if steps % 3 == 0:
            copies[(task, steps)] = copy.deepcopy(model).eval()

    probe = NTKProbe(_spec(ntk_probe_every=3))
    _, stats = _train(scenario, probe, tasks=2, on_step=keep)
    for task, s in enumerate(stats):
        within = s["within_task"]
        assert within["step"] == [0, 3, 6]
        if task == 0:                                      # theta = theta_0 at its start
            assert within["grad_alignment"][0] == pytest.approx(1.0, abs=1e-6)
            assert within["kernel_drift"][0] == pytest.approx(0.0, abs=1e-6)
        rows = probe_rows(0, task, scenario.tasks[task].num_train, 16)
        x, y, t = next(iter(scenario.batches(task, "train", batch_size=16, shuffle=False,
                                             rows=rows)))
        k_init = empirical_ntk(model0, x, t1=t, mode="trace")
        for i, steps in enumerate(within["step"][1:], start=1):
            net = copies[(task, steps)]
            expected = gradient_alignment(net, x[:8], y[:8], t=t[:8], reference=snapshot(model0))
            assert within["grad_alignment"][i] == pytest.approx(expected.value, rel=1e-5)
            drift = kernel_drift(empirical_ntk(net, x, t1=t, mode="trace"), k_init)
            assert within["kernel_drift"][i] == pytest.approx(drift, rel=1e-5)
    # task 1 starts where task 0 ended: its alignment at step 0 is below 1
    assert stats[1]["within_task"]["grad_alignment"][0] < 1.0
    # without the option there is no curve
    _, plain = _train(scenario, NTKProbe(_spec()), tasks=1)
    assert "within_task" not in plain[0]


def test_within_task_measures_do_not_change_training(scenario):
    plain, _ = _train(scenario, None)
    probed, _ = _train(scenario, NTKProbe(_spec(ntk_probe_every=1)))
    a, b = plain.state_dict(), probed.state_dict()
    for n in a:
        assert (torch.equal(a[n], b[n]) if isinstance(a[n], torch.Tensor) else a[n] == b[n]), n


def test_probe_rows_are_seeded_per_task_and_sorted():
    a = probe_rows(0, 1, 100, 10)
    assert torch.equal(a, probe_rows(0, 1, 100, 10))
    assert not torch.equal(a, probe_rows(0, 2, 100, 10))
    assert not torch.equal(a, probe_rows(1, 1, 100, 10))
    assert bool((a[1:] > a[:-1]).all()) and len(a) == 10
    assert torch.equal(probe_rows(0, 0, 5, 10), torch.arange(5))
