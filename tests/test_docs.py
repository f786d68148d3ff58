"""The documentation documents what the code does: its key table is the schema, its flags exist,
and every shell command of the README and of docs/ runs as written.

Commands are read from fenced ``bash`` blocks. The command line's cheap forms run for real
(``--help``, ``--list``, ``--dry-run``; the smoke study on tiny synthetic data, slow); its other
runs are resolved with ``--dry-run`` appended (experiment names, keys, values, seeds and flag
combinations are all checked that way); ``--summary``/``--report`` are parsed. Other programs:
repository scripts must exist and know the flags given, ``pip install`` extras and constraint
files must exist, the tools must be in the ``dev`` extra, and the remaining shell programs
(those of the Slurm example) are listed here explicitly, so an unknown command fails.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import pytest

from sparse_nte.cli import build_parser, main
from sparse_nte.config import schema_markdown

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def _extras() -> dict[str, str]:
    """pyproject.toml's optional dependencies: extra -> its list as text (tomllib is 3.11+)."""
    text = (ROOT / "pyproject.toml").read_text()
    section = text[text.index("[project.optional-dependencies]"):]
    section = section[:section.index("\n[", 1)]
    return dict(re.findall(r"^(\w+) = (\[[^\]]*\])", section, re.M))


EXTRAS = _extras()

#: Programs of the docs' shell examples that are not this project's (cluster, package and shell
#: tools); their lines are not run.
EXTERNAL = {"srun", "sbatch", "scontrol", "ray", "hostname", "awk", "sleep", "set", "cd", "source",
            "export", "for", "do", "done", "sudo", "apt-get"}
#: Real runs small enough to run in a test (on synthetic data).
SHORT_RUNS = ({"--study": ["smoke"]},)


@dataclass
class Command:
    where: str          # file:line
    argv: List[str]

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def shell_blocks(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every fenced bash/sh/shell block."""
    text = path.read_text(encoding="utf-8")
    for m in re.finditer(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```", text, re.S | re.M):
        yield text[:m.start()].count("\n") + 2, m.group(1)


def commands(path: Path) -> Iterator[Command]:
    """The simple commands of the file's shell blocks: continuation lines joined, comments
    dropped, lists (``&&``, ``;``, ``|``, ``&``) split; variable assignments skipped."""
    rel = path.relative_to(ROOT)
    for first, block in shell_blocks(path):
        lines = block.split("\n")
        i = 0
        while i < len(lines):
            start, line = i, lines[i]
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            i += 1
            if re.match(r"^\s*[A-Za-z_][A-Za-z0-9_]*=", line):   # an assignment, e.g. port=6379
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
            lexer.whitespace_split = True
            lexer.commenters = "#"
            words: List[str] = []
            for tok in list(lexer) + [";"]:
                if tok in ("&&", "||", ";", "|", "&", ";;"):
                    if words:
                        yield Command(f"{rel}:{first + start}", words)
                    words = []
                else:
                    words.append(tok)


ALL = [c for p in DOC_FILES for c in commands(p)]


def _is_cli(argv: List[str]) -> bool:
    return (Path(argv[0]).name == "sparse-nte"
            or (Path(argv[0]).name.startswith("python") and argv[1:2] == ["run_exps.py"]))


def _cli_args(argv: List[str]) -> List[str]:
    return argv[1:] if Path(argv[0]).name == "sparse-nte" else argv[2:]


def _is_short(args: List[str]) -> bool:
    for run in SHORT_RUNS:
        flag, values = next(iter(run.items()))
        if flag in args and args[args.index(flag) + 1] in values and len(args) == 2:
            return True
    return False


def test_the_docs_have_commands():
    assert len(ALL) >= 20 and sum(_is_cli(c.argv) for c in ALL) >= 10, [str(c) for c in ALL]
    assert any(_is_cli(c.argv) and _is_short(_cli_args(c.argv)) for c in ALL)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """An empty working folder (so the installed experiment file is the one read) and tiny
    synthetic stand-ins of the datasets the shipped experiments use."""
    from benchmarks.synthetic import write_synthetic_dataset

    data = tmp_path_factory.mktemp("data")
    for name in ("mnist", "fashion_mnist"):
        write_synthetic_dataset(name, data, num_train=300, num_test=100, seed=0)
    return tmp_path_factory.mktemp("work"), data


@pytest.mark.parametrize("cmd", [c for c in ALL if _is_cli(c.argv) and not _is_short(_cli_args(c.argv))],
                         ids=str)
def test_cli_command_runs_as_written(cmd, workspace, monkeypatch, capsys):
    work, data = workspace
    args = _cli_args(cmd.argv)
    prog = "sparse-nte" if Path(cmd.argv[0]).name == "sparse-nte" else "run_exps.py"
    if "--help" in args or "-h" in args:
        with pytest.raises(SystemExit) as exit_:
            build_parser(prog).parse_args(args)
        assert exit_.value.code == 0 and "usage:" in capsys.readouterr().out
        return
    try:
        parsed = build_parser(prog).parse_args(args)
    except SystemExit:
        pytest.fail(f"{cmd}: the command line rejects it: {capsys.readouterr().err}")
    if parsed.summary is not None or parsed.report:
        return  # reads results that the docs' other commands produce: parsed only
    monkeypatch.chdir(work)
    monkeypatch.setenv("SPARSE_NTE_DATA", str(data))
    run = args if (parsed.dry_run or parsed.list) else args + ["--dry-run"]
    status = main(run, prog=prog)
    assert status == 0, f"{cmd}: exit status {status}: {capsys.readouterr().err}"


SHORT = list(dict.fromkeys(tuple(_cli_args(c.argv)) for c in ALL
                           if _is_cli(c.argv) and _is_short(_cli_args(c.argv))))


@pytest.mark.slow
@pytest.mark.parametrize("args", SHORT, ids=" ".join)
def test_short_runs_as_written(args, workspace, monkeypatch, capsys):
    """The README's second set-up command (and its copies in docs/), on synthetic data: it
    writes the study's report."""
    work, data = workspace
    monkeypatch.chdir(work)
    monkeypatch.setenv("SPARSE_NTE_DATA", str(data))
    args = list(args)
    assert main(args + ["--no-progress", "--threads", "1"]) == 0, capsys.readouterr().err
    study = args[args.index("--study") + 1]
    report = work / "results" / study / "report.html"
    assert report.is_file() and "<svg" in report.read_text()


def _flags(argv: List[str]) -> List[str]:
    return [a.split("=")[0] for a in argv if a.startswith("--")]


@pytest.mark.parametrize("cmd", [c for c in ALL if not _is_cli(c.argv)], ids=str)
def test_other_command_is_known_and_its_flags_exist(cmd):
    argv = cmd.argv
    prog = Path(argv[0]).name
    extras = EXTRAS
    if prog in EXTERNAL or (prog.startswith("python") and argv[1:3] == ["-m", "venv"]):
        return
    if prog.startswith("python") and argv[1:3] == ["-m", "pytest"]:
        markers = (ROOT / "pytest.ini").read_text()
        for i, a in enumerate(argv):
            if a == "-m":
                assert all(w in markers for w in re.findall(r"\w+", argv[i + 1]) if w not in ("not", "and", "or"))
        return
    if prog.startswith("python") and argv[1].endswith(".py"):
        script = ROOT / argv[1]
        assert script.is_file(), f"{cmd}: no such script"
        source = script.read_text() + "".join(p.read_text() for p in script.parent.glob("common.py"))
        for flag in _flags(argv[2:]):
            assert f'"{flag}"' in source, f"{cmd}: {argv[1]} has no flag {flag}"
        return
    if prog == "pip" and argv[1] == "install":
        for i, a in enumerate(argv):
            if a == "-c":
                assert (ROOT / argv[i + 1]).is_file(), f"{cmd}: no {argv[i + 1]}"
            m = re.fullmatch(r"\.\[([\w,]+)\]", a)
            if m:
                missing = set(m.group(1).split(",")) - set(extras)
                assert not missing, f"{cmd}: no extra {missing} in pyproject.toml"
        return
    if prog in ("ruff", "mypy", "mkdocs"):
        assert f'"{prog}' in extras["dev"], f"{cmd}: {prog} is not in the dev extra"
        if prog == "mkdocs":
            assert argv[1] in ("build", "serve")
        return
    if prog == "conda":
        assert (ROOT / argv[argv.index("-f") + 1]).is_file()
        return
    pytest.fail(f"{cmd}: a command this test does not know; run it by hand and add it here")


def test_key_table_is_the_schema():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert schema_markdown().strip() in page, "run: python tools/update_key_table.py"


def test_cli_flags_are_documented():
    """Every flag of the command-line reference exists, and every flag is documented."""
    page = (ROOT / "docs" / "running.md").read_text()
    section = page[page.index("## Command line"):page.index("## From Python")]
    parser_flags = {s for a in build_parser()._actions for s in a.option_strings} - {"-h", "--help"}
    documented = set(re.findall(r"`(--[a-z][a-z-]*)", section))
    assert documented <= parser_flags, documented - parser_flags
    everywhere = set(re.findall(r"`(--[a-z][a-z-]*)", "".join(p.read_text() for p in DOC_FILES)))
    assert parser_flags <= everywhere, parser_flags - everywhere


def test_ci_runs_the_readme_setup_and_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/python -m pytest" in README and ".venv/bin/python -m pytest" in ci
    assert '-c constraints.txt -e ".[test,ray,dev]"' in ci and "-c constraints.txt" in README
    assert "mkdocs build --strict" in ci and "ruff check" in ci and "mypy" in ci


def test_readme_is_concise_and_keeps_its_results_section():
    # the hand-written README is short; the results tables between its markers are generated
    written = re.sub(r"<!-- (\S+):begin -->\n.*?<!-- \1:end -->", "", README, flags=re.S)
    assert len(written.splitlines()) < 120
    assert written.count("|---") == 0, "a results table outside the generated blocks"
    assert "\n## Results\n" in README
    for link in re.findall(r"\]\((docs/[^)#]+)", README):
        assert (ROOT / link).is_file(), link


def test_every_docs_page_is_in_the_site():
    """mkdocs.yml's navigation lists every page (docs/results/ is added by the hook)."""
    nav = (ROOT / "mkdocs.yml").read_text()
    for page in (ROOT / "docs").rglob("*.md"):
        rel = page.relative_to(ROOT / "docs").as_posix()
        assert rel.startswith("results/") or f" {rel}" in nav, f"{rel} is not in mkdocs.yml's nav"


def test_no_command_left_without_a_check():
    """Every fenced block of commands is ``bash`` (checked above) or plainly output/prose:
    a block of run_exps.py lines marked as plain text would escape the checks."""
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        if path.name == "original_study.md" or "results" in path.parts[-2:-1]:
            continue  # written with the studies; their commands are in their study sections
        for m in re.finditer(r"^```[ \t]*\n(.*?)^```", text, re.S | re.M):
            body = m.group(1)
            assert not re.search(r"^(python\S* run_exps\.py|sparse-nte) ", body, re.M), \
                f"{path.name}: a block of commands without ```bash"


def test_api_reference_docstrings_become_markdown():
    """tools/griffe_rst.py (the API reference's docstring conversion)."""
    pytest.importorskip("griffe", reason="the dev extra (mkdocstrings) is not installed")
    import importlib.util

    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "tools" / "griffe_rst.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    md = mod.markdown_docstring
    assert md("See :func:`~sparse_nte.api.run_experiment` and :mod:`sparse_nte.nte`.") == \
        "See `run_experiment` and `sparse_nte.nte`."
    assert md("The penalty::\n\n    R = x") == "The penalty:\n\n    R = x"
    table = "Rows:\n\n====  ==========\nname  module\n====  ==========\newc   :mod:`.ewc`\n====  ==========\n\nEnd."
    assert md(table).split("\n") == ["Rows:", "", "", "```text", "====  ==========", "name  module",
                                     "====  ==========", "ewc   .ewc", "====  ==========", "```", "",
                                     "", "End."]


def test_readme_results_are_the_results_pages_tables():
    """README.md's results are copies of the pages' generated tables (tools/readme_results.py)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "tools" / "readme_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.render(README, ROOT / "docs") == README, "run python tools/readme_results.py"
    for h in mod.HEADLINES:     # every headline table is a Markdown table with a numeric cell
        table = mod.block(ROOT / "docs" / "results" / f"{h.stem}.md", h.marker)
        assert table.lstrip().startswith("|") and re.search(r"\d+\.\d", table), h.stem
