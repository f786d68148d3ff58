"""Trials and their outcomes, one attempt at a trial (lock, log, run), running trials one after
the other in this process, and the end-of-run summary (see :mod:`sparse_nte.sweep`)."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sparse_nte.errors import ConfigError, ResultsError, Terminated, TrialError, UsageError
from sparse_nte.interrupts import signal_name, terminate_raises
from sparse_nte.locks import TrialLock
from sparse_nte.results import (atomic_write_bytes, lock_path, log_path, make_folder, os_error_text,
                                result_path, variant_path)
from sparse_nte.trial_log import TrialLog, output_to

__all__ = ["TrialOptions", "TrialSpec", "Outcome", "run_inline", "run_attempt", "format_outcomes",
           "trial_log_path", "available_cores", "as_spec", "error_text", "execute_trial",
           "understood"]

_log = logging.getLogger("sparse_nte.sweep")


@dataclass(frozen=True)
class TrialOptions:
    results_dir: str = "results"
    device: str = "cpu"
    overwrite: bool = False
    resume: bool = True
    progress: bool = True
    threads: Optional[int] = None


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its resolved config (a Config, or its plain dict across processes), the
    results folder it writes to (the experiment's name, or a variant's,
    :func:`sparse_nte.identity.folder_name`) and, for a variant, the keys in which it differs
    from the experiment as the file defines it (written to the folder's ``variant.json``)."""

    config: Any
    folder: str
    variant: Dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def name(self) -> str:
        return str(self.config["name"])

    def to_json(self) -> dict:
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else dict(self.config)
        return {"config": cfg, "folder": self.folder, "variant": dict(self.variant)}


def as_spec(trial: Any) -> TrialSpec:
    """A TrialSpec as is; a Config or config dict as the trial of its experiment's own folder."""
    if isinstance(trial, TrialSpec):
        return trial
    return TrialSpec(trial, str(trial["name"]))


@dataclass
class Outcome:
    name: str
    seed: int
    status: str                      # "done" | "skipped" | "diverged" | "failed"
    error: str = ""
    seconds: float = 0.0
    metrics: Dict[str, float] = field(default_factory=dict)
    folder: str = ""

    def __post_init__(self) -> None:
        self.folder = self.folder or self.name


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def trial_log_path(results_dir: os.PathLike, folder: str, seed: int) -> Path:
    return log_path(results_dir, folder, seed)


def _log_header(spec: TrialSpec) -> str:
    """First line of every attempt at a trial in its log (the pid identifies the process)."""
    return f"[pid {os.getpid()}] starting {spec.folder} seed {spec.seed}"


def _scalar_metrics(result: dict) -> Dict[str, float]:
    return {k: float(v) for k, v in result.get("metrics", {}).items() if isinstance(v, (int, float))}


def execute_trial(spec: TrialSpec, options: TrialOptions,
                  log: Optional[Callable[[str], None]] = None) -> Outcome:
    """Run one trial here and now (used by every backend); exceptions propagate. ``log``
    receives the progress lines (default: the ``sparse_nte.runner`` logger)."""
    import torch

    from sparse_nte.runner import run_trial

    if options.threads:
        torch.set_num_threads(int(options.threads))
    t0 = time.perf_counter()
    res = run_trial(spec.config, options.results_dir, folder=spec.folder, device=options.device,
                    overwrite=options.overwrite, resume=options.resume, progress=options.progress,
                    log=log)
    error = ""
    if res["status"] == "diverged":
        d = res["diverged"]
        error = (f"diverged at task {d['task']}, epoch {d['epoch']}, step {d['step']}: {d['reason']} "
                 f"(saved as diverged: {result_path(options.results_dir, spec.folder, spec.seed)})")
    return Outcome(spec.name, spec.seed, res["status"], error, seconds=time.perf_counter() - t0,
                   metrics=_scalar_metrics(res), folder=spec.folder)


def error_text(exc: BaseException) -> str:
    """The whole message for the summary: the toolkit's own errors as their message, others with
    their type. A message of several lines (e.g. every folder searched for a dataset) keeps them;
    blank lines and trailing spaces are dropped."""
    if isinstance(exc, (TrialError, UsageError, ConfigError)):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    lines = [line.rstrip() for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines) if lines else type(exc).__name__


def understood(exc: BaseException) -> bool:
    """An error the toolkit raises on purpose (bad config, data, results, checkpoint, disk,
    device): reported by its message alone, its traceback kept in the log only."""
    from benchmarks.errors import CorruptFileError, DatasetNotFoundError, DownloadError

    return isinstance(exc, (TrialError, ConfigError, UsageError, DatasetNotFoundError,
                            CorruptFileError, DownloadError, OSError))


def _key(spec: TrialSpec) -> Tuple[str, int]:
    return spec.folder, spec.seed


def _unique(trials: Sequence[Any]) -> List[TrialSpec]:
    """The trials without repeats: a (folder, seed) pair is one trial, whatever asked for it
    twice (running it twice at once would have two processes writing the same checkpoint)."""
    seen, out = set(), []
    for spec in map(as_spec, trials):
        if _key(spec) not in seen:
            seen.add(_key(spec))
            out.append(spec)
    return out


def _pending(trials: Sequence[TrialSpec], options: TrialOptions) -> Tuple[List[TrialSpec], List[Outcome]]:
    """Split into trials to run and trials already done (their result exists and is of the same
    configuration); a result of another configuration fails its trial here, naming the keys."""
    from sparse_nte.runner import as_config, reusable_result

    todo, done = [], []
    for spec in trials:
        path = result_path(options.results_dir, spec.folder, spec.seed)
        try:
            exists = path.exists()
        except OSError as exc:  # e.g. a folder on the way that this user may not enter
            done.append(_failed(spec, f"cannot read {path}: {os_error_text(exc)}; check the results "
                                      f"folder's permissions, or pass --results-dir DIR"))
            continue
        if options.overwrite or not exists:
            todo.append(spec)
            continue
        try:
            stored = reusable_result(path, as_config(spec.config))
        except ResultsError as exc:
            done.append(_failed(spec, error_text(exc)))
            continue
        status = "skipped" if stored.get("status", "done") == "done" else str(stored["status"])
        error = "" if status == "skipped" else _stored_failure(path, stored)
        done.append(Outcome(spec.name, spec.seed, status, error, metrics=_scalar_metrics(stored),
                            folder=spec.folder))
    return todo, done


def _stored_failure(path: Path, stored: dict) -> str:
    """Why a stored result that is not ``done`` is not a score, and what to do."""
    d = stored.get("diverged") or {}
    where = (f" at task {d.get('task')}, epoch {d.get('epoch')}, step {d.get('step')}: {d.get('reason')}"
             if d else "")
    return (f"{path} holds a {stored.get('status')} result{where}; this configuration and seed "
            f"give the same again (CPU runs are deterministic): change the configuration (it then "
            f"gets its own folder), or rerun with --overwrite")


def _in_order(trials: Sequence[TrialSpec], outcomes: List[Outcome]) -> List[Outcome]:
    by_key = {(o.folder, o.seed): o for o in outcomes}
    return [by_key[_key(c)] for c in trials]


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="trials", disable=not enabled)


# ---------------------------------------------------------------------------------------------
# In this process
# ---------------------------------------------------------------------------------------------
def run_inline(trials: Sequence[Any], options: TrialOptions) -> List[Outcome]:
    """Run the trials one after the other in this process; messages go to the terminal and to
    each trial's log."""
    trials = _unique(trials)
    todo, outcomes = _pending(trials, options)
    with terminate_raises():
        for spec in todo:
            outcomes.append(run_attempt(spec, options, echo=True))
    return _in_order(trials, outcomes)


def _failed(spec: TrialSpec, message: str, seconds: float = 0.0) -> Outcome:
    return Outcome(spec.name, spec.seed, "failed", message, seconds=seconds, folder=spec.folder)


def run_attempt(spec: TrialSpec, options: TrialOptions, *, echo: bool = False,
                redirect: bool = False) -> Outcome:
    """One attempt at a trial, as every backend makes it: take the trial's lock, append to its
    log (echoing messages to the ``sparse_nte.sweep`` logger at INFO when ``echo``; sending file
    descriptors 1 and 2 to the log when ``redirect``), write ``variant.json`` for a variant folder, run the trial.

    Every failure becomes a failed Outcome with the whole message: another process holding the
    lock (nothing of the trial is touched), a results folder that cannot be written, the trial's
    own errors (the traceback goes to the log; it is also printed when ``echo`` and the error is
    not one the toolkit raises on purpose, i.e. a bug). Ctrl-C and SIGTERM propagate (after a
    line in the log)."""
    log_file = trial_log_path(options.results_dir, spec.folder, spec.seed)
    try:
        make_folder(log_file.parent)
        lock = TrialLock.acquire(lock_path(options.results_dir, spec.folder, spec.seed),
                                 f"{spec.folder} seed {spec.seed}")
    except TrialError as exc:
        return _failed(spec, error_text(exc))
    try:
        with TrialLog(log_file) as log:
            if not log.ok:
                return _failed(spec, f"{log.problem}; check the results folder's permissions, or "
                                     f"pass --results-dir DIR")
            with output_to(log.fileno() if redirect else None):
                outcome = _logged(spec, options, log, echo)
            if log.problem and outcome.status == "failed":
                outcome.error += f" ({log.problem})"
            return outcome
    finally:
        lock.release()


def _write_variant(spec: TrialSpec, options: TrialOptions) -> None:
    """``variant.json`` of a variant folder: the experiment and the keys that make it one."""
    path = variant_path(options.results_dir, spec.folder)
    if spec.variant and not path.exists():
        text = json.dumps({"experiment": spec.name, "differs_in": spec.variant}, indent=1)
        atomic_write_bytes(path, (text + "\n").encode())


def _logged(spec: TrialSpec, options: TrialOptions, log: TrialLog, echo: bool) -> Outcome:
    log.write(_log_header(spec) + "\n")

    def say(msg: str) -> None:
        if echo:
            _log.info(msg)
        log.write(msg + "\n")

    t0 = time.perf_counter()
    try:
        _write_variant(spec, options)
        outcome = execute_trial(spec, options, log=say)
    except (KeyboardInterrupt, Terminated) as exc:
        why = "Ctrl-C" if isinstance(exc, KeyboardInterrupt) else signal_name(exc.signum)
        log.write(f"interrupted by {why}: the trial resumes from its last checkpoint next time\n")
        raise
    except Exception as exc:  # one failed trial must not stop the others
        log.write(traceback.format_exc())
        if echo and not understood(exc):  # a bug: show where it happened
            sys.stderr.write(traceback.format_exc())
        where = f" (log: {log.path})" if log.ok else ""
        return _failed(spec, f"{error_text(exc)}{where}", time.perf_counter() - t0)
    log.write(f"{outcome.status}: {spec.folder} seed {spec.seed} in {outcome.seconds:.1f}s\n")
    return outcome



def _scores(metrics: Dict[str, float]) -> str:
    """``avg acc 79.83%, forgetting 3.10, just-learned 82.40%`` (what a run is judged by)."""
    parts = []
    for key, label, unit in (("avg_acc", "avg acc", "%"), ("forgetting", "forgetting", " pts"),
                             ("learning_acc", "just-learned", "%")):
        v = metrics.get(key)
        if v is not None and v == v:
            parts.append(f"{label} {100 * v:.2f}{unit}")
    return ", ".join(parts)


def format_outcomes(outcomes: Sequence[Outcome]) -> str:
    """The end-of-run summary: counts, then one line per trial, failures and divergences with
    their whole message (continuation lines indented)."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "diverged", "failed")}
    lines = [f"trials: {counts['done']} done, {counts['skipped']} skipped (already finished), "
             f"{counts['failed']} failed" + (f", {counts['diverged']} diverged" if counts["diverged"] else "")]
    for o in outcomes:
        label = o.folder if o.folder else o.name
        if o.status in ("failed", "diverged"):
            first, *more = (o.error or "no message").splitlines()
            lines.append(f"  {o.status.upper()}  {label} seed {o.seed}: {first}")
            lines.extend(f"      {line}" for line in more)  # a long message is shown whole
        else:
            lines.append(f"  {o.status:7s} {label} seed {o.seed}: {_scores(o.metrics)}"
                         + (f" ({o.seconds:.0f}s)" if o.status == "done" else ""))
    return "\n".join(lines)
