"""Values: text (from the file or ``--set``) or typed Python values -> the key's type.

Each function raises ``ValueError`` with the reason only; the caller adds where (file,
section, key or flag).
"""
from __future__ import annotations

import difflib
import math
import os
import re
from collections.abc import Iterable
from typing import Any

from sparse_nte.config.fields import KeySpec

__all__ = ["parse_value", "check_typed", "show", "did_you_mean", "expected"]

_TRUE = {"1", "yes", "true", "on"}      # configparser.ConfigParser.BOOLEAN_STATES
_FALSE = {"0", "no", "false", "off"}
_INT_RE = re.compile(r"[+-]?[0-9]+")


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """``" (did you mean 'lr'?)"`` for the closest candidates, or ``""``."""
    cands = list(candidates)
    lowered = {c.lower(): c for c in cands}
    if word.lower() in lowered and lowered[word.lower()] != word:
        return f" (did you mean {lowered[word.lower()]!r}?)"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=3, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(lowered[c]) for c in close) + "?)"


def expected(spec: KeySpec) -> str:
    """Type and range in words, for error messages: ``"a number in (0, 1]"``."""
    if spec.type is bool:
        return "a boolean (true/false, yes/no, on/off, 1/0)"
    if spec.choices is not None:
        extra = " or empty (derived)" if spec.derived else ""
        if spec.multi:
            return "a comma-separated list of " + ", ".join(spec.choices)
        return "one of " + ", ".join(spec.choices) + extra
    if spec.type in (int, float):
        noun = "an integer" if spec.type is int else "a number"
        return f"{noun} {spec.interval.words()}" if spec.interval else noun
    return "one line of text" if spec.kind == "text" else "a folder path"


def _choice(spec: KeySpec, text: str, raw: Any) -> str:
    low = text.lower()
    value = spec.value_aliases.get(low, low)
    if value == "" and spec.derived:
        return ""
    choices = spec.choices or ()
    if value not in choices:
        raise ValueError(f"expected {expected(spec)}, got {raw!r}{did_you_mean(low, choices)}")
    return value


def _multi(spec: KeySpec, text: str, raw: Any) -> str:
    """A comma-separated list of choices in canonical form: registry order, ``", "``-joined;
    ``none`` alone (or empty) means none."""
    names = [p.strip().lower() for p in text.replace("+", ",").split(",") if p.strip()]
    if not names or names == ["none"]:
        return "none"
    choices = spec.choices or ()
    for n in names:
        if n == "none":
            raise ValueError(f"'none' cannot be combined with other values, got {raw!r}")
        if n not in choices:
            raise ValueError(f"expected {expected(spec)}, got {n!r}{did_you_mean(n, choices)}")
    if len(set(names)) != len(names):
        raise ValueError(f"a value is listed twice in {raw!r}")
    return ", ".join(c for c in choices if c in names)


def parse_value(spec: KeySpec, raw: Any) -> Any:
    """Parse ``raw`` (text, or an already typed value) into the key's type and check its range."""
    t = spec.type
    if spec.kind == "path" and isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if isinstance(raw, str):
        text = raw.strip()
        if t is bool:
            low = text.lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(f"expected {expected(spec)}, got {raw!r}")
        if t is int:
            if not _INT_RE.fullmatch(text):
                raise ValueError(f"expected {expected(spec)}, got {raw!r}")
            value: Any = int(text)
        elif t is float:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(f"expected {expected(spec)}, got {raw!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"expected a finite number, got {raw!r}")
        elif spec.choices is not None:
            return _multi(spec, text, raw) if spec.multi else _choice(spec, text, raw)
        elif "\n" in text:
            raise ValueError(f"must be one line, got {raw!r}")
        elif spec.kind == "text":
            return text
        else:  # path
            return os.path.expanduser(text) if text else ""
    else:
        check_typed(spec, raw)
        value = float(raw) if t is float else raw
    if spec.interval is not None and value not in spec.interval:
        raise ValueError(f"expected {expected(spec)}, got {raw!r}")
    return value


def check_typed(spec: KeySpec, value: Any) -> None:
    """A typed Python value must already have the key's type (bool is not a number, a number is
    not a bool, text keys take text) and lie in its range."""
    t = spec.type
    ok = (isinstance(value, bool) if t is bool
          else isinstance(value, int) and not isinstance(value, bool) if t is int
          else isinstance(value, (int, float)) and not isinstance(value, bool) if t is float
          else isinstance(value, str))
    if not ok:
        raise ValueError(f"expected {expected(spec)}, got {value!r}")
    if t is float and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {value!r}")
    if spec.interval is not None and value not in spec.interval:
        raise ValueError(f"expected {expected(spec)}, got {value!r}")
    if t is str and spec.choices is not None:
        parsed = parse_value(spec, value)
        if parsed != value and not (spec.derived and value == ""):
            raise ValueError(f"expected {expected(spec)} in canonical form ({parsed!r}), got {value!r}")


def show(value: Any) -> str:
    """A value as it would be written in the file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if value != "" else "(empty)"
