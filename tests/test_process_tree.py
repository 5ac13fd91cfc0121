"""A runnable's own process tree ends with it: stopped, finished or killed, nothing it started is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest

import puma


class StartsAProcess(puma.Runnable):
    """Starts a long-running grandchild, reports its pid, then waits (or ends at once)."""

    def __init__(self, wait: bool = True) -> None:
        super().__init__("starts-a-process")
        self._wait = wait

    def execute(self) -> None:
        grandchild = subprocess.Popen([sys.executable, "-c", "import threading; threading.Event().wait(120)"])
        self.send_status("grandchild", grandchild.pid)
        self.send_status("pid", os.getpid())
        if self._wait:
            self.wait_for_stop()


def _gone(pid: int) -> bool:
    """True once ``pid`` has ended (waiting a bounded time for the kernel to finish it)."""
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    try:
        proc.wait(timeout=10)
    except psutil.TimeoutExpired:
        return False
    except psutil.NoSuchProcess:
        pass
    return True


@pytest.mark.parametrize("how", ["stopped", "returned", "killed"])
def test_what_a_runnable_started_ends_with_it(process_env: puma.ProcessEnvironment, how: str) -> None:
    runner = puma.Runner(process_env)
    try:
        child = runner.start(StartsAProcess(wait=how != "returned"))
        grandchild = child.wait_status("grandchild", timeout=60)
        if how == "stopped":
            runner.stop(child)
            runner.join(timeout=60)
        elif how == "returned":
            runner.join(timeout=60)
        else:
            os.kill(child.wait_status("pid", timeout=60), signal.SIGKILL)
            with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
                runner.join(timeout=60)
        assert _gone(grandchild), "the runnable's own child process outlived it"
    finally:
        runner.close()  # the error was raised by join() already


def test_the_process_tree_may_be_left_alone(process_env: puma.ProcessEnvironment) -> None:
    env = puma.ProcessEnvironment(process_env.start_method, end_process_tree=False)
    with puma.Runner(env) as runner:
        child = runner.start(StartsAProcess(wait=False))
        grandchild = child.wait_status("grandchild", timeout=60)
        runner.join(timeout=60)
    try:
        assert psutil.pid_exists(grandchild) and psutil.Process(grandchild).status() != psutil.STATUS_ZOMBIE
    finally:
        os.kill(grandchild, signal.SIGKILL)
        _gone(grandchild)
