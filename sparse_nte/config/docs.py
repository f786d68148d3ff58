"""The schema as documentation: generated, so the docs cannot drift from the code."""
from __future__ import annotations

from sparse_nte.config.schema import SCHEMA
from sparse_nte.config.values import show

__all__ = ["schema_markdown"]


def schema_markdown() -> str:
    """The schema as one Markdown table (key, type, default, allowed values, meaning), in schema
    order."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    rows = ["| key | type | default | allowed | meaning |", "|---|---|---|---|---|"]
    for spec in SCHEMA.values():
        if spec.derived:
            default = "(derived)"
        elif spec.default == "":
            default = "(empty)"
        else:
            default = f"`{show(spec.default)}`"
        type_name = {bool: "bool", int: "int", float: "float"}.get(spec.type, "str")
        allowed = spec.allowed()
        if spec.value_aliases:
            allowed += " (also " + ", ".join(f"{a} = {c}" for a, c in spec.value_aliases.items()) + ")"
        doc = spec.doc + (f" Derived: {spec.derived}." if spec.derived else "")
        rows.append(f"| `{spec.name}` | {type_name} | {cell(default)} | {cell(allowed)} | {cell(doc)} |")
    return "\n".join(rows) + "\n"
