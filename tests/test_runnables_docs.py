"""docs/runnables.md: every Python example runs as written (each checks its own results).

An example whose environment line says ``puma.ThreadEnvironment()  # or puma.ProcessEnvironment()``
runs a second time with that line switched: the one-line switch it promises works.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "runnables.md"

pytestmark = pytest.mark.timeout(120)


SWITCH = "puma.ThreadEnvironment()  # or puma.ProcessEnvironment()"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def _cases() -> list[tuple[int, str]]:
    return [
        (index, where)
        for index, block in enumerate(_python_blocks())
        for where in ("as written", "processes")
        if where == "as written" or SWITCH in block
    ]


def test_the_doc_has_examples() -> None:
    assert len(_python_blocks()) >= 5


@pytest.mark.parametrize(("index", "where"), _cases())
def test_runnables_doc_example_runs(tmp_path: Path, index: int, where: str) -> None:
    code = _python_blocks()[index]
    if where == "processes":
        code = code.replace(SWITCH, "puma.ProcessEnvironment()")
    script = tmp_path / f"runnables_{index}.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()
