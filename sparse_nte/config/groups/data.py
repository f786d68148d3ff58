"""Benchmark and scenario keys: which dataset, how it is cut into tasks, which heads.

Derived values (:func:`derive`): ``dataset`` from ``benchmark``, ``scenario`` from
``mnist_mode``, ``num_classes`` from ``dataset``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sparse_nte.config.fields import key

if TYPE_CHECKING:  # pragma: no cover
    from sparse_nte.config.resolve import Resolver

from benchmarks.augment import AUGMENTATIONS
from benchmarks.batching import SCALINGS
from benchmarks.scenarios import DATASETS, MODES, PERMUTATION_RNGS, SETTINGS
from benchmarks.sources import SOURCES

TITLE = "benchmark and scenario"

#: Number of classes of each dataset (``num_classes`` is checked against it).
DATASET_CLASSES: dict[str, int] = {name: src.num_classes for name, src in SOURCES.items()}
#: Datasets of each original ``benchmark`` family (the first one is the default).
BENCHMARK_DATASETS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "fashion_mnist"),
    "cifar": ("cifar100", "cifar10"),
}


@dataclass(frozen=True)
class DataKeys:
    benchmark: str = key(
        "mnist", choices=("mnist", "cifar"),
        doc="Benchmark family of the original project: mnist (28x28 grey images) or cifar (32x32 "
            "colour images).")
    dataset: str = key(
        "", choices=DATASETS,
        derived="empty = from `benchmark`: mnist -> mnist, cifar -> cifar100 (the original's iCIFAR-100)",
        doc="Dataset; must belong to `benchmark` (mnist: mnist, fashion_mnist; cifar: cifar10, cifar100).")
    mnist_mode: str = key(
        "permutations", choices=MODES,
        value_aliases={"perm": "permutations"},
        doc="How tasks are made: permutations (every task is the whole dataset under its own fixed pixel "
            "permutation) or split (disjoint class subsets); cifar supports split only. The original "
            "spelling `perm` is read as permutations.")
    num_batch: int = key(
        10, interval="[1, inf)",
        doc="Number of tasks (the original's incremental batches); split gives every task "
            "num_classes / num_batch classes.")
    scenario: str = key(
        "", choices=SETTINGS,
        derived="empty = domain for permutations, task for split (as the original: one head per task "
                "only for split MNIST and iCIFAR)",
        doc="Continual-learning setting (van de Ven & Tolias 2019): task (one head per task, task id "
            "given), domain (one shared head, labels within a task), class (one head over the classes "
            "of all tasks; permuted: 10 new classes per task).")
    cumul: bool = key(
        False,
        doc="Cumulative training (joint-training upper bound): task i trains on the union of the "
            "training sets of tasks 0..i.")
    permute_first: bool = key(
        True,
        doc="permutations: task 0 is permuted too; false = task 0 keeps the original pixel order.")
    class_order: str = key(
        "fixed", choices=("fixed", "seeded"),
        doc="split: classes go to tasks in label order (fixed) or in an order shuffled with `seed` "
            "(seeded).")
    train_subset: int = key(
        0, interval="[0, inf)",
        doc="Training examples per task (0 = all), drawn at random with `seed`; for quick runs, results "
            "are not comparable with full-data runs.")
    num_classes: int = key(
        0, interval="[0, inf)", derived="0 = from `dataset` (10, or 100 for cifar100)",
        doc="Original key, kept for old files: if given it must equal the dataset's number of classes.")

    input_scaling: str = key(
        "standard", choices=SCALINGS,
        doc="Input scaling: standard ((x/255 - mean) / std per channel, the training split's "
            "statistics), unit (x/255 in [0, 1], the original project's MNIST input), symmetric "
            "((x/255 - 0.5) / 0.5 in [-1, 1], the input of Daruwalla & Lipasti's IB-Hebbian runs) or "
            "imagenet "
            "(ImageNet's channel statistics, the original project's iCIFAR input; 3-channel datasets "
            "only).")
    augment: str = key(
        "none", choices=AUGMENTATIONS,
        doc="Augmentation of training batches: none, or crop_flip (each image shifted by a random "
            "crop of itself padded with one black pixel per side, then mirrored left-right with "
            "probability 1/2: the CIFAR-10 augmentation of Daruwalla & Lipasti's reference code). "
            "Class splits only (a shifted permuted image is no image).")
    permutation_rng: str = key(
        "seeded", choices=PERMUTATION_RNGS,
        doc="permutations: task i's pixel permutation drawn from (seed, i) (seeded) or the original "
            "project's numpy RandomState(i).permutation, the same for every seed (original).")

def derive(r: "Resolver") -> None:
    """``dataset`` empty -> the first dataset of ``benchmark`` (mnist -> mnist, cifar -> cifar100,
    the original iCIFAR-100); ``scenario`` empty -> ``domain`` for permutations (one shared head,
    as the original ran permuted MNIST), ``task`` for split (the original kept one head per task
    for split MNIST and iCIFAR); ``num_classes`` 0 -> the classes of ``dataset``."""
    v = r.values
    if v["dataset"] == "":
        v["dataset"] = BENCHMARK_DATASETS[v["benchmark"]][0]
    if v["scenario"] == "":
        v["scenario"] = "domain" if v["mnist_mode"] == "permutations" else "task"
    if v["num_classes"] == 0:
        v["num_classes"] = DATASET_CLASSES.get(v["dataset"], 0)


def check(r: "Resolver") -> None:
    v, w = r.values, r.where
    family = BENCHMARK_DATASETS[v["benchmark"]]
    if v["dataset"] not in family:
        right = next(b for b, ds in BENCHMARK_DATASETS.items() if v["dataset"] in ds)
        r.fail(r.conflict(f"{w('dataset')} does not belong to {w('benchmark')}; set benchmark = "
                          f"{right}, or dataset to one of {', '.join(family)}", "dataset", "benchmark"))
    if v["benchmark"] == "cifar" and v["mnist_mode"] != "split":
        r.fail(r.conflict(f"{w('benchmark')} splits the classes into tasks (permuted CIFAR is not "
                          f"supported), but {w('mnist_mode')}; set mnist_mode = split",
                          "mnist_mode", "benchmark"))
    if v["augment"] != "none" and v["mnist_mode"] == "permutations":
        r.fail(r.conflict(f"{w('augment')} shifts and mirrors images, but {w('mnist_mode')} "
                          f"scrambles their pixels, so neighbouring inputs are no neighbouring "
                          f"pixels; use augment = none or mnist_mode = split",
                          "augment", "mnist_mode"))
    n_classes = DATASET_CLASSES[v["dataset"]]
    if v["input_scaling"] == "imagenet" and SOURCES[v["dataset"]].input_shape[0] != 3:
        r.fail(r.conflict(f"{w('input_scaling')} normalises 3 RGB channels with ImageNet's statistics, "
                          f"but {w('dataset')} has grey images; use standard or unit",
                          "input_scaling", "dataset"))
    if v["num_classes"] != n_classes:
        r.fail(r.conflict(f"{w('num_classes')} but {v['dataset']} has {n_classes} classes; remove "
                          f"num_classes (it is derived from dataset)", "num_classes", "dataset"))
    if v["mnist_mode"] == "split":
        divisors = [d for d in range(1, n_classes + 1) if n_classes % d == 0]
        if n_classes % v["num_batch"]:
            r.fail(r.conflict(f"split {v['dataset']} has {n_classes} classes, which "
                              f"{w('num_batch')} does not divide evenly; use one of "
                              f"{', '.join(map(str, divisors))}", "num_batch", "mnist_mode", "dataset"))
        elif v["num_batch"] == n_classes and v["scenario"] != "class" and n_classes > 1:
            r.fail(r.conflict(f"{w('num_batch')} gives tasks of 1 class, which leaves nothing to "
                              f"classify within a task with {w('scenario')}; use scenario = class or "
                              f"fewer tasks", "num_batch", "scenario"))


def no_effect(v: dict[str, Any]) -> dict[str, str]:
    if v["mnist_mode"] == "permutations":
        return {"class_order": "tasks are permutations (mnist_mode = permutations), not class splits"}
    return dict.fromkeys(("permute_first", "permutation_rng"),
                         "tasks are class splits (mnist_mode = split), not permutations")


#: The group's keys (read by sparse_nte.config.schema).
KEYS = DataKeys
