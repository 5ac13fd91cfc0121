"""The documentation site: its pages' examples run, and its API reference lists every public name.

Each Python block of the user pages written for the site (getting started, the
guide's pages on runnables, commands, statuses and errors, the how-to pages,
troubleshooting) is a complete program, run here as a script.  A block whose
environment line says ``puma.ThreadEnvironment()  # or puma.ProcessEnvironment()``
promises that the one-line switch works: it is run as written (threads) and
with that line switched (processes, the default start method), as a user
would.  A block that defines ``test_`` functions is run with pytest.  Other
pages' examples are run by their own tests (``PAGE_TESTS``); a check below
sees that every page with examples has one.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import puma

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

pytestmark = pytest.mark.timeout(150)

#: The pages whose examples this file runs.
PAGES = [
    "index.md",
    "getting-started.md",
    "concepts.md",
    "runnable.md",
    "commands.md",
    "statuses.md",
    "errors.md",
    "troubleshooting.md",
    "contributing.md",
    "how-to/acquisition.md",
    "how-to/service.md",
    "how-to/batch-job.md",
    "how-to/testing.md",
]
#: The marker of an example that works in threads and processes alike.
SWITCH = "puma.ThreadEnvironment()  # or puma.ProcessEnvironment()"
#: The public namespaces: the modules ``puma/<name>.py`` whose name does not start with "_".
NAMESPACES = tuple(sorted(p.stem for p in (ROOT / "puma").glob("*.py") if not p.stem.startswith("_")))


def python_blocks(page: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(encoding="utf-8"), re.S)


def _cases() -> list[Any]:
    cases = []
    for page in PAGES:
        for index, block in enumerate(python_blocks(page)):
            cases.append(pytest.param(page, index, "threads", id=f"{page}-{index}"))
            if SWITCH in block:
                cases.append(pytest.param(page, index, "processes", id=f"{page}-{index}-processes"))
    return cases


def run_example(code: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """Run one example as a user would: a script (or a pytest file) in a folder of its own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if re.search(r"^def test_", code, re.M):
        script = folder / "test_example.py"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
    else:
        script = folder / "example.py"
        command = [sys.executable, str(script)]
    script.write_text(code, encoding="utf-8")
    return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=140, check=False)


@pytest.mark.parametrize(("page", "index", "where"), _cases())
def test_site_example_runs(tmp_path: Path, page: str, index: int, where: str) -> None:
    code = python_blocks(page)[index]
    if where == "processes":
        code = code.replace(SWITCH, "puma.ProcessEnvironment()  # switched from puma.ThreadEnvironment()")
    done = run_example(code, tmp_path)
    report = f"{page} example {index} ({where}):\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, report
    assert done.stdout.strip(), report


def test_the_pages_have_examples() -> None:
    for page in ("getting-started.md", "runnable.md", "commands.md", "statuses.md", "errors.md"):
        assert python_blocks(page), page
    for page in PAGES:
        if page.startswith("how-to/"):
            assert python_blocks(page), page


#: Pages whose examples another test runs.
PAGE_TESTS = {
    "runnables.md": "test_runnables_docs.py",
    "buffers.md": "test_sharing.py",
    "logging.md": "test_logging.py",
    "attributes.md": "test_attributes.py",
    "start-methods.md": "test_start_methods_docs.py",
}


def test_every_example_of_the_docs_is_run_by_a_test() -> None:
    """A page with Python examples is run here, or by a test file that names the page."""
    tests = {path.name: path.read_text(encoding="utf-8") for path in (ROOT / "tests").glob("test_*.py")}
    for path in sorted(DOCS.rglob("*.md")):
        page = path.relative_to(DOCS).as_posix()
        if page in PAGES or not python_blocks(page):
            continue
        owner = PAGE_TESTS.get(page)
        named = [name for name, text in tests.items() if name != Path(__file__).name and page in text]
        assert (owner and page.split("/")[-1] in tests[owner]) or named, f"no test runs the examples of docs/{page}"


def test_examples_that_use_processes_have_the_main_guard() -> None:
    """A script that starts processes is guarded, or spawn and forkserver children would run it again."""
    for path in sorted(DOCS.rglob("*.md")):
        page = path.relative_to(DOCS).as_posix()
        for index, block in enumerate(python_blocks(page)):
            if re.search(r"^def test_", block, re.M):
                continue  # pytest imports test files: their module level is not a main program
            if "ProcessEnvironment(" in block or SWITCH in block:
                assert 'if __name__ == "__main__":' in block, f"docs/{page} example {index} has no __main__ guard"


# --- the API reference -------------------------------------------------------------------------------


def _reference_identifiers() -> list[str]:
    found = []
    for path in sorted((DOCS / "reference").glob("*.md")):
        found += re.findall(r"^::: ([\w.]+)\s*$", path.read_text(encoding="utf-8"), re.M)
    return found


def _public_names() -> dict[str, object]:
    """Every public name, by its public path: ``puma.X`` and ``puma.<namespace>.X``."""
    names: dict[str, object] = {f"puma.{name}": getattr(puma, name) for name in puma.__all__ if name not in NAMESPACES}
    for namespace in NAMESPACES:
        module = importlib.import_module(f"puma.{namespace}")
        names.update({f"puma.{namespace}.{name}": getattr(module, name) for name in module.__all__})
    return names


def test_the_namespaces_are_found() -> None:
    assert {"attributes", "logging", "environments"} <= set(NAMESPACES)


def test_the_reference_lists_every_public_name_and_nothing_else() -> None:
    documented = _reference_identifiers()
    assert len(documented) == len(set(documented)), "a name is documented twice"
    public = _public_names()
    modules = {f"puma.{namespace}" for namespace in NAMESPACES}
    # a name the reference renders under another public path (puma.environments.Environment is
    # puma.Environment) counts once, where it is rendered
    shown = {id(public[name]) for name in documented if name in public}
    missing = [name for name, obj in public.items() if name not in documented and id(obj) not in shown]
    assert not missing, f"public names missing from docs/reference (add a `::: name` line to a page there): {missing}"
    extra = [name for name in documented if name not in public and name not in modules]
    assert not extra, f"docs/reference documents names that are not public: {extra}"
    assert modules <= set(documented), "each namespace's own docstring is on its page"


def test_the_reference_pages_are_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    for path in (DOCS / "reference").glob("*.md"):
        assert f"reference/{path.name}" in nav, path.name


# --- the site ---------------------------------------------------------------------------------------


def test_every_page_is_in_the_site_navigation() -> None:
    """A page of docs/ left out of mkdocs.yml's nav would be built but unreachable (the strict build refuses it)."""
    nav = {
        line.split(":", 1)[1].strip()
        for line in (ROOT / "mkdocs.yml").read_text(encoding="utf-8").splitlines()
        if not line.lstrip().startswith("#") and re.search(r":\s*\S+\.md\s*$", line)
    }
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md") if "_ext" not in path.parts}
    assert pages - nav == set(), "add these pages to the nav of mkdocs.yml"
    assert nav - pages == set(), "the nav of mkdocs.yml names pages that do not exist"


@pytest.mark.timeout(300)
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`, as CI runs it (the test extra installs the docs extra)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(tmp_path / "site")]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "reference" / "runner" / "index.html").exists()
