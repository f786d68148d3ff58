"""Rewrite the configuration-key table of docs/configuration.md from the schema
(``python tools/update_key_table.py``).

The table is generated (:func:`sparse_nte.config.schema_markdown`) so it cannot drift from the
code; ``tests/test_docs.py`` fails when it is out of date and names this command.
"""
from __future__ import annotations

import sys
from pathlib import Path

from sparse_nte.config import schema_markdown

HEADER = "| key | type | default | allowed | meaning |"
TARGETS = ["docs/configuration.md"]


def rewrite(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    if HEADER not in text:
        return False
    start = text.index(HEADER)
    end = text.find("\n\n", start)
    end = len(text) if end < 0 else end
    new = text[:start] + schema_markdown().strip() + (text[end:] or "\n")
    if new != text:
        path.write_text(new, encoding="utf-8")
    return True


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    done = [t for t in TARGETS if (root / t).exists() and rewrite(root / t)]
    print("updated the key table in: " + (", ".join(done) or "no file"))
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
