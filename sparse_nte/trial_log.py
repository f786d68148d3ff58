"""A trial's log, ``<results>/<folder>/seed<k>.log``: every attempt appends to it.

:class:`TrialLog` never lets a failing log hide the trial's own outcome: if the log cannot be
opened the attempt fails at once naming the file (nothing of the trial has run yet), and a write
that fails later (a full disk) is dropped and remembered, so the error the user sees is the
trial's own (e.g. ``cannot write .../seed0.ckpt: No space left on device``), not a traceback
from a log line.

:func:`output_to` sends file descriptors 1 and 2 (so also torch's and the C runtime's output) to
the log for the duration of a block: the worker processes of ``run_exps.py --workers N`` run each
trial inside it.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Iterator, Optional

from sparse_nte.results import os_error_text

__all__ = ["TrialLog", "output_to"]


class TrialLog:
    """The log of one attempt, opened for appending (mode 0o666 minus the umask)."""

    def __init__(self, path: os.PathLike) -> None:
        self.path = Path(path)
        self.problem = ""
        self._fh = None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
            self._fh = os.fdopen(fd, "a", buffering=1, errors="replace")
        except OSError as exc:
            self.problem = f"cannot write the log {self.path}: {os_error_text(exc)}"

    @property
    def ok(self) -> bool:
        return self._fh is not None

    def write(self, text: str) -> None:
        """Append ``text``; after a failed write (remembered in ``problem``) do nothing."""
        if self._fh is None:
            return
        try:
            self._fh.write(text)
        except OSError as exc:
            self.problem = f"the log {self.path} stopped at a failed write: {os_error_text(exc)}"
            self._drop()

    def fileno(self) -> int:
        if self._fh is None:
            raise ValueError(f"the log {self.path} is not open")
        return self._fh.fileno()

    def _drop(self) -> None:
        fh, self._fh = self._fh, None
        try:
            fh.close()
        except OSError:
            pass

    def close(self) -> None:
        if self._fh is not None:
            self._drop()

    def __enter__(self) -> "TrialLog":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@contextlib.contextmanager
def output_to(fd: Optional[int]) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``fd`` for the duration of the block (nothing if
    ``fd`` is None)."""
    if fd is None:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in saved:
            os.close(f)
