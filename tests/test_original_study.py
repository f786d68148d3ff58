"""The original sparse-dynamic-synapses protocol: input scalings, the original task permutations
and epoch order, their config keys, and the shipped original-study sections resolving to the
values the original code ran with (docs/original_study.md).

The references below are computed independently of the code under test, the way the original
code computed them (numpy arrays, numpy's legacy global generator, in-place shuffles)."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import (IMAGENET_MEAN, IMAGENET_STD, iterate_batches, load_dataset,
                        original_task_permutation, original_train_rows, padding_rows,
                        scenario_from_dataset, task_permutation)
from benchmarks.synthetic import write_synthetic_dataset
from models import build_model
from sparse_nte.config import ConfigError, load_config, load_experiments
from sparse_nte.layers import KWinners

SHIPPED = Path(__file__).resolve().parents[1] / "exps" / "exps_params.cfg"
FAST = settings(max_examples=30, deadline=None)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    write_synthetic_dataset("fashion_mnist", base, num_train=300, num_test=130)
    write_synthetic_dataset("cifar100", base, num_train=200, num_test=100)
    return base


@pytest.fixture(scope="module")
def fashion(root):
    return load_dataset("fashion_mnist", root)


def _epoch(scenario, task, split, **kw):
    xs, ys = [], []
    for x, y, _ in scenario.batches(task, split, **kw):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------------------------------------
# Input scaling
# ---------------------------------------------------------------------------------------------
def test_unit_scaling_is_x_over_255_bit_for_bit_as_the_original_arrays(fashion):
    """The original reader stored uint8.astype(float32) / 255 and indexed pixels with the
    task's permutation: a batch must equal that array exactly."""
    s = scenario_from_dataset(fashion, "permutations", 3, input_scaling="unit")
    raw = fashion.test_x.numpy().reshape(-1, 784)
    for task in range(3):
        perm = s.permutations[task].numpy()
        expected = (raw.astype(np.float32) / 255)[:, perm].reshape(-1, 1, 28, 28)
        x, y = _epoch(s, task, "test", batch_size=64, shuffle=False)
        assert x.dtype == torch.float32
        assert np.array_equal(x.numpy(), expected)
        assert torch.equal(y, fashion.test_y)
    values = torch.cat([x.flatten() for x, _, _ in s.batches(0, "train", batch_size=100)])
    assert float(values.min()) >= 0.0 and float(values.max()) <= 1.0


def test_every_uint8_value_scales_exactly():
    """All 256 values: a division, not a multiplication by 1/255 (126 of them would differ)."""
    x = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    out, _, _ = next(iterate_batches(x, torch.zeros(1, dtype=torch.int64),
                                     torch.zeros(1, dtype=torch.int64), mean=(0.5,), std=(0.2,),
                                     batch_size=1, scaling="unit"))
    expected = np.arange(256, dtype=np.uint8).astype(np.float32) / 255
    assert np.array_equal(out.flatten().numpy(), expected)


def test_standard_scaling_is_unchanged_and_is_the_default(fashion):
    s = scenario_from_dataset(fashion, "permutations", 2)
    assert s.input_scaling == "standard"
    x, _ = _epoch(s, 1, "test", batch_size=50, shuffle=False)
    raw = fashion.test_x.double().reshape(-1, 784) / 255
    z = ((raw - fashion.mean[0]) / fashion.std[0])[:, s.permutations[1]]
    torch.testing.assert_close(x.double().reshape(-1, 784), z, rtol=0, atol=1e-5)


def test_imagenet_scaling_uses_imagenet_channel_statistics(root):
    data = load_dataset("cifar100", root)
    s = scenario_from_dataset(data, "split", 10, input_scaling="imagenet")
    x, _ = _epoch(s, 2, "test", batch_size=7, shuffle=False)
    task = s.tasks[2]
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1)
    expected = (task.test_x.double() / 255 - mean) / std
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=2e-6)


def test_imagenet_scaling_needs_colour_images(fashion):
    with pytest.raises(ValueError, match="imagenet.*1 channel"):
        scenario_from_dataset(fashion, "permutations", 2, input_scaling="imagenet")
    with pytest.raises(ValueError, match="input scaling must be one of standard, unit, symmetric, imagenet"):
        scenario_from_dataset(fashion, "permutations", 2, input_scaling="minmax")


# ---------------------------------------------------------------------------------------------
# Task permutations
# ---------------------------------------------------------------------------------------------
@FAST
@given(task=st.integers(0, 10_000), size=st.integers(1, 900))
def test_original_permutation_is_the_legacy_global_shuffle(task, size):
    np_state = np.random.get_state()
    try:
        np.random.seed(task)                      # what the original code did, per task
        inds = list(range(size))
        np.random.shuffle(inds)
    finally:
        np.random.set_state(np_state)
    perm = original_task_permutation(task, size)
    assert perm.dtype == torch.int64 and perm.tolist() == inds


def test_original_permutations_are_the_same_for_every_seed(fashion):
    a = scenario_from_dataset(fashion, "permutations", 4, seed=0, permutation_rng="original")
    b = scenario_from_dataset(fashion, "permutations", 4, seed=7, permutation_rng="original")
    assert torch.equal(a.permutations, b.permutations)
    for i in range(4):
        assert torch.equal(a.permutations[i], original_task_permutation(i, 784))
    assert not torch.equal(a.permutations[0], torch.arange(784))     # task 0 is permuted too
    c = scenario_from_dataset(fashion, "permutations", 4, seed=0)    # default: seeded
    assert torch.equal(c.permutations[2], task_permutation(0, 2, 784))
    first = scenario_from_dataset(fashion, "permutations", 3, permutation_rng="original",
                                  permute_first=False)
    assert torch.equal(first.permutations[0], torch.arange(784))
    assert torch.equal(first.permutations[1:], a.permutations[1:3])


def test_permutation_rng_is_checked(fashion):
    with pytest.raises(ValueError, match="permutation_rng must be one of seeded, original"):
        scenario_from_dataset(fashion, "permutations", 2, permutation_rng="numpy")
    with pytest.raises(ValueError, match="split scenarios have no permutation"):
        scenario_from_dataset(fashion, "split", 5, permutation_rng="original")


# ---------------------------------------------------------------------------------------------
# Epoch order
# ---------------------------------------------------------------------------------------------
def _original_epoch_labels(labels: np.ndarray, batch_size: int) -> np.ndarray:
    """The original code's epoch: pad by prepending the first rows, then shuffle the padded
    arrays in place with numpy's global generator seeded 0 (same state for each array)."""
    n = labels.shape[0]
    missing = n % batch_size
    padded = labels.copy()
    if missing:
        padded = np.concatenate((labels[:batch_size - missing], labels))
    state = np.random.get_state()
    try:
        np.random.seed(0)
        np.random.shuffle(padded)
    finally:
        np.random.set_state(state)
    return padded


@FAST
@given(n=st.integers(1, 3000), batch_size=st.integers(1, 300))
def test_original_train_rows_replay_the_padded_shuffled_epoch(n, batch_size):
    rows = original_train_rows(n, batch_size)
    ids = np.arange(n) * 3 + 1                         # distinct "labels" naming each row
    assert np.array_equal(ids[rows.numpy()], _original_epoch_labels(ids, batch_size))
    m = padding_rows(n, batch_size)
    assert m == (-n) % batch_size
    counts = torch.bincount(rows, minlength=n)
    assert rows.numel() == n + min(m, n)
    assert bool((counts[:min(m, n)] == 2).all()) and bool((counts[min(m, n):] == 1).all())
    if m <= n:
        assert rows.numel() % batch_size == 0
    assert torch.equal(rows, original_train_rows(n, batch_size))   # no hidden state


def test_original_order_of_a_60k_task_is_469_full_batches():
    rows = original_train_rows(60000, 128)
    assert rows.numel() == 469 * 128 and padding_rows(60000, 128) == 32
    assert padding_rows(10000, 128) == 112       # the original's test padding: +1.12 points at most


def test_scenario_batches_follow_the_original_rows(fashion):
    s = scenario_from_dataset(fashion, "permutations", 2, input_scaling="unit")
    rows = original_train_rows(s.tasks[1].num_train, 128)
    out = list(s.batches(1, "train", batch_size=128, rows=rows, shuffle=False, with_index=True))
    assert [len(b[1]) for b in out] == [128] * (rows.numel() // 128)
    assert torch.equal(torch.cat([b[3] for b in out]), rows)
    full, _ = _epoch(s, 1, "train", batch_size=1000, shuffle=False)
    assert torch.equal(torch.cat([b[0] for b in out]), full[rows])


# ---------------------------------------------------------------------------------------------
# Config keys
# ---------------------------------------------------------------------------------------------
def _one(tmp_path, body: str):
    path = tmp_path / "e.cfg"
    path.write_text("[DEFAULT]\n[e]\n" + body)
    return lambda **over: load_config(path, "e", {k: str(v) for k, v in over.items()})


def test_new_keys_defaults_and_values(tmp_path):
    cfg = _one(tmp_path, "dataset = fashion_mnist\n")
    c = cfg()
    assert (c.input_scaling, c.permutation_rng, c.train_order) == ("standard", "seeded", "shuffle")
    c = cfg(input_scaling="unit", permutation_rng="original", train_order="original")
    assert (c.input_scaling, c.permutation_rng, c.train_order) == ("unit", "original", "original")
    with pytest.raises(ConfigError, match="input_scaling.*one of standard, unit, symmetric, imagenet"):
        cfg(input_scaling="minmax")
    with pytest.raises(ConfigError, match="train_order.*one of shuffle, original"):
        cfg(train_order="fixed")


def test_imagenet_scaling_of_grey_images_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="input_scaling.*ImageNet.*grey"):
        _one(tmp_path, "dataset = fashion_mnist\ninput_scaling = imagenet\n")()
    c = _one(tmp_path, "benchmark = cifar\nmnist_mode = split\ninput_scaling = imagenet\n")()
    assert c.input_scaling == "imagenet"


def test_permutation_rng_in_a_split_section_has_no_effect(tmp_path):
    with pytest.raises(ConfigError, match="permutation_rng = original has no effect.*split"):
        _one(tmp_path, "mnist_mode = split\nnum_batch = 5\npermutation_rng = original\n")()


# ---------------------------------------------------------------------------------------------
# The shipped original-study sections
# ---------------------------------------------------------------------------------------------
# What the original code ran (the configs pickled with its permuted-MNIST results, 2019-11-18,
# commit 902843e's code path): x/255 inputs, task i permuted by np.random.seed(i), each task's
# padded training set shuffled once by np.random.seed(0), one SGD optimizer for the whole run, one
# shared 10-way head.
ORIGINAL_MLP = dict(hidden_units=4000, dropout=0.5, lr=0.1, nesterov=True, momentum=0.9,
                    weight_decay=1e-4, mb_size=128, train_ep=2, train_ep_inc=2, optimizer="sgd",
                    mnist_mode="permutations", num_batch=10, scenario="domain", cumul=False,
                    permute_first=True, input_scaling="unit", permutation_rng="original",
                    train_order="original", weight_sparsity_fc=1.0, dale=False,
                    plasticity="none", train_subset=0, cnn=False)
ORIGINAL_KWTA = dict(percent_on_fc=0.001, k_inference_factor=1.0, boost_strength=1.0,
                     boost_strength_factor=1.0, duty_cycle_period=1000)


@pytest.fixture(scope="module")
def shipped():
    return load_experiments(SHIPPED)


@pytest.mark.parametrize("name, layers, sparse", [
    ("MLP_1Layer", 1, False), ("MLP_1LayerSparse", 1, True),
    ("MLP_2Layers", 2, False), ("MLP_2LayersSparse", 2, True)])
def test_original_permuted_mlp_sections_resolve_to_the_original_values(shipped, name, layers, sparse):
    c = shipped[name]
    assert {k: c[k] for k in ORIGINAL_MLP} == ORIGINAL_MLP
    assert (c.hidden_layers, c.sparsify) == (layers, sparse)
    if sparse:
        assert {k: c[k] for k in ORIGINAL_KWTA} == ORIGINAL_KWTA
    # the Fashion-MNIST runs of the reproduction change the dataset only
    fm = load_config(SHIPPED, name, {"dataset": "fashion_mnist"})
    assert {k for k in c if c[k] != fm[k]} == {"dataset"}


def test_original_cnn_sections_resolve_to_the_original_values(shipped):
    for name, sparse in (("CNN", False), ("CNNSparse", True)):
        c = shipped[name]
        common = {k: v for k, v in ORIGINAL_MLP.items() if k not in ("hidden_units", "cnn")}
        assert {k: c[k] for k in common} == common
        assert (c.cnn, c.conv_layers, c.hidden_units, c.hidden_layers, c.sparsify) == \
            (True, 1, 512, 1, sparse)
        if sparse:
            assert (c.percent_on_conv, c.percent_on_fc, c.boost_strength, c.k_inference_factor) == \
                (0.05, 0.05, 1.0, 1.0)


def test_split_and_icifar_sections_use_the_original_inputs_and_order(shipped):
    for name in ("SplitMNIST", "SplitMNISTSparse"):
        assert (shipped[name].input_scaling, shipped[name].train_order) == ("unit", "original")
    for name in ("Cifar100CNNSparse", "Cifar100CNN", "CNNCumul", "Cifar100MLP",
                 "Cifar100MLPDense", "Cifar100Cumul"):
        assert (shipped[name].input_scaling, shipped[name].train_order) == ("imagenet", "original")


def test_new_experiments_keep_the_toolkit_protocol(shipped):
    original = {"MLP_1Layer", "MLP_1LayerSparse", "MLP_2Layers", "MLP_2LayersSparse", "CNN",
                "CNNSparse", "SplitMNIST", "SplitMNISTSparse", "Cifar100CNNSparse", "Cifar100CNN",
                "CNNCumul", "Cifar100MLP", "Cifar100MLPDense", "Cifar100Cumul"}
    # the constraint ladder adds one constraint at a time to MLP_1LayerSparse: same protocol
    ladder = {"MLP_1LayerSparse_Conn10", "MLP_1LayerSparse_Conn10_Dale",
              "MLP_1LayerSparse_Conn10_Dale_NTE", "MLP_1LayerSparse_Grow_Dale_NTE",
              "MLP_1LayerSparse_GrowFrozen_Dale_NTE", "MLP_1LayerSparse_Grow_Dale_Replay",
              "MLP_1LayerSparse_Grow5_Dale_Replay5000"}
    for name in ladder:
        assert (shipped[name].input_scaling, shipped[name].permutation_rng,
                shipped[name].train_order) == ("unit", "original", "original"), name
    # sections reproducing another paper take that paper's inputs, and otherwise the toolkit's
    # protocol: van de Ven & Tolias x/255 (unit); the IB-Hebbian / HSIC papers (x/255 - 0.5)/0.5
    papers = {name: "unit" for name in shipped if name.startswith("pmnist_vdv_")}
    papers.update({name: "symmetric" for name in shipped
                   if name.startswith(("ibh_", "hsic_", "lr_pfmnist_", "lr_sfmnist_"))})
    # ... except on CIFAR-10, where the IB-Hebbian reference standardises each channel
    papers.update({name: "standard" for name in shipped if name.startswith("ibh_cifar10")})
    assert len(papers) >= 20
    for name, c in shipped.items():
        if name not in original | ladder:
            assert (c.input_scaling, c.permutation_rng, c.train_order, c.conv_layers) == \
                (papers.get(name, "standard"), "seeded", "shuffle", 2), name


class _Scenario:
    setting, num_heads, head_size, input_shape, tasks = "domain", 1, 10, (1, 28, 28), tuple(range(10))

    def head_of(self, task):
        return 0


def test_original_kwta_mlp_is_linear_kwinners_dropout_with_nupic_semantics(shipped):
    """MLP_1LayerSparse: Linear(784, 4000) -> KWinners(k = 4, no ReLU, boost 1) -> Dropout(0.5)
    -> Linear(4000, 10); winners as nupic.torch chose them in 2019: top-k of
    x * exp((k/n - d) * beta), raw values kept (negative winners stay negative)."""
    model = build_model(shipped["MLP_1LayerSparse"], _Scenario())
    (block,) = model.blocks
    assert type(block.layer) is nn.Linear and block.layer.weight.shape == (4000, 784)
    kw = block.activation
    assert type(kw) is KWinners and (kw.k, kw.k_inference, kw.relu) == (4, 4, False)
    assert block.dropout.p == 0.5 and model.heads[0].weight.shape == (10, 4000)
    gen = torch.Generator().manual_seed(0)
    kw.train()
    for _ in range(3):
        kw(torch.randn(128, 4000, generator=gen))
    d = kw.duty_cycle.clone()
    x = torch.randn(5, 4000, generator=gen) - 6.0          # all pre-activations negative
    kw.eval()
    y = kw(x)
    idx = (x * torch.exp((4 / 4000 - d) * 1.0)).topk(4, dim=1).indices
    expected = torch.zeros_like(x).scatter(1, idx, x.gather(1, idx))
    assert torch.equal(y, expected) and int((y < 0).sum()) == 5 * 4


def test_a_model_refuses_a_scenario_scaled_otherwise_than_its_config(fashion, shipped):
    """A runner that forgot to pass input_scaling to the scenario fails loudly."""
    standard = scenario_from_dataset(fashion, "permutations", 10)
    with pytest.raises(ValueError, match="input_scaling = unit.*scales its inputs 'standard'"):
        build_model(shipped["MLP_1Layer"], standard)
    unit = scenario_from_dataset(fashion, "permutations", 10, input_scaling="unit")
    assert build_model(shipped["MLP_1Layer"], unit).heads[0].out_features == 10


@pytest.mark.parametrize("name", ["MLP_1Layer", "MLP_1LayerSparse"])
def test_training_steps_equal_a_transcription_of_the_original_loop(fashion, name):
    """The toolkit's model + learner for an original section, on the original batches, against
    the original loop written out in plain torch: nupic.torch's 2019 k-WTA (top-k of
    x * exp((k/n - d) * beta), duty cycles over min(1000, seen) examples), nn.Dropout after the
    activation, one torch.optim.SGD with grads zeroed (not freed) before each step. Same initial
    weights and RNG state: the weights must agree exactly. (Narrower layer, same k = 4.)"""
    from sparse_nte.learner import build_learner
    from sparse_nte.seams import Batch, TaskContext

    narrow = {"dataset": "fashion_mnist", "num_batch": "2", "hidden_units": "400", "mb_size": "64"}
    if name.endswith("Sparse"):
        narrow["percent_on_fc"] = "0.01"
    cfg = load_config(SHIPPED, name, narrow)
    s = scenario_from_dataset(fashion, "permutations", 2, input_scaling="unit",
                              permutation_rng="original")
    model = build_model(cfg, s)
    lin, head = copy.deepcopy(model.blocks[0].layer), copy.deepcopy(model.heads[0])
    learner = build_learner(cfg, model, s)
    rows = original_train_rows(s.tasks[1].num_train, 64)
    batches = list(s.batches(1, "train", batch_size=64, rows=rows, shuffle=False, with_index=True))
    torch.manual_seed(5)
    model.train()
    learner.on_task_start(TaskContext(task=0, num_tasks=2, scenario=s, model=model, device="cpu",
                                      seed=cfg.seed, steps=learner.steps_per_task[0], epochs=2,
                                      batch_size=64))
    for x, y, t, index in batches + batches:
        learner.train_step(Batch(x, y, t, index))

    params = list(lin.parameters()) + list(head.parameters())
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
    n, k, duty, seen = 400, 4, torch.zeros(400), 0
    torch.manual_seed(5)
    for x, y, _, _ in batches + batches:
        for p in params:
            p.grad = torch.zeros_like(p)
        h = lin(x.reshape(len(x), -1))
        if cfg["sparsify"]:
            winners = (h.detach() * torch.exp((k / n - duty) * 1.0)).topk(k, dim=1).indices
            h = h * torch.zeros_like(h).scatter(1, winners, 1.0)
            seen += len(h)
            period = min(1000, seen)
            duty = (duty * (period - len(h)) + (h.detach() > 0).sum(0).float()) / period
        else:
            h = torch.relu(h)
        loss = nn.functional.cross_entropy(head(nn.functional.dropout(h, 0.5, True)), y)
        loss.backward()
        opt.step()
    assert torch.equal(model.blocks[0].layer.weight.detach(), lin.weight.detach())
    assert torch.equal(model.heads[0].weight.detach(), head.weight.detach())
    if cfg["sparsify"]:
        assert torch.equal(model.blocks[0].activation.duty_cycle, duty)
