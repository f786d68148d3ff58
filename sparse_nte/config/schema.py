"""The schema: :class:`Config`, one frozen dataclass field per key, and :data:`SCHEMA`, the same
table as :class:`~sparse_nte.config.fields.KeySpec` records (key -> type, default, allowed values,
meaning, group).

The keys are declared by group in :mod:`sparse_nte.config.groups`; :class:`Config` inherits
every group's dataclass, so a key is written once, with its type, default and range, and a
builder that reads ``config.lr`` is checked by the type checker (``config.lrr`` is an error).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, get_type_hints

from sparse_nte.config.fields import KeySpec
from sparse_nte.config.groups import GROUPS
from sparse_nte.config.groups.adaptation import AdaptationKeys
from sparse_nte.config.groups.connectivity import ConnectivityKeys
from sparse_nte.config.groups.dale import DaleKeys
from sparse_nte.config.groups.data import DataKeys
from sparse_nte.config.groups.kwta import KWTAKeys
from sparse_nte.config.groups.local_rules import LocalRuleKeys
from sparse_nte.config.groups.model import ModelKeys
from sparse_nte.config.groups.ntk import NTKKeys
from sparse_nte.config.groups.nte import NTEKeys
from sparse_nte.config.groups.plasticity import PlasticityKeys
from sparse_nte.config.groups.rule import RuleKeys
from sparse_nte.config.groups.run import RunKeys
from sparse_nte.config.groups.selection import SelectionKeys
from sparse_nte.config.groups.strategy import StrategyKeys
from sparse_nte.config.groups.training import TrainingKeys
from sparse_nte.config.values import did_you_mean

__all__ = ["Config", "SCHEMA", "ALIASES", "DEFAULT_SECTION"]

DEFAULT_SECTION = "DEFAULT"

#: Old spellings accepted as keys: alias -> canonical key. ``percent_on`` is the original project's
#: single k-WTA fraction (its first DEFAULT section); it sets ``percent_on_fc``.
ALIASES: Mapping[str, str] = {"percent_on": "percent_on_fc"}


@dataclass(frozen=True)
class _Name:
    name: str = ""


# Bases in reverse schema order: a dataclass lists the fields of its bases from the last base
# of the MRO to the first, so ``name`` comes first and the run keys next.
@dataclass(frozen=True)
class Config(AdaptationKeys, NTKKeys, SelectionKeys, StrategyKeys, PlasticityKeys, DaleKeys,
             LocalRuleKeys, NTEKeys, TrainingKeys, RuleKeys, ModelKeys, ConnectivityKeys, KWTAKeys,
             DataKeys, RunKeys, _Name, Mapping):
    """A resolved, validated experiment configuration (immutable).

    Read values as attributes (``cfg.lr``); builders do only that. The mapping interface
    (``cfg["lr"]``, iteration in schema order) serves generic code (printing, comparing, JSON).
    :meth:`to_dict` gives a plain dict of builtins (what results pickles store). Build one with
    :func:`~sparse_nte.config.load_config` or :func:`~sparse_nte.config.config_from_dict`;
    constructing it directly skips validation.

    ``name`` is the experiment's section name; it is not a key of the file, so it is not in
    :data:`SCHEMA`, but it is part of :meth:`to_dict`.
    """

    def __getitem__(self, key: str) -> Any:
        if key != "name" and key not in SCHEMA:
            raise KeyError(f"{key!r} is not a config key{did_you_mean(key, SCHEMA)}")
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        yield "name"
        yield from SCHEMA

    def __len__(self) -> int:
        return 1 + len(SCHEMA)

    def to_dict(self) -> dict[str, Any]:
        """``name`` and every key, as a plain ``dict`` of ``str``/``int``/``float``/``bool``
        (schema order): what results files store."""
        return {"name": self.name, **{k: getattr(self, k) for k in SCHEMA}}


def _build_schema() -> dict[str, KeySpec]:
    hints = get_type_hints(Config)
    out: dict[str, KeySpec] = {}
    for group in GROUPS:
        for f in dataclasses.fields(group.KEYS):
            m = f.metadata
            out[f.name] = KeySpec(name=f.name, type=hints[f.name], default=f.default, doc=m["doc"],
                                  group=group.TITLE, choices=m["choices"], interval=m["interval"],
                                  kind=m["kind"], value_aliases=m["value_aliases"],
                                  derived=m["derived"], multi=m["multi"],
                                  affects_results=m["affects_results"])
    order = [f.name for f in dataclasses.fields(Config) if f.name != "name"]
    if order != list(out):  # the bases of Config and GROUPS must list the groups in one order
        raise RuntimeError(f"Config's bases and config.groups.GROUPS disagree on the key order: "
                           f"{order[:3]}... vs {list(out)[:3]}...")
    return out


#: The schema: key -> KeySpec, in schema order (run keys first, then benchmark ... plasticity).
SCHEMA: Mapping[str, KeySpec] = _build_schema()
