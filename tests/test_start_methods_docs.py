"""docs/start-methods.md: every Python example runs as written, under every start method.

An example that asks for the default start method (``puma.ProcessEnvironment()``
or ``ProcessEnvironment(preload=...)``) is run once per start method: a small
wrapper makes that method the default for the example's run, then runs the
example as ``__main__`` (spawn and forkserver children re-import the example
itself, as they would a user's script).  Examples that name a start method run
as they are, once per start method too (the wrapper changes nothing for them).
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "start-methods.md"

pytestmark = pytest.mark.timeout(120)

START_METHODS = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]

WRAPPER = """\
import runpy
import sys

import puma._environments.process as process

method = sys.argv[1]
process.default_start_method = lambda: method  # the example's default, for this run
sys.argv = [sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_doc_has_examples() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 3
    text = "".join(blocks)
    for needle in ('if __name__ == "__main__":', "preload=", "start_all(", "end_process_tree="):
        assert needle in text, needle


@pytest.mark.parametrize("method", START_METHODS)
@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_start_methods_doc_example_runs(tmp_path: Path, index: int, method: str) -> None:
    script = tmp_path / f"start_methods_{index}.py"
    script.write_text(_python_blocks()[index], encoding="utf-8")
    wrapper = tmp_path / "run_with_default.py"
    wrapper.write_text(WRAPPER, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(wrapper), method, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, f"example {index} under {method}:\n{result.stdout}\n{result.stderr}"
    assert result.stdout.strip()
