"""A study: a named group of experiments x seeds, resolved into trials, and its results collected.

A study is what a lab publishes: a comparison across experiments and seeds. It is either named
in the experiment file (``[study:NAME]``, parsed by :mod:`sparse_nte.config.studies`) or made on
the fly from ``run_exps.py --report --name A --name B`` (:func:`adhoc_study`).

Trials of a study. For each experiment ``e`` of the study and each seed ``s``::

    config(e, s) = schema < [DEFAULT] < [e] < [study:NAME] overrides < --set < seed = s
    folder(e)    = identity.folder_name(e, identity.variant(config of [e] as the file defines it,
                                                          config(e, s)))

so a study's shared overrides give variant folders exactly as ``--set`` does
(``quickstart+num_batch=3+...``), and the same trial asked for by a study or by
``--name e --set ...`` is the same result file. Seeds: ``--seeds`` if given, else the study's
``seeds``, else each experiment's own ``seed``. An ad-hoc report without ``--seeds`` reports every
seed found on disk for its folders (:attr:`Study.discover_seeds`).

Results are read by :func:`collect` (see :mod:`sparse_nte.reporting.collect`): a stored result is
used only if its configuration is the trial's (:func:`sparse_nte.identity.differences`); any
other is shown as such and never pooled.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from sparse_nte.config import Config, load_config
from sparse_nte.config.studies import StudySpec, load_study, study_config
from sparse_nte.identity import folder_name, variant
from sparse_nte.sweep import TrialSpec

__all__ = ["Study", "resolve_study", "adhoc_study", "adhoc_name", "collect", "seeds_text"]

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class Study:
    """A resolved study.

    ``trials`` are in experiment order, then seed order. ``configs[e]`` is experiment ``e``'s
    resolved Config (at its first seed), ``folders[e]`` its results folder and ``variants[e]`` the
    identity keys the study's overrides and ``--set`` change with respect to the file's
    ``[e]`` (what the folder name spells). ``overrides`` are the study's shared overrides,
    ``cli_overrides`` the ``--set`` values."""

    name: str
    file: str
    question: str
    experiments: tuple[str, ...]
    trials: tuple[TrialSpec, ...]
    configs: Mapping[str, Config]
    folders: Mapping[str, str]
    variants: Mapping[str, Mapping[str, Any]]
    overrides: Mapping[str, str] = field(default_factory=dict)
    cli_overrides: Mapping[str, str] = field(default_factory=dict)
    seeds: Optional[tuple[int, ...]] = None
    seeds_from_cli: bool = False
    named: bool = True
    discover_seeds: bool = False

    def commands(self) -> list[str]:
        """Commands that run exactly these trials: the study's own (for a named study), then one
        ``--name`` command per experiment with every override spelled out."""
        cfg = ["--config", self.file]
        sets = [f"--set {shlex.quote(f'{k}={v}')}" for k, v in self.cli_overrides.items()]
        seeds = [f"--seeds {seeds_text(self.seeds)}"] if self.seeds_from_cli and self.seeds else []
        out = []
        if self.named:
            out.append(" ".join(["python run_exps.py", "--study", shlex.quote(self.name),
                                 *map(shlex.quote, cfg), *sets, *seeds]))
        for e in self.experiments:
            merged = {**self.overrides, **self.cli_overrides}
            flags = [f"--set {shlex.quote(f'{k}={v}')}" for k, v in merged.items()]
            exp_seeds = sorted({t.seed for t in self.trials if t.name == e})
            sd = [f"--seeds {seeds_text(exp_seeds)}"] if exp_seeds else []
            out.append(" ".join(["python run_exps.py", "--name", shlex.quote(e), *map(shlex.quote, cfg),
                                 *flags, *sd]))
        return out


def seeds_text(seeds: Sequence[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"`` (what ``--seeds`` and a study's ``seeds`` accept)."""
    seeds = sorted(set(int(s) for s in seeds))
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(str(seeds[i]) if j == i else f"{seeds[i]}-{seeds[j]}")
        i = j + 1
    return ",".join(parts)


def _trials(file: str, experiments: Sequence[str], resolve_one: Callable[[str, Optional[int]], Config],
            seeds: Optional[Sequence[int]]):
    """Resolve every (experiment, seed): ``resolve_one(e, seed or None)`` -> Config."""
    trials, configs, folders, variants = [], {}, {}, {}
    for e in experiments:
        cfg = resolve_one(e, None)
        diff = variant(load_config(file, e), cfg)
        folders[e], variants[e] = folder_name(e, diff), diff
        mine = [TrialSpec(cfg if s == cfg.seed else resolve_one(e, s), folders[e])
                for s in (seeds or [cfg.seed])]
        configs[e] = mine[0].config
        trials.extend(mine)
    return tuple(trials), configs, folders, variants


def resolve_study(path: PathLike, name: str, overrides: Optional[Mapping[str, Any]] = None,
                  seeds: Optional[Sequence[int]] = None, spec: Optional[StudySpec] = None) -> Study:
    """The trials of study ``[study:<name>]`` of ``path``. ``overrides`` (``--set``) win over the
    study's; ``seeds`` (``--seeds``) replace the study's. Raises ConfigError."""
    spec = spec or load_study(path, name)
    chosen = tuple(seeds) if seeds else spec.seeds
    cli = dict(overrides or {})
    trials, configs, folders, variants = _trials(
        spec.file, spec.experiments, lambda e, s: study_config(spec, e, cli, s), chosen)
    return Study(name=spec.name, file=spec.file, question=spec.question, experiments=spec.experiments,
                 trials=trials, configs=configs, folders=folders, variants=variants,
                 overrides=dict(spec.overrides), cli_overrides=cli, seeds=chosen,
                 seeds_from_cli=bool(seeds))


def adhoc_name(experiments: Sequence[str]) -> str:
    """``report-<a>-<b>...``: the name of an ad-hoc report (the stem of its HTML file)."""
    joined = "-".join(experiments)
    if len(joined) > 80:
        joined = f"{'-'.join(experiments[:3])}-and-{len(experiments) - 3}-more"
    return f"report-{joined}"


def adhoc_study(path: PathLike, experiments: Sequence[str], overrides: Optional[Mapping[str, Any]] = None,
                seeds: Optional[Sequence[int]] = None) -> Study:
    """A study made of experiments named on the command line (``--report --name A --name B``),
    resolved as ``--name`` resolves them. Without ``seeds`` it reports every seed found on disk."""
    experiments = tuple(dict.fromkeys(experiments))
    cli = dict(overrides or {})
    def resolve_one(e: str, s: Optional[int]) -> Config:
        return load_config(path, e, cli if s is None else {**cli, "seed": str(s)})

    trials, configs, folders, variants = _trials(str(path), experiments, resolve_one,
                                                 tuple(seeds) if seeds else None)
    return Study(name=adhoc_name(experiments), file=str(path), question="", experiments=experiments,
                 trials=trials, configs=configs, folders=folders, variants=variants,
                 cli_overrides=cli, seeds=tuple(seeds) if seeds else None, seeds_from_cli=bool(seeds),
                 named=False, discover_seeds=not seeds)


def collect(results_dir: PathLike, study: Study):
    """The study's results as :class:`sparse_nte.reporting.collect.StudyResults`: one record per
    trial (done, diverged, failed, interrupted, not run, unreadable, or another configuration's)."""
    from sparse_nte.reporting.collect import collect_study

    return collect_study(results_dir, study)
