"""The settings the local-rule protocols rely on: hidden_widths (one width per fc layer),
input_scaling = symmetric, learning curves (epoch_eval), the refusal of Dale's law after a
LayerNorm, and tools/check_rule_sections.py (every shipped MLP section under another rule)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.batching import iterate_batches
from benchmarks.synthetic import write_synthetic_dataset
from models import build_model
from sparse_nte.config import ConfigError, load_config
from sparse_nte.config.groups.model import parse_widths
from sparse_nte.runner import run_trial

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import check_rule_sections as crs  # noqa: E402
from config_cases import load_section  # noqa: E402
from scenario_cases import FakeScenario  # noqa: E402

BASE = """\
[DEFAULT]
description = base
benchmark = mnist
mnist_mode = permutations
num_batch = 2
train_subset = 120
hidden_units = 40
hidden_layers = 1
optimizer = sgd
lr = 0.05
mb_size = 20
train_ep = 2
train_ep_inc = 2
eval_subset = 0
record_stats = True
data_root = {root}

[e]
description = e
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("data")
    write_synthetic_dataset("mnist", path, num_train=300, num_test=100, seed=0)
    return path


def cfg(tmp_path: Path, root: Path = Path("."), **overrides):
    return load_section(tmp_path, BASE, root, **overrides)


SCENARIO = FakeScenario(setting="domain", num_tasks=1, input_shape=(1, 28, 28), head_size=10)


# -- hidden_widths ----------------------------------------------------------------------------
def test_hidden_widths_give_one_fc_layer_per_width_and_replace_units_and_layers(tmp_path):
    c = cfg(tmp_path, hidden_widths=" 128 ,64")
    assert c.hidden_widths == "128,64"                  # canonical: same network, same config
    model = build_model(c.to_dict(), SCENARIO)
    weights = [m.weight.shape for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert weights == [(128, 784), (64, 128), (10, 64)]
    x = torch.rand(3, 1, 28, 28)
    assert model(x, torch.zeros(3, dtype=torch.long)).shape == (3, 10)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5000), min_size=1, max_size=5))
def test_parse_widths_round_trips_any_list_of_widths(widths):
    assert parse_widths(", ".join(map(str, widths))) == tuple(widths)


@pytest.mark.parametrize("text", ["128, x", "128,,64", "0, 64", "-3"])
def test_invalid_hidden_widths_are_a_config_error_naming_the_key(tmp_path, text):
    with pytest.raises(ConfigError, match="hidden_widths"):
        cfg(tmp_path, hidden_widths=text)


def test_kwta_size_is_checked_against_the_narrowest_width(tmp_path):
    cfg(tmp_path, hidden_widths="100, 20", sparsify=True, percent_on_fc=0.05)    # k = 1, 5
    with pytest.raises(ConfigError, match="narrowest of hidden_widths"):
        cfg(tmp_path, hidden_widths="100, 9", sparsify=True, percent_on_fc=0.05)  # k = 0 at 9


# -- Dale's law after a LayerNorm ---------------------------------------------------------------
def test_dale_with_layer_norm_is_refused_naming_both_keys(tmp_path):
    with pytest.raises(ConfigError, match="dale.*layer_norm|layer_norm.*dale"):
        cfg(tmp_path, dale=True, layer_norm=True)
    assert cfg(tmp_path, dale=True).dale and cfg(tmp_path, layer_norm=True).layer_norm


# -- input_scaling = symmetric --------------------------------------------------------------------
def test_symmetric_scaling_maps_pixels_to_minus_one_one():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (7, 1, 4, 4), dtype=torch.uint8, generator=g)
    x[0, 0, 0, :2] = torch.tensor([0, 255], dtype=torch.uint8)
    y, t = torch.zeros(7, dtype=torch.long), torch.zeros(7, dtype=torch.long)
    (xb, _, _), = iterate_batches(x, y, t, mean=(0.1,), std=(0.3,), batch_size=7,
                                  scaling="symmetric")
    want = (x.double() / 255.0 - 0.5) / 0.5
    assert torch.allclose(xb.double().reshape(want.shape), want, atol=1e-6)
    assert xb.reshape(7, -1)[0, :2].tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)


# -- learning curves ------------------------------------------------------------------------------
def test_learning_curves_record_every_epoch_and_leave_training_unchanged(tmp_path, root):
    plain = run_trial(cfg(tmp_path, root).to_dict(), tmp_path / "a", progress=False,
                      log=lambda m: None)
    curves = run_trial(cfg(tmp_path, root, epoch_eval=True, epoch_eval_train=50).to_dict(),
                       tmp_path / "b", progress=False, log=lambda m: None)
    np.testing.assert_array_equal(plain["acc_matrix"], curves["acc_matrix"])
    for task, stats in enumerate(curves["stats"]["per_task"]):
        test, train = stats["epoch_test_acc"], stats["epoch_train_acc"]
        assert len(test) == len(train) == 2                            # train_ep = 2 epochs
        # the last point is the end-of-task evaluation of the whole test set
        assert test[-1] == pytest.approx(curves["acc_matrix"][task, task], abs=1e-9)
        assert all(0.0 <= a <= 1.0 and math.isclose(a * 50, round(a * 50)) for a in train)
    assert "epoch_test_acc" not in plain["stats"]["per_task"][0]


# -- every shipped MLP section under the local rules --------------------------------------------
def test_shrink_fits_kwta_and_gmp_schedules_into_a_short_run():
    shipped = crs.CONFIG
    kwta = load_config(shipped, "MLP_1LayerSparse")          # 4000 units, k = 4
    out = crs.shrink_overrides(kwta, 24, 200)
    assert out["hidden_units"] == 200 and round(200 * out["percent_on_fc"]) == 4
    gmp = crs.shrink_overrides(load_config(shipped, "pmnist_gmp"), 24, None)
    assert gmp["gmp_n"] == 1 and gmp["plasticity_interval"] == 1


@pytest.mark.parametrize("rule", ["ib_hebbian", "hsic"])
def test_shipped_sections_run_under_local_rules_keeping_masks_and_signs(tmp_path, rule):
    crs.write_datasets(tmp_path, ("fashion_mnist", "mnist"), num_train=60, num_test=40)
    out = crs.check_section("pmnist_kwta_dale", rule, tmp_path, width=100)
    assert out.status == "done", out.message
    assert out.mask_violations == 0 and out.sign_violations == 0
    refused = crs.check_section("pmnist_nte", rule, tmp_path, width=100)
    assert refused.status == "refused" and "optimizer = nte" in refused.message
