"""Experiment files written by tests: one section ``[e]`` under a ``[DEFAULT]`` text, loaded
with command-line style overrides (shared by the model-architecture, augmentation and
local-protocol tests; each keeps its own ``[DEFAULT]``)."""
from __future__ import annotations

import textwrap
from pathlib import Path

from sparse_nte.config import Config, load_config


def load_section(tmp_path: Path, defaults: str, root: Path = Path("."), **overrides) -> Config:
    """Write ``defaults`` (with ``{root}`` filled by ``root``, the data folder) to
    ``tmp_path/exps.cfg`` and load its section ``e`` with ``overrides`` as ``--set`` would."""
    path = tmp_path / "exps.cfg"
    path.write_text(textwrap.dedent(defaults.format(root=root)))
    return load_config(path, "e", {k: str(v) for k, v in overrides.items()})
