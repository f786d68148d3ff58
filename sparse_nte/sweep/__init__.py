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

Modules: :mod:`~sparse_nte.sweep.trials` (trial specs, outcomes, one attempt, inline runs, the
summary), :mod:`~sparse_nte.sweep.local` (worker processes), :mod:`~sparse_nte.sweep.ray_backend`.
"""
from sparse_nte.sweep.local import run_local
from sparse_nte.sweep.ray_backend import _import_ray, run_ray
from sparse_nte.sweep.trials import (Outcome, TrialOptions, TrialSpec, as_spec, available_cores,
                                     error_text, execute_trial, format_outcomes, run_attempt,
                                     run_inline, trial_log_path, understood)

__all__ = ["TrialOptions", "TrialSpec", "Outcome", "run_inline", "run_local", "run_ray",
           "run_attempt", "format_outcomes", "trial_log_path", "available_cores", "as_spec",
           "error_text", "execute_trial", "understood", "_import_ray"]
