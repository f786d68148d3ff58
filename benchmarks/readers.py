"""Readers for the datasets' own on-disk formats, with numpy only.

* IDX (MNIST, Fashion-MNIST): big-endian header ``0x00 0x00 <type> <ndim>`` followed by ``ndim``
  uint32 sizes and the row-major payload (LeCun et al., http://yann.lecun.com/exdb/mnist/).
  Files may be gzipped or not; gzip is recognised by its magic bytes, not by the file name.
* CIFAR-10/100 "python version" batches: pickled dicts (written by Python 2) with ``data``
  (uint8, N x 3072, channel-major 3 x 32 x 32) and ``labels`` (CIFAR-10) or ``fine_labels``
  (CIFAR-100) (Krizhevsky, 2009).

Every structural problem (bad magic number, wrong length, truncated gzip, unreadable pickle,
wrong shape, labels out of range) raises :class:`~benchmarks.errors.CorruptFileError` naming
the file. Pickles are read by an unpickler that only resolves the numpy names a CIFAR batch
uses, so a tampered file cannot run code.
"""
from __future__ import annotations

import codecs
import gzip
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.errors import CorruptFileError

# IDX type byte -> big-endian numpy dtype
_IDX_DTYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"),
               0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it starts with the gzip magic number."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise CorruptFileError(path, f"gzip data is truncated or corrupt ({exc}); delete the "
                                     "file and download it again") from None


def read_idx(path: Path | str) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a native-endian, writable numpy array.

    Raises CorruptFileError for a bad magic number, a truncated header, or a payload whose
    length differs from the product of the header's sizes times the item size (computed with
    Python integers, so a header declaring absurd sizes is reported, not wrapped around).
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise CorruptFileError(path, f"only {len(raw)} bytes, too short for an IDX file "
                                     "(4-byte magic number, then sizes and data)")
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise CorruptFileError(
            path, f"bad IDX magic number 0x{raw[:4].hex()}; expected 0x0000TTDD with type TT "
                  "in 08,09,0B,0C,0D,0E and DD >= 1 dimensions (MNIST images: 0x00000803, "
                  "labels: 0x00000801). Is this really an IDX file?")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(path, f"truncated IDX header: {ndim} dimensions need {header} "
                                     f"header bytes, the file has {len(raw)}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[type_code]
    count = math.prod(dims)  # Python ints: up to 255 sizes of 2**32 - 1 must not wrap around
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "trailing bytes after the data"
        raise CorruptFileError(
            path, f"wrong length ({what}): the header declares shape {tuple(dims)} of "
                  f"{dtype.name} = {expected} bytes in all, the file has {len(raw)} bytes")
    array = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _find_idx(folder: Path, stem: str) -> Path:
    """``folder/stem`` or ``folder/stem.gz``, whichever exists (uncompressed first)."""
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"neither {folder / stem} nor {folder / stem}.gz exists")


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise CorruptFileError(path, f"labels must lie in 0..{num_classes - 1}, found "
                                     f"{int(labels.min())}..{int(labels.max())}")


def read_idx_pair(images_path: Path | str, labels_path: Path | str,
                  image_shape: tuple[int, int] = (28, 28),
                  num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read an IDX image file (N, H, W) uint8 and its label file (N,) uint8 and check that they
    belong together. Returns images as (N, 1, H, W) uint8 and labels as int64."""
    images_path, labels_path = Path(images_path), Path(labels_path)
    images = read_idx(images_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != image_shape:
        raise CorruptFileError(images_path, f"expected uint8 images of shape (N, "
                                            f"{image_shape[0]}, {image_shape[1]}), found "
                                            f"{images.dtype.name} {images.shape}")
    labels = read_idx(labels_path)
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise CorruptFileError(labels_path, f"expected uint8 labels of shape (N,), found "
                                            f"{labels.dtype.name} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise CorruptFileError(labels_path, f"{labels.shape[0]} labels for {images.shape[0]} "
                                            f"images in {images_path}")
    _check_labels(labels_path, labels, num_classes)
    return images[:, None, :, :], labels.astype(np.int64)


def read_mnist_folder(folder: Path | str) -> dict[str, np.ndarray]:
    """Read the four MNIST-format IDX files (``train-images-idx3-ubyte``,
    ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each
    optionally ``.gz``) of MNIST or
    Fashion-MNIST. Returns train_x/test_x (N, 1, 28, 28) uint8 and train_y/test_y int64."""
    folder = Path(folder)
    out: dict[str, np.ndarray] = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        x, y = read_idx_pair(_find_idx(folder, f"{prefix}-images-idx3-ubyte"),
                             _find_idx(folder, f"{prefix}-labels-idx1-ubyte"))
        out[f"{split}_x"], out[f"{split}_y"] = x, y
    return out


# ---------------------------------------------------------------------------------------------
# CIFAR pickles

def _numpy_reconstruct() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray._reconstruct


# The only globals a CIFAR batch pickle refers to (Python 2 cPickle, or re-pickled by Python 3).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: codecs.encode,
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy names a CIFAR batch needs."""

    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED_GLOBALS.get((module, name))
        if factory is None:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return factory()


def _load_pickle(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            obj = _RestrictedUnpickler(fh, encoding="latin1").load()
    except FileNotFoundError:
        raise
    except _ForbiddenGlobal as exc:
        raise CorruptFileError(path, f"refers to {exc}, which a CIFAR batch never contains "
                                     "(only numpy arrays, lists and strings); refusing to load "
                                     "it, since unpickling it could run code") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, struct.error, MemoryError) as exc:
        raise CorruptFileError(path, f"not a readable CIFAR python batch ({type(exc).__name__}: "
                                     f"{exc}); the file is truncated, corrupt or of another "
                                     "format") from None
    if not isinstance(obj, dict):
        raise CorruptFileError(path, f"a CIFAR batch is a pickled dict, found "
                                     f"{type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def read_cifar_batch(path: Path | str, label_key: str = "labels",
                     num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch. ``label_key`` is ``labels`` (CIFAR-10) or ``fine_labels``
    (CIFAR-100). Returns images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    path = Path(path)
    batch = _load_pickle(path)
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        raise CorruptFileError(path, f"missing key(s) {missing}; found {sorted(batch)} "
                                     f"(a CIFAR batch has 'data' and {label_key!r})")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3 * 32 * 32:
        found = (f"{data.dtype.name} {data.shape}" if isinstance(data, np.ndarray)
                 else type(data).__name__)
        raise CorruptFileError(path, f"'data' must be a uint8 array of shape (N, 3072), "
                                     f"found {found}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(path, f"{label_key!r} is not a list of integers ({exc})") from None
    if labels.ndim != 1 or labels.shape[0] != data.shape[0]:
        raise CorruptFileError(path, f"{label_key!r} has shape {labels.shape} for "
                                     f"{data.shape[0]} images")
    _check_labels(path, labels, num_classes)
    return np.ascontiguousarray(data).reshape(-1, 3, 32, 32), labels


def _read_names(path: Path, key: str) -> tuple[str, ...] | None:
    """Class names from a CIFAR meta file, or None when the file does not exist."""
    if not path.is_file():
        return None
    meta = _load_pickle(path)
    names = meta.get(key)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise CorruptFileError(path, f"expected a list of class names under {key!r}")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


def read_cifar10_folder(folder: Path | str) -> dict[str, Any]:
    """Read ``cifar-10-batches-py``: ``data_batch_1`` .. ``data_batch_5`` (train), ``test_batch``
    and, if present, ``batches.meta`` (class names)."""
    folder = Path(folder)
    parts = [read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = read_cifar_batch(folder / "test_batch")
    names = _read_names(folder / "batches.meta", "label_names")
    if names is not None and len(names) != 10:
        raise CorruptFileError(folder / "batches.meta", f"{len(names)} class names, expected 10")
    return {"train_x": np.concatenate([p[0] for p in parts]),
            "train_y": np.concatenate([p[1] for p in parts]),
            "test_x": test_x, "test_y": test_y, "class_names": names}


def read_cifar100_folder(folder: Path | str) -> dict[str, Any]:
    """Read ``cifar-100-python``: ``train``, ``test`` (fine labels, 100 classes) and, if present,
    ``meta`` (``fine_label_names``)."""
    folder = Path(folder)
    train_x, train_y = read_cifar_batch(folder / "train", "fine_labels", 100)
    test_x, test_y = read_cifar_batch(folder / "test", "fine_labels", 100)
    names = _read_names(folder / "meta", "fine_label_names")
    if names is not None and len(names) != 100:
        raise CorruptFileError(folder / "meta", f"{len(names)} class names, expected 100")
    return {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y,
            "class_names": names}
