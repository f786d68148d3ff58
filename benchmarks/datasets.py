"""Finding, fetching and loading a whole dataset into memory as uint8 tensors.

Search order for the dataset folder (first complete one wins), for each data root in
``data_root`` -> ``$SPARSE_NTE_DATA`` -> ``./data`` -> ``/usr/share/datasets`` and each of the
dataset's sub-folder names (``mnist``, ``MNIST/raw``; ``fashion_mnist``, ``fashion-mnist``,
``FashionMNIST/raw``; ``cifar-10-batches-py``; ``cifar-100-python``). When none is complete the
files are downloaded into the first root (unless ``download=False`` or
``$SPARSE_NTE_NO_DOWNLOAD=1``). When that is not allowed or fails (offline), one
DatasetNotFoundError lists the files, every folder searched, the download failure and how to
provide the files.

Parsed datasets are cached per process, keyed by the folder's absolute path and the size and
modification time of each file, so building several scenarios parses each file once, and a
changed file is re-read.

Normalisation statistics are the per-channel mean and (population) standard deviation of x/255
over the whole training split, computed exactly from a 256-bin histogram of the uint8 values:
``mean_c = sum_v v n_c(v) / (255 N_c)``,
``std_c = sqrt(sum_v v^2 n_c(v) / (255^2 N_c) - mean_c^2)``.
"""
from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from benchmarks.download import fetch_dataset
from benchmarks.errors import DatasetNotFoundError, DownloadError
from benchmarks.readers import read_cifar10_folder, read_cifar100_folder, read_mnist_folder
from benchmarks.sources import (ENV_DATA_ROOT, ENV_NO_DOWNLOAD, DatasetSource, data_roots,
                                download_root, downloads_disabled, get_source)


@dataclass(frozen=True, eq=False)
class LoadedDataset:
    """A dataset in memory: uint8 images (N, C, H, W), int64 labels, class names, the folder it
    was read from and the per-channel normalisation statistics of its training split.

    The tensors are shared by every scenario built from the same files: treat them as read-only.
    """
    name: str
    folder: Path
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.train_x.shape[1:]
        return int(c), int(h), int(w)

    def __repr__(self) -> str:
        return (f"LoadedDataset({self.name!r}, folder={str(self.folder)!r}, "
                f"train={tuple(self.train_x.shape)}, test={tuple(self.test_x.shape)}, "
                f"classes={self.num_classes})")


def _present(folder: Path, source: DatasetSource) -> list[str]:
    """Names of the required files present in ``folder`` (IDX files may carry ``.gz``)."""
    found = []
    for name in source.files:
        gz = source.format == "idx" and (folder / f"{name}.gz").is_file()
        if gz or (folder / name).is_file():
            found.append(name)
    return found


def _candidates(source: DatasetSource, data_root: Optional[os.PathLike | str]
                ) -> list[tuple[Path, str]]:
    return [(root / sub, origin) for root, origin in data_roots(data_root)
            for sub in source.folders]


def find_dataset_folder(name: str, data_root: Optional[os.PathLike | str] = None
                        ) -> Optional[Path]:
    """The first folder holding every file of dataset ``name``, or None."""
    source = get_source(name)
    for folder, _ in _candidates(source, data_root):
        if len(_present(folder, source)) == len(source.files):
            return folder
    return None


def _not_found_message(source: DatasetSource, data_root: Optional[os.PathLike | str],
                       download_note: str, attempted: bool = False) -> str:
    suffix = " (each optionally gzipped, .gz)" if source.format == "idx" else ""
    lines = [f"dataset {source.name!r} not found: looked for {', '.join(source.files)}{suffix} in"]
    for folder, origin in _candidates(source, data_root):
        present = _present(folder, source)
        if present:
            state = f"incomplete, missing {', '.join(f for f in source.files if f not in present)}"
        else:
            state = "files absent" if folder.is_dir() else "no such folder"
        lines.append(f"  {folder}  [{origin}: {state}]")
    published = ([source.archive.name] if source.archive is not None
                 else [r.name for r in source.remote])
    where = (f"unpack it in <root> (it holds {source.folders[0]}/)" if source.archive is not None
             else f"put them in <root>/{source.folders[0]}/")
    lines += [
        download_note,
        "To provide the files, either",
        f"  - get {', '.join(published)} from {source.mirrors[0]} and {where}, where <root> "
        f"is the config key data_root, ${ENV_DATA_ROOT} or ./data; or",
        (f"  - run again when a mirror is reachable ({', '.join(source.mirrors)})." if attempted
         else f"  - allow the automatic download (download=True, ${ENV_NO_DOWNLOAD} unset)."),
    ]
    if source.name == "fashion_mnist":
        lines.append("  - on Debian/Ubuntu: apt-get install dataset-fashion-mnist "
                     "(installs /usr/share/datasets/fashion-mnist).")
    return "\n".join(lines)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def locate_dataset(name: str, data_root: Optional[os.PathLike | str] = None, *,
                   download: bool = True, mirrors: Optional[Sequence[str]] = None,
                   progress: bool = True) -> Path:
    """The folder holding dataset ``name``, downloading it if needed and allowed.

    Raises DatasetNotFoundError (listing every folder searched and how to provide the files)
    when no folder is complete and downloading is disabled by ``download=False`` or by
    ``$SPARSE_NTE_NO_DOWNLOAD``. ``progress`` draws a download bar on stderr when stderr is a
    terminal (never into a redirected file, e.g. a batch job's output).
    """
    progress = progress and _stderr_is_terminal()
    source = get_source(name)
    folder = find_dataset_folder(name, data_root)
    if folder is not None:
        return folder
    if not download:
        raise DatasetNotFoundError(_not_found_message(
            source, data_root, "Downloading was not attempted: download=False."))
    if downloads_disabled():
        raise DatasetNotFoundError(_not_found_message(
            source, data_root, f"Downloading was not attempted: downloads are disabled by "
                               f"${ENV_NO_DOWNLOAD}={os.environ.get(ENV_NO_DOWNLOAD)}."))
    try:
        return fetch_dataset(source, download_root(data_root), mirrors=mirrors,
                             progress=progress)
    except DownloadError as exc:  # offline, or every mirror down
        raise DatasetNotFoundError(_not_found_message(
            source, data_root, f"Downloading into {download_root(data_root)} failed: {exc}",
            attempted=True)) from exc


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of ``x / 255`` for uint8 ``x`` of shape (N, C, H, W),
    exact (float64 sums over a 256-bin histogram)."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"channel_stats expects a uint8 tensor (N, C, H, W), got {x.dtype} "
                         f"{tuple(x.shape)}")
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(x.shape[1]):
        counts = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64)
        n = counts.sum()
        mean = float((counts * values).sum() / n) / 255.0
        second = float((counts * values * values).sum() / n) / 255.0 ** 2
        means.append(mean)
        stds.append(max(second - mean * mean, 0.0) ** 0.5)
    return tuple(means), tuple(stds)


_READERS = {"idx": read_mnist_folder, "cifar10": read_cifar10_folder,
            "cifar100": read_cifar100_folder}


def _file_stamps(folder: Path) -> tuple[tuple[str, int, int], ...]:
    stamps = []
    for entry in folder.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            stat = entry.stat()
            stamps.append((entry.name, stat.st_mtime_ns, stat.st_size))
    return tuple(sorted(stamps))


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, folder: str, stamps: tuple[tuple[str, int, int], ...]
                 ) -> LoadedDataset:
    source = get_source(name)
    arrays = _READERS[source.format](Path(folder))
    tensors = {k: torch.from_numpy(np.ascontiguousarray(arrays[k]))
               for k in ("train_x", "train_y", "test_x", "test_y")}
    mean, std = channel_stats(tensors["train_x"])
    names = arrays.get("class_names") or source.class_names
    return LoadedDataset(name=name, folder=Path(folder), class_names=tuple(names), mean=mean,
                         std=std, **tensors)


def load_folder(name: str, folder: os.PathLike | str) -> LoadedDataset:
    """Read dataset ``name`` from exactly ``folder`` (cached per process; see module doc)."""
    folder = Path(folder).resolve()
    get_source(name)
    return _load_cached(name, str(folder), _file_stamps(folder))


def load_dataset(name: str, data_root: Optional[os.PathLike | str] = None, *,
                 download: bool = True, mirrors: Optional[Sequence[str]] = None,
                 progress: bool = True) -> LoadedDataset:
    """Locate (or download) dataset ``name`` and load it; see :func:`locate_dataset`."""
    folder = locate_dataset(name, data_root, download=download, mirrors=mirrors,
                            progress=progress)
    return load_folder(name, folder)


def clear_cache() -> None:
    """Forget every parsed dataset (frees the memory unless scenarios still hold the tensors)."""
    _load_cached.cache_clear()
