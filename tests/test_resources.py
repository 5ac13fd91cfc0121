"""Leaving a Runner gives back what it opened at once, not when the garbage collector runs.

The cyclic collector is disabled while these tests count: pipes, sockets and
named semaphores must be closed by the Runner itself.  A runnable handle kept
after its Runner closed still answers ``status()`` and holds no descriptor.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest

import puma


class Producer(puma.Runnable):
    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("producer", outputs=[out])
        self._out = out

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            pub.publish_many(range(100))


class Sink(puma.Runnable):
    def __init__(self, inp: puma.Buffer[int]) -> None:
        super().__init__("sink")
        self._in = inp

    @puma.run_in_child_scope
    def ping(self) -> str:
        return "pong"

    def execute(self) -> None:
        self.send_status("total", sum(self._in.subscribe()))
        self.wait_for_stop()  # still there for its command


def _fds() -> int:
    """This process's open descriptors, but for multiprocessing's shared-memory heap.

    ``multiprocessing.heap`` keeps one descriptor per arena (``/dev/shm/pym-*``,
    unlinked at once) for the life of the program, and adds an arena whenever
    its free blocks are too small: a fresh process grows it while these tests
    count, whoever allocates.  That heap is the standard library's, shared by
    every ``RawArray``; what is counted here is what puma itself opens.
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used, closed since
        if not os.path.basename(target).startswith("pym-"):
            count += 1
    return count


def _semaphores() -> set[str]:
    """The semaphores this process holds that still have a name in /dev/shm.

    Read from this process's own memory map, not by listing /dev/shm, which
    other programs on the machine fill and empty meanwhile.  (A semaphore
    already unlinked, as fork's are at once, shows as "(deleted)": it leaves
    nothing behind.)
    """
    with open(f"/proc/{os.getpid()}/maps") as maps:
        paths = {line.split(None, 5)[5].strip() for line in maps if "/dev/shm/sem." in line}
    return {path for path in paths if not path.endswith("(deleted)")}


@pytest.fixture
def no_cyclic_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def _run(env: puma.Environment) -> Sink:
    with puma.Runner(env) as runner:
        raw = env.buffer(int, 8, "raw")
        runner.start(Producer(raw))
        sink = runner.start(Sink(raw))
        assert sink.ping() == "pong"  # a direct command call opens the reply path too
        assert sink.wait_status("total", timeout=30) == 4950
    return sink


def test_closed_runners_leave_no_descriptor_or_semaphore_behind(env: puma.Environment, no_cyclic_gc: None) -> None:
    _run(env)  # the first one starts what lives as long as the program (a fork server, the main wait)
    fds, semaphores = _fds(), _semaphores()
    kept = [_run(env) for _ in range(5)]  # the handles are kept, as the README's example does
    assert _fds() == fds, "descriptors left open by closed Runners"
    assert _semaphores() == semaphores, "named semaphores left in /dev/shm by closed Runners"
    assert [sink.status("total") for sink in kept] == [4950] * 5  # the handles still answer


def test_a_handle_kept_after_its_runner_closed_refuses_commands_clearly(env: puma.Environment) -> None:
    sink = _run(env)
    assert sink.status("total") == 4950
    with pytest.raises(puma.RunnableNotRunningError, match="has ended"):
        sink.ping()
