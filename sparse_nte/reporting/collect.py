"""Reading a study's results: one record per trial, with what became of it.

A trial is one (experiment, seed); its result is ``<results>/<folder>/seed<k>.pkl``
(:mod:`sparse_nte.results`). Its record's ``status``:

- ``done``: the result exists, was produced by the trial's configuration and finished;
- ``diverged``: the result exists with status ``diverged`` (its metrics are NaN; the reason is
  in ``result["diverged"]``);
- ``failed``: no result, and the last attempt in the trial's log ended with a traceback (its last
  line is the note);
- ``interrupted``: no result but a checkpoint, or a log without a traceback (running, or killed);
- ``not run``: nothing on disk;
- ``unreadable``: the result file cannot be read (the note says why);
- ``other configuration``: the file holds the result of another configuration (the note names
  the keys that differ); it is never pooled with the study's.

Only ``done`` trials enter means and standard deviations; every other status is shown as such.
Works on plain result dicts (no torch needed).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from sparse_nte.errors import ResultsError
from sparse_nte.identity import describe_differences, differences
from sparse_nte.results import checkpoint_path, load_result, log_path, result_path

__all__ = ["TrialRecord", "ExperimentRecords", "StudyResults", "STATUSES", "read_trial",
           "collect_study", "collect_folders", "seeds_on_disk"]

#: Every status a trial record can have, in the order the report lists them.
STATUSES = ("done", "diverged", "failed", "interrupted", "not run", "unreadable",
            "other configuration")
_SEED_FILE = re.compile(r"seed(\d+)\.pkl")


@dataclass
class TrialRecord:
    """One trial of a study and what became of it (see the module docstring)."""

    experiment: str
    folder: str
    seed: int
    status: str
    result: Optional[dict] = None
    note: str = ""

    @property
    def metrics(self) -> dict:
        """The result's scalar metrics (empty without a result)."""
        if self.result is None:
            return {}
        out = {k: float(v) for k, v in self.result.get("metrics", {}).items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if "learning_acc" not in out and self.status == "done":
            # results written before learning accuracy was stored: the mean of R[j, j]
            diag = np.diag(np.asarray(self.result["acc_matrix"], dtype=np.float64))
            if diag.size and not np.isnan(diag).any():
                out["learning_acc"] = float(diag.mean())
        return out


@dataclass
class ExperimentRecords:
    """The trials of one experiment of a study, with the configuration they were asked for
    (``config``: a plain dict) and the overrides that make its folder a variant."""

    experiment: str
    folder: str
    config: dict
    variant: dict = field(default_factory=dict)
    trials: List[TrialRecord] = field(default_factory=list)

    def done(self) -> List[TrialRecord]:
        return [t for t in self.trials if t.status == "done"]

    def with_result(self) -> List[TrialRecord]:
        """Trials whose result belongs to this configuration: done and diverged ones."""
        return [t for t in self.trials if t.status in ("done", "diverged")]

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)


@dataclass
class StudyResults:
    """Everything a report shows: the study, its experiments' records, how to reproduce it."""

    name: str
    question: str
    file: str
    results_dir: str
    experiments: List[ExperimentRecords]
    commands: List[str] = field(default_factory=list)
    overrides: dict = field(default_factory=dict)
    named: bool = True
    problems: List[str] = field(default_factory=list)

    def all_trials(self) -> List[TrialRecord]:
        return [t for e in self.experiments for t in e.trials]


def _last_attempt(log: Path) -> tuple[bool, str]:
    """(did the last attempt in the log end with a traceback?, its last non-empty line)."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return False, ""
    starts = [m.start() for m in re.finditer(r"^\[pid \d+\] starting ", text, flags=re.M)]
    last = text[starts[-1]:] if starts else text
    lines = [ln.strip() for ln in last.splitlines() if ln.strip()]
    return "Traceback (most recent call last)" in last, (lines[-1] if lines else "")


def read_trial(results_dir: os.PathLike, experiment: str, folder: str, seed: int,
               config: Optional[Mapping[str, Any]]) -> TrialRecord:
    """The record of one trial. ``config`` is the configuration the trial was asked for (a
    stored result of another one gets status ``other configuration``); None accepts any."""
    rec = TrialRecord(experiment, folder, int(seed), "not run")
    path = result_path(results_dir, folder, seed)
    if path.exists():
        try:
            res = load_result(path)
            if "acc_matrix" not in res or "metrics" not in res or "config" not in res:
                raise ResultsError(f"{path} is not a result of this toolkit (no acc_matrix, metrics "
                                   f"or config)")
        except ResultsError as exc:
            rec.status, rec.note = "unreadable", str(exc)
            return rec
        if config is not None:
            diff = differences(res["config"], config)
            if diff:
                rec.status = "other configuration"
                rec.note = (f"{path} holds another configuration ({describe_differences(diff)}); "
                            f"not pooled")
                return rec
        rec.result = res
        if res.get("status", "done") == "diverged":
            d = res.get("diverged", {})
            rec.status = "diverged"
            rec.note = (f"diverged at task {d.get('task', '?')}, epoch {d.get('epoch', '?')}, step "
                        f"{d.get('step', '?')}: {d.get('reason', 'no reason recorded')}")
        else:
            rec.status = "done"
        return rec
    log = log_path(results_dir, folder, seed)
    if checkpoint_path(results_dir, folder, seed).exists():
        rec.status = "interrupted"
        rec.note = "a checkpoint exists: running the same command resumes the trial"
    elif log.exists():
        failed, last = _last_attempt(log)
        rec.status = "failed" if failed else "interrupted"
        rec.note = (f"{last} (log: {log})" if failed else
                    f"no result; the log ends with {last!r} (log: {log})")
    return rec


def seeds_on_disk(results_dir: os.PathLike, folder: str) -> list[int]:
    """Seeds of the result files in ``<results_dir>/<folder>`` (sorted)."""
    d = Path(results_dir) / folder
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _SEED_FILE.fullmatch(p.name)))


def collect_study(results_dir: os.PathLike, study: Any) -> StudyResults:
    """The records of every trial of ``study`` (a :class:`sparse_nte.study.Study`)."""
    experiments = []
    for e in study.experiments:
        folder = study.folders[e]
        config = study.configs[e].to_dict()
        seeds = [t.seed for t in study.trials if t.name == e]
        if study.discover_seeds:
            seeds = sorted(set(seeds) | set(seeds_on_disk(results_dir, folder)))
        recs = ExperimentRecords(e, folder, config, dict(study.variants[e]))
        recs.trials = [read_trial(results_dir, e, folder, s, config) for s in seeds]
        experiments.append(recs)
    return StudyResults(name=study.name, question=study.question, file=study.file,
                        results_dir=str(results_dir), experiments=experiments,
                        commands=study.commands(), overrides=dict(study.overrides),
                        named=study.named)


def collect_folders(results_dir: os.PathLike, folders: Sequence[str]) -> StudyResults:
    """Every result in the given folders, without an experiment file (``--summary EXP...``):
    the results of one folder are split by configuration, like
    :func:`sparse_nte.report.group_by_config`; each configuration is one experiment entry
    (``"<folder> (configuration k of n)"`` when there are several), never pooled."""
    experiments: List[ExperimentRecords] = []
    problems: List[str] = []
    for folder in folders:
        groups: List[ExperimentRecords] = []
        unreadable: List[TrialRecord] = []
        for seed in seeds_on_disk(results_dir, folder):
            rec = read_trial(results_dir, folder, folder, seed, None)
            if rec.result is None:
                unreadable.append(rec)
                problems.append(f"{folder} seed {seed}: {rec.note}")
                continue
            for g in groups:
                if not differences(g.config, rec.result["config"]):
                    g.trials.append(rec)
                    break
            else:
                groups.append(ExperimentRecords(folder, folder, dict(rec.result["config"]),
                                                trials=[rec]))
        if not groups:
            groups.append(ExperimentRecords(folder, folder, {}, trials=[]))
            problems.append(f"{folder}: no results in {Path(results_dir) / folder}")
        groups[0].trials.extend(unreadable)
        for k, g in enumerate(groups):
            if len(groups) > 1:
                g.experiment = f"{folder} (configuration {k + 1} of {len(groups)})"
                for t in g.trials:
                    t.experiment = g.experiment
                if k:
                    diff = differences(groups[0].config, g.config)
                    problems.append(f"{g.experiment}: differs from configuration 1 in "
                                    f"{describe_differences(diff)}; not pooled")
        experiments.extend(groups)
    return StudyResults(name="summary", question="", file="", results_dir=str(results_dir),
                        experiments=experiments, named=False, problems=problems)
