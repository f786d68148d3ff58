"""Per-task diagnostics (the probe seam of :mod:`sparse_nte.seams`).

:data:`PROBES` is the registry: name -> ``(enabled(config) -> bool, build(config, env))``. A probe
that is enabled measures the model at the events it needs; its ``stats()`` are stored under
``stats["per_task"][task][name]``.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from sparse_nte.ntk.adaptation_probe import adaptation_enabled, build_adaptation_probe
from sparse_nte.ntk.probe import build_ntk_probe, ntk_probe_enabled
from sparse_nte.seams import Probe

__all__ = ["PROBES"]

#: name -> (enabled(config), builder(config, env)).
PROBES: Dict[str, Tuple[Callable[[Any], bool], Callable[..., Probe]]] = {
    "ntk": (ntk_probe_enabled, build_ntk_probe),
    "adaptation": (adaptation_enabled, build_adaptation_probe),
}
