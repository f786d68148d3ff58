"""Resolution of one experiment: merge the layers of values, derive, check, build a Config.

Layers, most specific last (a later layer overrides an earlier one)::

    schema defaults  <  [DEFAULT]  <  [<name>]  <  overrides (run_exps.py --set key=value)

then every group derives its dependent values (the only place that fills in values from other
values), then every group checks consistency and what would have no effect. Every problem
found is reported, all at once (one line each), as one :class:`~sparse_nte.errors.ConfigError`
naming the file, section (or the ``--set`` flag) and key: unknown keys (with a did-you-mean),
wrong types, out-of-range values, inconsistent combinations, values that would have no effect.

"Has no effect" rule: a key of a disabled feature (e.g. ``set_zeta`` with ``plasticity = none``)
may keep its schema default, and may be inherited from ``[DEFAULT]`` (shared values necessarily
include parameters some experiments switch off), but a NON-default value written in the
experiment's own section or given with ``--set`` is an error that names the setting disabling it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Optional

from sparse_nte.config.groups import GROUPS
from sparse_nte.config.schema import ALIASES, SCHEMA, Config
from sparse_nte.config.values import did_you_mean, parse_value, show
from sparse_nte.errors import ConfigError

__all__ = ["Origin", "Layer", "Resolver", "resolve"]


@dataclass(frozen=True)
class Origin:
    """Where a value came from: a file section, the ``--set`` flag, a mapping, or the schema."""

    section: Optional[str] = None       # section name for file values
    flag: Optional[str] = None          # "--set" for overrides
    spelled: Optional[str] = None       # the key as written (an alias spelling, or None)
    explicit: bool = False              # written in the experiment's own section / --set


@dataclass(frozen=True)
class Layer:
    values: Mapping[str, Any]
    origin: Origin


class Resolver:
    """Merges layers, derives dependent values and checks consistency, remembering origins.
    The groups' ``derive``/``check`` functions use :meth:`error`, :meth:`conflict`,
    :meth:`where`, :meth:`explicit`, :meth:`show` and report with :meth:`fail`."""

    def __init__(self, file: Optional[str], section: Optional[str]) -> None:
        self.file = file
        self.section = section or "<mapping>"  # the experiment's section: where a missing key belongs
        self.values: dict[str, Any] = {k: s.default for k, s in SCHEMA.items()}
        self.origins: dict[str, Origin] = {k: Origin() for k in SCHEMA}
        self.errors: list[ConfigError] = []

    # errors ------------------------------------------------------------------------------------
    def fail(self, error: ConfigError) -> None:
        """Record ``error``; all of them are raised together at the end of the stage."""
        if all(str(e) != str(error) for e in self.errors):
            self.errors.append(error)

    def raise_errors(self) -> None:
        if self.errors:
            raise ConfigError.combine(self.errors)

    def error(self, key: str, message: str) -> ConfigError:
        """An error about ``key``, located where its value was written."""
        o = self.origins[key]
        shown = o.spelled or key
        if o.flag is not None:
            return ConfigError(message, flag=o.flag, key=shown)
        if o.section is not None:
            return ConfigError(message, file=self.file, section=o.section, key=shown)
        return ConfigError(f"{message} ({shown} is not set; its default is {show(self.values[key])})",
                           file=self.file, section=self.section, key=shown)

    def conflict(self, message: str, *keys: str) -> ConfigError:
        """An error about a relation between ``keys``, located at the most specific of them
        (``--set`` before the experiment's section before [DEFAULT] before the schema default):
        usually the value the user changed last."""
        def rank(k: str) -> int:
            o = self.origins[k]
            return 3 if o.flag is not None else 2 if o.explicit else 1 if o.section is not None else 0
        return self.error(max(keys, key=rank), message)  # max keeps the first of equal ranks

    def where(self, key: str) -> str:
        """``"benchmark = mnist (in [DEFAULT])"``: a related value and its origin, for messages."""
        o = self.origins[key]
        place = ("--set" if o.flag is not None else f"in [{o.section}]" if o.section is not None
                 else "default")
        return f"{key} = {show(self.values[key])} ({place})"

    def show(self, key: str) -> str:
        return show(self.values[key])

    def explicit(self, key: str) -> bool:
        """Written in the experiment's own section or with ``--set``."""
        return self.origins[key].explicit

    def explicit_non_default(self, key: str) -> bool:
        return self.origins[key].explicit and self.values[key] != SCHEMA[key].default

    # merging -----------------------------------------------------------------------------------
    def apply(self, layer: Layer) -> None:
        seen: dict[str, str] = {}
        for raw_key, raw in layer.values.items():
            name = str(raw_key).strip().lower()
            canonical = ALIASES.get(name, name)
            origin = dataclasses.replace(layer.origin, spelled=name if name != canonical else None)
            if canonical == "name":
                self.fail(self._layer_error(origin, name, "an experiment's name is its [section] "
                                                          "header, not a key"))
                continue
            if canonical not in SCHEMA:
                hint = did_you_mean(name, list(SCHEMA) + list(ALIASES))
                hint = hint or " (sparse_nte.config.schema_markdown() lists the valid keys)"
                self.fail(self._layer_error(origin, name, f"unknown key{hint}"))
                continue
            if canonical in seen:
                self.fail(self._layer_error(origin, name, f"{name} and {seen[canonical]} are the same "
                                                          f"key ({name if name != canonical else seen[canonical]} "
                                                          f"is an alias of {canonical}); give only one"))
                continue
            seen[canonical] = name
            try:
                value = parse_value(SCHEMA[canonical], raw)
            except ValueError as exc:
                self.fail(self._layer_error(origin, name, str(exc)))
                continue
            self.values[canonical] = value
            self.origins[canonical] = origin

    def _layer_error(self, origin: Origin, name: str, message: str) -> ConfigError:
        if origin.flag is not None:
            return ConfigError(message, flag=origin.flag, key=name)
        return ConfigError(message, file=self.file, section=origin.section, key=name)

    # derivation, consistency -------------------------------------------------------------------
    def derive(self) -> None:
        """Every group's ``derive`` in schema order."""
        for group in GROUPS:
            derive = getattr(group, "derive", None)
            if derive is not None:
                derive(self)

    def no_effect(self) -> dict[str, str]:
        """Keys that have no effect under the current values -> why (names the disabling setting);
        the first group to disable a key gives the reason."""
        out: dict[str, str] = {}
        for group in GROUPS:
            rule = getattr(group, "no_effect", None)
            if rule is not None:
                for k, why in rule(self.values).items():
                    out.setdefault(k, why)
        return out

    def check(self) -> None:
        """Contradictions between values, then values that would have no effect."""
        for group in GROUPS:
            check = getattr(group, "check", None)
            if check is not None:
                check(self)
        for k, why in self.no_effect().items():
            if self.explicit_non_default(k):
                self.fail(self.error(k, f"{k} = {show(self.values[k])} has no effect: {why}; remove it, "
                                        f"or enable what it configures"))

    def build(self, name: str) -> Config:
        return Config(name=name, **self.values)


def resolve(layers: Iterable[Layer], file: Optional[str], name: str) -> Config:
    """Merge ``layers``, derive and check; raises one ConfigError listing every problem."""
    r = Resolver(file, name)
    for layer in layers:
        r.apply(layer)
    r.raise_errors()       # values that do not parse make every later check unreliable
    r.derive()
    r.check()
    r.raise_errors()
    return r.build(name)
