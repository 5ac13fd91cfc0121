"""The producer/consumer demo (the README's first command), run as a user runs it: as a subprocess.

In threads and in processes under every start method: its result and wording, ``--fail-at``
showing the child's own traceback, and Ctrl-C stopping everything with the producer's real count.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demos" / "producer_consumer_pipeline" / "main.py"

pytestmark = pytest.mark.timeout(120)

ENVS = {
    "thread": (["--env", "thread"], "3 stages in threads"),
    "fork": (["--start-method", "fork"], "3 stages in processes (fork)"),
    "forkserver": (["--start-method", "forkserver"], "3 stages in processes (forkserver)"),
    "spawn": (["--start-method", "spawn"], "3 stages in processes (spawn)"),
}


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO), *args], capture_output=True, text=True, timeout=100, check=False, cwd=ROOT
    )


@pytest.mark.parametrize("env", ENVS)
def test_demo_sums_the_squares_and_says_what_it_did(env: str) -> None:
    args, what = ENVS[env]
    result = run_demo(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{what}: producing 1000 values, squaring them, summing them"
    assert "sent the squarer the command set_offset(0) from the main program; it answered 0" in lines
    assert re.fullmatch(
        rf"{re.escape(what)}: produced 1000 values, squared them, summed them: 332833500 \(as expected\) in [\d.]+ s",
        lines[-1],
    ), result.stdout
    # every stage logs to the one console stream, named by %(runnable)s
    for stage, text in ("producer", "demo: produced 1000 values"), ("sink", "demo: received 1000 values"):
        assert any(stage in row and text in row for row in result.stderr.splitlines()), result.stderr
    assert "Traceback" not in result.stderr


def test_demo_without_arguments_is_quick_and_friendly() -> None:
    started = time.monotonic()
    result = run_demo()
    took = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert re.fullmatch(
        r"3 stages in processes \((fork|forkserver|spawn)\): produced 1000 values, squared them, summed them: "
        r"332833500 \(as expected\) in [\d.]+ s",
        last,
    ), result.stdout
    assert "{" not in result.stdout and "Environment(" not in result.stdout  # words, not a repr or a dict
    assert took < 20, f"the demo took {took:.1f} s"  # a few seconds normally; generous for a loaded machine


@pytest.mark.parametrize("env", ENVS)
def test_demo_fail_at_shows_the_childs_traceback(env: str) -> None:
    args, what = ENVS[env]
    result = run_demo(*args, "--fail-at", "500")
    assert result.returncode == 1, result.stdout + result.stderr
    err = result.stderr
    assert f"{what}: a stage failed; its error, with the traceback from where it was raised:" in err
    assert "Traceback (most recent call last):" in err
    # the child's own frame: the squarer's execute, at the line that raised, with its source
    frame = re.search(r'File "[^"]*main\.py", line \d+, in execute\n\s+raise ValueError\(f"cannot square', err)
    assert frame, err
    assert "\nValueError: cannot square 500\n" in err
    note = re.search(r"raised in runnable 'squarer' \(process (\d+), thread ([^)]+)\)", err)
    assert note, err
    if env != "thread":
        assert note.group(2) == "MainThread"  # raised in the squarer's own process
    else:
        assert note.group(2) == "puma:squarer"
    # the traceback is the demo's last word, shown once: not a second time by the interpreter
    assert err.count("ValueError: cannot square 500") == 1, err


def _read_until_running(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:  # bounded by the test's timeout
        lines.append(line)
        if line.startswith("running"):
            return lines
    pytest.fail(f"the demo ended before it said it was running: {''.join(lines)}")


@pytest.mark.parametrize("to", ["pid", "group"])
@pytest.mark.parametrize("env", ENVS)
def test_demo_ctrl_c_stops_everything_and_reports_the_real_count(env: str, to: str, tmp_path: Path) -> None:
    """SIGINT to the demo (``pid``) or, as a terminal's Ctrl-C does, to its whole process group."""
    args, what = ENVS[env]
    count = 10**9  # far more than it can produce before the SIGINT
    stderr_path = tmp_path / "stderr"
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            # -X faulthandler: should it hang, SIGABRT makes it print where every thread is
            [sys.executable, "-X", "faulthandler", str(DEMO), *args, "--count", str(count)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=ROOT,
            start_new_session=True,  # its own process group, as a shell gives a foreground job
        )
        try:
            head = _read_until_running(proc)
            children = psutil.Process(proc.pid).children(recursive=True)
            if env != "thread":
                assert len(children) >= 3, children  # the three stages at least
            if to == "pid":
                os.kill(proc.pid, signal.SIGINT)
            else:
                os.killpg(proc.pid, signal.SIGINT)
            try:
                rest, _ = proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGABRT)  # the stacks of its threads, to stderr
                proc.wait(10)
                pytest.fail(f"the demo hung after Ctrl-C; its threads:\n{stderr_path.read_text()[-6000:]}")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    out, err = "".join(head) + rest, stderr_path.read_text()
    assert proc.returncode == 130, out + err
    line = re.search(
        rf"{re.escape(what)}: stopped by Ctrl-C after [\d.]+ s; "
        rf"the producer had produced (\d+) of {count} values, the sink had summed (\d+)",
        out,
    )
    assert line, out + err
    produced, summed = int(line.group(1)), int(line.group(2))
    assert 0 <= summed <= produced < count
    # the count is the producer's own, at the moment it stopped: the one it logged
    assert f"demo: stopped after producing {produced} of {count} values" in err, err
    # the Runner's diagnosis is welcome; tracebacks are not
    assert "puma: Ctrl-C; stopping every runnable." in err
    assert "Traceback" not in err and "Traceback" not in out, err
    _gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"children of the demo outlived it: {alive}"
