"""An environment written from puma's public pieces drives a Runner like the built-in ones.

``PipeEnvironment`` runs each runnable in a thread, but its child talks to the
parent only through an OS pipe of pickled messages, and a child can "crash"
(its pipe closes without a FINISHED, exit code -11): the Runner must start it,
run its commands, report its raised error with its traceback, and report its
death with the signal, without knowing anything about it but its
``ChildHandle``.
"""

from __future__ import annotations

import os
import pickle
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

import puma
from puma._core.waiting import Waker  # the one wait primitive every child sleeps on
from puma.environments import ChildHandle, Environment, ExitStatus, Message, MessageLink, serve_child

_LENGTH = struct.Struct("!I")


class _Crash(BaseException):
    """Ends a fake child without a word to its parent: what a SIGSEGV does to a process."""


_dying: set[int] = set()  # threads whose fake child dies at its next message to the parent


class _PipeChildLink(MessageLink):
    """The child end: the parent's messages in a deque (waking the child), the child's into a pipe."""

    def __init__(self, write_fd: int) -> None:
        self.waker = Waker()
        self.fds = ()
        self.inbox: deque[Message] = deque()
        self._write_fd = write_fd
        self._lock = threading.Lock()

    def has_message(self) -> bool:
        return bool(self.inbox)

    def receive_all(self) -> list[Message]:
        return [self.inbox.popleft() for _ in range(len(self.inbox))]

    def send(self, message: Message) -> None:
        if threading.get_ident() in _dying:
            raise _Crash  # out through puma's child loop, which reports nothing more
        data = pickle.dumps(message)
        with self._lock:
            os.write(self._write_fd, _LENGTH.pack(len(data)) + data)


class _PipeHandle(ChildHandle):
    kind = "pipe child"

    def __init__(self, runnable: puma.Runnable, token: int) -> None:
        super().__init__(os.getpid())
        self._read_fd, write_fd = os.pipe()
        self.link = _PipeChildLink(write_fd)
        self._buf = b""
        self._eof = False
        self.crashed = False
        self._thread = threading.Thread(target=self._main, args=(runnable, token, write_fd), daemon=True)

    def _main(self, runnable: puma.Runnable, token: int, write_fd: int) -> None:
        try:
            serve_child(runnable, self.link, token)
        except _Crash:
            self.crashed = True
            _dying.discard(threading.get_ident())
        finally:
            os.close(write_fd)  # the parent sees its end: after FINISHED, or instead of it (a crash)

    def start(self) -> None:
        self._thread.start()

    def post(self, message: Message) -> None:
        if self._eof:
            raise OSError("the pipe child is gone")
        self.link.inbox.append(message)
        self.link.waker.wake()

    def watched(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return ((), ()) if self._eof else ((self._read_fd,), ())

    def _read(self) -> list[Message]:
        chunk = os.read(self._read_fd, 1 << 16)
        if not chunk:
            self._eof = True
        self._buf += chunk
        messages = []
        while len(self._buf) >= 4:
            (size,) = _LENGTH.unpack_from(self._buf)
            if len(self._buf) < 4 + size:
                break
            messages.append(pickle.loads(self._buf[4 : 4 + size]))
            self._buf = self._buf[4 + size :]
        return messages

    def ready(self, fd: int) -> tuple[list[Message], bool]:
        messages = self._read()
        return messages, self._eof

    def remaining_messages(self) -> list[Message]:
        return []  # ready() reads every whole message there

    def has_exited(self) -> bool:
        return not self._thread.is_alive() or self._eof

    def exit_status(self) -> ExitStatus:
        return ExitStatus(-11 if self.crashed else 0)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def terminate(self) -> bool:
        return False

    def kill(self) -> None:
        return None

    def close(self) -> None:
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1


class PipeEnvironment(Environment):
    """Runnables in threads that speak to their Runner only through a pipe."""

    def __init__(self) -> None:
        self._threads = puma.ThreadEnvironment()
        self.handles: list[_PipeHandle] = []

    def buffer(self, item_type: Any, size: int, name: str) -> puma.Buffer[Any]:
        return self._threads.buffer(item_type, size, name)

    def prepare(self, runnable: puma.Runnable) -> puma.Runnable:
        return self._threads.prepare(runnable)

    def launch(
        self, child: puma.Runnable, token: int, deliver: Callable[[Message], None], on_change: Callable[[], None]
    ) -> ChildHandle:
        handle = _PipeHandle(child, token)
        self.handles.append(handle)
        return handle


class Worker(puma.Runnable):
    def __init__(self, out: puma.Buffer[int] | None = None) -> None:
        super().__init__("worker", outputs=[out] if out is not None else [])
        self._out = out

    @puma.run_in_child_scope
    def add(self, a: int, b: int) -> int:
        return a + b

    @puma.run_in_child_scope
    def fail(self) -> None:
        raise LookupError("no such thing")

    @puma.run_in_child_scope
    def crash(self) -> None:
        _dying.add(threading.get_ident())  # its answer is never sent: the child "dies" instead

    def execute(self) -> None:
        if self._out is not None:
            with self.publisher(self._out) as pub:
                pub.publish(7)
        self.send_status("ready", True)
        self.wait_for_stop()


class Raiser(puma.Runnable):
    def execute(self) -> None:
        raise ValueError("raised in a pipe child")


def test_a_runner_starts_commands_and_stops_a_runnable_of_a_custom_environment() -> None:
    env = PipeEnvironment()
    with puma.Runner(env) as runner:
        out = env.buffer(int, 4, "out")
        worker = runner.start_blocking(Worker(out), timeout=30)
        assert worker.wait_status("ready", timeout=30) is True
        assert worker.add(2, 3) == 5
        assert worker.add.submit(4, 5).result(timeout=30) == 9
        with pytest.raises(LookupError, match="no such thing"):
            worker.fail()
        assert worker.add(1, 1) == 2  # a command that raised does not harm the runnable
        assert list(out.subscribe()) == [7]
        runner.stop(worker)
        runner.join(timeout=30)
    assert not runner.is_alive(worker)


def test_an_error_raised_in_a_custom_environment_reaches_join_with_its_traceback() -> None:
    env = PipeEnvironment()
    with pytest.raises(ValueError, match="raised in a pipe child") as info:
        with puma.Runner(env) as runner:
            runner.start(Raiser("raiser"))
            runner.join(timeout=30)
    assert "raise ValueError" in "".join(__import__("traceback").format_tb(info.value.__traceback__))
    assert any("raiser" in note for note in getattr(info.value, "__notes__", []))


def test_a_death_in_a_custom_environment_is_reported_with_its_signal_and_stops_the_rest() -> None:
    env = PipeEnvironment()
    with pytest.raises(puma.ChildDiedError, match="SIGSEGV") as info:
        with puma.Runner(env) as runner:
            other = runner.start_blocking(Worker(), timeout=30)
            victim = runner.start_blocking(Worker(), timeout=30)
            with pytest.raises(puma.RunnableNotRunningError):
                victim.crash()  # it dies before answering
            runner.join(timeout=30)
    assert info.value.exitcode == -11
    assert not runner.is_alive(other)  # the default policy stopped the other one
