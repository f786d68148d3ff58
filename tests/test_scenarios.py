"""Continual-learning scenarios on generated files in the real formats (MNIST, CIFAR-10/100)
and, when installed, on Debian's real Fashion-MNIST: permutations, class splits, settings and
their label mappings, cumulative tasks, normalisation and the batch iterator."""
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks import (LoadedDataset, Scenario, Task, build_scenario, channel_stats,
                        iterate_batches, load_dataset, load_folder, scenario_from_dataset,
                        seeded_class_order, subset_rows, task_permutation)
from benchmarks.synthetic import write_idx, write_synthetic_dataset

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    write_synthetic_dataset("mnist", base, num_train=300, num_test=100)
    write_synthetic_dataset("cifar10", base, num_train=200, num_test=50)
    write_synthetic_dataset("cifar100", base, num_train=400, num_test=200)
    return base


@pytest.fixture(scope="module")
def mnist(root) -> LoadedDataset:
    return load_dataset("mnist", root)


def _normalised(data: LoadedDataset, x_u8: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(data.mean, dtype=torch.float64).view(1, -1, 1, 1)
    std = torch.tensor(data.std, dtype=torch.float64).view(1, -1, 1, 1)
    return (x_u8.to(torch.float64) / 255 - mean) / std


def _epoch(scenario, task, split="train", **kw):
    xs, ys, ts = zip(*scenario.batches(task, split, **kw))
    return torch.cat(xs), torch.cat(ys), torch.cat(ts)


# ---------------------------------------------------------------------------------------------
# permutations

@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 1000), st.integers(1, 900))
def test_task_permutation_is_a_deterministic_permutation(seed, task, size):
    perm = task_permutation(seed, task, size)
    assert perm.dtype == torch.int64
    assert torch.equal(torch.sort(perm).values, torch.arange(size))
    assert torch.equal(perm, task_permutation(seed, task, size))


def test_permutations_per_seed_and_task(mnist):
    a = scenario_from_dataset(mnist, "permutations", 4, seed=3)
    b = scenario_from_dataset(mnist, "permutations", 4, seed=3)
    c = scenario_from_dataset(mnist, "permutations", 4, seed=4)
    assert a.permutations.shape == (4, 784) and a.permutations.dtype == torch.int64
    assert torch.equal(a.permutations, b.permutations)
    for i in range(4):
        assert torch.equal(a.permutations[i], task_permutation(3, i, 784))
        assert not torch.equal(a.permutations[i], torch.arange(784))
        assert not torch.equal(a.permutations[i], c.permutations[i])
        for j in range(i):
            assert not torch.equal(a.permutations[i], a.permutations[j])


def test_permute_first_false_makes_only_task_0_the_identity(mnist):
    permuted = scenario_from_dataset(mnist, "permutations", 3, seed=1)
    identity = scenario_from_dataset(mnist, "permutations", 3, seed=1, permute_first=False)
    assert torch.equal(identity.permutations[0], torch.arange(784))
    assert torch.equal(identity.permutations[1:], permuted.permutations[1:])
    x, _, _ = _epoch(identity, 0, "test", batch_size=1000)
    torch.testing.assert_close(x.double(), _normalised(mnist, mnist.test_x), rtol=0, atol=1e-5)


def test_permuted_batches_gather_pixels(mnist):
    scenario = scenario_from_dataset(mnist, "permutations", 3, seed=7)
    perm = scenario.permutations[2]
    x, y, t = _epoch(scenario, 2, "train", shuffle=False, batch_size=64)
    expected = _normalised(mnist, mnist.train_x).reshape(300, 784)[:, perm].reshape(300, 1, 28, 28)
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-5)
    assert torch.equal(y, mnist.train_y) and (t == 2).all()
    # the stored tensors stay the shared, unpermuted uint8 data
    assert scenario.tasks[2].train_x.data_ptr() == mnist.train_x.data_ptr()


@pytest.mark.parametrize("setting, head_size, offset", [("domain", 10, 0), ("task", 10, 0),
                                                        ("class", 30, 10)])
def test_permuted_settings(mnist, setting, head_size, offset):
    s = scenario_from_dataset(mnist, "permutations", 3, setting=setting)
    assert s.setting == setting and s.head_size == head_size
    assert s.num_heads == (3 if setting == "task" else 1)
    for i, task in enumerate(s.tasks):
        assert task.classes == tuple(range(10))
        assert torch.equal(task.train_y, mnist.train_y + i * offset)
        assert torch.equal(task.test_y, mnist.test_y + i * offset)
        assert s.head_of(i) == (i if setting == "task" else 0)
    assert torch.equal(s.seen_outputs(1), torch.arange(20 if setting == "class" else 10))


def test_cumulative_permuted_unions_every_earlier_task(mnist):
    s = scenario_from_dataset(mnist, "permutations", 3, setting="class", cumulative=True, seed=2)
    assert s.cumulative and s.name == "permuted_mnist_cumulative"
    n = 300
    for i, task in enumerate(s.tasks):
        assert task.num_train == (i + 1) * n and task.num_test == 100
        assert torch.equal(torch.bincount(task.train_t), torch.full((i + 1,), n))
        assert torch.equal(task.train_y, torch.cat([mnist.train_y + 10 * j for j in range(i + 1)]))
    x, y, t = _epoch(s, 2, shuffle=False, batch_size=128)
    flat = _normalised(mnist, mnist.train_x).reshape(n, 784)
    expected = torch.cat([flat[:, s.permutations[j]] for j in range(3)]).reshape(-1, 1, 28, 28)
    torch.testing.assert_close(x.double(), expected, rtol=0, atol=1e-5)
    assert torch.equal(t, torch.arange(3).repeat_interleave(n))
    # shuffled: each example still gets its own task's permutation
    g = torch.Generator().manual_seed(0)
    xs, ys, ts = _epoch(s, 2, generator=g, batch_size=100)
    order = torch.randperm(3 * n, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(xs.double(), expected[order], rtol=0, atol=1e-5)
    assert torch.equal(ys, s.tasks[2].train_y[order])
    # tasks share storage (prefixes of one tensor) rather than holding copies
    assert s.tasks[0].train_x.data_ptr() == s.tasks[2].train_x.data_ptr()


# ---------------------------------------------------------------------------------------------
# class splits

@pytest.mark.parametrize("dataset, tasks, per_task", [("mnist", 5, 2), ("cifar10", 5, 2),
                                                      ("cifar100", 10, 10)])
def test_split_defaults_are_disjoint_and_complete(root, dataset, tasks, per_task):
    s = build_scenario(dataset, "split" if dataset == "mnist" else None, data_root=root)
    data = load_dataset(dataset, root)
    assert s.setting == "task" and s.num_tasks == tasks and s.head_size == per_task
    assert s.num_heads == tasks and s.permutations is None
    assert [t.classes for t in s.tasks] == [tuple(range(i * per_task, (i + 1) * per_task))
                                            for i in range(tasks)]
    seen = [c for t in s.tasks for c in t.classes]
    assert sorted(seen) == list(range(data.num_classes)) and len(set(seen)) == len(seen)
    for task in s.tasks:
        for x_all, y_all, x, y in ((data.train_x, data.train_y, task.train_x, task.train_y),
                                   (data.test_x, data.test_y, task.test_x, task.test_y)):
            mask = torch.isin(y_all, torch.tensor(task.classes))
            assert torch.equal(x, x_all[mask])  # every example of the task's classes, in order
            assert torch.equal(y, y_all[mask] - task.classes[0])
        assert (task.train_t == task.index).all()
    assert sum(t.num_train for t in s.tasks) == data.train_x.shape[0]


@pytest.mark.parametrize("setting", ["task", "domain", "class"])
def test_split_label_mapping_with_seeded_class_order(mnist, setting):
    s = scenario_from_dataset(mnist, "split", 5, setting=setting, class_order="seeded", seed=11)
    order = seeded_class_order(11, 10)
    assert s.class_order == order and sorted(order) == list(range(10))
    assert order != tuple(range(10))
    for i, task in enumerate(s.tasks):
        assert task.classes == order[2 * i:2 * i + 2]
        mask = torch.isin(mnist.train_y, torch.tensor(task.classes))
        original = mnist.train_y[mask]
        position = torch.tensor([order.index(int(c)) for c in original])
        expected = position if setting == "class" else position - 2 * i
        assert torch.equal(task.train_y, expected)
    assert s.head_size == (10 if setting == "class" else 2)
    if setting == "class":
        assert torch.equal(s.seen_outputs(2), torch.arange(6))
        assert set(s.tasks[2].test_y.tolist()) <= {4, 5}


def test_seeded_class_order_depends_on_seed_only():
    assert seeded_class_order(0, 10) == seeded_class_order(0, 10)
    assert len({seeded_class_order(s, 10) for s in range(5)}) == 5


def test_explicit_class_order(mnist):
    s = scenario_from_dataset(mnist, "split", 2, class_order=[9, 8, 7, 6, 5, 0, 1, 2, 3, 4])
    assert s.tasks[1].classes == (0, 1, 2, 3, 4)
    assert torch.equal(s.tasks[0].test_y, 9 - mnist.test_y[mnist.test_y >= 5])


def test_cumulative_split(root):
    s = build_scenario("cifar10", "split", cumulative=True, setting="task", data_root=root)
    plain = build_scenario("cifar10", "split", setting="task", data_root=root)
    for i, task in enumerate(s.tasks):
        assert torch.equal(task.train_x, torch.cat([plain.tasks[j].train_x for j in range(i + 1)]))
        assert torch.equal(task.train_y, torch.cat([plain.tasks[j].train_y for j in range(i + 1)]))
        assert torch.equal(task.train_t, torch.cat([torch.full((plain.tasks[j].num_train,), j)
                                                    for j in range(i + 1)]))
        assert torch.equal(task.test_x, plain.tasks[i].test_x)  # test: this task only
    _, _, t = _epoch(s, 4)
    assert sorted(t.unique().tolist()) == [0, 1, 2, 3, 4]


def test_cifar_batches_normalise_per_channel(root):
    s = build_scenario("cifar10", data_root=root)
    data = load_dataset("cifar10", root)
    x, y, t = _epoch(s, 1, "test", batch_size=7)
    mask = torch.isin(data.test_y, torch.tensor([2, 3]))
    torch.testing.assert_close(x.double(), _normalised(data, data.test_x[mask]), rtol=0, atol=1e-5)
    assert x.shape[1:] == (3, 32, 32) and (t == 1).all()


def test_train_subset_permuted(mnist):
    s = scenario_from_dataset(mnist, "permutations", 3, seed=4, train_subset=50)
    rows = [subset_rows(300, 50, 4, i) for i in range(3)]
    assert not torch.equal(rows[0], rows[1])
    for i, task in enumerate(s.tasks):
        assert task.num_train == 50 and task.num_test == 100  # test sets are never subsampled
        assert torch.equal(task.train_x, mnist.train_x[rows[i]])
        assert torch.equal(task.train_y, mnist.train_y[rows[i]])
    again = scenario_from_dataset(mnist, "permutations", 3, seed=4, train_subset=50)
    assert torch.equal(again.tasks[2].train_x, s.tasks[2].train_x)
    cumulative = scenario_from_dataset(mnist, "permutations", 3, seed=4, train_subset=50,
                                       cumulative=True)
    last = cumulative.tasks[2]
    assert torch.equal(last.train_x, torch.cat([mnist.train_x[r] for r in rows]))
    assert torch.equal(last.train_t, torch.arange(3).repeat_interleave(50))


def test_train_subset_split_takes_at_most_the_task(mnist):
    full = scenario_from_dataset(mnist, "split", 5)
    assert [t.num_train for t in full.tasks] == [60] * 5
    s = scenario_from_dataset(mnist, "split", 5, train_subset=25, seed=1)
    for i, task in enumerate(s.tasks):
        rows = subset_rows(60, 25, 1, i)
        assert torch.equal(task.train_x, full.tasks[i].train_x[rows])
        assert set(task.train_y.tolist()) <= {0, 1}
    assert subset_rows(60, 60, 0, 0) is None
    big = scenario_from_dataset(mnist, "split", 5, train_subset=1000)
    assert [t.num_train for t in big.tasks] == [60] * 5
    assert torch.equal(scenario_from_dataset(mnist, "split", 5, train_subset=0).tasks[1].train_x,
                       full.tasks[1].train_x)


# ---------------------------------------------------------------------------------------------
# statistics, batching, caching

def test_channel_stats_match_numpy(root):
    data = load_dataset("cifar10", root)
    values = data.train_x.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, values.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(data.std, values.std(axis=(0, 2, 3)), rtol=1e-12)
    with pytest.raises(ValueError, match="uint8"):
        channel_stats(data.train_x.float())


def test_shuffled_epoch_covers_every_example_once(mnist):
    s = scenario_from_dataset(mnist, "split", 5, setting="class")
    task = s.tasks[3]
    ref_x, ref_y, _ = _epoch(s, 3, shuffle=False)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    x1, y1, _ = _epoch(s, 3, generator=g1, batch_size=16)
    x2, _, _ = _epoch(s, 3, generator=g2, batch_size=16)
    assert torch.equal(x1, x2)
    order = torch.randperm(task.num_train, generator=torch.Generator().manual_seed(5))
    assert torch.equal(x1, ref_x[order]) and torch.equal(y1, ref_y[order])
    x3, _, _ = _epoch(s, 3, batch_size=16)  # global generator, seeded by the conftest fixture
    assert not torch.equal(x3, x1) or task.num_train < 2


def test_batch_sizes_and_drop_last(mnist):
    s = scenario_from_dataset(mnist, "permutations", 1)
    sizes = [len(y) for _, y, _ in s.batches(0, "train", batch_size=128)]
    assert sizes == [128, 128, 44]
    dropped = s.batches(0, "train", batch_size=128, drop_last=True)
    assert [len(y) for _, y, _ in dropped] == [128, 128]
    x, y, t = next(s.batches(0, "test", batch_size=10))
    assert x.dtype == torch.float32 and x.shape == (10, 1, 28, 28) and x.is_contiguous()
    assert y.dtype == torch.int64 and t.dtype == torch.int64
    assert torch.equal(y, mnist.test_y[:10])  # test split is not shuffled by default


def test_batches_argument_errors(mnist):
    s = scenario_from_dataset(mnist, "permutations", 2)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        next(s.batches(0, batch_size=0))
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        s.batches(0, "valid")
    with pytest.raises(ValueError, match=r"task index must be an int in 0\.\.1"):
        s.batches(2)
    with pytest.raises(ValueError, match=r"task index must be an int in 0\.\.1"):
        s.head_of(-1)


def test_parsed_files_are_cached_and_refreshed(tmp_path):
    folder = write_synthetic_dataset("mnist", tmp_path, num_train=30, num_test=10)
    first = load_folder("mnist", folder)
    assert load_folder("mnist", folder) is first
    labels = first.test_y.numpy().astype(np.uint8)
    labels[0] = (labels[0] + 1) % 10
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    second = load_folder("mnist", folder)
    assert second is not first and int(second.test_y[0]) == int(labels[0])


# ---------------------------------------------------------------------------------------------
# argument validation

@pytest.mark.parametrize("kwargs, message", [
    (dict(dataset="svhn"), "unknown dataset 'svhn'; valid datasets: cifar10, cifar100, "
                           "fashion_mnist, mnist"),
    (dict(dataset="fashion_mnist", mode="split", num_tasks=7),
     "cannot split the 10 classes of fashion_mnist into 7 tasks of equal size; num_tasks "
     r"\(config key num_batch\) must be one of 1, 2, 5 \(default: 5 tasks of 2 classes\)"),
    (dict(dataset="mnist", mode="split", num_tasks=10),
     "1 class each, which leaves nothing to classify within a task in the task setting"),
    (dict(dataset="cifar100", num_tasks=3), "must be one of 1, 2, 4, 5, 10, 20, 25, 50"),
    (dict(dataset="cifar10", mode="permutations"),
     "cifar10 scenarios are class splits"),
    (dict(dataset="mnist", mode="rotations"), "mode .* must be one of permutations, split"),
    (dict(dataset="mnist", setting="joint"), "setting .* must be one of task, domain, class"),
    (dict(dataset="mnist", num_tasks=0), "must be an int >= 1, got 0"),
    (dict(dataset="mnist", num_tasks=True), "must be an int >= 1, got True"),
    (dict(dataset="mnist", seed=-1), "seed must be an int >= 0"),
    (dict(dataset="mnist", cumulative="yes"), "cumulative .* must be True or False"),
    (dict(dataset="mnist", mode="permutations", class_order="seeded"),
     "class_order='seeded' applies to split scenarios only"),
    (dict(dataset="mnist", mode="split", permute_first=False),
     "permute_first=False applies to permuted scenarios only"),
    (dict(dataset="mnist", mode="split", class_order="random"), "class_order must be 'fixed'"),
    (dict(dataset="mnist", mode="split", class_order=[0, 1, 2]),
     "explicit class_order must be a permutation of 0..9"),
    (dict(dataset="mnist", train_subset=-5), "train_subset must be None or an int >= 0"),
    (dict(dataset="mnist", train_subset=2.5), "train_subset must be None or an int >= 0"),
])
def test_invalid_arguments_fail_before_reading_files(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_scenario(data_root=tmp_path / "nothing_here", **kwargs)


def test_ten_single_class_tasks_are_fine_class_incrementally(mnist):
    s = scenario_from_dataset(mnist, "split", 10, setting="class")
    assert [t.classes for t in s.tasks] == [(c,) for c in range(10)]
    assert torch.equal(s.seen_outputs(0), torch.tensor([0]))


def test_scenario_checks_its_own_invariants(mnist):
    good = scenario_from_dataset(mnist, "split", 5)
    fields = {f: getattr(good, f) for f in ("name", "dataset", "setting", "tasks", "input_shape",
                                            "num_heads", "head_size", "mean", "std",
                                            "permutations", "cumulative")}
    assert isinstance(Scenario(**fields), Scenario)  # the contract's fields suffice
    with pytest.raises(ValueError, match="task setting has 5 head"):
        Scenario(**{**fields, "num_heads": 1})
    with pytest.raises(ValueError, match=r"train_y must lie in 0\.\.0"):
        Scenario(**{**fields, "head_size": 1})
    task = good.tasks[0]
    with pytest.raises(ValueError, match="train_x must be a uint8 tensor"):
        Task(0, task.classes, task.train_x.float(), task.train_y, task.train_t, task.test_x,
             task.test_y)
    with pytest.raises(ValueError, match="same length"):
        Task(0, task.classes, task.train_x, task.train_y[:-1], task.train_t, task.test_x,
             task.test_y)


# ---------------------------------------------------------------------------------------------
# real data

@pytest.mark.skipif(not (DEBIAN_FASHION / "train-images-idx3-ubyte.gz").exists(),
                    reason="Debian's dataset-fashion-mnist is not installed "
                           "(.ci/run installs it when run as root)")
def test_debian_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SPARSE_NTE_DATA", raising=False)
    data = load_dataset("fashion_mnist")
    assert data.folder == DEBIAN_FASHION
    assert data.train_x.shape == (60000, 1, 28, 28) and data.test_x.shape == (10000, 1, 28, 28)
    assert data.train_x.dtype == torch.uint8
    assert torch.equal(torch.bincount(data.train_y), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(data.test_y), torch.full((10,), 1000))
    assert data.mean[0] == pytest.approx(0.2860, abs=1e-4)  # the published statistics
    assert data.std[0] == pytest.approx(0.3530, abs=1e-4)
    split = build_scenario("fashion_mnist", "split")
    assert [t.num_train for t in split.tasks] == [12000] * 5
    assert [t.num_test for t in split.tasks] == [2000] * 5
    permuted = build_scenario("fashion_mnist", "permutations", num_tasks=2, cumulative=True)
    assert permuted.tasks[1].num_train == 120000
    x, y, t = next(permuted.batches(1, "test", batch_size=10000))
    assert abs(float(x.mean())) < 0.05 and abs(float(x.std()) - 1) < 0.05


def test_iterate_batches_multichannel_permutation_keeps_channel_statistics():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8, generator=g)
    perms = torch.stack([torch.randperm(48, generator=g), torch.randperm(48, generator=g)])
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    t = torch.tensor([0, 1, 1, 0, 1])
    out, _, tb = next(iterate_batches(x, torch.zeros(5, dtype=torch.int64), t, mean=mean, std=std,
                                      permutations=perms, batch_size=5))
    mean_c, std_c = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    z = (x.double() / 255 - mean_c) / std_c
    expected = torch.stack([z[j].reshape(-1)[perms[t[j]]] for j in range(5)]).reshape(5, 3, 4, 4)
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    assert torch.equal(tb, t)


def test_rows_restrict_an_epoch_and_index_names_every_row(mnist):
    """Data selection trains on a subset of rows: exactly those rows, each once, with their
    row numbers."""
    s = scenario_from_dataset(mnist, "permutations", 3)
    task = s.tasks[1]
    rows = torch.tensor([5, 0, 17, 3, 9, 11, 2], dtype=torch.int64)
    gen = torch.Generator().manual_seed(3)
    seen = []
    for x, y, t, idx in s.batches(1, "train", batch_size=3, shuffle=True, generator=gen,
                                  rows=rows, with_index=True):
        assert torch.equal(y, task.train_y[idx]) and bool((t == 1).all())
        seen.append(idx)
    assert sorted(torch.cat(seen).tolist()) == sorted(rows.tolist())
    ref_x, _, _ = _epoch(s, 1, shuffle=False)
    unshuffled = list(s.batches(1, "train", batch_size=4, shuffle=False, rows=rows, with_index=True))
    assert torch.equal(torch.cat([b[3] for b in unshuffled]), rows)
    assert torch.equal(torch.cat([b[0] for b in unshuffled]), ref_x[rows])
    full = list(s.batches(1, "train", batch_size=50, shuffle=False, with_index=True))
    assert torch.equal(torch.cat([b[3] for b in full]), torch.arange(task.num_train))
    with pytest.raises(ValueError, match="rows"):
        next(s.batches(1, "train", rows=torch.tensor([task.num_train])))
