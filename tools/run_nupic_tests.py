"""Run nupic.torch's own unit tests, unchanged, against sparse_nte.

    python tools/run_nupic_tests.py PATH_TO_NUPIC_TORCH_CHECKOUT [-v] [-k PATTERN]

The tests are read from ``PATH/tests`` (``*_test.py``, unittest test cases) and run in this
process with an import hook in front of every other: ``nupic`` becomes an empty namespace and
each ``nupic.torch[.X]`` module an alias of ``sparse_nte.compat[.X]`` (a module of the same name
whose namespace is the sparse_nte module's). nupic.torch's own code is never imported, even if
it is installed or on the path; a ``nupic.torch`` module without a sparse_nte counterpart
fails to import with a message naming the missing module. Nothing is copied anywhere.

Prints one line per failing test (all of them with ``-v``) and a summary; the exit status is 0
when every test ran and passed, 1 otherwise, 2 for a bad checkout path.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import unittest
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

ALIASED = "nupic.torch"
TARGET = "sparse_nte.compat"


class NupicTorchAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import hook: ``nupic`` -> empty namespace package, ``nupic.torch[.X]`` -> alias of
    ``sparse_nte.compat[.X]``. Other ``nupic.*`` names are left to the other finders."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[types.ModuleType] = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname == "nupic":
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        if fullname != ALIASED and not fullname.startswith(ALIASED + "."):
            return None
        target_name = TARGET + fullname[len(ALIASED):]
        try:
            module = importlib.import_module(target_name)
        except ModuleNotFoundError as err:
            if err.name != target_name:
                raise
            raise ModuleNotFoundError(f"{fullname} has no sparse_nte counterpart ({target_name} "
                                      f"does not exist)", name=fullname) from None
        spec = importlib.machinery.ModuleSpec(fullname, self,
                                              is_package=hasattr(module, "__path__"))
        spec.loader_state = module
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None   # a fresh module, filled by exec_module

    def exec_module(self, module: types.ModuleType) -> None:
        target = module.__spec__.loader_state
        if target is None:   # the `nupic` namespace
            return
        for name, value in vars(target).items():
            if not (name.startswith("__") and name.endswith("__")):
                setattr(module, name, value)
        module.__doc__ = target.__doc__
        if hasattr(target, "__all__"):
            module.__all__ = list(target.__all__)
        module.__getattr__ = lambda name: getattr(target, name)   # anything else (PEP 562)


def _is_nupic(name: str) -> bool:
    return name == "nupic" or name.startswith("nupic.")


@contextmanager
def nupic_torch_alias(tests_dir: Optional[Path] = None) -> Iterator[None]:
    """Install :class:`NupicTorchAlias` first in ``sys.meta_path``; on exit remove it, the
    ``nupic`` modules and the test modules imported from ``tests_dir``, and restore
    ``sys.path``."""
    saved_path = list(sys.path)
    saved_nupic = {k: sys.modules.pop(k) for k in list(sys.modules) if _is_nupic(k)}
    finder = NupicTorchAlias()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        for name in [k for k in sys.modules if _is_nupic(k)]:
            del sys.modules[name]
        if tests_dir is not None:
            root = str(tests_dir.resolve())
            for name, mod in list(sys.modules.items()):
                if str(getattr(mod, "__file__", None) or "").startswith(root):
                    del sys.modules[name]
        sys.modules.update(saved_nupic)
        sys.path[:] = saved_path


@dataclass
class Outcome:
    """What a run gave: test ids (a test with failing subtests counts once) and messages."""

    run: int = 0
    failed: list[str] = field(default_factory=list)       # assertion failures
    errors: list[str] = field(default_factory=list)       # exceptions, including import errors
    skipped: list[str] = field(default_factory=list)
    details: dict[str, str] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)  # nupic.torch module -> sparse_nte's

    @property
    def passed(self) -> int:
        return self.run - len(set(self.failed) | set(self.errors)) - len(self.skipped)

    @property
    def ok(self) -> bool:
        return self.run > 0 and not self.failed and not self.errors


def _test_id(test: unittest.TestCase) -> str:
    return getattr(test, "test_case", test).id()   # a _SubTest reports its parent test


def run_tests(checkout: Path, pattern: str = "*_test.py", names: Sequence[str] = (),
              verbosity: int = 0) -> Outcome:
    """Discover and run the unittest tests of ``checkout/tests`` under the alias."""
    tests_dir = Path(checkout) / "tests"
    if not tests_dir.is_dir():
        raise FileNotFoundError(f"{checkout}: no tests/ directory (expected a nupic.torch "
                                f"checkout, with tests/*_test.py)")
    with nupic_torch_alias(tests_dir):
        loader = unittest.TestLoader()
        if names:
            loader.testNamePatterns = [n if "*" in n else f"*{n}*" for n in names]
        suite = loader.discover(str(tests_dir), pattern=pattern, top_level_dir=str(tests_dir))
        result = unittest.TextTestRunner(stream=sys.stderr, verbosity=verbosity).run(suite)
        aliases = {name: mod.__spec__.loader_state.__name__ for name, mod in sys.modules.items()
                   if name.startswith(ALIASED) and mod.__spec__.loader_state is not None}
    outcome = Outcome(run=result.testsRun, aliases=dict(sorted(aliases.items())))
    for kind, entries in (("failed", result.failures), ("errors", result.errors)):
        for test, trace in entries:
            tid = _test_id(test)
            if tid not in getattr(outcome, kind):
                getattr(outcome, kind).append(tid)
            outcome.details[tid] = trace
    outcome.skipped = [_test_id(t) for t, _ in result.skipped]
    # A module that failed to import is one "test" to unittest; it is one error here too.
    return outcome


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a nupic.torch checkout (with tests/)")
    parser.add_argument("-k", dest="names", action="append", default=[],
                        help="run only tests whose name contains this (repeatable)")
    parser.add_argument("-p", "--pattern", default="*_test.py", help="test file pattern")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per test")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    try:
        outcome = run_tests(args.checkout, args.pattern, args.names, 2 if args.verbose else 0)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    if args.verbose:
        for name, target in outcome.aliases.items():
            print(f"imported {name} as {target}")
    for tid in outcome.failed + outcome.errors:
        print(f"FAILED {tid}")
    print(f"nupic.torch tests against sparse_nte: {outcome.passed} of {outcome.run} passed, "
          f"{len(outcome.failed)} failed, {len(outcome.errors)} errors, "
          f"{len(outcome.skipped)} skipped")
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
