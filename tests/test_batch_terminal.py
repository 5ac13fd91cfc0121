"""Ctrl-C in a real terminal (tmux): the first press stops a batch map, its partial results reachable, no orphan."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

SCRIPT = """
import faulthandler, os, signal, sys, time
from puma import batch
faulthandler.register(signal.SIGUSR1, file=open(sys.argv[2] + ".stacks", "w"), all_threads=True)

def slow(x):
    with open(sys.argv[2], "a") as f:
        f.write(f"{os.getpid()}\\n")
    if x >= 4:
        with open(sys.argv[1], "w") as fifo:
            fifo.write(f"LONG {x}\\n")
        time.sleep(30)  # a long input: Ctrl-C must not wait for it
    return x

if __name__ == "__main__":
    fifo = open(sys.argv[1], "w", buffering=1)
    fifo.write("READY\\n")
    try:
        batch.map(slow, range(1000), workers=2, chunk_size=1, environment=sys.argv[3])
    except batch.Interrupted as stopped:
        fifo.write(f"INTERRUPTED {sorted(stopped.results)[:4]}\\n")
"""


def _line(fd: int, timeout: float, pending: list[bytes]) -> str:
    """The next line the script's processes wrote to the FIFO."""
    data = pending.pop(0) if pending else b""
    while b"\n" not in data:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise AssertionError(f"nothing from the script within {timeout} s (so far {data!r})")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise AssertionError(f"the script closed its end (so far {data!r})")
        data += chunk
    line, _, rest = data.partition(b"\n")
    if rest:
        pending.insert(0, rest)
    return line.decode()


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_first_ctrl_c_stops_the_map_and_leaves_no_orphan(tmp_path: Path, kind: str) -> None:
    script, fifo, pids = tmp_path / "job.py", tmp_path / "fifo", tmp_path / "pids"
    script.write_text(SCRIPT)
    os.mkfifo(fifo)
    session = f"puma-batch-{os.getpid()}-{kind}"
    command = f"cd {tmp_path} && {sys.executable} {script} {fifo} {pids} {kind}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "120", "-y", "30", command], check=True)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        pending: list[bytes] = []
        assert _line(fd, 30, pending).startswith("READY")
        # Both workers are in long inputs before the key is pressed.
        assert all(_line(fd, 30, pending).startswith("LONG") for _ in range(2))
        subprocess.run(["tmux", "send-keys", "-t", session, "C-c"], check=True)
        try:
            answer = _line(fd, 15, pending)
        except AssertionError as error:
            screen = subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True)
            for proc in psutil.process_iter(["cmdline"]):  # the script's own process: its threads' stacks
                if str(script) in (proc.info["cmdline"] or []):
                    proc.send_signal(signal.SIGUSR1)
            select.select([], [], [], 1.0)
            stacks = Path(str(pids) + ".stacks").read_text() if Path(str(pids) + ".stacks").exists() else ""
            raise AssertionError(f"{error}; the terminal shows:\n{screen.stdout}\n{stacks}") from None
        assert answer.startswith("INTERRUPTED [0, 1, 2, 3]"), answer  # the partial results are reachable
    finally:
        os.close(fd)
        subprocess.run(["tmux", "kill-session", "-t", session], check=False, capture_output=True)
    if kind == "process":
        workers = {int(p) for p in pids.read_text().split()}
        assert workers
        for pid in workers:
            try:
                psutil.Process(pid).wait(timeout=5)
            except psutil.NoSuchProcess:
                pass
        assert not [pid for pid in workers if psutil.pid_exists(pid)]
