"""``import puma`` is cheap, and a process child imports only what it runs (issue #11: start-up cost).

The public names load on first use, so a spawn or forkserver child, which
re-imports the main module (and so ``import puma``), does not import the
Runner, its supervisor or the ready-made runnables it never uses.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest

import puma
from puma._environments.process import CHILD_MODULES

PARENT_ONLY = ("puma._runner.runner", "puma._runner.supervisor", "puma._ready.multicaster", "puma.logging")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return set(out.split())


@pytest.mark.timeout(60)
def test_import_puma_loads_no_runner_and_names_load_on_first_use() -> None:
    loaded = _modules_after("import puma")
    assert not loaded & set(PARENT_ONLY)
    assert "puma._runner.runner" in _modules_after("import puma\npuma.Runner")


@pytest.mark.timeout(60)
def test_what_a_child_runs_does_not_import_the_runner() -> None:
    loaded = _modules_after("import puma\n" + "\n".join(f"import {m}" for m in CHILD_MODULES))
    assert not loaded & set(PARENT_ONLY)


def test_lazily_loaded_names_are_public_and_pickle_as_puma_names() -> None:
    for name in ("Runner", "Buffer", "UsageError", "SingleBufferServicingRunnable"):
        obj = getattr(puma, name)
        assert obj.__module__ == "puma", name
        assert pickle.loads(pickle.dumps(obj)) is obj
    assert set(puma.__all__) <= set(dir(puma))


class ReportModules(puma.Runnable):
    """Publishes the puma modules its child has imported."""

    def __init__(self, out: puma.Buffer[list[str]]) -> None:
        super().__init__("report-modules", outputs=[out])
        self._out = out

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            pub.publish(sorted(m for m in sys.modules if m.startswith("puma")))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_a_spawn_or_forkserver_child_does_not_import_the_runner(method: str) -> None:
    env = puma.ProcessEnvironment(method)
    out = env.buffer(list, 1, "modules")
    with puma.Runner(env) as runner:
        runner.start(ReportModules(out))
        seen = next(iter(out.subscribe()))
        runner.join()
    assert "puma._runnable.runnable" in seen
    assert not set(seen) & set(PARENT_ONLY)
