"""The README's quick start and the demo run as written."""

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


@pytest.mark.parametrize(
    "args",
    [
        ["--env", "thread"],
        ["--env", "process", "--start-method", "fork"],
        ["--env", "process", "--start-method", "forkserver"],
        ["--env", "process", "--start-method", "spawn"],
    ],
)
def test_demo_pipeline_gives_identical_results(args: list[str]) -> None:
    demo = ROOT / "demos" / "producer_consumer_pipeline" / "main.py"
    result = subprocess.run(
        [sys.executable, str(demo), *args], capture_output=True, text=True, timeout=100, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "received 1000 values, sum of squares 332833500 (expected 332833500)" in result.stdout
    assert "command set_offset(0) returned 0" in result.stdout
    # every stage logs to the one console stream, named by %(runnable)s
    for line in ("producer", "demo: produced 1000 values"), ("sink", "demo: received 1000 values"):
        assert any(line[0] in row and line[1] in row for row in result.stderr.splitlines()), result.stderr


def test_demo_reports_a_failure_with_its_origin() -> None:
    demo = ROOT / "demos" / "producer_consumer_pipeline" / "main.py"
    result = subprocess.run(
        [sys.executable, str(demo), "--fail-at", "500"], capture_output=True, text=True, timeout=100, check=False
    )
    assert result.returncode == 1
    assert "ValueError('cannot square 500')" in result.stdout
    assert "raised in runnable 'squarer'" in result.stdout
