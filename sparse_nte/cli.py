"""``sparse-nte`` / ``python run_exps.py``: run named experiments of ``exps/exps_params.cfg``.

Exit status (docs/exit-status.md):

- 0: every trial asked for is done (ran now) or skipped (its result already existed);
  ``--summary``/``--list``/``--dry-run`` succeeded.
- 1: a trial failed or diverged (the others still ran; the summary on stderr says which and
  why), or ``--summary`` found no results for an experiment, or the results folder could not be
  used at all.
- 2: a configuration or usage error, reported before any trial runs (``--device cuda`` on a
  machine without CUDA is one).
- 130: interrupted by Ctrl-C; 143: terminated by SIGTERM (``kill``, a batch scheduler). Finished
  trials are kept; interrupted ones resume from their last checkpoint when the same command runs
  again.

Every error the toolkit understands is one message without a traceback; a traceback on the
terminal means a bug.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from sparse_nte.api import DEFAULT_CONFIG_FILE, experiment_trials, shipped_config
from sparse_nte.config import ConfigError, list_experiments, parse_overrides
from sparse_nte.config.studies import list_studies, parse_seed_list
from sparse_nte.errors import Terminated, TrialError, UsageError
from sparse_nte.interrupts import exit_status, signal_name, terminate_raises
from sparse_nte.reporting.exports import FORMATS
from sparse_nte.sweep import TrialSpec

DEFAULT_CFG = DEFAULT_CONFIG_FILE
CONSOLE_SCRIPT = "sparse-nte"


def parse_seeds(text: str) -> List[int]:
    """``"0,1,2"``, ``"0-4"`` or a mix (``"0-2,7"``) -> sorted unique seeds
    (:func:`sparse_nte.config.studies.parse_seed_list`)."""
    try:
        return parse_seed_list(text)
    except ValueError as exc:
        raise UsageError(f"--seeds {text!r}: {exc}") from None


def invoked_as() -> str:
    """How the user started the CLI: ``sparse-nte`` (the console script) or ``run_exps.py``;
    usage lines, error messages and the command recorded in reports use it."""
    return CONSOLE_SCRIPT if Path(sys.argv[0]).name == CONSOLE_SCRIPT else "run_exps.py"


def build_parser(prog: str = "run_exps.py") -> argparse.ArgumentParser:
    run = "python run_exps.py" if prog == "run_exps.py" else prog
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run named continual-learning experiments from exps/exps_params.cfg and pickle "
                    "their results to results/<name>/seed<k>.pkl.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               f"  {run} --list\n"
               f"  {run} --name quickstart --plot\n"
               f"  {run} --name pmnist_sgd --name pmnist_nte --seeds 0-4 --workers 2\n"
               f"  {run} --name quickstart --set lr=0.05 --set num_batch=5 --dry-run\n"
               f"  {run} --summary pmnist_sgd pmnist_nte\n"
               f"  {run} --study smoke              # run what is missing, then report\n"
               f"  {run} --study smoke --report     # report only (results/smoke/report.html)\n"
               f"  {run} --study smoke --summary --format csv\n")
    what = p.add_argument_group("what to run")
    what.add_argument("--name", action="append", default=[], metavar="EXP",
                      help="experiment (section of the config file); repeat for several")
    what.add_argument("--list", action="store_true", help="list the experiments with descriptions")
    what.add_argument("--study", action="append", default=[], metavar="NAME",
                      help="a study ([study:NAME] section): run its missing trials, then write its "
                           "report; repeat for several")
    what.add_argument("--summary", nargs="*", metavar="EXP",
                      help="print a table of finished results (mean ± std over seeds) of these results "
                           "folders, or alone with --study, and exit")
    what.add_argument("--format", choices=FORMATS, default="markdown",
                      help="--summary output: markdown (default), csv or json (one row per trial and "
                           "one per experiment)")
    what.add_argument("--report", action="store_true",
                      help="only write the HTML report (and its CSV/JSON exports) of --study NAME, or "
                           "of the --name experiments; run nothing")
    what.add_argument("--report-file", default=None, metavar="PATH",
                      help="where --report writes the page (default: <results>/<study>/report.html, "
                           "or <results>/report-<names>.html for --name)")
    what.add_argument("--plot", action="store_true",
                      help="save accuracy-matrix heatmaps and forgetting curves (PNG) beside the results")
    what.add_argument("--config", default=None, metavar="FILE",
                      help=f"experiment file (default: {DEFAULT_CFG})")
    how = p.add_argument_group("how to run it")
    how.add_argument("--seeds", default=None, metavar="LIST",
                     help="seeds, e.g. 0,1,2 or 0-4 (default: the config's seed)")
    how.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key for every named experiment; repeatable")
    how.add_argument("--data-root", default=None, metavar="DIR", help="folder holding the datasets")
    how.add_argument("--results-dir", default="results", metavar="DIR", help="default: results")
    how.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default: cpu)")
    how.add_argument("--threads", type=int, default=None, metavar="N",
                     help="torch threads per trial (default: all cores / workers)")
    how.add_argument("--dry-run", action="store_true", help="print the resolved configs and exit")
    mode = how.add_mutually_exclusive_group()
    mode.add_argument("--resume", dest="resume", action="store_true", default=True,
                      help="continue interrupted trials from their checkpoints (default)")
    mode.add_argument("--no-resume", dest="resume", action="store_false",
                      help="ignore checkpoints of interrupted trials and start them again")
    mode.add_argument("--overwrite", action="store_true",
                      help="run again trials whose results exist (default: skip them)")
    bars = how.add_mutually_exclusive_group()
    bars.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                      help="no progress bars")
    bars.add_argument("--progress", dest="progress", action="store_true",
                      help="progress bars even when stderr is not a terminal (by default they are "
                           "drawn only on a terminal, never into a redirected file)")
    scale = p.add_argument_group("sweeps")
    scale.add_argument("--workers", type=int, default=1, metavar="N",
                       help="run trials in N parallel local processes (default: 1, in this process)")
    scale.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                       help="run trials as Ray tasks: a new local Ray instance, or an existing "
                            "cluster ('auto' or ray://host:port); needs pip install .[ray]")
    scale.add_argument("--cpus-per-trial", type=float, default=1.0, metavar="N",
                       help="Ray: CPUs reserved per trial (default 1)")
    scale.add_argument("--gpus-per-trial", type=float, default=0.0, metavar="N",
                       help="Ray: GPUs reserved per trial (default 0)")
    scale.add_argument("--retries", type=int, default=3, metavar="N",
                       help="Ray: retries of a trial whose worker died (default 3)")
    return p


def _config_path(args) -> Path:
    """``--config FILE``; else ``./exps/exps_params.cfg`` when the current folder has one (a
    checkout); else the file installed with the package (:func:`shipped_config`)."""
    if args.config:
        path = Path(args.config).expanduser()
        if path.is_dir():
            raise UsageError(f"--config {args.config}: is a folder; give the experiment file (INI)")
        if not path.exists():
            raise UsageError(f"--config {args.config}: file not found")
        return path
    if DEFAULT_CFG.is_file():
        return DEFAULT_CFG
    shipped = shipped_config()
    if shipped is None:
        raise UsageError(f"no experiment file: {DEFAULT_CFG} is not in the current folder and the "
                         f"installed package has none (reinstall it); pass --config FILE")
    return shipped


def check_device(text: str, *, available_here: bool = True) -> str:
    """``text`` if it names a torch device (``cpu``, ``cuda``, ``cuda:1``, ``mps``) that this
    machine has, else a UsageError saying why. With ``available_here=False`` (trials run on
    other machines, e.g. a Ray cluster) only the spelling is checked."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text}: not a torch device; valid: cpu, cuda, cuda:N, mps "
                         f"(N: the GPU's index)") from None
    if not available_here or device.type == "cpu":
        return text
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise UsageError(f"--device {text}: CUDA is not available on this machine (torch "
                             f"{torch.__version__}, {build}); use --device cpu, or install a CUDA "
                             f"build of torch on a machine with an NVIDIA GPU")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"--device {text}: this machine has {count} CUDA device(s), "
                             f"cuda:0..cuda:{count - 1}")
        return text
    backend = getattr(torch.backends, device.type, None) or getattr(torch, device.type, None)
    is_available = getattr(backend, "is_available", None)
    if is_available is None or not is_available():
        raise UsageError(f"--device {text}: {device.type} is not available on this machine; use "
                         f"--device cpu")
    return text


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def resolve_trials(args) -> List[TrialSpec]:
    """Every (experiment, seed) trial asked for: its resolved Config and its results folder (the
    experiment's name, or ``name+key=value...`` when ``--set`` changes its configuration)."""
    path = _config_path(args)
    overrides = parse_overrides(args.set)
    if args.data_root is not None:
        if not Path(args.data_root).expanduser().is_dir():
            raise UsageError(f"--data-root {args.data_root}: no such folder")
        overrides["data_root"] = args.data_root
    seeds_asked = parse_seeds(args.seeds) if args.seeds else None
    return [t for name in args.name for t in experiment_trials(path, name, overrides, seeds_asked)]


def _print_trial(spec: TrialSpec, results_dir: str, overwrite: bool, resume: bool) -> None:
    from sparse_nte.results import checkpoint_path, result_path

    cfg = spec.config
    out = result_path(results_dir, spec.folder, spec.seed)
    ckpt = checkpoint_path(results_dir, spec.folder, spec.seed)
    action = ("run (overwrite)" if overwrite and (out.exists() or ckpt.exists()) else
              "skip (finished; checked against this configuration when run)" if out.exists() else
              "resume from its checkpoint" if resume and ckpt.exists() else "run")
    print(f"[{spec.folder}]  seed {spec.seed}  -> {out}  ({action})")
    width = max(len(k) for k in cfg)
    for k, v in cfg.items():
        if k != "name":
            print(f"  {k.ljust(width)} = {v}")


class ConsoleHandler(logging.Handler):
    """Shows the ``sparse_nte`` loggers' records as the command line's own lines: INFO on
    stdout as they are (a trial's per-task lines), WARNING and above on stderr as
    ``<prog>: warning: ...``. Writes to the current ``sys.stdout``/``sys.stderr`` at every
    record, so redirections made after it was installed are honoured."""

    def __init__(self, prog: str) -> None:
        super().__init__(logging.INFO)
        self.prog = prog

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
            if record.levelno >= logging.WARNING:
                print(f"{self.prog}: {record.levelname.lower()}: {msg}", file=sys.stderr, flush=True)
            else:
                print(msg, flush=True)
        except BrokenPipeError:
            raise
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def console_logging(prog: str) -> Iterator[None]:
    """Route the ``sparse_nte`` logger to :class:`ConsoleHandler` (and not also to handlers the
    embedding program configured on the root logger) while the command runs."""
    logger = logging.getLogger("sparse_nte")
    handler = ConsoleHandler(prog)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


class _NoResults(Exception):
    """``--summary`` found nothing for an experiment (exit status 1)."""


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``) and return the exit status.
    ``prog`` names the program in messages (default: :func:`invoked_as`)."""
    prog = prog or invoked_as()
    parser = build_parser(prog)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = ("python run_exps.py " if prog == "run_exps.py" else prog + " ") + shlex.join(argv)
    try:
        with terminate_raises(), console_logging(prog):
            return _main(args)
    except (ConfigError, UsageError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (TrialError, _NoResults) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `run_exps.py --dry-run | head`: the reader has gone
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except (KeyboardInterrupt, Terminated) as exc:
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"terminated by {signal_name(exc.signum)}"
        print(f"{prog}: {why}; finished trials are saved, and running the same command "
              f"again resumes the others from their last checkpoint", file=sys.stderr)
        return exit_status(exc)


def _summary(results_dir: str, exps: Sequence[str]) -> int:
    """``--summary``: the table of every folder of the experiments named (each experiment's own
    and its variants'); an experiment without any results is an error (exit status 1) naming
    the folder searched."""
    from sparse_nte import report

    folders, missing = [], []
    for exp in exps:
        found = [f for f in report.experiment_folders(results_dir, exp)
                 if any(Path(results_dir, f).glob("seed*.pkl"))]
        if not found:
            missing.append(exp)
        folders += [f for f in found if f not in folders]
    if folders:  # unreadable files are named below the table
        print(report.summary_table(results_dir, folders))
    if missing:
        where = Path(results_dir)
        raise _NoResults("; ".join(f"no results for {exp} in {where}" for exp in missing)
                         + ("" if where.is_dir() else f" ({where} is not a folder)" if where.exists()
                            else f" ({where} does not exist)"))
    return 0


def _plot(results_dir: str, folders: Sequence[str], overrides: Optional[dict] = None) -> None:
    from sparse_nte import report

    for folder in folders:
        problems: List[str] = []
        for png in report.plot_experiment(results_dir, folder, problems,
                                          overrides=(overrides or {}).get(folder)):
            print(f"plot: {png}")
        for problem in problems:
            print(f"run_exps.py: plot: {problem}", file=sys.stderr)


def _check_modes(args) -> None:
    """Usage errors between the flags, before anything is read or run."""
    if args.format != "markdown" and args.summary is None:
        raise UsageError(f"--format {args.format} applies to --summary")
    if args.report_file and not args.report:
        raise UsageError("--report-file needs --report")
    if args.study and args.name:
        raise UsageError("--study and --name are alternatives: a study names its experiments "
                         "(run_exps.py --list shows them)")
    if args.summary is not None:
        if args.summary and args.study:
            raise UsageError("--summary takes either results folders (--summary EXP...) or, alone, "
                             "--study NAME")
        if not args.summary and not args.study:
            raise UsageError("--summary needs results folders (--summary EXP...) or --study NAME")
    if args.report and not (args.study or args.name):
        raise UsageError("--report needs --study NAME or --name EXP (repeatable)")
    if args.report_file and len(args.study) > 1:
        raise UsageError("--report-file names one page; give one --study")
    if not (args.name or args.study):
        raise UsageError("nothing to do: give --name EXP or --study NAME (see --list), --summary EXP... "
                         "or --list")
    if args.workers < 1:
        raise UsageError(f"--workers {args.workers}: must be >= 1")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads}: must be >= 1")
    if args.ray is not None and args.workers != 1:
        raise UsageError("--ray and --workers are alternatives: Ray decides the parallelism")


def resolve_studies(args) -> list:
    """The studies asked for: each ``--study NAME`` (with ``--set``/``--seeds``), or with
    ``--report`` the ``--name`` experiments as one ad-hoc study; [] otherwise."""
    from sparse_nte import study

    path = _config_path(args)
    overrides = parse_overrides(args.set)
    if args.data_root is not None:
        overrides["data_root"] = args.data_root
    seeds = parse_seeds(args.seeds) if args.seeds else None
    if args.study:
        return [study.resolve_study(path, n, overrides, seeds) for n in dict.fromkeys(args.study)]
    if args.report:
        return [study.adhoc_study(path, args.name, overrides, seeds)]
    return []


def _report_path(args, st) -> Path:
    if args.report_file:
        return Path(args.report_file)
    if st.named:
        return Path(args.results_dir) / st.name / "report.html"
    return Path(args.results_dir) / f"{st.name}.html"


def _main(args) -> int:
    from sparse_nte import report

    if args.list:
        path = _config_path(args)
        for name, desc in list_experiments(path):
            print(f"{name:24s} {desc}")
        shipped = list_studies(path)
        if shipped:
            print("studies (run_exps.py --study NAME):")
            for name, question, exps in shipped:
                print(f"{name:24s} {question}{' ' if question else ''}[{', '.join(exps)}]")
        return 0
    if args.summary and not args.study:
        if args.format == "markdown":
            return _summary(args.results_dir, args.summary)
        else:
            from sparse_nte.reporting import collect_folders, render_summary

            sys.stdout.write(render_summary(collect_folders(args.results_dir, args.summary), args.format))
        return 0
    _check_modes(args)
    if args.data_root is not None and not Path(args.data_root).expanduser().is_dir():
        raise UsageError(f"--data-root {args.data_root}: no such folder")
    results = Path(args.results_dir).expanduser()
    if results.exists() and not results.is_dir():
        raise UsageError(f"--results-dir {args.results_dir}: is a file, not a folder")
    studies = resolve_studies(args)
    if args.summary is not None:
        from sparse_nte.reporting import render_summary
        from sparse_nte.study import collect

        for st in studies:
            text = render_summary(collect(args.results_dir, st), args.format)
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
        return 0
    trials = [t for st in studies for t in st.trials] if studies else resolve_trials(args)
    trials = list({(t.folder, t.seed): t for t in trials}.values())
    if not args.report:
        check_device(args.device, available_here=args.ray is None)
    if args.dry_run:
        for spec in trials:
            _print_trial(spec, args.results_dir, args.overwrite, args.resume)
        return 0

    failed = []
    if not args.report:
        from sparse_nte import sweep

        options = sweep.TrialOptions(results_dir=str(args.results_dir), device=args.device,
                                     overwrite=args.overwrite, resume=args.resume,
                                     progress=_stderr_is_terminal() if args.progress is None else args.progress,
                                     threads=args.threads)
        if args.ray is not None:
            outcomes = sweep.run_ray(trials, options, address=args.ray, cpus_per_trial=args.cpus_per_trial,
                                     gpus_per_trial=args.gpus_per_trial, retries=args.retries)
        elif args.workers > 1:
            outcomes = sweep.run_local(trials, options, workers=args.workers)
        else:
            outcomes = sweep.run_inline(trials, options)
        print(sweep.format_outcomes(outcomes), file=sys.stderr)
        failed = [o for o in outcomes if o.status in ("failed", "diverged")]
    folders = list(dict.fromkeys(spec.folder for spec in trials))
    if args.plot:
        variants = {st.folders[e]: st.variants[e] for st in studies for e in st.experiments}
        _plot(args.results_dir, folders, variants)
    if studies:
        from sparse_nte.reporting import render_summary, write_report
        from sparse_nte.study import collect

        for st in studies:
            results = collect(args.results_dir, st)
            paths = write_report(results, _report_path(args, st), command=args.command_line,
                                 plot=args.plot)
            print(render_summary(results, "markdown"))
            print(f"report: {paths[0]}  (exports: {', '.join(p.name for p in paths[1:])})")
    elif len(trials) > 1:
        print(report.summary_table(args.results_dir, folders))
    return 1 if failed else 0
