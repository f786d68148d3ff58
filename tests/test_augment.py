"""Training-batch augmentation (config key ``augment``): the crop-and-flip of Daruwalla &
Lipasti's CIFAR-10 runs, written out pixel by pixel; its place in the runner (training batches
only, the batch order unchanged, reproducible for a seed); the config refusal for permutations."""
from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.augment import crop_flip
from benchmarks.batching import black_level
from benchmarks.synthetic import write_synthetic_dataset
from sparse_nte.config import ConfigError
from sparse_nte.runner import run_trial

from config_cases import load_section


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), b=st.integers(1, 5), c=st.integers(1, 3),
       h=st.integers(1, 6), w=st.integers(1, 6))
def test_every_image_is_a_shifted_padded_crop_of_itself_mirrored_or_not(seed, b, c, h, w):
    x = torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))
    fill = [float(-10 - k) for k in range(c)]
    out = crop_flip(x, fill, torch.Generator().manual_seed(seed))
    padded = torch.tensor(fill).view(1, c, 1, 1).repeat(b, 1, h + 2, w + 2)
    padded[:, :, 1:1 + h, 1:1 + w] = x
    for n in range(b):
        candidates = [padded[n, :, i:i + h, j:j + w] for i in range(3) for j in range(3)]
        candidates += [v.flip(-1) for v in candidates]
        assert any(torch.equal(out[n], v) for v in candidates)


def test_crops_and_flips_are_drawn_uniformly_from_the_generator():
    x = torch.arange(9.0).view(1, 1, 3, 3).repeat(4000, 1, 1, 1)
    out = crop_flip(x, [-1.0], torch.Generator().manual_seed(0))
    centre = out[:, 0, 1, 1]                        # the shifted centre pixel names the offset
    counts = torch.bincount(centre.long(), minlength=9).float() / len(x)
    assert torch.allclose(counts, torch.full((9,), 1 / 9), atol=0.02)
    mirrored = (out[:, 0, 1, 0] > out[:, 0, 1, 2]).float().mean()   # only a flip reverses a row
    assert abs(float(mirrored) - 0.5) < 0.03
    again = crop_flip(x, [-1.0], torch.Generator().manual_seed(0))
    assert torch.equal(out, again)


def test_the_padding_is_a_black_pixel_under_every_scaling():
    assert black_level("unit", (0.3,), (0.2,)) == (0.0,)
    assert black_level("symmetric", (0.3,), (0.2,)) == (-1.0,)
    assert black_level("standard", (0.5, 0.25), (0.25, 0.5)) == (-2.0, -0.5)
    assert black_level("imagenet", (0, 0, 0), (1, 1, 1))[0] == pytest.approx(-0.485 / 0.229)


CFG = """\
[DEFAULT]
description = base
benchmark = cifar
dataset = cifar10
mnist_mode = split
num_batch = 1
train_subset = 40
hidden_units = 16
optimizer = sgd
lr = 0.05
mb_size = 8
train_ep = 2
eval_subset = 20
data_root = {root}

[e]
description = e
"""


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("cifar")
    write_synthetic_dataset("cifar10", path, num_train=60, num_test=20, seed=0)
    return path


def _cfg(tmp_path, root, **kw):
    return load_section(tmp_path, CFG, root, **kw)


def test_the_runner_augments_training_batches_only_and_reproducibly(tmp_path, root, monkeypatch):
    seen = []
    import sparse_nte.learner as learner_mod
    original = learner_mod.Learner.train_step

    def spy(self, batch):
        seen.append((batch.x.clone(), batch.index.clone()))
        return original(self, batch)

    monkeypatch.setattr(learner_mod.Learner, "train_step", spy)
    runs = {}
    for name, aug in (("plain", "none"), ("aug", "crop_flip"), ("aug2", "crop_flip")):
        seen.clear()
        result = run_trial(_cfg(tmp_path, root, augment=aug, seed=1), tmp_path / name,
                           progress=False)
        runs[name] = (list(seen), result)
    plain, aug, aug2 = runs["plain"][0], runs["aug"][0], runs["aug2"][0]
    assert all(torch.equal(i, j) for (_, i), (_, j) in zip(plain, aug))   # same examples, order
    assert len(plain) == len(aug) > 0
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(plain, aug))
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(aug, aug2))   # reproducible
    assert runs["aug"][1]["acc_matrix"] == runs["aug2"][1]["acc_matrix"]


def test_augmenting_permuted_images_is_a_config_error(tmp_path, root):
    with pytest.raises(ConfigError, match="augment"):
        _cfg(tmp_path, root, benchmark="mnist", dataset="mnist", mnist_mode="permutations",
             augment="crop_flip")
