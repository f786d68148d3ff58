"""The identity of a trial: its resolved configuration.

A result stands only for the configuration that produced it. Every key that can change a
trial's numbers is part of its identity (:attr:`KeySpec.affects_results`; ``description`` and
``data_root`` are not); the seed is part of it through the file name (``seed<k>.pkl``).

Folders keep configurations apart in the common case: the results of an experiment run as the
experiment file defines it go to ``<results>/<name>/``; a run with ``--set`` overrides that change
the configuration goes to ``<results>/<name>+<key>=<value>+.../`` (or
``<results>/<name>+<10-hex hash>/`` when that would be long or unsafe as a file name, with the
differences written to ``variant.json`` in the folder). A stored result or checkpoint whose
configuration differs from the requested one is never reused: :func:`differences` names the keys.
"""
from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Iterable, Mapping

from sparse_nte.config import SCHEMA

__all__ = ["identity", "differences", "describe_differences", "variant", "folder_name"]

#: Keys that never change a trial's numbers, and the seed (the file name carries it).
NOT_IDENTITY = frozenset(k for k, s in SCHEMA.items() if not s.affects_results) | {"seed"}
_SAFE = re.compile(r"[A-Za-z0-9_.=,-]+")
_MAX_FOLDER = 96


def identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``config`` (a Config or the dict stored in a result) that define what the
    trial computes, every schema key present: a key missing from an older result takes its
    schema default (what the toolkit did before the key existed). Keys the schema no longer
    knows are kept, so they show up as differences."""
    out = {k: s.default for k, s in SCHEMA.items() if k not in NOT_IDENTITY}
    for k, v in config.items():
        if k not in NOT_IDENTITY and k != "name":
            out[k] = v
    return out


def differences(stored: Mapping[str, Any], requested: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, stored value, requested value)`` for every identity key that differs."""
    a, b = identity(stored), identity(requested)
    missing = object()
    return [(k, a.get(k, missing), b.get(k, missing)) for k in list(dict.fromkeys([*a, *b]))
            if a.get(k, missing) != b.get(k, missing)]


def describe_differences(diff: Iterable[tuple[str, Any, Any]], limit: int = 6) -> str:
    """``"num_batch: 2 there, 3 here; train_subset: 500 there, 2000 here"``."""
    diff = list(diff)
    parts = [f"{k}: {_show(a)} there, {_show(b)} here" for k, a, b in diff[:limit]]
    if len(diff) > limit:
        parts.append(f"and {len(diff) - limit} more")
    return "; ".join(parts)


def _show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):  # 1e+30 -> 1e30, 1e-05 -> 1e-5: the same float, safe in a folder name
        return re.sub(r"e([+-]?)0*(\d)", lambda m: f"e{m.group(1).lstrip('+')}{m.group(2)}", repr(v))
    if v == "":
        return "(empty)"
    return "(absent)" if type(v) is object else str(v)


def variant(base: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The identity keys whose value in ``config`` differs from ``base`` (the experiment as the
    file defines it): ``{key: value in config}``, in schema order."""
    a, b = identity(base), identity(config)
    return {k: b[k] for k in b if a.get(k) != b[k]}


def folder_name(name: str, diff: Mapping[str, Any]) -> str:
    """``name`` when ``diff`` is empty, else ``name+key=value+...`` or ``name+<hash>``."""
    if not diff:
        return name
    parts = [f"{k}={_show(v).replace(', ', ',')}" for k, v in diff.items()]
    readable = "+".join([name, *parts])
    if len(readable) <= _MAX_FOLDER and all(_SAFE.fullmatch(p) for p in parts):
        return readable
    digest = hashlib.sha1(json.dumps(sorted(diff.items()), default=str).encode()).hexdigest()[:10]
    return f"{name}+{digest}"
