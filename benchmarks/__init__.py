"""Dataset readers and continual-learning scenarios for sparse_nte.

``build_scenario(dataset, mode, num_tasks, setting, cumulative, seed, permute_first,
class_order, data_root, download, input_scaling, permutation_rng)`` returns a
:class:`Scenario`: ordered :class:`Task` s whose uint8 tensors stay in memory, and
``Scenario.batches`` yields scaled, permuted float32 mini-batches. :mod:`benchmarks.original`
holds the original sparse-dynamic-synapses code's task permutations and epoch order. The
readers (IDX for MNIST / Fashion-MNIST, CIFAR-10/100 python pickles) use numpy only; missing
files are downloaded from the official mirrors and checked against the published MD5s.
"""
from benchmarks.batching import IMAGENET_MEAN, IMAGENET_STD, SCALINGS, iterate_batches
from benchmarks.datasets import (LoadedDataset, channel_stats, clear_cache, find_dataset_folder,
                                 load_dataset, load_folder, locate_dataset)
from benchmarks.download import download_file, fetch_dataset, file_md5
from benchmarks.errors import ChecksumError, CorruptFileError, DatasetNotFoundError, DownloadError
from benchmarks.original import original_task_permutation, original_train_rows, padding_rows
from benchmarks.readers import (read_cifar10_folder, read_cifar100_folder, read_cifar_batch,
                                read_idx, read_idx_pair, read_mnist_folder)
from benchmarks.scenarios import (DATASETS, MODES, PERMUTATION_RNGS, SETTINGS, Scenario, Task,
                                  build_scenario, resolve_spec, scenario_from_dataset,
                                  seeded_class_order, subset_rows, task_permutation)
from benchmarks.sources import SOURCES, DatasetSource, RemoteFile, data_roots, get_source

__all__ = [
    "build_scenario", "scenario_from_dataset", "resolve_spec", "Scenario", "Task",
    "DATASETS", "MODES", "SETTINGS", "task_permutation", "seeded_class_order", "subset_rows",
    "iterate_batches", "SCALINGS", "IMAGENET_MEAN", "IMAGENET_STD", "PERMUTATION_RNGS",
    "original_task_permutation", "original_train_rows", "padding_rows",
    "LoadedDataset", "load_dataset", "load_folder", "locate_dataset", "find_dataset_folder",
    "channel_stats", "clear_cache",
    "read_idx", "read_idx_pair", "read_mnist_folder", "read_cifar_batch", "read_cifar10_folder",
    "read_cifar100_folder",
    "download_file", "fetch_dataset", "file_md5",
    "DatasetNotFoundError", "CorruptFileError", "ChecksumError", "DownloadError",
    "SOURCES", "DatasetSource", "RemoteFile", "data_roots", "get_source",
]
