"""The README documents what the code does: its key table is the schema, its commands exist."""
import re
from pathlib import Path

from sparse_nte.cli import build_parser
from sparse_nte.config import schema_markdown

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_readme_key_table_is_the_schema():
    assert schema_markdown().strip() in README, "run: python tools/update_key_table.py"


def test_readme_flags_exist():
    """Every flag of the README's run_exps.py reference exists, and every flag is documented."""
    section = README[README.index("## Command line"):README.index("## Results files")]
    parser_flags = {s for a in build_parser()._actions for s in a.option_strings} - {"-h", "--help"}
    documented = set(re.findall(r"`(--[a-z][a-z-]*)", section))
    assert documented <= parser_flags, documented - parser_flags
    assert parser_flags <= set(re.findall(r"`(--[a-z][a-z-]*)", README)), parser_flags - documented


def test_ci_runs_the_readme_test_command():
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in README and ".venv/bin/python -m pytest" in ci
    assert '-c constraints.txt -e ".[test,ray]"' in ci and "-c constraints.txt" in README
