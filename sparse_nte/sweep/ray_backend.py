"""``--ray [ADDRESS]``: trials as Ray tasks on a local instance (loopback only) or a cluster
(see :mod:`sparse_nte.sweep`)."""
from __future__ import annotations

import logging
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from sparse_nte.errors import UsageError

from sparse_nte.sweep.trials import (Outcome, TrialOptions, TrialSpec, _in_order, _key, _pending,
                                     _progress_bar, _unique, available_cores, error_text, run_attempt,
                                     trial_log_path)

__all__ = ["run_ray"]

_log = logging.getLogger("sparse_nte.sweep")

#: Ray reads this variable when it is imported: "0" makes a local instance use 127.0.0.1 as its
#: node address, and then every Ray server of the instance listens on the loopback interface only
#: (what Ray does by default on macOS and Windows).
_RAY_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"



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

