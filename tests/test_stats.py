"""Model statistics: density, mask and sign violations, E/I fractions, dead synapses per sign,
duty-cycle entropy, usage overlap; plain values only."""
import io
import pickle

import numpy as np
import pytest
import torch
import torch.nn as nn

from sparse_nte.layers import KWinners, SparseWeights, SparseWeights2d
from sparse_nte.stats import (
    activity_stats,
    connectivity,
    finalize,
    kwinners_entropy,
    layer_stats,
    mask_violations,
    model_stats,
    sign_violations,
    to_plain,
    usage_overlap,
    weight_layers,
)


def _hand_made():
    """A 2x4 Dale layer with known weights: presynaptic signs + + + -, mask on column 1."""
    layer = SparseWeights(nn.Linear(4, 2, bias=False), sparsity=0.0)
    layer.zero_mask[:, 1] = True
    layer.set_presynaptic_sign(torch.tensor([1.0, 1.0, 1.0, -1.0]))
    with torch.no_grad():
        layer.module.weight.copy_(torch.tensor([[0.5, 0.0, 0.0, -0.2],
                                                [0.0, 0.0, 0.3, -0.1]]))
    layer.enforce_constraints()
    return layer


def test_layer_stats_on_known_weights():
    model = nn.Sequential(_hand_made(), nn.ReLU(), nn.Linear(2, 3))
    stats = layer_stats(model)
    assert list(stats) == ["0", "2"]                    # the wrapped Linear is not listed twice
    s = stats["0"]
    assert s["shape"] == (2, 4) and s["num_weights"] == 8
    assert s["density"] == 4 / 8
    assert s["mask_density"] == 6 / 8
    assert s["mask_violations"] == 0 and s["sign_violations"] == 0
    assert s["dale"] and s["num_exc"] == 3 and s["num_inh"] == 1 and s["exc_fraction"] == 0.75
    assert s["dead"] == 2 / 6                          # allowed synapses (cols 0, 2, 3) at zero
    assert s["dead_exc"] == 2 / 4 and s["dead_inh"] == 0.0
    plain = stats["2"]
    assert not plain["dale"] and plain["mask_density"] == 1.0 and plain["exc_fraction"] is None
    assert plain["dead_exc"] is None and plain["sign_violations"] == 0


def test_connectivity_counts_mask_and_nonzero_density_per_layer_and_in_total():
    head = nn.Linear(2, 3)
    with torch.no_grad():
        head.weight[0, 0] = 0.0                        # a dense layer's weight at exactly 0
    model = nn.Sequential(_hand_made(), nn.ReLU(), head)
    c = connectivity(model)
    assert c["layers"]["0"] == {"mask_density": 6 / 8, "nonzero_density": 4 / 8, "num_weights": 8}
    assert c["layers"]["2"] == {"mask_density": 1.0, "nonzero_density": 5 / 6, "num_weights": 6}
    assert c["num_weights"] == 14
    assert c["mask_density"] == (6 + 6) / 14 and c["nonzero_density"] == (4 + 5) / 14
    with pytest.raises(ValueError, match="no weight layer"):
        connectivity(nn.Sequential(nn.ReLU()))


def test_violations_are_counted_on_stored_values_without_repairing_them():
    layer = _hand_made()
    with torch.no_grad():
        layer.module.weight.data[0, 3] = 0.4           # inhibitory synapse turned positive
        layer.module.weight.data[1, 0] = -0.1          # excitatory synapse turned negative
        layer.module.weight.data[0, 1] = 0.7           # masked synapse revived
    model = nn.Sequential(layer)
    assert sign_violations(model) == 2
    assert mask_violations(model) == 1
    assert sign_violations(model) == 2                 # reading stats did not project
    layer.enforce_constraints()
    assert sign_violations(model) == 0 and mask_violations(model) == 0


def test_conv_layer_stats_use_channel_signs():
    layer = SparseWeights2d(nn.Conv2d(2, 3, 3), sparsity=0.0)
    layer.set_presynaptic_sign(torch.tensor([1.0, -1.0]))
    with torch.no_grad():
        layer.module.weight.fill_(0.0)
        layer.module.weight[:, 0] = 1.0                # excitatory channel all alive
    s = layer_stats(layer)[""]
    assert s["exc_fraction"] == 0.5 and s["dead_exc"] == 0.0 and s["dead_inh"] == 1.0
    with torch.no_grad():
        layer.module.weight.data[0, 1, 0, 0] = 0.5
    assert layer_stats(layer)[""]["sign_violations"] == 1


def test_kwinners_entropy_matches_the_layer():
    kw = KWinners(20, 0.25, boost_strength=0.0)
    kw.train()
    kw(torch.randn(50, 20))
    model = nn.Sequential(nn.Linear(5, 20), kw)
    out = kwinners_entropy(model)
    assert list(out) == ["1"]
    assert out["1"]["entropy"] == pytest.approx(float(kw.entropy()))
    assert out["1"]["max_entropy"] == pytest.approx(kw.max_entropy())
    assert out["1"]["n"] == 20 and out["1"]["k"] == 5


def test_usage_overlap():
    p = np.array([0.5, 0.5, 0.0, 0.0])
    assert usage_overlap(p, p) == pytest.approx(1.0)
    assert usage_overlap(p, 3 * p) == pytest.approx(1.0)
    assert usage_overlap(p, [0.0, 0.0, 0.2, 0.9]) == 0.0
    assert usage_overlap(p, [0.5, 0.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert usage_overlap(p, np.zeros(4)) == 0.0
    with pytest.raises(ValueError, match="different lengths"):
        usage_overlap(p, np.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        usage_overlap(p, -p)


class _BuiltinsOnly(pickle.Unpickler):
    """Loads only builtins and numpy, as a results pickle must."""

    def find_class(self, module, name):
        if module == "builtins" or module.startswith("numpy"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")


def test_model_stats_pickles_without_torch_or_this_package():
    model = nn.Sequential(_hand_made(), KWinners(2, 0.5), nn.Linear(2, 3))
    stats = model_stats(model)
    assert stats["sign_violations"] == 0 and stats["mask_violations"] == 0
    assert set(stats["layers"]) == {"0", "2"} and set(stats["kwinners"]) == {"1"}
    loaded = _BuiltinsOnly(io.BytesIO(pickle.dumps(stats))).load()
    assert loaded == stats


def test_weight_layers_lists_wrappers_and_unwrapped_layers_in_order():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), SparseWeights(nn.Linear(3, 3), sparsity=0.5),
                          nn.Linear(3, 1))
    assert [name for name, _ in weight_layers(model)] == ["0", "1", "2"]


# -- activity on a scenario, plain results --------------------------------------------------------
class _TwoTaskScenario:
    """Stand-in for benchmarks.Scenario: two task-incremental tasks of random 1x10x10 inputs."""
    tasks = (0, 1)
    input_shape = (1, 10, 10)
    num_heads = 2
    head_size = 2

    def head_of(self, task_index):
        return task_index

    def batches(self, task_index, split="train", batch_size=128, shuffle=None, generator=None,
                device="cpu"):
        g = torch.Generator().manual_seed(100 + task_index)
        x = torch.randn(50, 1, 10, 10, generator=g) + 2.0 * task_index
        for i in range(0, 50, batch_size):
            xb = x[i:i + batch_size].to(device)
            yield xb, torch.zeros(len(xb), dtype=torch.long), torch.full((len(xb),), task_index)


def _model(**overrides):
    from models import build_model
    cfg = dict(cnn=False, conv_layers=2, hidden_units=40, hidden_layers=2, dropout=0.5, sparsify=True,
               percent_on_fc=0.25, percent_on_conv=0.5, k_inference_factor=1.0, boost_strength=0.0,
               boost_strength_factor=1.0, duty_cycle_period=1000, weight_sparsity_fc=0.5,
               weight_sparsity_conv=1.0, seed=0, dale=True, exc_fraction=0.8, dale_input=False,
               dale_kwta="include", sparse_exec="auto", sparse_init="torch")
    cfg.update(overrides)
    return build_model(cfg, _TwoTaskScenario())


def test_activity_stats_per_task_with_overlap_and_training_mode_restored():
    model = _model().train()
    stats = model_stats(model, _TwoTaskScenario(), 1, batch_size=16)
    assert model.training
    act = stats["activity"]
    assert set(act) == {"blocks.0", "blocks.1"}
    for entry in act.values():
        # at most k of n per example (eval mode, no dropout); fewer when under k are positive
        assert entry["active_fraction"].shape == (2,)
        assert (entry["active_fraction"] <= 0.25).all() and (entry["active_fraction"] > 0.2).all()
        assert entry["unit_active_fraction"].shape == (2, 40)
        overlap = entry["overlap"]
        assert overlap.shape == (2, 2)
        np.testing.assert_allclose(np.diag(overlap), 1.0)
        assert 0.0 <= overlap[0, 1] < 1.0 and overlap[0, 1] == overlap[1, 0]
        assert entry["active_fraction_exc"].shape == (2,)
    only_first = activity_stats(model, _TwoTaskScenario(), 0)
    np.testing.assert_allclose(only_first["blocks.0"]["unit_active_fraction"][0],
                               act["blocks.0"]["unit_active_fraction"][0])
    without_dale = activity_stats(_model(dale=False), _TwoTaskScenario(), 1)
    assert np.isnan(without_dale["blocks.0"]["active_fraction_exc"]).all()
    # without Dale the MLP's k-WTA has no ReLU (as the original): exactly k winners, all non-zero
    np.testing.assert_allclose(without_dale["blocks.0"]["active_fraction"], [0.25, 0.25])


def test_activity_stats_argument_errors():
    with pytest.raises(ValueError, match="record_activity"):
        activity_stats(nn.Linear(2, 2), _TwoTaskScenario(), 0)
    with pytest.raises(ValueError, match="task_index"):
        activity_stats(_model(), _TwoTaskScenario(), 2)
    with pytest.raises(ValueError, match="task_index"):
        model_stats(_model(), _TwoTaskScenario())


def test_finalize_makes_everything_plain():
    stats = {"per_task": [{"loss": torch.tensor(0.5), "counts": torch.arange(3),
                           "rate": np.float32(0.25), "shape": (2, 3)}]}
    out = finalize(stats, history={"steps": [np.int64(1), 2]})
    assert out["per_task"][0]["loss"] == 0.5 and isinstance(out["per_task"][0]["loss"], float)
    assert isinstance(out["per_task"][0]["counts"], np.ndarray)
    assert isinstance(out["per_task"][0]["rate"], float) and out["history"]["steps"] == [1, 2]
    assert _BuiltinsOnly(io.BytesIO(pickle.dumps(out))).load()["per_task"][0]["shape"] == (2, 3)
    with pytest.raises(ValueError, match="cannot store"):
        to_plain({"layer": nn.Linear(1, 1)})
    assert "history" not in finalize({"a": 1})
