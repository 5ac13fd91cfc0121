"""demos/batch_calibration: run as a user runs it, under every start method."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import START_METHODS

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demos" / "batch_calibration" / "main.py"

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("method", START_METHODS)
def test_the_demo_calibrates_the_good_images_and_reports_the_bad_ones(method: str) -> None:
    done = subprocess.run(
        [sys.executable, str(DEMO), "--start-method", method],
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "196 calibrated, 4 failed (3 raised, 1 killed its worker)" in out
    assert f"({method})" in out
    report = out.split("failure report:")[1]
    assert "input 41 (41) in task 'subtract_dark': ValueError" in report
    assert "input 97 (97) in task 'subtract_dark': ValueError" in report
    assert "input 160 (160) in task 'mask_bad_pixels': ArithmeticError" in report
    assert "input 123 (123): WorkerDied" in report and "SIGKILL" in report and "poison pill" in report
    assert "clipboard: {'input': 41, 'name': 'frame-041.raw'" in report
    assert 'main.py", line' in report and "in subtract_dark" in report  # the worker's own traceback
    assert "worker.py" not in report  # it starts in the task, not in puma
