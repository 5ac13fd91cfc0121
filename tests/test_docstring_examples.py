"""The examples in the docstrings of the public names run, and print what they say.

They are doctests (``>>>``), shown as examples in the site's API reference.
This file runs them with :mod:`doctest` under the project's own pytest
configuration; each runs in threads (a doctest's classes cannot be imported
by a spawn or forkserver child, so the process variants are on the site's
pages, run by ``tests/test_site.py``).
"""

from __future__ import annotations

import doctest
import importlib

import pytest

import puma

pytestmark = pytest.mark.timeout(60)

#: The main entry points: each has at least one example.
ENTRY_POINTS = ["Runner", "Runnable", "Buffer", "run_in_child_scope", "SingleBufferServicingRunnable"]


def _public_objects() -> dict[str, object]:
    objects: dict[str, object] = {f"puma.{name}": getattr(puma, name) for name in puma.__all__}
    for namespace in ("attributes", "logging", "environments"):
        module = importlib.import_module(f"puma.{namespace}")
        objects[f"puma.{namespace}"] = module
        objects.update({f"puma.{namespace}.{name}": getattr(module, name) for name in module.__all__})
    return objects


def _doctests() -> dict[str, doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    found: dict[str, doctest.DocTest] = {}
    for name, obj in _public_objects().items():
        if isinstance(obj, str | int | float):
            continue
        # module=False: the public names live in private modules; look at every docstring found
        for test in finder.find(obj, name, module=False, globs={"puma": puma}):
            if test.examples:
                found.setdefault(test.name, test)
    return found


DOCTESTS = _doctests()


def test_the_main_entry_points_have_examples() -> None:
    for name in ENTRY_POINTS:
        assert f"puma.{name}" in DOCTESTS, f"puma.{name} has no example in its docstring"


@pytest.mark.parametrize("name", sorted(DOCTESTS))
def test_docstring_example_runs(name: str) -> None:
    test = DOCTESTS[name]
    test.globs = {"puma": puma}
    output: list[str] = []
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test, out=output.append)
    assert result.failed == 0, "".join(output)
    assert result.attempted > 0
