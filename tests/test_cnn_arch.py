"""The CNN's architecture keys (conv_channels, conv_kernel, conv_padding, conv_pool, and
hidden_layers = 0 for a CNN): the network of Daruwalla & Lipasti (2024) built from them, its
forward pass written out by hand, the config errors, Dale's law through pooling into the heads,
and the local rules on it (the block output z is taken before pooling, as the reference's)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from benchmarks.synthetic import write_synthetic_dataset
from models import build_model
from sparse_nte.config import ConfigError
from sparse_nte.rules.layerwise import heads_forward, local_forward
from sparse_nte.runner import run_trial

from config_cases import load_section
from scenario_cases import FakeScenario

BASE = """\
[DEFAULT]
description = base
benchmark = cifar
dataset = cifar10
mnist_mode = split
num_batch = 1
train_subset = 60
cnn = True
conv_channels = 6, 8
conv_kernel = 3
conv_padding = same
conv_pool = 2
hidden_layers = 0
layer_norm = True
optimizer = adamw
lr = 0.001
mb_size = 6
train_ep = 1
eval_subset = 40
data_root = {root}

[e]
description = e
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("cifar")
    write_synthetic_dataset("cifar10", path, num_train=80, num_test=40, seed=0)
    return path


def cfg(tmp_path: Path, root: Path = Path("."), **overrides):
    return load_section(tmp_path, BASE, root, **overrides)


SCENARIO = FakeScenario(setting="domain", num_tasks=1, input_shape=(3, 32, 32), head_size=10)


def _model(tmp_path, **overrides):
    c = cfg(tmp_path, **overrides)
    return build_model(c.to_dict(), SCENARIO), c


def test_the_reference_cnn_computes_conv_relu_channel_norm_avgpool_then_one_dense_layer(tmp_path):
    model, c = _model(tmp_path, conv_channels="128, 256", seed=3)
    assert c.conv_channels == "128,256"                 # canonical: one spelling per network
    convs = [b.layer for b in model.blocks]
    assert [tuple(m.weight.shape) for m in convs] == [(128, 3, 3, 3), (256, 128, 3, 3)]
    assert model.heads[0].in_features == 256 * 8 * 8     # 32 -> 16 -> 8 after two 2x2 poolings
    x = torch.randn(5, 3, 32, 32)
    h = x
    for m in convs:
        a = torch.relu(F.conv2d(h, m.weight, m.bias, padding=1))
        a = F.layer_norm(a.permute(0, 2, 3, 1), (a.shape[1],)).permute(0, 3, 1, 2)
        h = F.avg_pool2d(a, 2)
    want = F.linear(h.flatten(1), model.heads[0].weight, model.heads[0].bias)
    with torch.no_grad():
        assert torch.allclose(model(x), want, atol=1e-5)


def test_the_original_cnn_is_unchanged_by_the_new_keys_defaults(tmp_path):
    model, _ = _model(tmp_path, conv_channels="", conv_kernel=5, conv_padding="valid", conv_pool=1,
                      hidden_layers=1, hidden_units=16, conv_layers=2)
    assert [tuple(b.layer.weight.shape) for b in model.blocks[:2]] == [(64, 3, 5, 5), (128, 64, 5, 5)]
    assert model.blocks[2].layer.in_features == 128 * 24 * 24


@pytest.mark.parametrize("overrides, key", [
    (dict(cnn=False, hidden_layers=0), "hidden_layers"),
    (dict(conv_kernel=4), "conv_kernel"),
    (dict(conv_channels="128, x"), "conv_channels"),
    (dict(conv_pool=0), "conv_pool"),
])
def test_invalid_architectures_are_config_errors_naming_the_key(tmp_path, overrides, key):
    with pytest.raises(ConfigError, match=key):
        cfg(tmp_path, **overrides)


def test_an_input_too_small_for_the_convolutions_and_pooling_is_refused(tmp_path):
    small = replace(SCENARIO, input_shape=(3, 4, 4))
    c = cfg(tmp_path, conv_channels="4,4,4")
    with pytest.raises(ValueError, match="too small.*2x2 pooling"):
        build_model(c.to_dict(), small)


def test_dale_signs_of_the_last_conv_channels_reach_every_pooled_feature_of_the_head(tmp_path):
    model, _ = _model(tmp_path, dale=True, exc_fraction=0.5, weight_sparsity_conv=0.5,
                      layer_norm=False)
    head = model.heads[0]
    channel_sign = model.unit_signs()[-1]
    assert channel_sign.numel() == 8 and set(channel_sign.tolist()) == {-1.0, 1.0}
    signs = channel_sign.repeat_interleave(8 * 8)           # 8 channels x 8x8 pooled locations
    assert torch.equal(head.dale_sign, signs)
    assert bool((head.weight * signs >= 0).all())


def test_local_forward_takes_z_before_pooling_and_passes_the_pooled_maps_on(tmp_path):
    model, _ = _model(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    zs, h = local_forward(model, x)
    assert [tuple(z.shape) for z in zs] == [(2, 6, 32, 32), (2, 8, 16, 16)]
    assert tuple(h.shape) == (2, 8, 8, 8)
    assert torch.allclose(h, F.avg_pool2d(zs[-1], 2))
    with torch.no_grad():
        assert torch.allclose(heads_forward(model, h, None), model(x), atol=1e-6)


@pytest.mark.parametrize("rule", ["ib_hebbian", "hsic", "backprop"])
def test_every_rule_trains_the_reference_cnn_inside_the_runner(tmp_path, root, rule):
    c = cfg(tmp_path, root, learning_rule=rule, seed=0,
            **({"ib_window": 3, "optimizer": "adamw"} if rule == "ib_hebbian" else {}))
    result = run_trial(c, tmp_path / "r", progress=False)
    assert result["status"] == "done"
    acc = result["acc_matrix"]
    assert len(acc) == 1 and 0.0 <= float(acc[0][0]) <= 100.0
