"""The data protocol of the original sparse-dynamic-synapses code (Pervasive-AI-Lab, 2019;
permuted MNIST at commit 902843e, split MNIST and iCIFAR at 8ee2b3c), for the experiments that
reproduce it. Both functions are pure: they depend on their arguments only, never on a seed.

Task permutations. Task i permuted every image by the pixel permutation that numpy's legacy
global generator gave after ``np.random.seed(i)``::

    P_i = RandomState(i).permutation(D)          D = C * H * W,  x_perm[:, q] = x[:, P_i[q]]

(``np.random.shuffle`` of the list ``0..D-1`` and ``RandomState.permutation`` make the same
draws). Task 0 is permuted too, and P_i is the same in every run.

Epoch order. Each task's training set was padded to whole mini-batches by putting copies of its
first ``m`` examples in front, then shuffled once, with ``np.random.seed(0)``, and that one order
served every epoch of the task (and, as it depends only on the set's size, every task)::

    m     = (B - N mod B) mod B                      B = mini-batch size, N = training examples
    pad   = [0, 1, ..., m-1, 0, 1, ..., N-1]         N + m rows, (N + m) / B full batches
    order = pad[RandomState(0).permutation(N + m)]

For Fashion-MNIST or MNIST (N = 60000, B = 128): m = 32, 469 batches of 128, rows 0..31 seen
twice per epoch.

Its evaluation padded each test set the same way (repeating its first examples) and divided
the correct count by the UNPADDED size, which inflates accuracy by up to m/N (1.12 points for
10,000 test images and B = 128). This toolkit never does that: accuracies are exact.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["original_task_permutation", "original_train_rows", "padding_rows", "TRAIN_ORDERS"]

#: Orders of a training epoch: ``shuffle`` (a fresh random order per (seed, task, epoch)) or
#: ``original`` (:func:`original_train_rows`).
TRAIN_ORDERS = ("shuffle", "original")


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not low <= value < high:
        raise ValueError(f"{name} must be an int in [{low}, {high}), got {value!r}")
    return int(value)


def original_task_permutation(task_index: int, size: int) -> torch.Tensor:
    """int64 permutation of ``0..size-1`` used by task ``task_index`` in the original code:
    ``RandomState(task_index).permutation(size)`` (module docstring)."""
    task_index = _check_int("task_index", task_index, 0, 2**32)
    size = _check_int("size", size, 1, 2**31)
    return torch.from_numpy(np.random.RandomState(task_index).permutation(size).astype(np.int64))


def padding_rows(num: int, batch_size: int) -> int:
    """Number ``m = (B - N mod B) mod B`` of rows the original code repeated to fill the last
    mini-batch of ``num`` examples."""
    num = _check_int("num", num, 0, 2**62)
    batch_size = _check_int("batch_size", batch_size, 1, 2**62)
    return (batch_size - num % batch_size) % batch_size


def original_train_rows(num: int, batch_size: int) -> torch.Tensor:
    """int64 row order of every training epoch of a task of ``num`` examples in the original
    code (module docstring): ``num + padding_rows(num, batch_size)`` rows, a whole number of
    mini-batches, rows ``0..m-1`` twice. Pass it as ``rows`` to ``Scenario.batches`` with
    ``shuffle=False``. If ``num < m`` (fewer examples than one batch) the original code's padding
    would still leave a partial batch; this gives the same ``2 * num`` rows."""
    m = padding_rows(num, batch_size)
    m = min(m, num)
    padded = torch.cat([torch.arange(m, dtype=torch.int64), torch.arange(num, dtype=torch.int64)])
    order = torch.from_numpy(np.random.RandomState(0).permutation(num + m).astype(np.int64))
    return padded[order]
