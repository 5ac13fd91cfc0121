"""The layout shows the architecture: layers import only downwards, and no module imports in a circle.

Read from the source (every ``import`` statement, including those inside
functions and under ``if TYPE_CHECKING``), so a cycle cannot hide behind a
function-local import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PUMA = Path(__file__).resolve().parent.parent / "puma"

#: Bottom to top. A module may import from its own layer and the layers below it.
LAYERS = [
    "puma._core",  # errors, message kinds, the one wait, the wire codec, the current context, log transport
    "puma._frames",  # shared-memory numpy frames: the pool, its chunks, the shared output region
    "puma._buffers",  # typed bounded buffers: the common face, threads, processes
    "puma._attributes",  # scoped attributes
    "puma._runnable",  # the runnable, its commands and its child-side context
    "puma._environments",  # where runnables run: threads, processes, and the child handle
    "puma._ready",  # ready-made runnables: servicing, command-driven, ticking, multicaster
    "puma._runner",  # the Runner: facade, supervisor, failure policy, child records
    "puma._batch",  # batch map over runnable workers: per-item isolation, deaths, timeouts, retries
    "puma",  # the public surface: puma, puma.attributes, puma.logging
]

MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PUMA.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PUMA.rglob("*.py")}


def _layer(module: str) -> int:
    best = len(LAYERS) - 1
    for index, prefix in enumerate(LAYERS[:-1]):
        if module == prefix or module.startswith(prefix + "."):
            best = index
    return best


def _imports(path: Path, name: str, known: set[str], *, runtime_only: bool) -> set[str]:
    """The puma modules ``path`` imports (a ``from pkg import mod`` names the module itself)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    type_only: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                type_only.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "puma")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            if base.split(".")[0] != "puma":
                continue
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    found.discard(name)
    return {m for m in found if m in known}


def test_no_layer_imports_a_higher_one() -> None:
    modules = _modules()
    known = set(modules)
    wrong = []
    for name, path in sorted(modules.items()):
        for target in sorted(_imports(path, name, known, runtime_only=False)):
            if target == "puma" and name != "puma":
                wrong.append(f"{name} -> {target} (the public surface)")
            elif _layer(target) > _layer(name):
                wrong.append(f"{name} ({LAYERS[_layer(name)]}) -> {target} ({LAYERS[_layer(target)]})")
    assert not wrong, "imports that run up the layers:\n" + "\n".join(wrong)


def test_the_import_graph_has_no_cycle() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(path, name, known, runtime_only=True) for name, path in modules.items()}
    # A package's __init__ that only re-exports is imported by its own modules' imports; a cycle
    # through it is still a cycle, so nothing is excused.
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted(PUMA.rglob("*.py")), ids=lambda p: str(p.relative_to(PUMA.parent)))
def test_no_module_is_too_long_to_read(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.name} has {lines} lines; split it by concern (at most {MAX_LINES})"


def test_the_runner_holds_no_thread_or_process_branch() -> None:
    """What differs between threads and processes lives in the environments' handles and the buffers."""
    import re

    pattern = re.compile(r"is_process|Process(Link|Buffer|Handle|Environment)|Thread(Link|Buffer|Handle)|\.process\b")
    found = []
    for path in sorted((PUMA / "_runner").glob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]  # a docstring example may name both environments
            if pattern.search(code) and "puma.ThreadEnvironment()" not in code:
                found.append(f"{path.name}:{number}: {line.strip()}")
    assert not found, "thread/process knowledge in the Runner:\n" + "\n".join(found)
