"""Every example in the package's docstrings runs, as written, and shows what it says.

Each docstring's examples run as one doctest in a fresh namespace, so an example
must import what it uses: what a user copies from ``help()`` into a session works.
Outputs are compared with ``ELLIPSIS`` and ``NORMALIZE_WHITESPACE``.
"""
from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil
import re

import pytest

import papa_bayes

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


MODULES = ["papa_bayes"] + [info.name for info in pkgutil.walk_packages(papa_bayes.__path__, "papa_bayes.")]


def _docstrings() -> list[doctest.DocTest]:
    """Every docstring of the package's own objects, as a doctest (most with no examples)."""
    finder = doctest.DocTestFinder(exclude_empty=False)
    found: dict[str, doctest.DocTest] = {}
    for name in MODULES:
        for test in finder.find(importlib.import_module(name)):
            found.setdefault(test.name, test)
    return sorted(found.values(), key=lambda test: test.name)


DOCSTRINGS = _docstrings()
EXAMPLES = [test for test in DOCSTRINGS if test.examples]


def test_the_package_has_docstring_examples():
    # the walk must reach the subpackages: a broken walk would make the test below vacuous
    names = {test.name for test in EXAMPLES}
    assert len(EXAMPLES) >= 20, sorted(names)
    assert any(n.startswith("papa_bayes.diffusion.") for n in names)
    assert any(n.startswith("papa_bayes.acquisition.") for n in names)


def test_every_example_section_has_code_that_runs():
    # an "Example:" of prose or of code without ``>>>`` would escape the test below
    sketches = [test.name for test in DOCSTRINGS
                if test.docstring and re.search(r"^\s*Examples?:", test.docstring, re.M) and not test.examples]
    assert not sketches, sketches


def test_every_public_function_and_method_has_a_docstring():
    # methods, classmethods, staticmethods and properties; inherited docstrings count, as in ``help()``
    missing = []
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.startswith("_") or getattr(value, "__module__", None) != name:
                continue
            if not (inspect.isfunction(value) or inspect.isclass(value)):
                continue
            if not inspect.getdoc(value):
                missing.append(f"{name}.{attr}")
            if inspect.isclass(value):
                missing += [f"{name}.{attr}.{member}" for member, raw in vars(value).items()
                            if not member.startswith("_") and _undocumented_member(value, member, raw)]
    assert not missing, missing


def _undocumented_member(cls: type, name: str, raw: object) -> bool:
    """A method, classmethod, staticmethod or property of ``cls`` without a docstring, its bases' included."""
    if isinstance(raw, property):
        return not any(isinstance(vars(base).get(name), property) and inspect.getdoc(vars(base)[name])
                       for base in cls.__mro__)
    if inspect.isfunction(raw) or isinstance(raw, (classmethod, staticmethod)):
        return not inspect.getdoc(getattr(cls, name))
    return False


@pytest.mark.parametrize("test", EXAMPLES, ids=[test.name for test in EXAMPLES])
def test_docstring_example_runs(test: doctest.DocTest, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    monkeypatch.setenv("MPLBACKEND", "Agg")
    test.globs = {"__name__": "__doctest__"}  # what a user starts from: nothing imported
    report: list[str] = []
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    result = runner.run(test, out=report.append, clear_globs=True)
    assert result.attempted == len(test.examples)
    assert result.failed == 0, "".join(report)
