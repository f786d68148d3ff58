"""Griffe extension for the API reference: the docstrings' few reStructuredText habits as Markdown.

The docstrings are written to be read in the source and by ``help()``; they use Sphinx roles
(``:func:`x```), double-backtick literals, ``::`` before an indented block and simple RST
tables (rows between ``=====  ====`` rules). mkdocstrings renders Markdown, so before rendering:

- a role becomes a code span (``:func:`~a.b.c``` -> `` `c` ``, otherwise the target as written);
- a simple RST table becomes a preformatted block, its columns kept aligned (roles in it become
  the plain target);
- a paragraph's final ``::`` becomes ``:`` (the indented block after it is code in both).

Used by mkdocs.yml (``extensions:`` of the Python handler); the sources are not changed.
"""
from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const|ref|term):`(~?)([^`]+)`")
_RULE = re.compile(r"^\s*=+(?:\s+=+)+\s*$")


def _target(m: re.Match) -> str:
    target = m.group(2)
    if "<" in target and target.endswith(">"):   # :ref:`text <target>`
        target = target[:target.index("<")].strip()
    return target.rsplit(".", 1)[-1] if m.group(1) else target


def _role(m: re.Match) -> str:
    return f"`{_target(m)}`"


def _tables(lines: list[str]) -> list[str]:
    """Fence every simple RST table (top rule, header, rule, rows, bottom rule)."""
    out: list[str] = []
    i = 0
    while i < len(lines):
        if _RULE.match(lines[i]):
            rules = [j for j in range(i, len(lines)) if _RULE.match(lines[j])][:3]
            if len(rules) == 3:
                indent = lines[i][:len(lines[i]) - len(lines[i].lstrip())]
                table = [_ROLE.sub(_target, line) for line in lines[i:rules[2] + 1]]
                out += ["", indent + "```text", *table, indent + "```", ""]
                i = rules[2] + 1
                continue
        out.append(lines[i])
        i += 1
    return out


def markdown_docstring(text: str) -> str:
    """The docstring ``text`` with the conversions of the module docstring."""
    text = "\n".join(_tables(text.split("\n")))    # roles in tables as plain names
    text = _ROLE.sub(_role, text)
    text = re.sub(r"(\S)::$", r"\1:", text, flags=re.M)
    return re.sub(r"^(\s*)::$", "", text, flags=re.M)


class RstToMarkdown(griffe.Extension):
    """Rewrites every loaded object's docstring with :func:`markdown_docstring`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown_docstring(obj.docstring.value)
