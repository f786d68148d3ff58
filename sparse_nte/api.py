"""Run experiments from Python: :func:`run_experiment`, the library form of ``sparse-nte --name``.

    results = sparse_nte.run_experiment("quickstart", seeds=[0, 1], overrides={"lr": 0.05})

does what ``sparse-nte --name quickstart --seeds 0,1 --set lr=0.05`` does (same experiment file
lookup, same resolution ``schema < [DEFAULT] < [name] < overrides``, same results folders,
skipping of finished trials and resuming of interrupted ones) and returns the result dicts
(``results/<folder>/seed<k>.pkl``: accuracy matrix, metrics, stats; see docs/results-files.md).

No training algorithm lives here: the trials run through :mod:`sparse_nte.sweep` and
:func:`sparse_nte.runner.run_trial`. Progress lines go to the ``sparse_nte`` logger (INFO).
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

if TYPE_CHECKING:
    from sparse_nte.config import Config
    from sparse_nte.sweep import TrialSpec

__all__ = ["run_experiment", "default_config_file", "shipped_config", "experiment_trials",
           "DEFAULT_CONFIG_FILE"]

#: Where the command line and :func:`run_experiment` look first (relative to the working folder).
DEFAULT_CONFIG_FILE = Path("exps") / "exps_params.cfg"

PathLike = Union[str, "os.PathLike[str]"]


def shipped_config() -> Optional[Path]:
    """The experiment file installed with the package (``exps_params.cfg``, package data of the
    ``exps`` package), or None when the installation has none."""
    try:
        from importlib.resources import files

        found = files("exps") / DEFAULT_CONFIG_FILE.name
    except (ImportError, TypeError):  # no `exps` package, or a namespace package without files
        return None
    return found if isinstance(found, Path) and found.is_file() else None


def default_config_file() -> Path:
    """``./exps/exps_params.cfg`` when the working folder has one (a checkout), else the file
    installed with the package (:func:`shipped_config`). Raises FileNotFoundError if neither."""
    if DEFAULT_CONFIG_FILE.is_file():
        return DEFAULT_CONFIG_FILE
    shipped = shipped_config()
    if shipped is None:
        raise FileNotFoundError(f"no experiment file: {DEFAULT_CONFIG_FILE} is not in the current "
                                f"folder and the installed package has none (reinstall it); give "
                                f"the file explicitly")
    return shipped


def _seed_list(seeds: Union[None, int, str, Iterable[int]]) -> Optional[list[int]]:
    from sparse_nte.config.studies import parse_seed_list

    if seeds is None:
        return None
    if isinstance(seeds, str):
        return parse_seed_list(seeds)
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    out = []
    for s in seeds:  # type: ignore[union-attr]
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"seeds: expected integers >= 0 (or a string such as '0-4'), got {s!r}")
        out.append(s)
    if not out:
        raise ValueError("seeds: empty; give at least one seed, or None for the config's seed")
    return sorted(set(out))


def experiment_trials(config_file: PathLike, name: str, overrides: Optional[Mapping[str, Any]] = None,
                      seeds: Optional[Iterable[int]] = None) -> list[TrialSpec]:
    """The trials of experiment ``name`` of ``config_file``: one per seed (default: the config's
    ``seed``), each with its resolved Config and its results folder (the experiment's name, or
    ``name+key=value...`` when ``overrides`` change its configuration, as ``--set`` does)."""
    from sparse_nte.config import load_config
    from sparse_nte.identity import folder_name, variant
    from sparse_nte.sweep import TrialSpec

    overrides = dict(overrides or {})
    cfg = load_config(config_file, name, overrides)
    changed = variant(load_config(config_file, name), cfg)
    folder = folder_name(name, changed)
    trials = []
    for seed in seeds or [cfg.seed]:
        one = cfg if seed == cfg.seed else load_config(config_file, name, {**overrides, "seed": seed})
        trials.append(TrialSpec(one, folder, changed))
    return trials


def _config_trials(config: Union[Config, Mapping[str, Any]], overrides: Mapping[str, Any],
                   seeds: Optional[list[int]]) -> list[TrialSpec]:
    """Trials of a Config (or a plain config dict, e.g. a results file's ``config``), written to
    the folder of its ``name``."""
    from sparse_nte.config import config_from_dict
    from sparse_nte.sweep import TrialSpec

    base = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    if not base.get("name"):
        raise ValueError("run_experiment: the config has no 'name'; it names the results folder")
    cfg = config_from_dict({**base, **overrides})
    return [TrialSpec(cfg if s == cfg.seed else config_from_dict({**cfg.to_dict(), "seed": s}), cfg.name)
            for s in (seeds or [cfg.seed])]


def run_experiment(name_or_config: Union[str, Config, Mapping[str, Any]], *,
                   seeds: Union[None, int, str, Iterable[int]] = None,
                   overrides: Optional[Mapping[str, Any]] = None,
                   results_dir: PathLike = "results",
                   config_file: Optional[PathLike] = None,
                   device: str = "cpu",
                   workers: int = 1,
                   threads: Optional[int] = None,
                   overwrite: bool = False,
                   resume: bool = True,
                   progress: bool = False) -> list[dict[str, Any]]:
    """Run an experiment for one or more seeds and return its results, one dict per seed.

    Args:
        name_or_config: an experiment's name (a section of ``config_file``), or a resolved
            :class:`~sparse_nte.config.Config` / plain config dict (e.g. ``result["config"]``),
            which runs as is and writes to the folder of its ``name``.
        seeds: an int, integers, or a string like the command line's (``"0-4"``, ``"0,3,7"``);
            default: the config's ``seed``.
        overrides: key -> value (typed, or text as after ``--set``), validated like the file. With
            a name, a run whose overrides change the experiment writes to its own variant folder
            (``<name>+key=value...``), as ``--set`` does.
        results_dir: where ``<folder>/seed<k>.pkl`` (and checkpoints, logs) are written.
        config_file: the experiment file; default ``./exps/exps_params.cfg`` or the installed one
            (:func:`default_config_file`). Ignored when a config is given.
        device: torch device of the trials (``"cpu"``, ``"cuda:0"``, ...).
        workers: parallel local processes (1: in this process).
        threads: torch threads per trial (default: torch's; with workers, cores / workers).
        overwrite: run again trials whose results exist (default: return them as they are).
        resume: continue interrupted trials from their checkpoints (default).
        progress: draw progress bars on stderr.

    Returns:
        The result dicts in seed order (plain data: ``config``, ``acc_matrix``, ``metrics``,
        ``stats``, ``status`` ``"done"`` or ``"diverged"``, ...), including those of trials that
        had already finished (skipped, as on the command line).

    Raises:
        sparse_nte.config.ConfigError: an unknown experiment, key or value (before anything runs).
        ValueError: bad ``seeds``, or a config without a name.
        sparse_nte.errors.TrialError: a trial failed (the others still ran and are on disk); the
            message names every failure and its log.
    """
    from sparse_nte import sweep
    from sparse_nte.errors import TrialError
    from sparse_nte.results import load_result, result_path

    seed_list = _seed_list(seeds)
    if workers < 1:
        raise ValueError(f"workers: must be >= 1, got {workers}")
    if isinstance(name_or_config, str):
        path = Path(config_file) if config_file is not None else default_config_file()
        trials = experiment_trials(path, name_or_config, overrides, seed_list)
    else:
        trials = _config_trials(name_or_config, dict(overrides or {}), seed_list)
    options = sweep.TrialOptions(results_dir=str(results_dir), device=device, overwrite=overwrite,
                                 resume=resume, progress=progress, threads=threads)
    outcomes = (sweep.run_local(trials, options, workers=workers) if workers > 1
                else sweep.run_inline(trials, options))
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise TrialError("; ".join(f"{o.folder} seed {o.seed} failed: {o.error}" for o in failed))
    return [load_result(result_path(results_dir, o.folder, o.seed)) for o in outcomes]
