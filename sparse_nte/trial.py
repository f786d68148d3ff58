"""Child-process entry of a local sweep.

``python -m sparse_nte.trial`` reads one ``{"config": ..., "folder": ..., "options": ...}`` JSON
object on stdin,
runs the trial with its messages on stdout and exits 0 on success, 1 on failure (traceback on
stderr).

``python -m sparse_nte.trial --serve`` is the long-lived worker of ``run_exps.py --workers N``:
it reads one JSON spec per line on stdin, ``{"config": ..., "folder": ..., "options": ...,
"log": path}``, runs
the trials one after the other with everything the trial prints (Python and C level, stdout and
stderr) appended to ``log``, and answers each spec with one line on stdout: the JSON of the
trial's :class:`~sparse_nte.sweep.Outcome` (status "done", "skipped" or "failed" with the error).
It exits when stdin is closed. A trial's exception fails that trial only; if the process itself
dies, the parent sees end-of-file instead of an answer and fails the trial it was running.
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from dataclasses import asdict
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from sparse_nte.sweep import Outcome


@contextlib.contextmanager
def _output_to(path: str) -> Iterator[None]:
    """Send file descriptors 1 and 2 (so also torch's and the C runtime's output) to ``path``,
    appending, for the duration of the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for f in (fd, *saved):
            os.close(f)


def run_spec(spec: dict) -> Outcome:
    """Run the trial of one spec and return its Outcome; an exception becomes a failed Outcome
    (traceback printed to this process's output, i.e. the trial's log)."""
    from sparse_nte.sweep import (Outcome, TrialOptions, TrialSpec, _error_line, _log_header,
                                  execute_trial)

    trial = TrialSpec(spec["config"], spec.get("folder") or str(spec["config"]["name"]))
    print(_log_header(trial), flush=True)
    try:
        outcome = execute_trial(trial, TrialOptions(**spec["options"]),
                                log=lambda msg: print(msg, flush=True))
    except Exception as exc:
        traceback.print_exc()
        sys.stderr.flush()
        return Outcome(trial.name, trial.seed, "failed", _error_line(exc), folder=trial.folder)
    print(f"{outcome.status}: {trial.folder} seed {outcome.seed} in {outcome.seconds:.1f}s", flush=True)
    return outcome


def serve() -> int:
    """The worker loop of ``--serve``; returns 1 if any trial failed, else 0."""
    from pathlib import Path

    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray output between trials goes to stderr, never into the answers
    failed = False
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        if not line.strip():
            continue
        spec = json.loads(line)
        Path(spec["log"]).parent.mkdir(parents=True, exist_ok=True)
        with _output_to(spec["log"]):
            outcome = run_spec(spec)
        if outcome.status == "failed":
            outcome.error = f"{outcome.error} (log: {spec['log']})"
            failed = True
        answers.write(json.dumps(asdict(outcome)) + "\n")
        answers.flush()
    return 1 if failed else 0


def main() -> int:
    if sys.argv[1:] == ["--serve"]:
        return serve()
    if sys.argv[1:]:
        print(f"usage: python -m sparse_nte.trial [--serve] < spec.json (got {sys.argv[1:]})",
              file=sys.stderr)
        return 2
    outcome = run_spec(json.loads(sys.stdin.read()))
    return 1 if outcome.status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
