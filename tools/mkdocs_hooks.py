"""MkDocs hook: list every ``docs/results/*.md`` under "Results" in the site's navigation.

The results pages are written by several people as their studies finish; listing them here
keeps ``mkdocs.yml`` unchanged when one is added. A page's title is its first ``# `` heading.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any


def _title(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem.replace("_", " ")


def on_config(config: Any, **kwargs: Any) -> Any:
    results = Path(config["docs_dir"]) / "results"
    pages = [{_title(p): f"results/{p.name}"} for p in sorted(results.glob("*.md"))]
    for entry in config["nav"] or []:
        if isinstance(entry, dict) and "Results" in entry:
            entry["Results"] = [e for e in entry["Results"]
                                if not (isinstance(e, dict) and str(next(iter(e.values()))).startswith("results/"))]
            entry["Results"].extend(pages)
    return config
