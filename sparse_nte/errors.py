"""Every error the toolkit understands, in one place.

Each is reported to the user as one readable line saying what was wrong, where (file, section,
key, flag or path) and what would be valid; ``run_exps.py`` prints it without a traceback (the
traceback goes to the trial's log) and exits with the status documented in docs/exit-status.md:

- :class:`ConfigError` and :class:`UsageError`: exit status 2, before any trial runs.
- :class:`TrialError` and its subclasses: the trial fails (exit status 1 at the end); the other
  trials of the sweep still run.
- :class:`DivergedError`: the trial's loss or weights stopped being finite (or a numerical guard
  fired on a large share of terms); the trial ends with status ``diverged``.
- :class:`TrialBusyError`: another process holds the trial's lock file (it is running the same
  trial on the same results folder); this attempt fails without touching the trial's files.
- :class:`Terminated`: SIGTERM arrived (``kill``, a batch scheduler's time limit); like Ctrl-C's
  KeyboardInterrupt it is not an ``Exception``, so it stops the whole run: exit status 143.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

__all__ = ["ConfigError", "UsageError", "TrialError", "ResultsError", "CheckpointError",
           "DivergedError", "TrialBusyError", "Terminated"]

PathLike = Union[str, "os.PathLike[str]"]


class ConfigError(ValueError):
    """A configuration error: one readable line naming where it is and what is valid.

    ``str(err)`` is ``"<file> [<section>] <key>: <message>"`` for a value in a file and
    ``"--set <key>: <message>"`` for a command-line override. The parts are also available as
    attributes (``file``, ``section``, ``key``, ``flag``, ``message``; any may be None).
    Several errors found at once are one ConfigError whose ``errors`` lists them, one per line.
    """

    def __init__(self, message: str, *, file: Optional[PathLike] = None, section: Optional[str] = None,
                 key: Optional[str] = None, flag: Optional[str] = None) -> None:
        self.message = " ".join(str(message).split())  # always one line
        self.file = None if file is None else str(file)
        self.section = section
        self.key = key
        self.flag = flag
        self.errors: tuple[ConfigError, ...] = (self,)
        super().__init__(self._format())

    @classmethod
    def combine(cls, errors: Sequence["ConfigError"]) -> "ConfigError":
        """One error carrying ``errors`` (at least one), printed one per line."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        out = cls(first.message, file=first.file, section=first.section, key=first.key,
                  flag=first.flag)
        out.errors = tuple(errors)
        out.args = ("\n".join(e._format() for e in errors),)
        return out

    def _format(self) -> str:
        if self.flag is not None:
            where = f"{self.flag} {self.key}" if self.key else self.flag
        else:
            parts = [self.file] if self.file else []
            if self.section is not None:
                parts.append(f"[{self.section}]")
            if self.key:
                parts.append(self.key)
            where = " ".join(parts)
        return f"{where}: {self.message}" if where else self.message

    def __reduce__(self):  # keyword-only constructor: make the error picklable (worker processes)
        return (_rebuild_config_error, (tuple((e.message, e.file, e.section, e.key, e.flag)
                                              for e in self.errors),))


def _rebuild_config_error(parts) -> ConfigError:
    errors = [ConfigError(m, file=f, section=s, key=k, flag=fl) for m, f, s, k, fl in parts]
    return ConfigError.combine(errors)


class UsageError(Exception):
    """A command-line mistake: reported in one line, exit status 2."""


class TrialError(Exception):
    """A fault of one trial that the toolkit understands (results folder, checkpoint, data,
    device, disk): reported in one line naming the file and the fix; the trial fails, the sweep
    goes on."""


class ResultsError(TrialError):
    """A results file or folder cannot be read or written (corrupt pickle, permissions, full
    disk, a file where a folder should be), or holds the result of another configuration."""


class CheckpointError(TrialError):
    """A checkpoint cannot be read or belongs to another configuration."""


class TrialBusyError(TrialError):
    """The trial's lock file is held by another process (``pid`` on ``host``, when known)."""


class Terminated(BaseException):
    """SIGTERM (or another termination signal) arrived; ``signum`` is its number. Raised from
    the signal handler, so it unwinds the running trial like KeyboardInterrupt does: written
    files stay whole (see :func:`sparse_nte.interrupts.deferred`), checkpoints of finished tasks
    stay, and the command exits with status ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"terminated by signal {self.signum}")

    def __reduce__(self):
        return (Terminated, (self.signum,))


class DivergedError(TrialError):
    """Training stopped being finite. ``where`` says at which task, epoch and step."""

    def __init__(self, reason: str, *, task: int, epoch: int, step: int) -> None:
        self.reason = reason
        self.task, self.epoch, self.step = int(task), int(epoch), int(step)
        super().__init__(f"diverged at task {task}, epoch {epoch}, step {step}: {reason}")

    def __reduce__(self):
        return (_rebuild_diverged, (self.reason, self.task, self.epoch, self.step))


def _rebuild_diverged(reason: str, task: int, epoch: int, step: int) -> DivergedError:
    return DivergedError(reason, task=task, epoch=epoch, step=step)
