"""Child-process entry of a local sweep.

``python -m sparse_nte.trial`` reads one ``{"config": ..., "folder": ..., "options": ...}`` JSON
object on stdin, runs the trial with its messages on stdout (and in its log) and exits 0 on
success, 1 on failure.

``python -m sparse_nte.trial --serve`` is the long-lived worker of ``run_exps.py --workers N``:
it reads one JSON spec per line on stdin, ``{"config": ..., "folder": ..., "variant": ...,
"options": ..., "log": path}``, runs the trials one after the other with everything the trial
prints (Python and C level, stdout and stderr) appended to the trial's log, and answers each spec
with one line on stdout: the JSON of the trial's :class:`~sparse_nte.sweep.Outcome` (status
"done", "skipped", "diverged" or "failed" with the error). It exits when stdin is closed. A
trial's exception fails that trial only; if the process itself dies, the parent sees end-of-file
instead of an answer and fails the trial it was running.

Signals: the ``--serve`` worker ignores SIGINT (the parent owns Ctrl-C and stops its workers with SIGTERM).
SIGTERM unwinds the running trial (a file being written is finished first, its checkpoints
stay), writes a line to its log and ends the worker with status 143, printing nothing on the
terminal.
"""
from __future__ import annotations

import json
import os
import signal
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING

from sparse_nte.errors import Terminated
from sparse_nte.interrupts import exit_status, terminate_raises

if TYPE_CHECKING:
    from sparse_nte.sweep import Outcome


def run_spec(spec: dict, redirect: bool = True) -> Outcome:
    """Run the trial of one spec (lock, log, trial: :func:`sparse_nte.sweep.run_attempt`) and
    return its Outcome; with ``redirect`` everything the trial prints goes to its log."""
    from sparse_nte.sweep import TrialOptions, TrialSpec, run_attempt

    trial = TrialSpec(spec["config"], spec.get("folder") or str(spec["config"]["name"]),
                      spec.get("variant") or {})
    return run_attempt(trial, TrialOptions(**spec["options"]), echo=not redirect,
                       redirect=redirect)


def serve() -> int:
    """The worker loop of ``--serve``; returns 1 if any trial failed, 143 after SIGTERM, else 0."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray output between trials goes to stderr, never into the answers
    failed = False
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        outcome = run_spec(json.loads(line))
        failed = failed or outcome.status == "failed"
        answers.write(json.dumps(asdict(outcome)) + "\n")
        answers.flush()
    return 1 if failed else 0


def main() -> int:
    try:
        with terminate_raises():
            if sys.argv[1:] == ["--serve"]:
                return serve()
            if sys.argv[1:]:
                print(f"usage: python -m sparse_nte.trial [--serve] < spec.json (got {sys.argv[1:]})",
                      file=sys.stderr)
                return 2
            outcome = run_spec(json.loads(sys.stdin.read()), redirect=False)
            return 1 if outcome.status == "failed" else 0
    except Terminated as exc:  # the trial's log says so; nothing for the terminal
        return exit_status(exc)


if __name__ == "__main__":
    sys.exit(main())
