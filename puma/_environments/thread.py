"""The thread environment: runnables run in threads of this process.

A thread child's link is one in-memory object: the parent's messages go into
its inbox and wake its :class:`~puma._core.waiting.Waker`; the child's go
straight to the supervisor through ``deliver``.  So a thread child gives the
supervisor nothing to watch, and it cannot be killed: a stuck thread is
reported and left running as a daemon.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar, overload

from puma import _attributes
from puma._buffers.base import Buffer
from puma._buffers.thread import ThreadBuffer
from puma._core import messages as msg
from puma._core.waiting import Waker
from puma._environments.base import ChildHandle, Environment, ExitStatus, Message, MessageLink
from puma._runnable.context import ChildContext
from puma._runnable.runnable import Runnable, run_child

__all__ = ["ThreadEnvironment", "ThreadHandle", "ThreadLink"]

T = TypeVar("T")


class ThreadLink(MessageLink):
    """Both ends of the link to a thread runnable (one object, shared memory)."""

    def __init__(self, deliver: Callable[[Message], None]) -> None:
        self.waker = Waker()
        self.fds = ()
        self._inbox: deque[Message] = deque()
        self._deliver = deliver  # straight to the supervisor

    # parent side
    def post(self, message: Message) -> None:
        """Send a message to the child."""
        self._inbox.append(message)
        self.waker.wake()

    # child side
    def has_message(self) -> bool:
        return bool(self._inbox)

    def has_buffered_message(self) -> bool:
        return bool(self._inbox)

    def receive_all(self) -> list[Message]:
        inbox = self._inbox
        return [inbox.popleft() for _ in range(len(inbox))]

    def send(self, message: Message) -> None:
        self._deliver(message)

    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None:
        self.send((msg.RESULT, call_id, True, result))  # shared memory: the result itself, not a copy

    def send_finished(self, error: BaseException | None, stopped: bool, lingering: tuple[str, ...] = ()) -> None:
        self.send((msg.FINISHED, error, stopped, lingering))  # the error itself, with its frames

    def close(self) -> None:
        self.waker.close()


class ThreadHandle(ChildHandle):
    """A child running in a thread of this process."""

    kind = "thread"

    def __init__(self, thread: threading.Thread, link: ThreadLink) -> None:
        super().__init__(os.getpid())
        self._thread = thread
        self._link = link
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def post(self, message: Message) -> None:
        if self._closed:
            raise OSError("the thread runnable has ended")
        self._link.post(message)

    def watched(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        return (), ()

    def ready(self, fd: int) -> tuple[list[Message], bool]:
        return [], False

    def remaining_messages(self) -> list[Message]:
        return []  # delivered as they were sent

    def has_exited(self) -> bool:
        # A thread that reported FINISHED is done with puma: it returns at once.
        return True

    def exit_status(self) -> ExitStatus:
        return ExitStatus(None)

    def join(self, timeout: float) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def terminate(self) -> bool:
        return False  # a thread cannot be ended from outside

    def kill(self) -> None:
        return None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if not self._thread.is_alive():  # a stuck thread left running still waits on its link
                self._link.close()


class ThreadEnvironment(Environment):
    """Run runnables in threads of this process. Buffers are thread buffers."""

    @overload
    def buffer(self, item_type: type[T], size: int, name: str) -> Buffer[T]: ...
    @overload
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]: ...
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]:
        return ThreadBuffer(item_type, size, name)

    def __repr__(self) -> str:
        return "ThreadEnvironment()"

    def prepare(self, runnable: Runnable) -> Runnable:
        return _attributes.for_thread(runnable)  # a clone with the attributes' scopes applied

    def launch(
        self,
        child: Runnable,
        token: int,
        deliver: Callable[[Message], None],
        on_change: Callable[[], None],
    ) -> ChildHandle:
        link = ThreadLink(deliver)
        ctx = ChildContext(child, link, token)
        thread = threading.Thread(target=run_child, args=(child, ctx), name=f"puma:{child.name}", daemon=True)
        return ThreadHandle(thread, link)
