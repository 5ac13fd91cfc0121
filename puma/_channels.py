"""The links between a Runner and each runnable it runs.

A link carries the command channel (parent to child), the control channel
(child to parent: started, command results, the final outcome) and the status
channel (child to parent: user statuses and log records).  The control channel
is separate from the status channel so that no amount of user traffic can
crowd out the final error; neither ever drops a message (pipes block instead).

* :class:`ThreadLink`: in-memory; the child's messages go straight into the
  supervisor's inbox, the parent's wake the child's :class:`~puma._wait.Waker`.
* :class:`ProcessLink` / :class:`ProcessChildLink`: a duplex pipe for commands
  and control, a one-way pipe for statuses.
"""

from __future__ import annotations

import pickle
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

from puma import _messages as msg
from puma._errors import NotPicklableError, serialize_error
from puma._wait import Poller, Waker

__all__ = ["ChildLink", "ProcessChildLink", "ProcessLink", "ThreadLink"]


class ChildLink(Protocol):
    """What a running runnable uses to talk to its Runner."""

    waker: Waker
    fds: tuple[int, ...]

    def has_message(self) -> bool: ...
    def receive(self) -> tuple[Any, ...]: ...
    def send(self, message: tuple[Any, ...]) -> None: ...
    def send_result(self, call_id: int, result: Any, note: str) -> None: ...
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

    def send_result(self, call_id: int, result: Any, note: str) -> None:
        self._to_parent((msg.RESULT, call_id, True, result))

    send_status = send

    def send_finished(self, error: BaseException | None, stopped: bool) -> None:
        self._to_parent((msg.FINISHED, error, stopped))

    def close(self) -> None:
        self.waker.close()


class ProcessChildLink:
    """The child's end of a :class:`ProcessLink`; pickled into the child process."""

    def __init__(self, control: Connection, status: Connection) -> None:
        self._control = control
        self._status = status
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._poller: Poller | None = None
        self.waker = Waker()
        self.fds = (control.fileno(),)

    def __getstate__(self) -> dict[str, Any]:
        return {"control": self._control, "status": self._status}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["control"], state["status"])  # type: ignore[misc]

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

    def send_result(self, call_id: int, result: Any, note: str) -> None:
        try:
            data = pickle.dumps((msg.RESULT, call_id, True, result), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001
            error = NotPicklableError(f"the command's result ({type(result).__name__}) cannot be pickled: {exc}")
            data = pickle.dumps((msg.RESULT, call_id, False, serialize_error(error, note)))
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


class ProcessLink:
    """The parent's end of the link to a process runnable."""

    def __init__(self, context: Any) -> None:
        self.control, child_control = context.Pipe(duplex=True)
        self.status, child_status = context.Pipe(duplex=False)
        self.child = ProcessChildLink(child_control, child_status)
        self._lock = threading.Lock()

    def post(self, message: tuple[Any, ...]) -> None:
        """Send a command to the child (a closed pipe means the child is gone)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            self.control.send_bytes(data)

    def close_child_end(self) -> None:
        """Close the parent's copy of the child's ends once the child has them."""
        self.child.close()

    def close(self) -> None:
        self.control.close()
        self.status.close()
