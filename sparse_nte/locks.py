"""One process per trial: an exclusive lock file beside the trial's results.

Two ``run_exps.py`` processes pointed at the same results folder may ask for the same trial (two
terminals, two Slurm jobs, a rerun started while the first is still going). Without a lock both
would train it, overwrite each other's checkpoint and write its result twice. Every attempt at a
trial therefore first takes ``<results>/<folder>/seed<k>.lock`` with ``fcntl.flock(LOCK_EX |
LOCK_NB)``; a second attempt fails at once with :class:`~sparse_nte.errors.TrialBusyError`
naming the pid (and host) of the holder, without touching the trial's files.

The kernel releases a flock when its holder exits, however it exits (``kill -9``, a segfault, a
lost node's NFS client), so a crashed run never blocks the next one: the stale file is simply
locked again. A finished attempt deletes the file while still holding the lock; an attempt that
opened the old file just before that notices (the path no longer names the inode it locked) and
opens the new one. flock works on local file systems and on NFS v4 (Linux emulates it with
byte-range locks there); on a file system without locking, :meth:`TrialLock.acquire` reports the
system's error.
"""
from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path
from typing import Optional

from sparse_nte.errors import ResultsError, TrialBusyError
from sparse_nte.interrupts import deferred

__all__ = ["TrialLock", "lock_holder"]


def _os_text(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno is not None else str(exc)


def lock_holder(path: os.PathLike) -> str:
    """``"pid 1234 on host node07"`` as written in the lock file, or ``"an unknown process"``."""
    try:
        words = Path(path).read_text().split()
    except (OSError, UnicodeDecodeError):
        words = []
    if len(words) >= 2 and words[0].isdigit():
        return f"pid {words[0]} on host {words[1]}"
    return "an unknown process"


class TrialLock:
    """An exclusive lock on one trial, held from :meth:`acquire` until :meth:`release` (or the
    end of a ``with`` block, or the process)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: Optional[int] = fd

    @classmethod
    def acquire(cls, path: os.PathLike, trial: str = "") -> "TrialLock":
        """Lock ``path`` (created with the umask's permissions; its folder must exist).

        Raises TrialBusyError if another process holds it, ResultsError if it cannot be created
        or locked. ``trial`` (e.g. ``"A seed 0"``) is used in the messages."""
        path = Path(path)
        what = trial or str(path.with_suffix(""))
        with deferred():
            while True:
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
                except OSError as exc:
                    raise ResultsError(f"cannot create the lock file {path}: {_os_text(exc)}; check "
                                       f"the folder's permissions, or pass --results-dir DIR") from None
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    raise TrialBusyError(
                        f"{what} is being run by another process ({lock_holder(path)}, lock file "
                        f"{path}); let it finish (the same command run again then skips the "
                        f"trial), or stop that process") from None
                except OSError as exc:
                    os.close(fd)
                    raise ResultsError(f"cannot lock {path}: {_os_text(exc)}; the results folder's "
                                       f"file system does not support locks: pass --results-dir "
                                       f"DIR on another one") from None
                try:
                    current = os.stat(path)
                except FileNotFoundError:
                    current = None
                mine = os.fstat(fd)
                if current is None or (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino):
                    os.close(fd)  # the holder removed the file as we opened it: take the new one
                    continue
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
                return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Remove the lock file and release the lock (idempotent)."""
        if self._fd is None:
            return
        with deferred():
            try:
                os.unlink(self.path)  # while still locked: nobody else can have locked this inode
            except OSError:
                pass
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> "TrialLock":
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
