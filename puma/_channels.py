"""The links between a Runner and each runnable it runs.

A link carries the command channel (parent to child), the control channel
(child to parent: started, command results, the final outcome) and the status
channel (child to parent: user statuses and log records).  The control channel
is separate from the status channel so that no amount of user traffic can
crowd out the final error; neither ever drops a message (pipes block instead).

* :class:`ThreadLink`: in-memory; the child's messages go straight into the
  supervisor's inbox, the parent's wake the child's :class:`~puma._wait.Waker`.
* :class:`ProcessLink` / :class:`ProcessChildLink`: a duplex pipe for commands
  and control, a one-way pipe for statuses, and a one-way "reply" pipe for the
  answers to blocking command calls.

A blocking command call on a process runnable (``runnable.command(...)``) is
answered straight to the calling thread: the caller sends the CALL marked
"direct" and reads the answer from the reply pipe itself, so the round trip is
caller -> child -> caller, with no hop through the supervisor thread and no
future to wake.  One thread at a time does so per runnable (others, and
:meth:`~puma.BoundCommand.submit`, take the supervisor's path).  If a direct
call is abandoned (timeout, Ctrl-C) its answer may still come: the link is
then marked ``orphaned``, later calls take the supervisor's path, and the
supervisor drains the reply pipe, so the child never blocks writing to it.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

from puma import _messages as msg
from puma._errors import NotPicklableError, RunnableNotRunningError, serialize_error
from puma._wait import Poller, Waker

__all__ = ["ChildLink", "ProcessChildLink", "ProcessLink", "ThreadLink"]


class ChildLink(Protocol):
    """What a running runnable uses to talk to its Runner."""

    waker: Waker
    fds: tuple[int, ...]

    def has_message(self) -> bool: ...
    def receive(self) -> tuple[Any, ...]: ...
    def send(self, message: tuple[Any, ...]) -> None: ...
    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None: ...
    def send_error(self, call_id: int, error: Exception, note: str, direct: bool = False) -> None: ...
    def send_status(self, message: tuple[Any, ...]) -> None: ...
    def send_finished(self, error: BaseException | None, stopped: bool) -> None: ...


class ThreadLink:
    """Both ends of the link to a thread runnable (one object, shared memory)."""

    def __init__(self, to_parent: Callable[[tuple[Any, ...]], None]) -> None:
        self.waker = Waker()
        self.fds: tuple[int, ...] = ()
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._to_parent = to_parent

    # parent side
    def post(self, message: tuple[Any, ...]) -> None:
        """Send a command to the child."""
        self._inbox.append(message)
        self.waker.wake()

    # child side
    def has_message(self) -> bool:
        return bool(self._inbox)

    def receive(self) -> tuple[Any, ...]:
        return self._inbox.popleft()

    def send(self, message: tuple[Any, ...]) -> None:
        self._to_parent(message)

    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None:
        self._to_parent((msg.RESULT, call_id, True, result))

    def send_error(self, call_id: int, error: Exception, note: str, direct: bool = False) -> None:
        self._to_parent((msg.RESULT, call_id, False, serialize_error(error, note)))

    send_status = send

    def send_finished(self, error: BaseException | None, stopped: bool) -> None:
        self._to_parent((msg.FINISHED, error, stopped))

    def close(self) -> None:
        self.waker.close()


class ProcessChildLink:
    """The child's end of a :class:`ProcessLink`; pickled into the child process."""

    def __init__(self, control: Connection, status: Connection, reply: Connection) -> None:
        self._control = control
        self._status = status
        self._reply = reply
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._reply_lock = threading.Lock()
        self._poller: Poller | None = None
        self.waker = Waker()
        self.fds: tuple[int, ...] = (control.fileno(),)

    def __getstate__(self) -> dict[str, Any]:
        return {"control": self._control, "status": self._status, "reply": self._reply}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["control"], state["status"], state["reply"])  # type: ignore[misc]

    def has_message(self) -> bool:
        if self._poller is None:
            self._poller = Poller(self.fds)
        return bool(self._poller.poll(0))

    def receive(self) -> tuple[Any, ...]:
        message: tuple[Any, ...] = self._control.recv()
        return message

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self._control.send_bytes(data)

    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None:
        try:
            data = pickle.dumps((msg.RESULT, call_id, True, result), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001
            kind = type(result).__name__
            error = NotPicklableError(f"the command's result ({kind}) cannot be pickled: {exc}")
            data = pickle.dumps((msg.RESULT, call_id, False, serialize_error(error, note)))
        self._answer(data, direct)

    def send_error(self, call_id: int, error: Exception, note: str, direct: bool = False) -> None:
        data = pickle.dumps(
            (msg.RESULT, call_id, False, serialize_error(error, note)), protocol=pickle.HIGHEST_PROTOCOL
        )
        self._answer(data, direct)

    def _answer(self, data: bytes, direct: bool) -> None:
        """A command's answer: to the waiting caller (direct) or to the supervisor."""
        if direct:
            with self._reply_lock:
                self._reply.send_bytes(data)
        else:
            with self._lock:
                self._control.send_bytes(data)

    def send_status(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._status_lock:
            self._status.send_bytes(data)

    def send_finished(self, error: BaseException | None, stopped: bool) -> None:
        frozen = serialize_error(error) if error is not None else None
        self.send((msg.FINISHED, frozen, stopped))

    def close(self) -> None:
        self._control.close()
        self._status.close()
        self._reply.close()


class ProcessLink:
    """The parent's end of the link to a process runnable."""

    def __init__(self, context: Any) -> None:
        # A child sets its parent-death signal through ctypes (_environment._die_with_parent).
        # Imported here, in the parent, a forked child finds it loaded instead of paying
        # some 3 ms to import it (most of what a fork start costs beyond a bare Process).
        import ctypes  # noqa: F401

        self.control, child_control = context.Pipe(duplex=True)
        self.status, child_status = context.Pipe(duplex=False)
        self.reply, child_reply = context.Pipe(duplex=False)
        self.child = ProcessChildLink(child_control, child_status, child_reply)
        self._lock = threading.Lock()
        self._caller = threading.Lock()  # held by the one thread making a direct call
        self._guard = threading.Lock()  # guards _closed and the reply pipe's closing
        self._closed = False
        self._waker: Waker | None = None  # wakes a direct caller when the link closes
        self._reply_poller: Poller | None = None
        self.orphaned = False  # a direct call was abandoned: its answer may still come

    def post(self, message: tuple[Any, ...]) -> None:
        """Send a command to the child (a closed pipe means the child is gone)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self.control.send_bytes(data)

    def call(self, message: tuple[Any, ...], timeout: float | None, name: str) -> tuple[bool, Any] | None:
        """Send a direct CALL and wait, in this thread, for its answer ``(ok, value)``.

        Returns None, having sent nothing, if the call must take the
        supervisor's path instead (another thread is calling, or the link is
        orphaned).  Raises ``TimeoutError`` after ``timeout`` seconds,
        :class:`~puma.RunnableNotRunningError` if the child ends first, and
        ``OSError`` (the child is gone) or a pickling error from sending.
        """
        if self.orphaned or not self._caller.acquire(False):
            return None
        sent = answered = False
        try:
            with self._guard:
                if self._closed:
                    raise RunnableNotRunningError(f"runnable {name!r} has ended")
                if self._waker is None:
                    self._waker = Waker()
                waker = self._waker
            call_id = message[1]
            self.post(message)
            sent = True
            reply = self.reply
            fds = (reply.fileno(),)
            if self._reply_poller is None:
                self._reply_poller = Poller(fds)
            poll = self._reply_poller.poll
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                waker.clear()
                closed = self._closed
                remaining = None if deadline is None else deadline - time.monotonic()
                readable = False
                if not closed and (remaining is None or remaining > 0):
                    readable = bool(waker.wait(fds, remaining))
                try:
                    while readable or poll(0):
                        readable = False
                        answer = reply.recv()
                        if answer[1] == call_id:
                            answered = True
                            return answer[2], answer[3]
                except (EOFError, OSError):
                    answered = True  # the child is gone: nothing more can come
                    raise RunnableNotRunningError(f"runnable {name!r} ended before answering") from None
                if closed:
                    answered = True
                    raise RunnableNotRunningError(f"runnable {name!r} ended before answering")
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"runnable {name!r} did not answer within {timeout} s")
        finally:
            if sent and not answered:
                self.orphaned = True  # its answer may still come: the supervisor drains it
            with self._guard:
                if self._closed:
                    self.reply.close()
                self._caller.release()

    def drain_replies(self) -> None:
        """Discard the answers of abandoned direct calls (the supervisor, once orphaned)."""
        if not self._caller.acquire(False):
            return
        try:
            poller = Poller((self.reply.fileno(),))
            while not self._closed and poller.poll(0):
                self.reply.recv_bytes()
        except (EOFError, OSError):
            pass
        finally:
            self._caller.release()

    def close_child_end(self) -> None:
        """Close the parent's copy of the child's ends once the child has them."""
        self.child.close()

    def close(self) -> None:
        self.control.close()
        self.status.close()
        with self._guard:
            self._closed = True
            if not self._caller.locked():
                self.reply.close()
            elif self._waker is not None:
                self._waker.wake()  # the caller closes the reply pipe on its way out
