"""Running many trials: in this process, in parallel local processes, or as Ray tasks.

A trial is one (experiment, seed) pair; its result file ``results/<exp>/seed<k>.pkl`` is its
identity: a trial whose pickle exists is done (skipped unless ``overwrite``), a trial with a
checkpoint resumes from it, and a trial asked for twice runs once. Trials are independent, so a
failure in one never loses another's result; every backend ends with one :class:`Outcome` per
trial. Every backend appends the output of each attempt at a trial to its log
``results/<exp>/seed<k>.log``, starting with the line ``[pid N] starting <exp> seed <k>``.

- :func:`run_inline`: one after the other in this process (``--workers 1``).
- :func:`run_local`: ``--workers N`` long-lived child processes (``python -m sparse_nte.trial
  --serve``), each running one trial at a time with its output (Python and C level) redirected to
  the trial's log. A worker imports torch once and then runs trial after trial, so short trials
  are not dominated by interpreter start-up; a worker that dies (segfault, OOM killer, kill -9)
  fails only the trial it was running and is replaced. Torch threads per trial = cores // N
  unless ``--threads``. One overall progress bar.
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

from sparse_nte.errors import ConfigError, ResultsError, TrialError, UsageError
from sparse_nte.results import log_path, result_path

__all__ = ["TrialOptions", "TrialSpec", "Outcome", "run_inline", "run_local", "run_ray",
           "format_outcomes", "trial_log_path", "available_cores", "as_spec"]

#: Ray reads this variable when it is imported: "0" makes a local instance use 127.0.0.1 as its
#: node address, and then every Ray server of the instance listens on the loopback interface only
#: (what Ray does by default on macOS and Windows).
_RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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
    """One trial: its resolved config (a Config, or its plain dict across processes) and the
    results folder it writes to (the experiment's name, or a variant's,
    :func:`sparse_nte.identity.folder_name`)."""

    config: Any
    folder: str

    @property
    def seed(self) -> int:
        return int(self.config["seed"])

    @property
    def name(self) -> str:
        return str(self.config["name"])

    def to_json(self) -> dict:
        cfg = self.config.to_dict() if hasattr(self.config, "to_dict") else dict(self.config)
        return {"config": cfg, "folder": self.folder}


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


def execute_trial(spec: TrialSpec, options: TrialOptions, log: Callable[[str], None] = print) -> Outcome:
    """Run one trial here and now (used by every backend); exceptions propagate."""
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


def _error_line(exc: BaseException) -> str:
    """One line for the summary: the toolkit's own errors as their message, others with their
    type; multi-line messages keep their first line unless it is only a header."""
    if isinstance(exc, (TrialError, UsageError, ConfigError)):
        text = str(exc).strip()
    else:
        text = f"{type(exc).__name__}: {exc}".strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " ".join(lines)[:800] if lines else type(exc).__name__


def understood(exc: BaseException) -> bool:
    """An error the toolkit raises on purpose (bad config, data, results, checkpoint, disk,
    device): reported in one line, its traceback kept in the log only."""
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
        if options.overwrite or not path.exists():
            todo.append(spec)
            continue
        try:
            stored = reusable_result(path, as_config(spec.config))
        except ResultsError as exc:
            done.append(Outcome(spec.name, spec.seed, "failed", str(exc), folder=spec.folder))
            continue
        status = "skipped" if stored.get("status", "done") == "done" else str(stored["status"])
        error = ("" if status == "skipped" else
                 f"{path} holds a {status} result ({stored.get('diverged', {}).get('reason', '')}); "
                 f"rerun with --overwrite after changing the configuration")
        done.append(Outcome(spec.name, spec.seed, status, error, metrics=_scalar_metrics(stored),
                            folder=spec.folder))
    return todo, done


def _in_order(trials: Sequence[TrialSpec], outcomes: List[Outcome]) -> List[Outcome]:
    by_key = {(o.folder, o.seed): o for o in outcomes}
    return [by_key[_key(c)] for c in trials]


def _progress_bar(total: int, initial: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="trials", disable=not enabled)


# ---------------------------------------------------------------------------------------------
# In this process
# ---------------------------------------------------------------------------------------------
def run_inline(trials: Sequence[dict], options: TrialOptions) -> List[Outcome]:
    """Run the trials one after the other in this process; messages go to the terminal and to
    each trial's log."""
    trials = _unique(trials)
    todo, outcomes = _pending(trials, options)
    for spec in todo:
        outcomes.append(_run_logged(spec, options, echo=True))
    return _in_order(trials, outcomes)


class _NullLog:
    def write(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def _open_log(path: Path) -> Tuple[Any, str]:
    """The trial's log opened for appending, or a null log and why it could not be opened."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", buffering=1), ""
    except OSError as exc:
        from sparse_nte.results import os_error_text
        return _NullLog(), f"cannot write the log {path}: {os_error_text(exc)}"


def _run_logged(spec: TrialSpec, options: TrialOptions, echo: bool) -> Outcome:
    """Run one trial with its messages appended to its log (and printed when ``echo``). Every
    failure, set-up included, becomes a failed Outcome with one line; the traceback goes to the
    log only."""
    path = trial_log_path(options.results_dir, spec.folder, spec.seed)
    fh, log_problem = _open_log(path)
    try:
        fh.write(_log_header(spec) + "\n")

        def log(msg: str) -> None:
            if echo:
                print(msg, flush=True)
            fh.write(msg + "\n")

        try:
            if log_problem:
                raise ResultsError(f"{log_problem}; check the results folder's permissions, or pass "
                                   f"--results-dir DIR")
            outcome = execute_trial(spec, options, log=log)
            fh.write(f"{outcome.status}: {spec.folder} seed {spec.seed} in {outcome.seconds:.1f}s\n")
            return outcome
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # one failed trial must not stop the others
            fh.write(traceback.format_exc())
            if echo and not understood(exc):  # a bug: show where it happened
                sys.stderr.write(traceback.format_exc())
            where = "" if log_problem else f" (log: {path})"
            return Outcome(spec.name, spec.seed, "failed", f"{_error_line(exc)}{where}", folder=spec.folder)
    finally:
        fh.close()


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


class _Worker:
    """One long-lived ``python -m sparse_nte.trial --serve`` process: a JSON trial spec per line
    on its stdin, a JSON :class:`Outcome` per line on its stdout; the trial's own output goes to
    the trial's log. Started on first use and again after it died."""

    def __init__(self, env: Dict[str, str]):
        self.env = env
        self.proc: Optional[subprocess.Popen] = None

    def run(self, spec: TrialSpec, options: dict, log: Path) -> Outcome:
        name, seed = spec.name, spec.seed
        t0 = time.perf_counter()
        if self.proc is None:
            self.proc = subprocess.Popen([sys.executable, "-m", "sparse_nte.trial", "--serve"],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env,
                                         text=True, bufsize=1)
        proc = self.proc  # close() may drop self.proc from another thread
        log.parent.mkdir(parents=True, exist_ok=True)
        offset = log.stat().st_size if log.exists() else 0
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
        why = _last_error(log, offset)
        if code < 0:
            try:
                sig = signal.Signals(-code).name
            except ValueError:
                sig = str(-code)
            why = f"worker killed by signal {sig}; last output: {why}"
        else:
            why = f"worker exited with status {code}; last output: {why}"
        return Outcome(name, seed, "failed", f"{why} (log: {log})", seconds=time.perf_counter() - t0,
                       folder=spec.folder)

    def close(self, force: bool = False) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if force:
            proc.terminate()  # interrupted: its trial resumes from its checkpoint next time
        else:
            try:
                proc.stdin.close()
            except OSError:
                pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_local(trials: Sequence[dict], options: TrialOptions, workers: int) -> List[Outcome]:
    """Run the trials in ``workers`` parallel worker processes."""
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
    pool = [_Worker(env) for _ in range(min(workers, len(todo)))]
    bar = _progress_bar(len(trials), len(outcomes), options.progress)

    def drive(worker: _Worker) -> None:
        while not stopping.is_set():
            with lock:
                if not queue:
                    return
                spec = queue.popleft()
            log = trial_log_path(options.results_dir, *_key(spec))
            outcome = worker.run(spec, child_options, log)
            with lock:
                outcomes.append(outcome)
                bar.update(1)

    drivers = [threading.Thread(target=drive, args=(w,), daemon=True) for w in pool]
    interrupted = False
    previous_sigterm = None
    if threading.current_thread() is threading.main_thread():
        # `kill` or a batch scheduler's SIGTERM: stop the workers too, as Ctrl-C does
        previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        for t in drivers:
            t.start()
        for t in drivers:
            while t.is_alive():
                t.join(0.2)  # short waits keep Ctrl-C responsive
    except BaseException:
        interrupted = True
        stopping.set()
        raise
    finally:
        for w in pool:
            w.close(force=interrupted)
        bar.close()
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    return _in_order(trials, outcomes)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------
# Ray
# ---------------------------------------------------------------------------------------------
def _ray_trial(spec_json: dict, options: dict) -> dict:
    """Body of a Ray task: run (or resume) one trial, appending its messages to its log. An error
    of the trial itself comes back as a failed Outcome (deterministic: not retried); only a dead
    worker makes Ray retry."""
    opts = TrialOptions(**options)
    spec = TrialSpec(spec_json["config"], spec_json["folder"])
    outcome = _run_logged(spec, opts, echo=False)
    return asdict(outcome)


def _import_ray(address: str):
    if address == "local" and "ray" not in sys.modules:
        os.environ.setdefault(_RAY_LOCAL_ONLY_ENV, "0")
    try:
        import ray
    except ImportError:
        raise UsageError("--ray needs Ray: pip install -c constraints.txt -e '.[ray]'") from None
    return ray


def run_ray(trials: Sequence[dict], options: TrialOptions, address: str = "local",
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
        print("run_exps.py: warning: --gpus-per-trial reserves GPUs but --device is cpu; "
              "pass --device cuda to train on them", file=sys.stderr)
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
            raise UsageError(f"--ray {address}: {_error_line(exc)}") from None
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
                why = _error_line(cause)
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
    """The end-of-run summary: counts, then one line per trial, failures with their error."""
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "diverged", "failed")}
    lines = [f"trials: {counts['done']} done, {counts['skipped']} skipped (already finished), "
             f"{counts['failed']} failed" + (f", {counts['diverged']} diverged" if counts["diverged"] else "")]
    for o in outcomes:
        label = o.folder if o.folder else o.name
        if o.status in ("failed", "diverged"):
            lines.append(f"  {o.status.upper()}  {label} seed {o.seed}: {o.error}")
        else:
            lines.append(f"  {o.status:7s} {label} seed {o.seed}: {_scores(o.metrics)}"
                         + (f" ({o.seconds:.0f}s)" if o.status == "done" else ""))
    return "\n".join(lines)
