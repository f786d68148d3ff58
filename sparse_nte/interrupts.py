"""Signals as the toolkit handles them: SIGTERM as an exception, and writes a signal cannot cut.

- :func:`terminate_raises`: while active, SIGTERM raises :class:`~sparse_nte.errors.Terminated`
  in the main thread at the next bytecode boundary, exactly as Ctrl-C (SIGINT) raises
  KeyboardInterrupt. ``run_exps.py`` turns either into one line on stderr and exit status
  ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), after the running trial has unwound.
- :func:`deferred`: while active, SIGINT and SIGTERM are recorded instead of handled; on leaving
  the block the previous handlers are restored and the first recorded signal is delivered again
  (``signal.raise_signal``). Every results, checkpoint and lock write runs inside it, so an
  interruption lands after the temporary file is written, synced and renamed, never between.

Both act in the main thread only (Python delivers signals there); elsewhere they do nothing.
SIGKILL cannot be caught: what it leaves is handled by the atomic renames (no half file) and by
the trial locks (the kernel releases a dead process's flock).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, List

from sparse_nte.errors import Terminated

__all__ = ["terminate_raises", "deferred", "exit_status", "signal_name", "DEFERRED_SIGNALS"]

#: The signals :func:`deferred` holds back.
DEFERRED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_terminated(signum: int, frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def terminate_raises() -> Iterator[None]:
    """SIGTERM raises Terminated(15) in the main thread for the duration of the block."""
    if not _in_main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back until the block is done (see the module docstring).

    A handler installed outside Python (``signal.getsignal`` returns None) cannot be restored,
    so then nothing is deferred. Nested blocks defer to the outermost one."""
    if not _in_main_thread() or any(signal.getsignal(s) is None for s in DEFERRED_SIGNALS):
        yield
        return
    pending: List[int] = []

    def record(signum: int, frame) -> None:
        pending.append(signum)

    previous = {s: signal.signal(s, record) for s in DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if pending:
            signal.raise_signal(pending[0])


def signal_name(signum: int) -> str:
    """``"SIGTERM"`` for 15 (the number itself if the platform has no name for it)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def exit_status(exc: BaseException) -> int:
    """The shell's status for a command ended by ``exc``: 128 + the signal's number for
    Terminated and KeyboardInterrupt (130), else 1."""
    if isinstance(exc, Terminated):
        return 128 + exc.signum
    if isinstance(exc, KeyboardInterrupt):
        return 128 + int(signal.SIGINT)
    return 1
