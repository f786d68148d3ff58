"""``--workers N``: long-lived worker processes (``python -m sparse_nte.trial --serve``), one
trial at a time each (see :mod:`sparse_nte.sweep`)."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sparse_nte.errors import ResultsError, Terminated
from sparse_nte.interrupts import terminate_raises
from sparse_nte.results import make_folder

from sparse_nte.sweep.trials import (Outcome, TrialOptions, TrialSpec, _failed, _in_order, _key,
                                     _pending, _progress_bar, _unique, available_cores, error_text,
                                     trial_log_path)

__all__ = ["run_local"]


# ---------------------------------------------------------------------------------------------
# Local worker processes
# ---------------------------------------------------------------------------------------------
def _last_error(log: Path, offset: int = 0) -> str:
    """The last exception line written to a trial's log after byte ``offset`` (the start of the
    attempt in question): what a user needs to see first."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            lines = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "no log written"
    for line in reversed(lines):
        if line and not line.startswith((" ", "\t", "Traceback")):
            return line[:500]
    return "no output"


#: Exit statuses of a worker that was stopped by Ctrl-C or SIGTERM (its own handler's status, or
#: the signal itself if it arrived before the handler was installed).
_INTERRUPTED = {128 + signal.SIGTERM: signal.SIGTERM, 128 + signal.SIGINT: signal.SIGINT,
                -signal.SIGTERM: signal.SIGTERM, -signal.SIGINT: signal.SIGINT}


class _Interrupted(Exception):
    """A worker was stopped by a signal (e.g. a batch scheduler signalling every process of the
    job): the sweep stops as if this process had received it."""

    def __init__(self, signum: int) -> None:
        self.signum = int(signum)
        super().__init__(f"a worker was stopped by signal {self.signum}")


class _Worker:
    """One long-lived ``python -m sparse_nte.trial --serve`` process: a JSON trial spec per line
    on its stdin, a JSON :class:`Outcome` per line on its stdout; the trial's own output goes to
    the trial's log. Started on first use and again after it died; in a session of its own, so
    a terminal's Ctrl-C reaches only the parent, which stops it with SIGTERM."""

    def __init__(self, env: Dict[str, str]):
        self.env = env
        self.proc: Optional[subprocess.Popen] = None

    def run(self, spec: TrialSpec, options: dict, log: Path) -> Outcome:
        """The worker's answer for ``spec``; raises _Interrupted if the worker was stopped by
        SIGINT or SIGTERM instead of answering."""
        t0 = time.perf_counter()
        try:
            make_folder(log.parent)
        except ResultsError as exc:  # a file where the folder should be, no permission, ...
            return _failed(spec, error_text(exc))
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-m", "sparse_nte.trial", "--serve"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env,
                                         text=True, bufsize=1, start_new_session=True)
        proc = self.proc  # stop() may drop self.proc from another thread
        try:
            offset = log.stat().st_size if log.exists() else 0
        except OSError:
            offset = 0
        try:
            proc.stdin.write(json.dumps({**spec.to_json(), "options": options, "log": str(log)}) + "\n")
            proc.stdin.flush()
            reply = proc.stdout.readline()
        except (OSError, ValueError):  # the worker is gone (broken pipe, pipe closed)
            reply = ""
        if reply:
            return Outcome(**json.loads(reply))
        code = proc.wait()
        if self.proc is proc:
            self.proc = None
        if code in _INTERRUPTED:
            raise _Interrupted(_INTERRUPTED[code])
        why = _last_error(log, offset)
        if code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = str(-code)
            why = f"worker killed by signal {sig}; last output: {why}"
        else:
            why = f"worker exited with status {code}; last output: {why}"
        return _failed(spec, f"{why} (log: {log})", time.perf_counter() - t0)

    def stop(self, force: bool = False) -> Optional[subprocess.Popen]:
        """Ask the worker to stop: at once with SIGTERM (``force``; it finishes the file it is
        writing and exits, its trial resumes from its checkpoint next time), else when its queue
        ends (stdin closed). Returns the process to :func:`_reap`."""
        proc, self.proc = self.proc, None
        if proc is not None:
            if force:
                proc.terminate()
            else:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        return proc


def _reap(proc: Optional[subprocess.Popen], timeout: float = 30) -> None:
    """Wait for a stopped worker; SIGKILL it if it takes longer than ``timeout`` seconds."""
    if proc is None:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_local(trials: Sequence[Any], options: TrialOptions, workers: int) -> List[Outcome]:
    """Run the trials in ``workers`` parallel worker processes.

    Ctrl-C (KeyboardInterrupt) or SIGTERM (:class:`~sparse_nte.errors.Terminated`) in this
    process, or a worker stopped by one of them, stops every worker and propagates; the progress
    bar keeps the count of trials that really finished."""
    if workers < 1:
        raise ValueError(f"workers={workers}: must be >= 1")
    trials = _unique(trials)
    todo, outcomes = _pending(trials, options)
    threads = options.threads or max(1, available_cores() // workers)
    child_options = dict(asdict(options), threads=threads, progress=False)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    queue = collections.deque(todo)
    lock = threading.Lock()
    stopping = threading.Event()
    stopped_by: List[int] = []
    pool = [_Worker(env) for _ in range(min(workers, len(todo)))]
    bar = _progress_bar(len(trials), len(outcomes), options.progress)

    def drive(worker: _Worker) -> None:
        while not stopping.is_set():
            with lock:
                if not queue:
                    return
                spec = queue.popleft()
            log = trial_log_path(options.results_dir, *_key(spec))
            try:
                outcome = worker.run(spec, child_options, log)
            except _Interrupted as exc:
                stopped_by.append(exc.signum)
                stopping.set()
                return
            except Exception as exc:  # e.g. a garbled answer: fail this trial, not the thread
                outcome = _failed(spec, f"no answer from the worker ({error_text(exc)}) (log: {log})")
            with lock:
                if stopping.is_set():  # interrupted meanwhile: the run ends without a summary
                    return
                outcomes.append(outcome)
                bar.update(1)

    drivers = [threading.Thread(target=drive, args=(w,), daemon=True) for w in pool]
    interrupted = False
    try:
        with terminate_raises():
            for t in drivers:
                t.start()
            for t in drivers:
                while t.is_alive():
                    t.join(0.2)  # short waits keep Ctrl-C responsive
            if stopped_by:
                interrupted = True
                if stopped_by[0] == signal.SIGINT:
                    raise KeyboardInterrupt
                raise Terminated(stopped_by[0])
    except BaseException:
        interrupted = True
        stopping.set()
        raise
    finally:
        for proc in [w.stop(force=interrupted) for w in pool]:
            _reap(proc)
        bar.close()
    return _in_order(trials, outcomes)

