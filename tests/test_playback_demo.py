"""The playback demo runs as written, in a thread and in a process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demos" / "playback_pipeline" / "main.py"

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("args", [["--env", "thread"], ["--env", "process", "--start-method", "forkserver"]])
def test_playback_demo_pauses_resumes_seeks_and_finishes(args: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, str(DEMO), *args, "--frames", "60", "--rate", "100"],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "paused at frame 24; after 0.3 s the source is still at frame 24" in out
    assert "seek(12) at frame 36: replaying from frame 12" in out
    assert "recorder kept 84 frames: 0..35, then 12..59" in out
    assert "statistics saw 84 frames" in out
    assert "OK: took" in out
