"""Experiment configuration: the typed, validated schema of ``exps/exps_params.cfg``.

:class:`Config` is the single source of truth: one frozen dataclass field per key, declared
once, by group, in :mod:`sparse_nte.config.groups` (type, default, allowed values, one-line
description; choices come from the components' registries). :data:`SCHEMA` is the same table as
:class:`KeySpec` records; :func:`schema_markdown` renders it for the docs.

Modules: ``fields`` (how a key is declared), ``groups`` (the keys and their rules), ``schema``
(Config, SCHEMA), ``values`` (text -> typed values), ``resolve`` (layers -> derived -> checked
Config), ``ini`` (the experiment file), ``studies`` (``[study:NAME]`` sections), ``docs``.

Resolution of one experiment, most specific last (a later layer overrides an earlier one)::

    schema defaults  <  [DEFAULT]  <  [<name>]  <  overrides (run_exps.py --set key=value)

Every problem is reported at once, one line each, as a :class:`ConfigError` naming the file,
section (or ``--set``) and key (see :mod:`sparse_nte.config.resolve`).
"""
from sparse_nte.config.docs import schema_markdown
from sparse_nte.config.fields import KeySpec
from sparse_nte.config.ini import (config_from_dict, list_experiments, load_config, load_experiments,
                                   parse_override, parse_overrides, read_sections)
from sparse_nte.config.schema import ALIASES, DEFAULT_SECTION, SCHEMA, Config
from sparse_nte.config.values import check_typed
from sparse_nte.errors import ConfigError

__all__ = [
    "Config",
    "ConfigError",
    "KeySpec",
    "SCHEMA",
    "ALIASES",
    "DEFAULT_SECTION",
    "load_config",
    "load_experiments",
    "list_experiments",
    "config_from_dict",
    "parse_override",
    "parse_overrides",
    "read_sections",
    "schema_markdown",
    "check_key",
]


def check_key(name: str, value: object) -> None:
    """Raise ValueError unless ``value`` is a valid typed value of config key ``name`` (for
    components that accept plain mappings from Python users)."""
    if name not in SCHEMA:
        raise ValueError(f"{name!r} is not a config key")
    check_typed(SCHEMA[name], value)
