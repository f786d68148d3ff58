"""Running many trials: in this process, in parallel local processes, or as Ray tasks.

A trial is one (experiment variant, seed) pair; its result file ``results/<folder>/seed<k>.pkl``
is its identity: a trial whose pickle exists is done (skipped unless ``overwrite``), a trial with
a checkpoint resumes from it, and a trial asked for twice runs once. Trials are independent, so a
failure in one never loses another's result; every backend ends with one :class:`Outcome` per
trial. Every attempt at a trial (:func:`run_attempt`, used by every backend) first takes the
trial's lock file ``seed<k>.lock`` (:mod:`sparse_nte.locks`: a second process asking for the same
trial fails at once, naming the holder), then appends its output to the trial's log
``results/<folder>/seed<k>.log``, starting with the line ``[pid N] starting <folder> seed <k>``.
Ctrl-C and SIGTERM stop every backend; files being written are finished first
(:mod:`sparse_nte.interrupts`), finished trials and checkpoints stay.

- :func:`run_inline`: one after the other in this process (``--workers 1``).
- :func:`run_local`: ``--workers N`` long-lived child processes (``python -m sparse_nte.trial
  --serve``), each running one trial at a time with its output (Python and C level) redirected to
  the trial's log. A worker imports torch once and then runs trial after trial, so short trials
  are not dominated by interpreter start-up; a worker that dies (segfault, OOM killer, kill -9)
  fails only the trial it was running and is replaced. Torch threads per trial = cores // N
  unless ``--threads``. One overall progress bar. Workers run in their own session, so a
  terminal's Ctrl-C reaches only ``run_exps.py``, which stops them with SIGTERM: they unwind
  their trial quietly (no traceback on the terminal) and exit.
- :func:`run_ray`: Ray tasks (``pip install .[ray]``) on a new local Ray instance (listening on
  the loopback interface only) or an existing cluster. Workers write checkpoints and results
  straight into the results directory, which must therefore be visible to every node (a shared
  filesystem on a multi-node cluster): that is what lets a retried trial -- after its worker
  died or its node was preempted -- resume from its last checkpoint on any node, and a result
  never has to travel through the object store or wait for the driver. Trials whose worker
  died are retried up to ``retries`` times; errors raised by the trial itself (bad data, a bug)
  are deterministic and not retried.
"""
from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from sparse_nte.errors import ConfigError, ResultsError, Terminated, TrialError, UsageError
from sparse_nte.interrupts import signal_name, terminate_raises
from sparse_nte.locks import TrialLock
from sparse_nte.results import (atomic_write_bytes, lock_path, log_path, make_folder, os_error_text,
                                result_path, variant_path)
from sparse_nte.trial_log import TrialLog, output_to

__all__ = ["TrialOptions", "TrialSpec", "Outcome", "run_inline", "run_local", "run_ray",
           "run_attempt", "format_outcomes", "trial_log_path", "available_cores", "as_spec",
           "error_text"]

#: Ray reads this variable when it is imported: "0" makes a local instance use 127.0.0.1 as its
#: node address, and then every Ray server of the instance listens on the loopback interface only
#: (what Ray does by default on macOS and Windows).
_RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

_log = logging.getLogger(__name__)


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


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------
def _ray_trial(spec_json: dict, options: dict) -> dict:
    """Body of a Ray task: run (or resume) one trial, appending its messages to its log. An error
    of the trial itself comes back as a failed Outcome (deterministic: not retried); only a dead
    worker makes Ray retry."""
    opts = TrialOptions(**options)
    spec = TrialSpec(spec_json["config"], spec_json["folder"], spec_json.get("variant") or {})
    outcome = run_attempt(spec, opts, echo=False)
    return asdict(outcome)


def _import_ray(address: str):
    if address == "local" and "ray" not in sys.modules:
        os.environ.setdefault(_RAY_LOCAL_ONLY_ENV, "0")
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install -c constraints.txt -e '.[ray]'") from None
    return ray


def run_ray(trials: Sequence[Any], options: TrialOptions, address: str = "local",
            cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0, retries: int = 3,
            init_kwargs: Optional[Dict[str, Any]] = None) -> List[Outcome]:
    """Run the trials as Ray tasks.

    ``address``: "local" starts a Ray instance on this machine, listening on the loopback
    interface only (if Ray was not imported yet in this process), and stops it at the end;
    "auto", "host:port" or "ray://host:port" joins an existing cluster. If Ray is already
    initialised in this process, that instance is used and left running. Each trial reserves
    ``cpus_per_trial`` CPUs (its torch thread count unless ``options.threads``) and
    ``gpus_per_trial`` GPUs; a trial whose worker or node died is started again, from its last
    checkpoint, up to ``retries`` times.
    """
    if not cpus_per_trial > 0:
        raise UsageError(f"--cpus-per-trial {cpus_per_trial}: must be > 0")
    if gpus_per_trial < 0:
        raise UsageError(f"--gpus-per-trial {gpus_per_trial}: must be >= 0")
    if retries < 0:
        raise UsageError(f"--retries {retries}: must be >= 0")
    if gpus_per_trial > 0 and options.device == "cpu":
        _log.warning("--gpus-per-trial reserves GPUs but --device is cpu; pass --device cuda to "
                     "train on them")
    ray = _import_ray(address)

    trials = _unique(trials)
    opts = dict(asdict(options), results_dir=str(Path(options.results_dir).resolve()), progress=False,
                threads=options.threads or max(1, int(cpus_per_trial)))
    todo, outcomes = _pending(trials, TrialOptions(**opts))
    if not todo:  # nothing to run: do not start Ray
        return _in_order(trials, outcomes)
    started_here = False
    if not ray.is_initialized():
        kwargs = dict(init_kwargs or {})
        if address == "local":
            kwargs.setdefault("num_cpus", available_cores())
            kwargs.setdefault("include_dashboard", False)
        try:
            ray.init(address=address, **kwargs)
        except ConnectionError as exc:  # e.g. --ray auto with no cluster running
            raise UsageError(f"--ray {address}: {error_text(exc)}") from None
        started_here = True
    bar = _progress_bar(len(trials), len(outcomes), options.progress)
    try:
        task = ray.remote(num_cpus=cpus_per_trial, num_gpus=gpus_per_trial, max_retries=retries,
                          retry_exceptions=False)(_ray_trial)
        refs = {task.remote(spec.to_json(), opts): spec for spec in todo}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            spec = refs[ready[0]]
            try:
                outcomes.append(Outcome(**ray.get(ready[0])))
            except Exception as exc:  # the worker died more often than `retries`
                cause = getattr(exc, "cause", None) or exc
                why = error_text(cause)
                log = trial_log_path(opts["results_dir"], *_key(spec))
                outcomes.append(Outcome(spec.name, spec.seed, "failed", f"{why} (log: {log})",
                                        folder=spec.folder))
            bar.update(1)
    finally:
        bar.close()
        if started_here:
            ray.shutdown()
    return _in_order(trials, outcomes)


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
