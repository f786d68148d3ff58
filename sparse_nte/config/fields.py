"""How a config key is declared: :func:`key` (a dataclass field carrying the key's schema row)
and :class:`KeySpec` (that row, read back). No imports from the rest of the toolkit.

A group of keys is a frozen dataclass whose fields are made with :func:`key`, in
:mod:`sparse_nte.config.groups`; :class:`sparse_nte.config.schema.Config` inherits every group.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["Interval", "KeySpec", "key"]


@dataclass(frozen=True)
class Interval:
    """A closed/open interval written as in mathematics: ``"(0, 1]"``, ``"[1, inf)"``."""

    low: float
    high: float
    low_closed: bool
    high_closed: bool

    @classmethod
    def parse(cls, text: str) -> "Interval":
        m = re.fullmatch(r"\s*([\[(])\s*([^,]+?)\s*,\s*([^,]+?)\s*([\])])\s*", text)
        if m is None:
            raise ValueError(f"bad interval {text!r}")
        return cls(float(m.group(2)), float(m.group(3)), m.group(1) == "[", m.group(4) == "]")

    def __contains__(self, x: float) -> bool:
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return above and below

    def __str__(self) -> str:
        def num(v: float) -> str:
            return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else repr(v)
        if math.isinf(self.high):
            return f"{'>=' if self.low_closed else '>'} {num(self.low)}"
        return (f"{'[' if self.low_closed else '('}{num(self.low)}, {num(self.high)}"
                f"{']' if self.high_closed else ')'}")

    def words(self) -> str:
        """``"in (0, 1]"`` or ``">= 1"``."""
        text = str(self)
        return text if text.startswith((">", "<")) else f"in {text}"


def key(default: Any, *, doc: str, choices: Optional[Iterable[str]] = None,
        interval: Optional[str] = None, kind: Optional[str] = None,
        value_aliases: Optional[Mapping[str, str]] = None, derived: Optional[str] = None,
        multi: bool = False, affects_results: bool = True) -> Any:
    """One row of the schema (a dataclass field whose metadata holds the rest of the row).

    ``choices``: the allowed values of a text key (taken from the component's registry, never
    written twice). ``multi``: the value is a comma-separated list of choices (stored as text in
    canonical form, e.g. ``"ewc, replay"``). ``derived``: the default is a placeholder (``""``
    or 0) that the group's ``derive`` fills in from other values; the string says from what.
    ``affects_results = False`` marks keys that cannot change a trial's numbers (a description,
    where the data lives, whether statistics are recorded): they are not part of a trial's
    identity (:func:`sparse_nte.identity.variant`).
    """
    meta = {
        "doc": doc,
        "choices": tuple(choices) if choices is not None else None,
        "interval": Interval.parse(interval) if interval is not None else None,
        "kind": kind,
        "value_aliases": dict(value_aliases or {}),
        "derived": derived,
        "multi": bool(multi),
        "affects_results": bool(affects_results),
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class KeySpec:
    """One row of the schema: a config key's type, default, allowed values and meaning."""

    name: str
    type: type
    default: Any
    doc: str
    group: str
    choices: Optional[tuple[str, ...]] = None
    interval: Optional[Interval] = None
    kind: Optional[str] = None              # "text" (one line), "path", or None
    value_aliases: Mapping[str, str] = field(default_factory=dict)
    derived: Optional[str] = None
    multi: bool = False
    affects_results: bool = True

    def allowed(self) -> str:
        """Allowed values in words, e.g. ``"(0, 1]"``, ``"sgd, adam, nte"``, ``"integer >= 1"``."""
        if self.type is bool:
            return "true, false"
        if self.choices is not None:
            listed = ", ".join(self.choices)
            return f"comma-separated list of: {listed}" if self.multi else listed
        if self.interval is not None:
            return f"{'integer' if self.type is int else 'number'} {self.interval.words()}"
        return "one line of text" if self.kind == "text" else "a folder path"
