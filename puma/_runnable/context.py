"""The child side of a running runnable: its link to the parent and its one wait.

While a runnable executes, its thread holds a :class:`ChildContext` (a
thread-local).  Buffers and publishers look it up to learn whether they run
inside a runnable, to wait on the runnable's command channel together with
their own data, and to raise :class:`~puma.StopRequested` when asked to stop.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from puma._core import messages as msg
from puma._core.errors import SerializedError, StopRequested, deserialize_error
from puma._core.waiting import Waker

if TYPE_CHECKING:
    from puma._buffers.base import Buffer, Publisher
    from puma._environments.channels import ChildLink
    from puma._runnable.runnable import Runnable

__all__ = ["ChildContext", "current"]


class _Local(threading.local):
    ctx: ChildContext | None = None  # a class default: no exception raised on threads without a context


_local = _Local()
_command_function: Callable[[type[Any], str], Callable[..., Any]] | None = None


def current() -> ChildContext | None:
    """The context of the runnable executing in this thread, if any."""
    return _local.ctx


def where() -> str:
    """'process 123, thread MainThread' for messages and notes."""
    return f"process {os.getpid()}, thread {threading.current_thread().name}"


class ChildContext:
    """Everything a running runnable needs from puma, on the child side."""

    def __init__(self, runnable: Runnable, link: ChildLink, token: int) -> None:
        self.runnable = runnable
        self.name = runnable.name
        self.link = link
        self.token = token
        self.waker: Waker = link.waker
        self.fds: tuple[int, ...] = link.fds
        self.stop_requested = False
        self.publishers: dict[int, Publisher[Any]] = {}
        self.subscribed: list[Buffer[Any]] = []
        self._note = ""

    @property
    def note(self) -> str:
        """'raised in runnable 'name' (process 123, thread MainThread)', for errors raised here.

        Made when first needed (from the runnable's own thread), not at start.
        """
        if not self._note:
            self._note = f"raised in runnable {self.name!r} ({where()})"
        return self._note

    def __enter__(self) -> ChildContext:
        _local.ctx = self
        return self

    def own(self, exc: BaseException) -> None:
        """Mark ``exc`` as raised in this runnable (a note naming it, an origin), unless it came from upstream.

        Done where the error is first seen, so every copy of it (the one a
        publisher completes its stream with, the one reported to the parent) is
        recognised as one error.
        """
        if hasattr(exc, "_puma_origin"):  # raised here already, or received from upstream
            return
        exc.add_note(self.note)
        try:
            exc._puma_origin = f"{self.name}:{os.getpid()}:{id(exc)}"  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001, S110 - an exception without a __dict__
            pass

    def __exit__(self, *exc: object) -> None:
        _local.ctx = None

    def service(self, pending: bool = False) -> bool:
        """Handle every message from the parent there now; return the stop flag.

        ``pending``: the caller knows a message is there (its wait said the
        command pipe is readable), so no need to look.  A process link takes
        every message there in one read; one that comes later is handled at
        the next call or wait.
        """
        link = self.link
        if pending or link.has_message():
            for message in link.receive_all():
                kind = message[0]
                if kind == msg.STOP:
                    self.stop_requested = True
                elif kind == msg.CALL:
                    self._run_command(message[1], message[2], message[3], message[4], len(message) > 5 and message[5])
                elif kind == msg.INPUT_FAILED:
                    self._input_failed(message[1], message[2])
        return self.stop_requested

    def _input_failed(self, key: str, error: Any) -> None:
        """A publisher of the input buffer ``key`` died mid-value: its stream ends with ``error``."""
        failure = deserialize_error(error) if isinstance(error, SerializedError) else error
        for buffer in self.subscribed:
            if getattr(buffer, "_key", None) == key:
                buffer._failure = failure  # type: ignore[attr-defined]

    def check_stop(self, pending: bool = False) -> None:
        """Raise :class:`StopRequested` if a stop has arrived (servicing commands meanwhile)."""
        if self.service(pending):
            raise StopRequested

    def wait(self, fds: tuple[int, ...], timeout: float | None, ready: Callable[[], bool]) -> bool:
        """Wait until ``ready()`` is true, servicing commands; False on timeout.

        Raises :class:`StopRequested` when a stop arrives first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        control = self.fds  # a process runnable's command pipe; () for a thread runnable
        all_fds = control + fds
        waker = self.waker
        service = True
        pending = False
        while True:
            waker.clear()
            if service:
                self.check_stop(pending)
            if ready():
                return True
            remaining = None
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
            readable = waker.wait(all_fds, remaining)
            # Commands reach a process runnable only through its command pipe: when
            # only data woke us, there is nothing to service (and no poll to pay).
            pending = bool(control) and control[0] in readable
            service = pending or not readable or not control

    def _run_command(
        self, call_id: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], direct: bool = False
    ) -> None:
        """Run one command and send its answer (``direct``: to the caller waiting on the reply pipe)."""
        global _command_function
        if _command_function is None:
            from puma._runnable.commands import command_function  # here: _commands imports this module

            _command_function = command_function
        try:
            function = _command_function(type(self.runnable), name)
            result = function(self.runnable, *args, **kwargs)
        except StopRequested:
            raise  # the command waited in puma and a stop came: the runnable stops
        except BaseException as exc:  # noqa: BLE001 - the caller gets it back (even SystemExit), the runnable goes on
            self.link.send_error(call_id, exc, self.note, direct)
            return
        self.link.send_result(call_id, result, self.note, direct)
