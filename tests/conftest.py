"""Shared fixtures: every behaviour runs on each environment, with leak checks after each test.

* ``env``: a ThreadEnvironment, or a ProcessEnvironment per start method
  (fork, forkserver, spawn), so one test body covers all four.
* ``process_env``: the three process start methods only.
* An autouse fixture fails a test that leaves child processes or puma threads
  behind.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import re
import signal
import threading
from collections.abc import Iterator

import psutil
import pytest

import puma
from puma._buffers.process import live_process_buffers
from puma._core import signals as _signals

START_METHODS = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]
ENVIRONMENTS = ["thread", *START_METHODS]

# A suite started with Ctrl-C ignored (a background job of a non-interactive shell) passes
# that on to every program it starts, and Python then installs no KeyboardInterrupt handler:
# the tests that press Ctrl-C on a demo or a script expect a terminal's default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# The main thread's first sleep in puma starts the watcher that lets a signal wake it (once per
# process, for its life: its pipe and thread are not a test's leak).
_signals.watching()


def make_env(kind: str) -> puma.Environment:
    """The environment named ``kind``: "thread" or a start method."""
    if kind == "thread":
        return puma.ThreadEnvironment()
    return puma.ProcessEnvironment(kind)


@pytest.fixture(params=ENVIRONMENTS)
def env(request: pytest.FixtureRequest) -> puma.Environment:
    """Each environment in turn: thread, fork, forkserver, spawn."""
    return make_env(request.param)


@pytest.fixture(params=START_METHODS)
def process_env(request: pytest.FixtureRequest) -> puma.ProcessEnvironment:
    """Each process start method in turn."""
    return puma.ProcessEnvironment(request.param)


def _puma_children() -> list[psutil.Process]:
    """Our child processes, except multiprocessing's long-lived helpers (forkserver, resource tracker)."""
    out = []
    for child in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(child.cmdline())
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        if "forkserver" in cmdline or "resource_tracker" in cmdline:
            continue
        out.append(child)
    return out


_PUMA_SEGMENT = re.compile(r"puma-\d+-[0-9a-f]{12}$")


def _shared_memory_names() -> set[str]:
    """Shared memory of ours named in /dev/shm, semaphores aside (a live process buffer's are checked below).

    Ours: mapped in this process and not unlinked, or named as puma names a frame pool's segment made
    here (``puma-<this pid>-<12 hex digits>``): other programs fill and empty /dev/shm meanwhile.
    """
    try:
        with open(f"/proc/{os.getpid()}/maps") as maps:
            mapped = {line.split(None, 5)[5].strip() for line in maps if "/dev/shm/" in line}
        mine = f"puma-{os.getpid()}-"
        named = {f"/dev/shm/{n}" for n in os.listdir("/dev/shm") if n.startswith(mine) and _PUMA_SEGMENT.match(n)}
    except OSError:
        return set()
    return {p for p in mapped | named if "/dev/shm/sem." not in p and not p.endswith("(deleted)")}


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """After each test: no puma child process, no puma thread, no process buffer (its semaphores), nothing in /dev/shm.

    A process buffer owns named semaphores; under spawn and forkserver they live in /dev/shm until
    the buffer is collected, so a buffer kept alive past its test is a leaked semaphore.
    """
    before = {id(b) for b in live_process_buffers()}
    shm_before = _shared_memory_names()
    yield
    gc.collect()
    shm_left = _shared_memory_names() - shm_before
    if shm_left:
        pytest.fail(f"test left shared memory named in /dev/shm: {sorted(shm_left)}")
    kept = [b for b in live_process_buffers() if id(b) not in before]
    if kept:
        pytest.fail(f"test left process buffers (and their semaphores) alive: {kept}")
    children = _puma_children()
    if children:
        _gone, alive = psutil.wait_procs(children, timeout=5)
        if alive:
            for proc in alive:
                proc.kill()
            pytest.fail(f"test left child processes running: {[p.pid for p in alive]}")
    leftover = [
        t
        for t in threading.enumerate()
        if t.name.startswith("puma") and t.name != _signals.WATCHER_NAME and t.is_alive()
    ]
    for thread in leftover:
        thread.join(5)
    leftover = [t.name for t in leftover if t.is_alive()]
    if leftover:
        pytest.fail(f"test left puma threads running: {leftover}")
