"""Studies: named groups of experiments, written as ``[study:NAME]`` sections of the experiment file.

A lab publishes a comparison across experiments and seeds, not one trial. A study names that
comparison once, in the same file as the experiments::

    [study:smoke]
    question    = Does k-WTA forget less than a dense ReLU layer? (seconds, for trying the tools)
    experiments = quickstart, quickstart_dense
    seeds       = 0-1
    num_batch   = 3          # any other key is a config override shared by every experiment
    train_subset = 1000

Keys of a study section:

``experiments``  (required) comma-separated experiment names (sections of the same file), each
                 once, in the order the report shows them;
``seeds``        seeds to run, as ``run_exps.py --seeds``: ``0-4``, ``0,3,7`` or a mix
                 (default: each experiment's own ``seed``);
``question``     one line: what the study asks (the report's headline);
any config key   an override applied to every experiment of the study, exactly like
                 ``run_exps.py --set key=value``: it is validated like the file (type, range,
                 relations, "no silent no-ops") and a study override that changes an experiment's
                 configuration puts its results in a variant folder (:mod:`sparse_nte.identity`).

Resolution of one experiment inside a study, most specific last::

    schema defaults  <  [DEFAULT]  <  [<experiment>]  <  [study:NAME] overrides  <  --set

Every problem is a :class:`~sparse_nte.errors.ConfigError` naming the file, the ``[study:NAME]``
section and the key: unknown experiments (with a did-you-mean), bad seeds, unknown keys, values
of the wrong type, and overrides that are invalid for one of the experiments (named in the
message). A study may not share its name with an experiment: both name a folder of the results
directory.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional, Union

from sparse_nte.config.ini import STUDY_PREFIX, load_config, read_sections
from sparse_nte.config.schema import ALIASES, DEFAULT_SECTION, SCHEMA, Config
from sparse_nte.config.values import did_you_mean, parse_value
from sparse_nte.errors import ConfigError

__all__ = ["StudySpec", "STUDY_KEYS", "MAX_SEED", "parse_seed_list", "read_studies", "load_study",
           "list_studies", "study_config"]

PathLike = Union[str, "os.PathLike[str]"]

#: The keys of a study section that are not config overrides.
STUDY_KEYS = ("experiments", "seeds", "question")
#: Largest seed (numpy's legacy seeding takes 32-bit seeds).
MAX_SEED = 2**32 - 1
#: Config keys a study may not override, and why.
_NOT_OVERRIDABLE = {
    "seed": "a study's seeds are its 'seeds' key (e.g. seeds = 0-4), not the config key seed",
    "description": "descriptions belong to the experiments; a study has 'question'",
}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class StudySpec:
    """A ``[study:NAME]`` section, parsed and checked (experiments exist, seeds parse, override
    keys and values are valid config values; relations are checked by :func:`study_config`).

    ``overrides`` maps config keys (as written, lower case) to their text; ``seeds`` is None
    when the study leaves each experiment's own ``seed``."""

    name: str
    file: str
    experiments: tuple[str, ...]
    seeds: Optional[tuple[int, ...]] = None
    question: str = ""
    overrides: Mapping[str, str] = field(default_factory=dict)

    @property
    def section(self) -> str:
        """``"study:NAME"``: the section header, as error messages name it."""
        return STUDY_PREFIX + self.name


#: More seeds than this at once is a typo (``0-100000``), not a study.
MAX_SEEDS = 10_000


def parse_seed_list(text: str) -> list[int]:
    """``"0,1,2"``, ``"0-4"`` or a mix (``"0-2,7"``) -> sorted unique seeds in ``0..MAX_SEED``, at
    most :data:`MAX_SEEDS` of them (bounds are checked before a range is expanded, so a typo such
    as ``0-99999999999`` is an error, not an exhausted memory).

    Raises ValueError saying what was wrong (the caller adds where)."""
    ranges = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        try:
            if "-" in part[1:]:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
            else:
                lo = hi = int(part)
        except ValueError:
            raise ValueError(f"expected integers like 0,1,2 or a range 0-4, got {text!r}") from None
        if lo < 0 or hi > MAX_SEED:
            raise ValueError(f"seeds must lie in 0..{MAX_SEED}, got {text!r}")
        ranges.append((lo, hi))
    if not ranges:
        raise ValueError(f"give at least one non-negative seed, got {text!r}")
    if sum(hi - lo + 1 for lo, hi in ranges) > MAX_SEEDS:
        raise ValueError(f"more than {MAX_SEEDS} seeds in one command, got {text!r}")
    return sorted({s for lo, hi in ranges for s in range(lo, hi + 1)})


def _experiment_names(sections: Mapping[str, Mapping[str, str]]) -> list[str]:
    return [s for s in sections if s != DEFAULT_SECTION and not s.startswith(STUDY_PREFIX)]


def _parse_section(path: PathLike, section: str, values: Mapping[str, str],
                   experiments: list[str]) -> tuple[Optional[StudySpec], list[ConfigError]]:
    """One study section -> (spec or None, every problem found)."""
    name = section[len(STUDY_PREFIX):]
    errors: list[ConfigError] = []

    def err(message: str, key: Optional[str] = None) -> None:
        errors.append(ConfigError(message, file=path, section=section, key=key))

    if not _NAME_RE.fullmatch(name):
        err(f"study name {name!r} must be letters, digits, '_', '-' or '.' (not starting with '_', "
            f"'-' or '.'): it names the folder of the study's report")
    clash = [e for e in experiments if e.lower() == name.lower()]
    if clash:
        err(f"the study has the name of experiment [{clash[0]}]; both would write to "
            f"<results>/{name}/, so rename the study (e.g. [study:{name}_study])")
    listed: list[str] = []
    raw = values.get("experiments")
    if raw is None or not raw.strip():
        err("missing: list the experiments it compares, e.g. experiments = "
            + ", ".join(experiments[:2] or ["exp_a", "exp_b"]), key="experiments")
    else:
        for item in (p.strip() for p in raw.split(",")):
            if not item:
                err(f"empty name in {raw!r}; separate names with one comma", key="experiments")
            elif item not in experiments:
                err(f"no experiment named {item!r}{did_you_mean(item, experiments)}; "
                    f"run_exps.py --list shows the {len(experiments)} experiments", key="experiments")
            elif item in listed:
                err(f"{item} is listed twice", key="experiments")
            else:
                listed.append(item)
    seeds: Optional[tuple[int, ...]] = None
    if "seeds" in values:
        try:
            seeds = tuple(parse_seed_list(values["seeds"]))
        except ValueError as exc:
            err(str(exc), key="seeds")
    question = values.get("question", "").strip()
    if "\n" in question:
        err(f"must be one line, got {question!r}", key="question")
    overrides: dict[str, str] = {}
    seen: dict[str, str] = {}
    for key, text in values.items():
        if key in STUDY_KEYS:
            continue
        canonical = ALIASES.get(key, key)
        if canonical in _NOT_OVERRIDABLE:
            err(f"a study cannot override it: {_NOT_OVERRIDABLE[canonical]}", key=key)
            continue
        if canonical == "name":
            err("a study's name is its [study:NAME] header, not a key", key=key)
            continue
        if canonical not in SCHEMA:
            hint = did_you_mean(key, [*STUDY_KEYS, *SCHEMA, *ALIASES])
            err(f"unknown key{hint or ''}; a study section takes experiments, seeds, question and "
                f"config keys (shared overrides)", key=key)
            continue
        if canonical in seen:
            err(f"{key} and {seen[canonical]} are the same key; give only one", key=key)
            continue
        seen[canonical] = key
        try:
            parse_value(SCHEMA[canonical], text)
        except ValueError as exc:
            err(str(exc), key=key)
            continue
        overrides[key] = text
    if errors:
        return None, errors
    return StudySpec(name=name, file=str(path), experiments=tuple(listed), seeds=seeds,
                     question=question, overrides=overrides), []


def read_studies(path: PathLike) -> dict[str, StudySpec]:
    """Every ``[study:NAME]`` section of ``path`` (file order), parsed and checked; one
    ConfigError lists every problem of every study."""
    sections = read_sections(path)
    experiments = _experiment_names(sections)
    out: dict[str, StudySpec] = {}
    errors: list[ConfigError] = []
    for section, values in sections.items():
        if section.startswith(STUDY_PREFIX):
            spec, problems = _parse_section(path, section, values, experiments)
            errors.extend(problems)
            if spec is not None:
                out[spec.name] = spec
    if errors:
        raise ConfigError.combine(errors)
    return out


def load_study(path: PathLike, name: str) -> StudySpec:
    """The study ``[study:<name>]`` of ``path``, checked; a ConfigError names what is wrong (an
    unknown study gets a did-you-mean and the list of studies)."""
    sections = read_sections(path)
    studies = [s[len(STUDY_PREFIX):] for s in sections if s.startswith(STUDY_PREFIX)]
    if name not in studies:
        listing = (f"the file has {len(studies)}: {', '.join(studies)}" if studies
                   else "the file has none; add a [study:NAME] section with experiments = a, b")
        raise ConfigError(f"no study named {name!r}{did_you_mean(name, studies)}; {listing}",
                          file=path)
    spec, problems = _parse_section(path, STUDY_PREFIX + name, sections[STUDY_PREFIX + name],
                                    _experiment_names(sections))
    if problems:
        raise ConfigError.combine(problems)
    assert spec is not None
    return spec


def list_studies(path: PathLike) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(name, question, experiments)`` of every study in file order, for ``run_exps.py --list``
    (not validated beyond splitting the list, so a broken study does not hide the others)."""
    out = []
    for section, values in read_sections(path).items():
        if section.startswith(STUDY_PREFIX):
            names = tuple(p.strip() for p in values.get("experiments", "").split(",") if p.strip())
            out.append((section[len(STUDY_PREFIX):], values.get("question", "").strip(), names))
    return out


def study_config(spec: StudySpec, experiment: str, overrides: Optional[Mapping[str, Any]] = None,
                 seed: Optional[int] = None) -> Config:
    """The resolved Config of ``experiment`` inside study ``spec``: the experiment's file values,
    then the study's overrides, then ``overrides`` (``--set``), then ``seed`` when given.

    A problem caused by the study's overrides is reported at ``[study:NAME] key`` and names the
    experiment for which it is a problem."""
    cli = dict(overrides or {})
    if seed is not None:
        cli["seed"] = str(seed)
    try:
        return load_config(spec.file, experiment, cli, study=(spec.section, spec.overrides))
    except ConfigError as exc:
        fixed = [ConfigError(f"{e.message} (for experiment [{experiment}] of the study)", file=e.file,
                             section=e.section, key=e.key, flag=e.flag)
                 if e.section == spec.section else e for e in exc.errors]
        raise ConfigError.combine(fixed) from None
