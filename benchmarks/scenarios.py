"""Continual-learning scenarios: an ordered list of tasks over an in-memory uint8 dataset.

Families (``mode``):

* ``permutations`` (Goodfellow et al., 2013, arXiv:1312.6211; Kirkpatrick et al., 2017, PNAS
  114:3521): every task holds all images and classes, with its own fixed pixel permutation
  ``P_i`` applied per batch by index gather. With ``permutation_rng="seeded"`` ``P_i`` is drawn
  from ``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, i)))``, so it depends
  only on (seed, i); with ``permutation_rng="original"`` it is the permutation the original
  sparse-dynamic-synapses code drew, ``np.random.seed(i); np.random.shuffle(list(range(D)))``,
  the same for every seed (:func:`benchmarks.original.original_task_permutation`). With
  ``permute_first=False`` task 0 is the identity (and tasks 1.. are unchanged).
* ``split`` (Zenke, Poole & Ganguli, 2017, ICML; iCIFAR: Rebuffi et al., 2017, iCaRL, CVPR):
  the classes, taken in ``class_order``, are cut into ``num_tasks`` consecutive groups of
  ``num_classes / num_tasks``: split MNIST / Fashion-MNIST and iCIFAR-10 default to 5 tasks of
  2 classes ([0,1], [2,3], ... [8,9]), iCIFAR-100 to 10 tasks of 10 classes (what the original
  sparse-dynamic-synapses code ran). ``class_order="seeded"`` shuffles the classes with
  ``SeedSequence(seed, spawn_key=(1,))``.

Setting (van de Ven & Tolias, 2019, "Three scenarios for continual learning", arXiv:1904.07734),
which fixes the heads and the label of every example:

=========  =========  ===================  ==================================================
setting    num_heads  head_size            y
=========  =========  ===================  ==================================================
task       num_tasks  classes per task     position of the label among its task's classes
domain     1          classes per task     same as task (permuted: the digit, 0..9)
class      1          all classes          split: position of the label in the class order;
                                           permuted: 10 * task + digit (every task's digits
                                           are new classes)
=========  =========  ===================  ==================================================

In the class setting, task i owns the outputs ``[i * m, (i + 1) * m)`` with
``m = head_size / num_tasks``, so ``seen_outputs(i) = range((i + 1) * m)``.

Cumulative (joint-training upper bound): task i trains on the union of tasks 0..i, every
example keeping its own task id, label mapping and (permuted) pixel permutation; test sets stay
per task. ``train_subset`` keeps a seeded random subset of each task's own training examples
(cumulative: the union of those subsets).

Inputs are scaled per batch as ``input_scaling`` says (:mod:`benchmarks.batching`): standardised
with the dataset's statistics (``standard``, the default), ``x / 255`` (``unit``, the original
project's MNIST path) or ImageNet's statistics (``imagenet``, its iCIFAR path).

Memory: permuted tasks share the dataset's tensor (no copy); split tasks are slices of one
task-sorted copy; cumulative tasks are prefixes of one concatenation of the tasks' own
examples, which for permuted tasks holds the unpermuted images once per task (num_tasks x the
dataset in uint8, e.g. 470 MB for 10 MNIST tasks). No permuted copy is ever stored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch

from benchmarks.batching import check_scaling
from benchmarks.datasets import LoadedDataset, load_dataset
from benchmarks.original import original_task_permutation
from benchmarks.sources import SOURCES, get_source
from benchmarks.tasks import SETTINGS, Scenario, Task  # noqa: F401  (re-exported)

DATASETS = tuple(SOURCES)
MODES = ("permutations", "split")
PERMUTATION_RNGS = ("seeded", "original")
DEFAULT_PERMUTED_TASKS = 10
DEFAULT_SPLIT_TASKS = {"mnist": 5, "fashion_mnist": 5, "cifar10": 5, "cifar100": 10}




# ---------------------------------------------------------------------------------------------
# construction

def task_permutation(seed: int, task_index: int, size: int) -> torch.Tensor:
    """The pixel permutation of task ``task_index``: a uniformly random permutation of
    0..size-1 from ``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, i)))``."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0, task_index)))
    return torch.from_numpy(rng.permutation(size).astype(np.int64))


def seeded_class_order(seed: int, num_classes: int) -> tuple[int, ...]:
    """The class order used with ``class_order="seeded"`` (``SeedSequence(seed,
    spawn_key=(1,))``)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
    return tuple(int(c) for c in rng.permutation(num_classes))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class _Spec:
    dataset: str
    mode: str
    num_tasks: int
    setting: str
    cumulative: bool
    seed: int
    permute_first: bool
    class_order: tuple[int, ...]
    train_subset: Optional[int]
    input_scaling: str
    permutation_rng: str


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def resolve_spec(dataset: str, mode: Optional[str] = None, num_tasks: Optional[int] = None,
                 setting: Optional[str] = None, cumulative: bool = False, seed: int = 0,
                 permute_first: bool = True, class_order: Union[str, Sequence[int]] = "fixed",
                 train_subset: Optional[int] = None, input_scaling: str = "standard",
                 permutation_rng: str = "seeded") -> _Spec:
    """Validate scenario arguments (no file access) and fill in the defaults."""
    source = get_source(dataset)
    try:
        check_scaling(input_scaling, source.input_shape[0])
    except ValueError as exc:
        raise ValueError(f"{dataset}: {exc} (config key input_scaling)") from None
    if permutation_rng not in PERMUTATION_RNGS:
        raise ValueError(f"permutation_rng must be one of {', '.join(PERMUTATION_RNGS)}, got "
                         f"{permutation_rng!r}")
    num_classes = source.num_classes
    single_channel = source.input_shape[0] == 1
    if mode is None:
        mode = "permutations" if single_channel else "split"
    if mode not in MODES:
        raise ValueError(f"mode (config key mnist_mode) must be one of {', '.join(MODES)}, got "
                         f"{mode!r}")
    if mode == "permutations" and not single_channel:
        raise ValueError(f"{dataset} scenarios are class splits (mode='split'); pixel "
                         "permutations are defined for mnist and fashion_mnist only")
    if setting is None:
        setting = "domain" if mode == "permutations" else "task"
    if setting not in SETTINGS:
        raise ValueError(f"setting (config key scenario) must be one of {', '.join(SETTINGS)}, "
                         f"got {setting!r}")
    cumulative = _check_bool("cumulative (config key cumul)", cumulative)
    permute_first = _check_bool("permute_first", permute_first)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    default_tasks = (DEFAULT_PERMUTED_TASKS if mode == "permutations"
                     else DEFAULT_SPLIT_TASKS[dataset])
    if num_tasks is None:
        num_tasks = default_tasks
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, (int, np.integer)) or num_tasks < 1:
        raise ValueError(f"num_tasks (config key num_batch) must be an int >= 1, got {num_tasks!r}")
    num_tasks = int(num_tasks)
    if train_subset is not None and (isinstance(train_subset, bool)
                                     or not isinstance(train_subset, (int, np.integer))
                                     or train_subset < 0):
        raise ValueError(f"train_subset must be None or an int >= 0 (0 = every example), got "
                         f"{train_subset!r}")
    subset = int(train_subset) if train_subset else None

    if mode == "permutations":
        if class_order != "fixed":
            raise ValueError(f"class_order={class_order!r} applies to split scenarios only; "
                             "permuted tasks all hold every class (use class_order='fixed')")
        return _Spec(dataset, mode, num_tasks, setting, cumulative, int(seed), permute_first,
                     tuple(range(num_classes)), subset, input_scaling, permutation_rng)

    if not permute_first:
        raise ValueError("permute_first=False applies to permuted scenarios only (it makes task 0 "
                         "the identity); split scenarios have no permutation")
    if permutation_rng != "seeded":
        raise ValueError(f"permutation_rng={permutation_rng!r} applies to permuted scenarios only; "
                         "split scenarios have no permutation (use permutation_rng='seeded')")
    valid = [d for d in _divisors(num_classes) if setting == "class" or num_classes // d >= 2]
    if num_classes % num_tasks:
        raise ValueError(
            f"cannot split the {num_classes} classes of {dataset} into {num_tasks} tasks of "
            f"equal size; num_tasks (config key num_batch) must be one of "
            f"{', '.join(map(str, valid))} (default: {default_tasks} tasks of "
            f"{num_classes // default_tasks} classes)")
    if num_tasks not in valid:
        raise ValueError(
            f"{num_tasks} tasks of {dataset} have 1 class each, which leaves nothing to classify "
            f"within a task in the {setting} setting; use setting='class' or num_tasks in "
            f"{', '.join(map(str, valid))}")
    if isinstance(class_order, str):
        if class_order == "fixed":
            order = tuple(range(num_classes))
        elif class_order == "seeded":
            order = seeded_class_order(int(seed), num_classes)
        else:
            raise ValueError(f"class_order must be 'fixed', 'seeded' or a permutation of "
                             f"0..{num_classes - 1}, got {class_order!r}")
    else:
        order = tuple(int(c) for c in class_order)
        if sorted(order) != list(range(num_classes)):
            raise ValueError(f"an explicit class_order must be a permutation of "
                             f"0..{num_classes - 1}, got {list(class_order)}")
    return _Spec(dataset, mode, num_tasks, setting, cumulative, int(seed), permute_first, order,
                 subset, input_scaling, permutation_rng)


_Block = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (x, y, t) of one task's examples


def subset_rows(num: int, size: Optional[int], seed: int, task_index: int
                ) -> Optional[torch.Tensor]:
    """Sorted rows of the random training subset of task ``task_index`` (``size`` of ``num``
    drawn without replacement from ``SeedSequence(seed, spawn_key=(2, task_index))``), or None
    when ``size`` is None or not smaller than ``num`` (then the task keeps every example)."""
    if size is None or size >= num:
        return None
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2, task_index)))
    return torch.from_numpy(np.sort(rng.choice(num, size=size, replace=False)).astype(np.int64))


def _take(block: _Block, rows: Optional[torch.Tensor]) -> _Block:
    return block if rows is None else tuple(v.index_select(0, rows) for v in block)  # type: ignore


def _assemble(blocks: list[_Block], cumulative: bool) -> list[_Block]:
    """Each task's own examples, or with ``cumulative`` the union of tasks 0..i as prefixes of
    one concatenation (tasks share its storage)."""
    if not cumulative or len(blocks) == 1:
        return blocks
    store = [torch.cat([block[k] for block in blocks]) for k in range(3)]
    ends = np.cumsum([len(block[1]) for block in blocks]).tolist()
    return [(store[0][:end], store[1][:end], store[2][:end]) for end in ends]


def _scenario(data: LoadedDataset, spec: _Spec, family: str, tasks: list[Task], head_size: int,
              permutations: Optional[torch.Tensor]) -> Scenario:
    return Scenario(name=f"{family}_{spec.dataset}" + ("_cumulative" if spec.cumulative else ""),
                    dataset=spec.dataset, setting=spec.setting, tasks=tuple(tasks),
                    input_shape=data.input_shape,
                    num_heads=spec.num_tasks if spec.setting == "task" else 1,
                    head_size=head_size, mean=data.mean, std=data.std,
                    permutations=permutations, cumulative=spec.cumulative,
                    class_order=spec.class_order, class_names=data.class_names,
                    source=str(data.folder), input_scaling=spec.input_scaling)


def _permuted_scenario(data: LoadedDataset, spec: _Spec) -> Scenario:
    num_tasks, num_classes = spec.num_tasks, data.num_classes
    dim = int(np.prod(data.input_shape))
    def permutation(i: int) -> torch.Tensor:
        if i == 0 and not spec.permute_first:
            return torch.arange(dim)
        if spec.permutation_rng == "original":
            return original_task_permutation(i, dim)
        return task_permutation(spec.seed, i, dim)

    perms = torch.stack([permutation(i) for i in range(num_tasks)])
    offset = num_classes if spec.setting == "class" else 0  # class setting: y = 10 t + digit

    def labels(y: torch.Tensor, i: int) -> torch.Tensor:
        return y + i * offset if offset else y

    n = data.train_x.shape[0]
    blocks = [_take((data.train_x, labels(data.train_y, i), torch.full((n,), i)),
                    subset_rows(n, spec.train_subset, spec.seed, i)) for i in range(num_tasks)]
    tasks = [Task(index=i, classes=tuple(range(num_classes)), train_x=x, train_y=y, train_t=t,
                  test_x=data.test_x, test_y=labels(data.test_y, i))
             for i, (x, y, t) in enumerate(_assemble(blocks, spec.cumulative))]
    head_size = num_classes * num_tasks if spec.setting == "class" else num_classes
    return _scenario(data, spec, "permuted", tasks, head_size, perms)


def _sorted_by_task(x: torch.Tensor, y: torch.Tensor, position: torch.Tensor, per_task: int,
                    num_tasks: int, class_setting: bool) -> list[_Block]:
    """Each task's examples (original order kept within a task) with mapped labels and ids."""
    pos = position[y]
    task_of = torch.div(pos, per_task, rounding_mode="floor")
    order = torch.argsort(task_of, stable=True)
    counts = torch.bincount(task_of, minlength=num_tasks)
    bounds = [0] + torch.cumsum(counts, 0).tolist()
    mapped = pos if class_setting else pos % per_task
    xs, ys, ts = x.index_select(0, order), mapped[order], task_of[order]
    return [(xs[a:b], ys[a:b], ts[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


def _split_scenario(data: LoadedDataset, spec: _Spec) -> Scenario:
    num_tasks, num_classes = spec.num_tasks, data.num_classes
    per_task = num_classes // num_tasks
    position = torch.empty(num_classes, dtype=torch.int64)
    position[torch.tensor(spec.class_order)] = torch.arange(num_classes)
    class_setting = spec.setting == "class"
    train = _sorted_by_task(data.train_x, data.train_y, position, per_task, num_tasks,
                            class_setting)
    test = _sorted_by_task(data.test_x, data.test_y, position, per_task, num_tasks,
                           class_setting)
    train = [_take(block, subset_rows(len(block[1]), spec.train_subset, spec.seed, i))
             for i, block in enumerate(train)]
    tasks = [Task(index=i, classes=spec.class_order[i * per_task:(i + 1) * per_task],
                  train_x=x, train_y=y, train_t=t, test_x=test[i][0], test_y=test[i][1])
             for i, (x, y, t) in enumerate(_assemble(train, spec.cumulative))]
    return _scenario(data, spec, "split", tasks, num_classes if class_setting else per_task, None)


def scenario_from_dataset(data: LoadedDataset, mode: Optional[str] = None,
                          num_tasks: Optional[int] = None, setting: Optional[str] = None,
                          cumulative: bool = False, seed: int = 0, permute_first: bool = True,
                          class_order: Union[str, Sequence[int]] = "fixed",
                          train_subset: Optional[int] = None, input_scaling: str = "standard",
                          permutation_rng: str = "seeded") -> Scenario:
    """Build a scenario over an already loaded dataset (arguments as :func:`build_scenario`)."""
    spec = resolve_spec(data.name, mode, num_tasks, setting, cumulative, seed, permute_first,
                        class_order, train_subset, input_scaling, permutation_rng)
    if tuple(data.input_shape) != get_source(data.name).input_shape:
        raise ValueError(f"{data.name} images must be {get_source(data.name).input_shape}, the "
                         f"data in {data.folder} are {data.input_shape}")
    if spec.mode == "permutations":
        return _permuted_scenario(data, spec)
    return _split_scenario(data, spec)


def build_scenario(dataset: str, mode: Optional[str] = None, num_tasks: Optional[int] = None,
                   setting: Optional[str] = None, cumulative: bool = False, seed: int = 0,
                   permute_first: bool = True, class_order: Union[str, Sequence[int]] = "fixed",
                   train_subset: Optional[int] = None,
                   data_root: Optional[Union[str, os.PathLike]] = None, download: bool = True,
                   mirrors: Optional[Sequence[str]] = None, progress: bool = True,
                   input_scaling: str = "standard", permutation_rng: str = "seeded") -> Scenario:
    """Build a continual-learning scenario (module doc) from the dataset's files.

    Config keys: ``dataset``, ``mnist_mode`` -> ``mode`` (``permutations`` | ``split``; CIFAR
    is always ``split``, pass ``mode=None`` or ``"split"``), ``num_batch`` -> ``num_tasks``,
    ``scenario`` -> ``setting``, ``cumul`` -> ``cumulative``, ``seed``, ``permute_first``,
    ``class_order``, ``train_subset`` (None or 0 = every example; otherwise each task's own
    training examples are a random subset of at most that size, see :func:`subset_rows`),
    ``data_root``, ``input_scaling`` (standard | unit | imagenet, module doc),
    ``permutation_rng`` (seeded | original, module doc). Arguments are validated before any
    file is read.
    Defaults: permuted 10 tasks, domain setting; split 5 tasks (CIFAR-100: 10), task setting.
    """
    spec = resolve_spec(dataset, mode, num_tasks, setting, cumulative, seed, permute_first,
                        class_order, train_subset, input_scaling, permutation_rng)
    data = load_dataset(dataset, data_root, download=download, mirrors=mirrors,
                        progress=progress)
    return scenario_from_dataset(data, spec.mode, spec.num_tasks, spec.setting, spec.cumulative,
                                 spec.seed, spec.permute_first, class_order, train_subset,
                                 spec.input_scaling, spec.permutation_rng)
