"""No import cycles between the modules of sparse_nte, models and benchmarks.

The config package imports the components whose choices and defaults it lists (the NTE
optimizer, the plasticity schedules, NTE pruning), so those components must never import the
config at module level; more generally a cycle of module-level imports makes the result depend on
which module is imported first. The graph is read from the source with ``ast``: imports at module
level (including inside ``try`` / ``if`` / ``with`` blocks and class bodies) count; imports inside
functions and inside ``if TYPE_CHECKING:`` blocks do not, since they do not run at import time.
"""
import ast
from pathlib import Path
from typing import Dict, Iterator, List, Set, Union

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("sparse_nte", "models", "benchmarks")
#: Modules that must not import sparse_nte.config at module level (the config imports them).
CONFIG_DEPENDENCIES = ("sparse_nte.nte", "sparse_nte.plasticity", "sparse_nte.nte_prune",
                       "sparse_nte.per_example", "sparse_nte.optim_state")


def modules() -> Dict[str, Path]:
    """Dotted module name -> file, for every module of the packages."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(body: List[ast.stmt]) -> Iterator[Union[ast.Import, ast.ImportFrom]]:
    """The import statements that run when the module is imported."""
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            yield from module_level_imports(node.orelse)
            continue
        for name in ("body", "orelse", "finalbody", "handlers"):
            block = getattr(node, name, None)
            if isinstance(block, list):
                yield from module_level_imports(block)


def import_graph() -> Dict[str, Set[str]]:
    """Module -> the project modules it imports at module level. ``from pkg import name`` is an
    edge to ``pkg.name`` when that is a module, else to ``pkg``."""
    known = modules()
    graph: Dict[str, Set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: Set[str] = set()
        for node in module_level_imports(ast.parse(path.read_text(), str(path)).body):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names if a.name in known)
                continue
            base = node.module or ""
            if node.level:  # relative import
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in known:
                    targets.add(full)
                elif base in known:
                    targets.add(base)
        graph[name] = targets - {name}
    return graph


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_imports_it_should():
    """The parser finds known module-level edges and skips function-level and TYPE_CHECKING
    imports (so the test below cannot pass by seeing nothing)."""
    graph = import_graph()
    assert "sparse_nte.layers" in graph["sparse_nte.dale"]
    assert "sparse_nte.nte" in graph["sparse_nte.config.groups.nte"]
    assert "sparse_nte.nte.optimizer" in graph["sparse_nte.nte.build"]
    assert "sparse_nte.config" not in graph["sparse_nte.nte.build"]   # TYPE_CHECKING only
    assert "sparse_nte.layers" not in graph["sparse_nte.sparse_exec"]  # inside a function


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "module-level import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_components_listed_by_the_config_do_not_import_it():
    graph = import_graph()
    offenders = sorted(name for name, targets in graph.items()
                       if name.startswith(CONFIG_DEPENDENCIES)
                       and any(t == "sparse_nte.config" or t.startswith("sparse_nte.config.")
                               for t in targets))
    assert offenders == []


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
