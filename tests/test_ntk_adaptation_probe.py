"""The fast-adaptation probe: what it stores per task (the same as a direct fast_adaptation call
on the trained network), that a trial's training and accuracy matrix are the same with or
without it, and its config keys."""
import copy
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from benchmarks import build_scenario
from benchmarks.synthetic import write_synthetic_dataset
from models import build_model
from sparse_nte.config import ConfigError, config_from_dict, load_config
from sparse_nte.dale import constrain_optimizer
from sparse_nte.ntk import fast_adaptation
from sparse_nte.ntk.adaptation_probe import (ADAPTATION_KEYS, AdaptationProbe, AdaptationSpec,
                                             adaptation_enabled, adaptation_seed,
                                             build_adaptation_probe, parse_examples)
from sparse_nte.probes import PROBES
from sparse_nte.runner import run_trial
from sparse_nte.seams import Probe, TaskContext

MODEL = dict(cnn=False, hidden_units=24, hidden_layers=1, dropout=0.25, sparsify=True,
             percent_on_fc=0.25, percent_on_conv=0.5, k_inference_factor=1.0, boost_strength=1.0,
             boost_strength_factor=0.9, duty_cycle_period=100, weight_sparsity_fc=0.5,
             weight_sparsity_conv=1.0, seed=0, dale=True, exc_fraction=0.8, dale_input=False,
             dale_kwta="include", sparse_exec="auto", sparse_init="torch")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    write_synthetic_dataset("mnist", path, num_train=300, num_test=100, seed=0)
    return path


@pytest.fixture(scope="module")
def scenario(root):
    return build_scenario("mnist", mode="split", num_tasks=5, setting="task", data_root=root,
                          download=False, progress=False)


def _spec(**kw):
    return AdaptationSpec(**{"record_adaptation": True, "adapt_examples_per_class": "2, 8",
                             "adapt_finetune_steps": 20, "adapt_finetune_batch": 8,
                             "adapt_finetune_lr": 0.05, "seed": 3, **kw})


def test_stats_equal_a_direct_fast_adaptation_of_the_trained_network(scenario):
    torch.manual_seed(0)
    model = build_model(MODEL, scenario)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    constrain_optimizer(opt, model)
    probe = AdaptationProbe(_spec())
    assert isinstance(probe, Probe)
    found = []
    for task in range(2):
        ctx = TaskContext(task=task, num_tasks=scenario.num_tasks, scenario=scenario, model=model,
                          device="cpu", seed=3, steps=5, epochs=1, batch_size=32)
        probe.on_task_start(ctx)
        model.train()
        for x, y, t in scenario.batches(task, "train", batch_size=32,
                                        generator=torch.Generator().manual_seed(task)):
            opt.zero_grad()
            F.cross_entropy(model(x, t), y).backward()
            opt.step()
        probe.on_task_end(ctx)
        found.append(probe.stats())
        expected = fast_adaptation(copy.deepcopy(model), scenario, new_task=task + 1,
                                   old_tasks=range(task + 1), examples_per_class=(2, 8),
                                   noise=0.1, finetune_lr=0.05, finetune_steps=20,
                                   finetune_batch=8, seed=adaptation_seed(3, task))
        got = dict(found[-1])
        assert got.pop("seconds") > 0
        assert got == expected
        assert model.training                                   # its mode is restored
    assert [s["new_task"] for s in found] == [1, 2]
    assert [s["old_tasks"] for s in found] == [[0], [0, 1]]
    for r in found[1]["results"]:
        assert r["gp"]["old"] == found[1]["before"]["old"]      # the GP leaves the network as is
        assert r["gp"]["method"] == "kernel"                    # auto: 24-unit MLP, N C <= 4096
    # after the last task there is no next one: nothing is measured
    last = TaskContext(task=4, num_tasks=5, scenario=scenario, model=model, device="cpu", seed=3,
                       steps=5, epochs=1, batch_size=32)
    probe.on_task_start(last)
    probe.on_task_end(last)
    assert probe.stats() == {}


def test_seeds_differ_per_task_and_trial():
    assert adaptation_seed(0, 1) == adaptation_seed(0, 1)
    assert len({adaptation_seed(s, t) for s in range(3) for t in range(3)}) == 9


CFG = """
[DEFAULT]
dataset = mnist
mnist_mode = split
num_batch = 5
scenario = task
hidden_units = 32
hidden_layers = 1
sparsify = True
percent_on_fc = 0.25
dropout = 0.3
train_ep = 1
train_ep_inc = 1
mb_size = 32
lr = 0.05
record_stats = False
data_root = {root}

[tiny_adapt]
description = split synthetic MNIST with k-WTA and dropout
"""


def test_the_trial_is_the_same_with_or_without_the_probe(root, tmp_path):
    """Dropout draws from the global generator during training AND during fine-tuning: the
    probe forks it, so the accuracy matrix is identical (and the probe's results stored)."""
    cfg_file = tmp_path / "exps.cfg"
    cfg_file.write_text(CFG.format(root=root))
    plain = load_config(cfg_file, "tiny_adapt", {"num_batch": "5"})
    probed = load_config(cfg_file, "tiny_adapt", {
        "record_adaptation": "true", "adapt_examples_per_class": "4", "adapt_finetune_steps": "10",
        "adapt_finetune_batch": "8", "record_ntk": "true", "ntk_probe_size": "8",
        "ntk_align_batch": "8", "ntk_probe_every": "2"})
    a = run_trial(plain, tmp_path / "a", progress=False, log=lambda s: None)
    b = run_trial(probed, tmp_path / "b", progress=False, log=lambda s: None)
    assert a["status"] == b["status"] == "done"
    np.testing.assert_array_equal(a["acc_matrix"], b["acc_matrix"])
    per_task = b["stats"]["per_task"]
    assert [bool(t["adaptation"]) for t in per_task] == [True] * 4 + [False]
    for t, entry in enumerate(per_task[:4]):
        ad = entry["adaptation"]
        assert ad["new_task"] == t + 1 and ad["old_tasks"] == list(range(t + 1))
        assert [r["k"] for r in ad["results"]] == [4] and ad["results"][0]["n_train"] == 8
        # the probe sees the network the trial evaluates: same accuracy on the old tasks
        np.testing.assert_allclose(ad["before"]["old"], b["acc_matrix"][t, :t + 1])
        assert entry["ntk"]["within_task"]["step"][0] == 0
    assert "adaptation" not in a["stats"]["per_task"][0]


def test_spec_keys_and_config_errors():
    assert parse_examples("100,10, 1000") == (10, 100, 1000)
    for bad in ("", "10,,100", "0", "ten", "10, 10", "-5"):
        with pytest.raises(ValueError):
            parse_examples(bad)
    cfg = config_from_dict({"record_adaptation": True, "adapt_examples_per_class": "100,10"})
    assert cfg.adapt_examples_per_class == "10, 100"            # canonical form
    spec = AdaptationSpec.from_config(cfg)
    assert spec.examples_per_class == (10, 100) and adaptation_enabled(cfg)
    assert isinstance(build_adaptation_probe(cfg, env=None), AdaptationProbe)
    assert "adaptation" in PROBES and not adaptation_enabled(config_from_dict({}))
    assert ADAPTATION_KEYS[0] == "record_adaptation" and ADAPTATION_KEYS[-1] == "seed"
    with pytest.raises(ValueError, match="lacks the key"):
        AdaptationSpec.from_config(SimpleNamespace(record_adaptation=True))
    with pytest.raises(ValueError, match="adapt_method must be one of"):
        AdaptationSpec(adapt_method="dense")
    with pytest.raises(ConfigError, match="adapt_examples_per_class"):
        config_from_dict({"record_adaptation": True, "adapt_examples_per_class": "10, x"})
    for bad in ({"adapt_noise": 0}, {"adapt_method": "dense"}, {"adapt_finetune_steps": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            config_from_dict({"record_adaptation": True, **bad})


def test_keys_without_effect_are_errors_where_written(tmp_path):
    cfg_file = tmp_path / "exps.cfg"
    cfg_file.write_text("[DEFAULT]\ndataset = mnist\n\n[x]\ndescription = x\n")
    with pytest.raises(ConfigError, match="adapt_noise.*record_adaptation = false"):
        load_config(cfg_file, "x", {"adapt_noise": "0.5"})
    with pytest.raises(ConfigError, match="adapt_cg_max_iter.*Cholesky"):
        load_config(cfg_file, "x", {"record_adaptation": "true", "adapt_method": "kernel",
                                    "adapt_cg_max_iter": "5"})
    with pytest.raises(ConfigError, match="adapt_max_kernel.*adapt_method = function"):
        load_config(cfg_file, "x", {"record_adaptation": "true", "adapt_method": "function",
                                    "adapt_max_kernel": "10"})
