"""Every docstring example (``>>>``) in labelwatch and labelwatch_client runs and holds.

One test per module that has examples, found by walking the packages, so a module moved or
added is covered without listing it here.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from types import ModuleType

import pytest

import labelwatch
import labelwatch_client

PACKAGES = (labelwatch, labelwatch_client)


def _module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        names.append(package.__name__)
        for info in pkgutil.walk_packages(package.__path__, prefix=package.__name__ + "."):
            names.append(info.name)
    return sorted(names)


def _examples(module: ModuleType) -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    # only what is defined in the module itself, not what it imports
    return [t for t in finder.find(module, module.__name__) if t.examples]


MODULES_WITH_EXAMPLES = [
    name for name in _module_names() if _examples(importlib.import_module(name))
]


def test_the_documented_examples_are_found() -> None:
    assert len(MODULES_WITH_EXAMPLES) >= 10, MODULES_WITH_EXAMPLES


@pytest.mark.parametrize("name", MODULES_WITH_EXAMPLES)
def test_docstring_examples_run(name: str) -> None:
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    for test in _examples(module):
        runner.run(test, out=report.append)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0
    assert result.failed == 0, "".join(report)
