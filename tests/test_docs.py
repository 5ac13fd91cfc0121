"""The README's quick start runs as written (the demo it starts with: test_demo.py)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@pytest.mark.parametrize("index", range(len(_python_blocks(ROOT / "README.md"))))
def test_readme_python_blocks_run(tmp_path: Path, index: int) -> None:
    script = tmp_path / f"readme_{index}.py"
    script.write_text(_python_blocks(ROOT / "README.md")[index])
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, check=False)
    assert result.returncode == 0, result.stderr
    if index == 0:
        assert result.stdout.strip() == "332833500"
