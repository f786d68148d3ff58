"""The experiment file: INI, read with :mod:`configparser`.

A ``[DEFAULT]`` section holds values shared by every experiment; every other section is one
named experiment (or a study, ``[study:NAME]``, see :mod:`sparse_nte.config.studies`). The keys
of the original sparse-dynamic-synapses project (``benchmark``, ``mnist_mode``, ``num_batch``,
``cumul``, ``sparsify``, ``percent_on_fc``, ..., ``record_stats``) keep their meaning.
"""
from __future__ import annotations

import configparser
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Union

from sparse_nte.config.resolve import Layer, Origin, resolve
from sparse_nte.config.schema import ALIASES, DEFAULT_SECTION, SCHEMA, Config
from sparse_nte.config.values import did_you_mean, parse_value
from sparse_nte.errors import ConfigError

__all__ = ["load_config", "load_experiments", "list_experiments", "config_from_dict",
           "parse_override", "parse_overrides", "read_sections", "STUDY_PREFIX"]

PathLike = Union[str, "os.PathLike[str]"]

#: Sections named ``[study:NAME]`` define studies, not experiments.
STUDY_PREFIX = "study:"

_NO_DEFAULT = "\x00sparse_nte: [DEFAULT] is read as a plain section\x00"


def _read(path: PathLike) -> tuple[configparser.ConfigParser, dict[str, dict[str, str]]]:
    """Parse the INI file; returns the parser and ``{section: {key: text}}`` in file order, DEFAULT
    included as a plain section (inheritance is done here, not by configparser)."""
    parser = configparser.ConfigParser(interpolation=None, default_section=_NO_DEFAULT, strict=True,
                                       inline_comment_prefixes=("#",), empty_lines_in_values=False)
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=str(path))
    except OSError as exc:
        raise ConfigError(f"cannot read the config file: {exc.strerror or exc}", file=path) from None
    except configparser.DuplicateSectionError as exc:
        raise ConfigError(f"section [{exc.section}] appears twice (line {exc.lineno})", file=path) from None
    except configparser.DuplicateOptionError as exc:
        raise ConfigError(f"key {exc.option} appears twice in the section (line {exc.lineno})", file=path,
                          section=exc.section) from None
    except configparser.MissingSectionHeaderError as exc:
        raise ConfigError(f"line {exc.lineno} comes before any [section] header: {exc.line.strip()!r}",
                          file=path) from None
    except configparser.ParsingError as exc:
        lines = ", ".join(f"line {n}: {text.strip()!r}" for n, text in exc.errors[:3])
        raise ConfigError(f"not INI syntax ({lines}); write key = value under a [section]",
                          file=path) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text ({exc.reason})", file=path) from None
    sections = {name: dict(parser.items(name)) for name in parser.sections()}
    return parser, sections


def read_sections(path: PathLike) -> dict[str, dict[str, str]]:
    """``{section: {key: text}}`` of the file in file order, ``[DEFAULT]`` included as a plain
    section. Raises ConfigError for a file that cannot be read or is not INI."""
    return _read(path)[1]


def _is_experiment(section: str) -> bool:
    return section != DEFAULT_SECTION and not section.startswith(STUDY_PREFIX)


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _check_name(name: str, file: Optional[PathLike]) -> None:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise ConfigError(f"experiment name {name!r} must be letters, digits, '_', '-' or '.' (not "
                          f"starting with '_', '-' or '.'): it names the results folder",
                          file=file, section=name if isinstance(name, str) else None)


def _experiment_layers(sections: Mapping[str, Mapping[str, str]], name: str, path: PathLike,
                       overrides: Optional[Mapping[str, Any]],
                       study: Optional[tuple[str, Mapping[str, Any]]] = None) -> list[Layer]:
    """The layers of experiment ``name``, general to specific: [DEFAULT], [name], the study's
    shared overrides (``[study:NAME]``, when given), --set."""
    if name != DEFAULT_SECTION and (name not in sections or not _is_experiment(name)):
        named = [s for s in sections if _is_experiment(s)]
        raise ConfigError(f"no experiment named {name!r}{did_you_mean(name, named)}; "
                          f"run_exps.py --list shows the {len(named)} experiments", file=path)
    _check_name(name, path)
    layers = []
    if DEFAULT_SECTION in sections:
        layers.append(Layer(sections[DEFAULT_SECTION], Origin(section=DEFAULT_SECTION)))
    if name != DEFAULT_SECTION:
        layers.append(Layer(sections[name], Origin(section=name, explicit=True)))
    if study is not None and study[1]:
        layers.append(Layer(dict(study[1]), Origin(section=study[0], explicit=True)))
    if overrides:
        layers.append(Layer(dict(overrides), Origin(flag="--set", explicit=True)))
    return layers


def load_config(path: PathLike, name: str, overrides: Optional[Mapping[str, Any]] = None, *,
                study: Optional[tuple[str, Mapping[str, Any]]] = None) -> Config:
    """Resolve and validate experiment ``name`` of the INI file ``path``.

    ``overrides`` (key -> text or typed value, e.g. from :func:`parse_overrides`) win over the
    file; their errors name the ``--set`` flag. ``study = (section, values)`` inserts a study's
    shared overrides between the experiment's section and ``overrides``; their errors name that
    section (see :mod:`sparse_nte.config.studies`). ``name = "DEFAULT"`` resolves the shared
    section alone. Raises :class:`ConfigError`.
    """
    _, sections = _read(path)
    return resolve(_experiment_layers(sections, name, path, overrides, study), str(path), name)


def load_experiments(path: PathLike) -> dict[str, Config]:
    """Resolve and validate every named experiment of ``path`` (file order; ``[DEFAULT]`` is not
    an experiment). Raises :class:`ConfigError` at the first invalid one."""
    _, sections = _read(path)
    return {name: resolve(_experiment_layers(sections, name, path, None), str(path), name)
            for name in sections if _is_experiment(name)}


def list_experiments(path: PathLike) -> list[tuple[str, str]]:
    """``(name, description)`` of every named experiment in file order, for ``run_exps.py --list``.

    Only the descriptions are validated (one line), so a broken section does not hide the list.
    """
    _, sections = _read(path)
    default_desc = sections.get(DEFAULT_SECTION, {}).get("description", "")
    out = []
    spec = SCHEMA["description"]
    for name, values in sections.items():
        if not _is_experiment(name):
            continue
        raw = values.get("description", default_desc)
        try:
            out.append((name, parse_value(spec, raw)))
        except ValueError as exc:
            section = name if "description" in values else DEFAULT_SECTION
            raise ConfigError(str(exc), file=path, section=section, key="description") from None
    return out


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """Validate a mapping of key -> value (text or typed) as one complete experiment.

    Missing keys take their schema defaults; an entry ``name`` names the experiment (default
    ``""``). The values count as shared (like ``[DEFAULT]``), so keys of disabled features are
    accepted. ``config_from_dict(cfg.to_dict()) == cfg`` for every resolved ``cfg``: a results
    file's config can be validated and rerun. Raises :class:`ConfigError`.
    """
    values = dict(values)
    name = values.pop("name", "")
    if name != "":
        _check_name(name, None)
    return resolve([Layer(values, Origin(section="<mapping>"))], None, name)


def parse_override(text: str) -> tuple[str, str]:
    """Split one ``--set key=value`` argument into ``(key, value)`` (key lower-cased, both stripped;
    the value may contain ``=``). The key is checked against the schema, with a did-you-mean."""
    if "=" not in text:
        raise ConfigError(f"expected key=value, got {text!r}", flag="--set")
    key, value = text.split("=", 1)
    key = key.strip().lower()
    if not key:
        raise ConfigError(f"missing key before '=' in {text!r}", flag="--set")
    if ALIASES.get(key, key) not in SCHEMA:
        hint = did_you_mean(key, list(SCHEMA) + list(ALIASES))
        hint = hint or " (sparse_nte.config.schema_markdown() lists the valid keys)"
        raise ConfigError(f"unknown key{hint}", flag="--set", key=key)
    return key, value.strip()


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """Parse repeated ``--set`` arguments; a key (or its alias) given twice is an error."""
    out: dict[str, str] = {}
    canon: dict[str, str] = {}
    for item in items:
        key, value = parse_override(item)
        c = ALIASES.get(key, key)
        if c in canon:
            raise ConfigError(f"given twice (also as {canon[c]}={out[canon[c]]})", flag="--set", key=key)
        canon[c] = key
        out[key] = value
    return out


