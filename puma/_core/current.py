"""Which runnable is executing in this thread, and the one wait every caller shares.

Buffers, publishers, logging and scoped attributes need to know whether they
run inside a runnable (to wait on its command channel with their own data, to
raise :class:`~puma.StopRequested` when it is asked to stop, to tag log
records) without importing the runnable layer above them.  This module holds
the thread-local slot the runnable's :class:`~puma._runnable.context.ChildContext`
fills while ``execute`` runs, and the :class:`Context` protocol that layer
implements.

Code outside any runnable (the main program, a user's own thread) waits
through an :class:`OutsideContext`: the same interface with no commands, so a
buffer has one wait for room and one wait for a value, wherever it is used.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

from puma._core.waiting import Deadline, Waker

__all__ = ["Context", "OutsideContext", "current", "set_current", "waiting_context", "where"]


class Context(Protocol):
    """What the lower layers use of the context they wait in."""

    name: str
    runnable: Any  # the runnable executing (None outside any)
    token: int  # the Runner's token of the runnable; 0 outside any runnable
    waker: Waker
    fds: tuple[int, ...]  # descriptors that bring commands (a process runnable's command pipe)
    subscribed: list[Any]  # buffers subscribed here (told when an input's stream breaks)

    @property
    def in_runnable(self) -> bool:
        """True inside a runnable's ``execute``."""
        ...

    def has_command(self) -> bool:
        """True if a message from the parent waits to be serviced."""
        ...

    def service(self, pending: bool = False) -> bool:
        """Handle what the parent sent; return the stop flag."""
        ...

    def check_stop(self, pending: bool = False) -> None:
        """Raise :class:`~puma.StopRequested` if a stop has arrived (servicing commands meanwhile)."""
        ...

    def wait(
        self,
        fds: tuple[int, ...],
        timeout: float | None,
        ready: Callable[[], bool],
        what: str = "",
        readable_is_ready: bool = False,
    ) -> bool:
        """Wait until ``ready()``, servicing commands; False on timeout.

        ``what``: what is waited for, in words ("a value of buffer 'raw'"), for diagnosis.
        ``readable_is_ready``: one of ``fds`` readable ends the wait too.
        """
        ...

    def own(self, exc: BaseException) -> None:
        """Mark ``exc`` as raised here (a note naming the runnable), unless it came from upstream."""
        ...


class _Local(threading.local):
    ctx: Context | None = None  # a class default: no exception raised on threads without a context
    outside: OutsideContext | None = None


_local = _Local()


def current() -> Context | None:
    """The context of the runnable executing in this thread, if any."""
    return _local.ctx


def set_current(ctx: Context | None) -> None:
    """Enter (``ctx``) or leave (``None``) a runnable's context in this thread."""
    _local.ctx = ctx


def waiting_context() -> Context:
    """The context this thread waits in: its runnable's, or this thread's :class:`OutsideContext`."""
    ctx = _local.ctx
    if ctx is not None:
        return ctx
    outside = _local.outside
    if outside is None:
        outside = _local.outside = OutsideContext()
    return outside


def where() -> str:
    """'process 123, thread MainThread' for messages and notes."""
    return f"process {os.getpid()}, thread {threading.current_thread().name}"


class OutsideContext:
    """The wait of code outside any runnable: no commands, no stop; one per thread.

    Its :class:`~puma._core.waiting.Waker` is what a buffer wakes to tell a
    main-program reader or publisher that something changed (a value, room, a
    broken stream).
    """

    name = "the main program"
    runnable = None
    token = 0
    fds: tuple[int, ...] = ()

    def __init__(self) -> None:
        self.waker = Waker()
        self.subscribed: list[Any] = []

    @property
    def in_runnable(self) -> bool:
        return False

    def has_command(self) -> bool:
        return False

    def service(self, pending: bool = False) -> bool:
        return False

    def check_stop(self, pending: bool = False) -> None:
        return None

    def own(self, exc: BaseException) -> None:
        return None

    def wait(
        self,
        fds: tuple[int, ...],
        timeout: float | None,
        ready: Callable[[], bool],
        what: str = "",
        readable_is_ready: bool = False,
    ) -> bool:
        deadline = Deadline(timeout)
        waker = self.waker
        while True:
            waker.clear()
            if ready():
                return True
            remaining = deadline.remaining()
            if remaining is not None and remaining <= 0:
                return False
            if waker.wait(fds, remaining) and readable_is_ready:
                return True
