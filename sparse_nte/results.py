"""Result files: one pickle per (experiment variant, seed), written atomically, plus per-task
checkpoints.

Layout (``<folder>`` is the experiment's name, or ``<name>+<overrides>`` for a run with ``--set``
overrides, see :mod:`sparse_nte.identity`)::

    <results_dir>/<folder>/seed<k>.pkl     the finished run (dict of builtins and numpy arrays)
    <results_dir>/<folder>/seed<k>.ckpt    torch checkpoint after the last finished task (removed
                                           when the run finishes)
    <results_dir>/<folder>/seed<k>.log     every attempt's messages and tracebacks
    <results_dir>/<folder>/seed<k>.lock    held while a process runs the trial (:mod:`sparse_nte.locks`)
    <results_dir>/<folder>/variant.json    the overrides that define a variant folder

A file is written to a temporary name in the same folder and renamed over the target
(``os.replace``, atomic on POSIX and Windows), so a reader never sees half a file and a killed
writer leaves the previous version intact. The content is produced in memory first, so a full
disk or a permission error is reported as such (``No space left on device``), never as a
truncated file. Files get the permissions of the process's umask (like any file it creates),
so lab-mates can read a shared results folder. SIGINT and SIGTERM arriving during a write take
effect once the rename is done (:func:`sparse_nte.interrupts.deferred`).
"""
from __future__ import annotations

import errno
import io
import os
import pickle
import platform
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Union

import numpy as np

from sparse_nte.errors import ResultsError
from sparse_nte.interrupts import deferred

#: A file or folder argument: a str or any os.PathLike.
PathLike = Union[str, "os.PathLike[str]"]

__all__ = [
    "result_path", "checkpoint_path", "log_path", "lock_path", "variant_path", "make_folder",
    "atomic_write", "atomic_write_bytes", "save_result", "load_result", "check_plain", "versions",
    "os_error_text", "git_commit",
]


def result_path(results_dir: PathLike, folder: str, seed: int) -> Path:
    return Path(results_dir) / folder / f"seed{seed}.pkl"


def checkpoint_path(results_dir: PathLike, folder: str, seed: int) -> Path:
    return Path(results_dir) / folder / f"seed{seed}.ckpt"


def log_path(results_dir: PathLike, folder: str, seed: int) -> Path:
    return Path(results_dir) / folder / f"seed{seed}.log"


def lock_path(results_dir: PathLike, folder: str, seed: int) -> Path:
    return Path(results_dir) / folder / f"seed{seed}.lock"


def variant_path(results_dir: PathLike, folder: str) -> Path:
    return Path(results_dir) / folder / "variant.json"


def os_error_text(exc: OSError) -> str:
    """``"No space left on device"`` etc.: the system's words for an OSError."""
    if exc.errno is not None:
        return os.strerror(exc.errno)
    return str(exc) or type(exc).__name__


def make_folder(folder: PathLike) -> None:
    """Create ``folder`` (and its parents) if needed; a ResultsError naming the culprit if a
    file stands in its place (or in a parent's), or it cannot be created."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise ResultsError(f"{blocker} exists but is not a folder; remove or rename it, or pass "
                               f"--results-dir DIR") from None
        raise ResultsError(f"cannot create the results folder {folder}: {os_error_text(exc)}; "
                           f"pass --results-dir DIR to write elsewhere") from None
    if not folder.is_dir():
        raise ResultsError(f"{folder} exists but is not a folder; remove or rename it, or pass "
                           f"--results-dir DIR")


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it and rename it over ``path``,
    with the umask's permissions. On any error the temporary file is removed, ``path`` is
    untouched and a :class:`ResultsError` names the file and the system's reason."""
    path = Path(path)
    make_folder(path.parent)
    with deferred():
        return _write_replace(path, data)


def _hint(exc: OSError) -> str:
    return ("free some space" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
            else "check the folder's permissions")


def _create_temporary(path: Path) -> tuple[int, Path]:
    """A new file beside ``path`` for writing, created with mode 0o666 so the kernel applies
    the umask (reading the umask would need ``os.umask``, which changes it for every thread)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def _write_replace(path: Path, data: bytes) -> Path:
    try:
        fd, tmp = _create_temporary(path)
    except OSError as exc:
        raise ResultsError(f"cannot write in {path.parent}: {os_error_text(exc)}; {_hint(exc)}, or "
                           f"pass --results-dir DIR") from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise ResultsError(f"cannot write {path}: {os_error_text(exc)}; {_hint(exc)}, or pass "
                               f"--results-dir DIR") from None
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def atomic_write(path: PathLike, write: Callable[[Any], None]) -> Path:
    """Call ``write(fileobj)`` on an in-memory buffer, then :func:`atomic_write_bytes`."""
    buf = io.BytesIO()
    write(buf)
    return atomic_write_bytes(path, buf.getvalue())


_PLAIN = (str, int, float, bool, type(None), np.ndarray, np.generic)


def check_plain(obj: Any, where: str = "result") -> None:
    """Raise TypeError if ``obj`` holds anything but builtins and numpy arrays (so the pickle
    loads without this package, or torch, installed). Subclasses of builtins (torch's
    ``TorchVersion`` is a ``str``) are refused too: unpickling them needs their module."""
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{where}: numpy object arrays are not allowed")
        return
    if isinstance(obj, np.generic) or type(obj) in (str, int, float, bool, type(None)):
        return
    if type(obj) is dict:
        for k, v in obj.items():
            if type(k) not in (str, int):
                raise TypeError(f"{where}: dict key {k!r} is not a str/int")
            check_plain(v, f"{where}[{k!r}]")
        return
    if type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__name__} is not a builtin or numpy array")


def save_result(path: PathLike, result: dict) -> Path:
    """Validate that ``result`` is plain data and write it atomically as a pickle."""
    check_plain(result)
    return atomic_write_bytes(path, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))


def load_result(path: PathLike) -> dict:
    """The result pickled at ``path``; a :class:`ResultsError` naming the file if it cannot be
    read or is not a result."""
    try:
        with open(path, "rb") as f:
            out = pickle.load(f)
    except OSError as exc:
        raise ResultsError(f"cannot read {path}: {os_error_text(exc)}") from None
    except Exception as exc:  # UnpicklingError, EOFError, ModuleNotFoundError, ...
        raise ResultsError(f"{path} is not a readable result ({type(exc).__name__}: {exc}); move it "
                           f"away, or run the trial again with --overwrite") from None
    if not isinstance(out, dict):
        raise ResultsError(f"{path} is not a result of this toolkit (a {type(out).__name__}, not a "
                           f"dict); move it away, or run the trial again with --overwrite")
    return out


def git_commit() -> str:
    """The commit of this checkout (``-dirty`` when tracked files are modified), or
    ``"unknown"`` outside a git checkout."""
    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=5)
        if out.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                                   capture_output=True, text=True, timeout=5).stdout.strip()
            return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def versions(extra: Iterable[str] = ()) -> dict:
    """Versions of Python, the key packages and the git commit of this checkout, as plain
    ``str`` (torch's version string is a ``str`` subclass that needs torch to unpickle)."""
    import torch

    import sparse_nte

    info = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
        "sparse_nte": str(sparse_nte.__version__),
        "git_commit": git_commit(),
    }
    for name in extra:
        try:
            info[name] = str(__import__(name).__version__)
        except (ImportError, AttributeError):
            info[name] = "not installed"
    return info
