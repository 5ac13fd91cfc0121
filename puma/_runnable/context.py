"""The child side of a running runnable: its link to the parent and its one wait.

While a runnable executes, its thread holds a :class:`ChildContext` (a
thread-local).  Buffers and publishers look it up to learn whether they run
inside a runnable, to wait on the runnable's command channel together with
their own data, and to raise :class:`~puma.StopRequested` when asked to stop.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from puma._buffers.base import Buffer, Publisher
from puma._core import current as _current
from puma._core import messages as msg
from puma._core.current import where
from puma._core.errors import SerializedError, StopRequested, deserialize_error, visible_exit
from puma._core.waiting import Deadline, Waker
from puma._runnable.commands import command_function
from puma._runnable.inflight import InputLedger

__all__ = ["ChildContext", "ChildLink", "current"]


class ChildLink(Protocol):
    """What a running runnable uses to talk to its Runner (each environment provides one)."""

    waker: Waker
    fds: tuple[int, ...]

    def has_message(self) -> bool: ...
    def has_buffered_message(self) -> bool: ...
    def receive_all(self) -> list[tuple[Any, ...]]: ...
    def send(self, message: tuple[Any, ...]) -> None: ...
    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None: ...
    def send_error(self, call_id: int, error: BaseException, note: str, direct: bool = False) -> None: ...
    def send_status(self, message: tuple[Any, ...]) -> None: ...
    def send_finished(self, error: BaseException | None, stopped: bool, lingering: tuple[str, ...] = ()) -> None: ...


def current() -> ChildContext | None:
    """The context of the runnable executing in this thread, if any."""
    ctx = _current.current()
    return ctx if isinstance(ctx, ChildContext) else None


class ChildContext:
    """Everything a running runnable needs from puma, on the child side."""

    def __init__(self, runnable: Any, link: ChildLink, token: int) -> None:
        self.runnable = runnable
        self.name = runnable.name
        self.link = link
        self.token = token
        self.waker: Waker = link.waker
        self.fds: tuple[int, ...] = link.fds
        self.stop_requested = False
        self.publishers: dict[int, Publisher[Any]] = {}
        # Commands run one at a time, in the order sent: while the runnable is inside a command,
        # a value, a tick or on_start (busy), a wait still sees a stop, but the commands that
        # arrive wait here until the current step returns.
        self._busy = 0
        self._deferred: deque[tuple[Any, ...]] = deque()
        self._command = ""  # the command running now, for diagnosis
        self._where_asked = False  # the parent asked what it is doing (answered at the next look)
        self._waiting = ""  # what its one wait waits for now ("" while in its own code)
        self.subscribed: list[Buffer[Any]] = []
        self._note = ""
        # A runnable its Runner may restart: its inputs are followed (see puma._runnable.inflight).
        keeps = getattr(runnable, "_puma_keeps_outputs", False)
        stash, journals = getattr(runnable, "_puma_stash", None), getattr(runnable, "_puma_journals", None)
        self.ledger = InputLedger(stash, journals) if keeps else None

    @property
    def note(self) -> str:
        """'raised in runnable 'name' (process 123, thread MainThread)', for errors raised here.

        Made when first needed (from the runnable's own thread), not at start.
        """
        if not self._note:
            self._note = f"raised in runnable {self.name!r} ({where()})"
        return self._note

    def __enter__(self) -> ChildContext:
        _current.set_current(self)
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
        _current.set_current(None)

    @property
    def in_runnable(self) -> bool:
        """Always True: this is a runnable's context."""
        return True

    def has_command(self) -> bool:
        """True if a message from the parent waits to be serviced, or a stop seen is not yet acted on."""
        return self.stop_requested or self.link.has_message()

    def service(self, pending: bool = False, look: bool = True) -> bool:
        """Handle every message from the parent there now; return the stop flag.

        ``pending``: the caller knows a message is there (its wait said the
        command pipe is readable), so no need to look.  ``look=False``: only
        messages read already count (the caller is about to poll the command
        pipe).  A process link takes every message there in one read; one
        that comes later is handled at the next call or wait.
        """
        link = self.link
        if pending or (link.has_message() if look else link.has_buffered_message()):
            for message in link.receive_all():
                kind = message[0]
                if kind == msg.STOP:
                    self.stop_requested = True
                elif kind == msg.CALL:
                    self._deferred.append(message)
                elif kind == msg.INPUT_FAILED:
                    self._input_failed(message[1], message[2])
                elif kind == msg.WHERE:
                    self._where_asked = True
        if self._deferred and not self._busy:
            self._run_commands()  # what was sent before the question runs first
        if self._where_asked:  # answered here, or from the wait inside a command that blocks
            self._where_asked = False
            self.link.send((msg.ACTIVITY, self.activity()))
        return self.stop_requested

    def activity(self) -> str:
        """What the runnable is doing, in words (answered while it waits in puma)."""
        where = f"in command {self._command!r}, " if self._command else ""
        waiting = self._waiting or "a command or a stop"
        return f"{where}waiting for {waiting}"

    def enter_step(self) -> None:
        """The runnable enters a step of its own (a command, a value, a tick, on_start): no command starts inside."""
        self._busy += 1

    def leave_step(self) -> None:
        """The current step returned: commands that came meanwhile run at the next look."""
        self._busy -= 1

    def _run_commands(self) -> None:
        """Run the commands waiting, one at a time, in the order sent."""
        deferred = self._deferred
        while deferred and not self._busy:
            message = deferred.popleft()
            self._busy += 1
            self._command = message[2]
            try:
                self._run_command(message[1], message[2], message[3], message[4], len(message) > 5 and message[5])
            finally:
                self._busy -= 1
                self._command = ""

    def _input_failed(self, key: str, error: Any) -> None:
        """A publisher of the input buffer ``key`` died mid-value: its stream ends with ``error``."""
        failure = deserialize_error(error) if isinstance(error, SerializedError) else error
        for buffer in self.subscribed:
            supervision = buffer.supervision
            if supervision.key == key:
                supervision.fail_readers_here(failure)

    def check_stop(self, pending: bool = False) -> None:
        """Raise :class:`StopRequested` if a stop has arrived (servicing commands meanwhile)."""
        if self.service(pending):
            raise StopRequested

    def wait(
        self,
        fds: tuple[int, ...],
        timeout: float | None,
        ready: Callable[[], bool],
        what: str = "",
        readable_is_ready: bool = False,
    ) -> bool:
        """Wait until ``ready()`` is true, servicing commands; False on timeout.

        Raises :class:`StopRequested` when a stop arrives first.  ``what``:
        what is waited for, in words, for :meth:`activity`.
        ``readable_is_ready``: one of ``fds`` readable ends the wait too (so
        ``ready()`` need not poll them).
        """
        outer = self._waiting
        self._waiting = what or outer or "a value, room or a command"
        try:
            return self._wait(fds, timeout, ready, readable_is_ready)
        finally:
            self._waiting = outer

    def _wait(
        self, fds: tuple[int, ...], timeout: float | None, ready: Callable[[], bool], readable_is_ready: bool
    ) -> bool:
        deadline = None if timeout is None else Deadline(timeout)
        control = self.fds  # a process runnable's command pipe; () for a thread runnable
        all_fds = control + fds
        waker = self.waker
        link = self.link
        service = True
        pending = False
        look = not control  # the command pipe is in the poll below: no look at it before
        while True:
            waker.clear()
            # What is there is taken before a stop: a stream's end (its error) that reached the
            # reader before its stop is told, not masked by it.  A stop that comes while values
            # keep coming is seen by the reader's own look at commands.  (A command run below
            # that makes ``ready()`` true also wakes this waker: nothing is missed.)
            if ready():
                return True
            # (service() would find nothing to do unless one of these holds: the usual wait of
            # a process runnable for its next value skips the call)
            if service and (
                pending
                or look
                or self.stop_requested
                or self._deferred
                or self._where_asked
                or link.has_buffered_message()
            ):
                try:
                    if self.service(pending, look):
                        raise StopRequested
                except StopRequested:
                    # What came before the stop (a stream's end sent before it) is taken first;
                    # the stop stays requested and is seen at the next look.
                    if ready() or (readable_is_ready and waker.wait(fds, 0)):
                        return True
                    raise
            remaining = None if deadline is None else deadline.remaining()
            if remaining is not None and remaining <= 0:
                return False
            readable = waker.wait(all_fds, remaining)
            # Commands reach a process runnable only through its command pipe: when
            # only data woke us, there is nothing to service (and no poll to pay).
            pending = bool(control) and control[0] in readable
            if readable_is_ready and readable:
                if len(readable) == 1:
                    if readable[0] not in control:
                        return True  # what came is taken before any command that came with it
                elif any(fd not in control for fd in readable):
                    return True
            service = pending or not readable or not control
            look = not control or not readable  # woken by the waker, or timed out: look

    def _run_command(
        self, call_id: int, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], direct: bool = False
    ) -> None:
        """Run one command and send its answer (``direct``: to the caller waiting on the reply pipe)."""
        try:
            function = command_function(type(self.runnable), name)
            result = function(self.runnable, *args, **kwargs)
        except StopRequested:
            raise  # the command waited in puma and a stop came: the runnable stops
        except BaseException as exc:  # noqa: BLE001 - the caller gets it back, the runnable goes on
            self.link.send_error(
                call_id, visible_exit(exc, f"command {name!r} of runnable {self.name!r}"), self.note, direct
            )
            return
        self.link.send_result(call_id, result, self.note, direct)
