"""The examples of docs/frames.md run as written, in threads and (switched) in processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "frames.md"
SWITCH = "puma.ThreadEnvironment()  # or puma.ProcessEnvironment()"

pytestmark = pytest.mark.timeout(120)


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)


@pytest.mark.parametrize("where", ["threads", "processes"])
@pytest.mark.parametrize("index", range(len(_blocks())))
def test_frames_page_example_runs(tmp_path: Path, index: int, where: str) -> None:
    code = _blocks()[index]
    assert SWITCH in code
    if where == "processes":
        code = code.replace(SWITCH, "puma.ProcessEnvironment()")
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, f"docs/frames.md example {index} ({where}):\n{done.stdout}\n{done.stderr}"
    assert done.stdout.strip()
