"""The parallel buffer demo runs as a user runs it: chunks filled, shared by workers, results in one region."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demos" / "parallel_buffer" / "main.py"

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize(
    ("args", "last"),
    [
        (["--env", "thread"], "Worker threads have all exited successfully"),
        (["--env", "process", "--start-method", "forkserver"], "Worker processes have all exited successfully"),
        (["--env", "process", "--start-method", "spawn"], "Worker processes have all exited successfully"),
    ],
)
def test_the_demo_transforms_every_chunk_into_the_region(args: list[str], last: str) -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO), *args, "--frames", "40", "--workers", "3", "--chunks", "4", "--rate", "400"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-1] == last
    summary = lines[-2]
    assert "40 frames of 480x640 float32 through a pool of 4 chunks, 3 workers" in summary
    assert "results match; chunks free 4/4" in summary
    counts = re.search(r"frames per worker \[([\d, ]+)\]", summary)
    assert counts is not None and sum(int(n) for n in counts.group(1).split(",")) == 40
