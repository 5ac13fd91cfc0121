"""docs/batch.md: every Python example runs as written (each checks its own results)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "batch.md"

pytestmark = pytest.mark.timeout(120)


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)


def test_the_doc_has_examples() -> None:
    assert len(_python_blocks()) >= 6


@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_batch_doc_example_runs(tmp_path: Path, index: int) -> None:
    script = tmp_path / f"batch_{index}.py"
    script.write_text(_python_blocks()[index])
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()
