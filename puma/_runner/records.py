"""The Runner's record of one runnable: its lifecycle, its statuses, its command calls.

A record's lifecycle is one explicit state (:class:`Lifecycle`), moved forward
only by the thread that owns the child's messages: the supervisor, or, during
a claimed start, the thread reading the child's STARTED itself.  Other
threads read it under the record's condition, and ask for changes (a stop, a
termination) through flags the supervisor acts on.
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from puma._buffers.base import Buffer
from puma._core import messages as msg
from puma._core.condition import Condition, new_future
from puma._core.errors import CommandError, RunnableNotRunningError, SerializedError, deserialize_error
from puma._core.waiting import Deadline
from puma._environments.base import ChildHandle, Environment
from puma._runnable.commands import command_function
from puma._runnable.runnable import Runnable

__all__ = ["ChildRecord", "Lifecycle", "buffers_held_by", "inputs_of"]


class Lifecycle(enum.Enum):
    """Where a runnable is in its life, as its Runner sees it."""

    RESTARTING = "restarting"  #: a new incarnation after a crash, waiting out its back-off; no handle yet
    LAUNCHING = "launching"  #: being prepared and launched; no handle yet
    STARTING = "starting"  #: launched; it has not reported STARTED
    RUNNING = "running"  #: it reported STARTED and has not ended
    FINISHING = "finishing"  #: it reported its end (FINISHED); its process is still exiting
    ENDED = "ended"  #: it has ended: nothing more will come from it

    @property
    def started(self) -> bool:
        """True once the runnable reported STARTED (and for everything after)."""
        return self in (Lifecycle.RUNNING, Lifecycle.FINISHING) or self is Lifecycle.ENDED


_ORDER = {state: index for index, state in enumerate(Lifecycle)}


class ChildRecord:
    """The parent's bookkeeping for one runnable a Runner started."""

    def __init__(self, runnable: Runnable, environment: Environment, token: int, runner: Any) -> None:
        self.runnable = runnable
        self.name = runnable.name
        self.environment = environment
        self.token = token
        self.runner = runner
        self.handle: ChildHandle | None = None
        self.pid: int | None = None
        self.state = Lifecycle.LAUNCHING
        self.launched = False  # its handle has started the child: the supervisor may watch it
        self.has_started = False  # it reported STARTED (kept when it ends: "died before starting?")
        self.stop_sent_at: float | None = None  # when a stop was sent (None: not yet)
        self.finished_at: float | None = None  # when it reported its end (its process then has stop_timeout to exit)
        self.lingering: tuple[str, ...] = ()  # non-daemon threads its process still ran when it finished
        self.stuck = False  # it outlived its stop timeout and is being terminated
        self.killed = False  # stuck, and SIGTERM did not end it
        self.unkillable = False  # stuck, and it cannot be ended from outside (a thread): left running
        self.error: BaseException | None = None
        self.stopped = False  # it ended because it was asked to stop
        self.restart_pending = False  # it ends to be restarted: its inputs and outputs wait for the next incarnation
        self.stop_wanted = False  # a stop came before it had a handle (a restart waiting out its back-off)
        self.incarnation = 0  # how many times it was restarted before this one
        self.statuses: dict[str, Any] = {}
        self.logged = False  # log records dispatched since its last status
        # True while the thread in start_blocking() reads the child's STARTED itself (one hop
        # fewer than through the supervisor); the supervisor does not watch the child meanwhile.
        self.start_claimed = False
        self._activity: str | None = None  # the last answer to WHERE
        self._activity_asked = 0.0
        self.inputs = inputs_of(runnable)  # ids of the buffers it holds but does not publish to
        self._futures: dict[int, Future[Any]] = {}
        self._calls = itertools.count(1)
        self._lock = self._cond = Condition()  # a Ctrl-C in a wait cannot leave it locked

    def __repr__(self) -> str:
        return f"<ChildRecord {self.name!r} {self.state.value}>"

    @property
    def ended(self) -> bool:
        """True once nothing more will come from the runnable."""
        return self.state is Lifecycle.ENDED

    @property
    def finished(self) -> bool:
        """True once the runnable reported its end (its process may still be exiting)."""
        return self.state is Lifecycle.FINISHING or self.state is Lifecycle.ENDED

    @property
    def stop_sent(self) -> bool:
        """True once it has been asked to stop."""
        return self.stop_sent_at is not None

    def move_to(self, state: Lifecycle) -> None:
        """Move the lifecycle forward (the thread owning the child's messages); wake whoever waits on it.

        A move backwards is ignored: a thread child may report STARTED before
        its launcher has marked it STARTING.
        """
        with self._cond:
            if _ORDER[state] < _ORDER[self.state]:
                return
            if state is Lifecycle.RUNNING:
                self.has_started = True
            elif state is Lifecycle.FINISHING:
                self.finished_at = time.monotonic()
            self.state = state
            if state is Lifecycle.ENDED:
                futures = list(self._futures.values())
                self._futures.clear()
            else:
                futures = []
            self._cond.notify_all()
        for future in futures:
            future.set_exception(RunnableNotRunningError(f"runnable {self.name!r} ended before answering"))

    # --- called from user threads ---------------------------------------------------
    def send_command(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        """Send the command ``name``; its answer resolves the returned future (through the supervisor)."""
        future: Future[Any] = new_future()
        handle = self._handle_for(name)
        call_id = self._new_call(name, future)
        try:
            handle.post((msg.CALL, call_id, name, args, kwargs))
        except Exception as exc:
            with self._lock:
                self._futures.pop(call_id, None)
            if isinstance(exc, OSError):
                raise RunnableNotRunningError(f"runnable {self.name!r} has ended: {exc}") from exc
            raise CommandError(
                f"command {name!r} to runnable {self.name!r}: its arguments cannot be sent: {exc}"
            ) from exc
        return future

    def _handle_for(self, name: str) -> ChildHandle:
        """The handle a command goes through; a clear error while there is none (a restart waiting to start)."""
        handle = self.handle
        if handle is None:
            raise RunnableNotRunningError(
                f"cannot run command {name!r}: runnable {self.name!r} is being restarted (it has not started again yet)"
            )
        return handle

    def _new_call(self, name: str, future: Future[Any] | None) -> int:
        """Check the command exists and the runnable runs; number the call (and file its future)."""
        command_function(type(self.runnable), name)  # fail early on a wrong name
        with self._lock:
            if self.finished:
                raise RunnableNotRunningError(
                    f"cannot run command {name!r}: runnable {self.name!r} has ended"
                    + (f" ({self.error})" if self.error is not None else "")
                )
            call_id = next(self._calls)
            if future is not None:
                self._futures[call_id] = future
        return call_id

    def call_command(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """A blocking command call: answered straight to this thread where the handle can.

        Takes the supervisor's path (:meth:`send_command`) where it cannot,
        and while another thread is making a direct call.
        """
        handle = self._handle_for(name)
        call_id = self._new_call(name, None)
        try:
            answer = handle.call((msg.CALL, call_id, name, args, kwargs, True), timeout, self.name)
        except (RunnableNotRunningError, TimeoutError, KeyboardInterrupt):  # TimeoutError is an OSError
            if handle.abandoned_call:
                self.runner._watch()  # so the supervisor drains the answer that may still come
            raise
        except OSError as exc:
            raise RunnableNotRunningError(f"runnable {self.name!r} has ended: {exc}") from exc
        except Exception as exc:
            raise CommandError(
                f"command {name!r} to runnable {self.name!r}: its arguments cannot be sent: {exc}"
            ) from exc
        if answer is None:  # not answered directly: take the supervisor's path
            return self._result(self.send_command(name, args, kwargs), timeout)
        ok, value = answer
        if ok:
            return value
        raise deserialize_error(value) if isinstance(value, SerializedError) else value

    def _result(self, future: Future[Any], timeout: float | None) -> Any:
        """The command's answer; a ``TimeoutError`` that says what timed out."""
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():
                raise  # the command itself raised it
            raise TimeoutError(f"runnable {self.name!r} did not answer within {timeout} s") from None

    def wait_status(self, key: str, predicate: Callable[[Any], bool] | None, timeout: float | None) -> Any:
        """Wait until the runnable reports ``key`` (with a value ``predicate`` accepts)."""
        deadline = Deadline(timeout)
        with self._cond:
            while True:
                if key in self.statuses:
                    value = self.statuses[key]
                    if predicate is None or predicate(value):
                        return value
                if self.ended:
                    raise RunnableNotRunningError(f"runnable {self.name!r} ended before reporting {key!r}")
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"runnable {self.name!r} did not report {key!r} within {timeout} s")
                self._cond.wait(remaining)

    def wait_started(self, deadline: Deadline) -> bool:
        """Wait until it reported STARTED or ended; False if ``deadline`` passed first."""
        with self._cond:
            while not self.has_started and not self.ended:
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    # --- called from the supervisor -------------------------------------------------
    def set_status(self, key: str, value: Any) -> None:
        """Keep the latest value of ``key``; wake whoever waits for it."""
        with self._cond:
            self.statuses[key] = value
            self._cond.notify_all()

    def resolve(self, call_id: int, ok: bool, value: Any) -> None:
        """Deliver a command's answer to its future."""
        with self._lock:
            future = self._futures.pop(call_id, None)
        if future is None:
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(deserialize_error(value) if isinstance(value, SerializedError) else value)

    def ask_activity(self) -> bool:
        """Ask the child what it is doing (for a snapshot); False if it cannot be asked."""
        handle = self.handle
        if handle is None or self.finished or not self.launched:
            return False
        with self._lock:
            self._activity = None
        try:
            handle.post((msg.WHERE,))
        except Exception:  # noqa: BLE001 - a diagnosis asks what it can
            return False
        return True

    def set_activity(self, text: str) -> None:
        """The child's answer to WHERE (the supervisor)."""
        with self._cond:
            self._activity = text
            self._cond.notify_all()

    def wait_activity(self, deadline: float) -> str | None:
        """The answer to the last WHERE, waiting until ``deadline`` (monotonic); None if none came."""
        with self._cond:
            while self._activity is None and not self.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._activity

    def mark_stop_sent(self) -> bool:
        """Note that a stop is being sent; False if it already was, or nothing can receive it."""
        with self._lock:
            if self.handle is None:
                self.stop_wanted = True  # a restart waiting out its back-off is not started then
            if self.ended or self.stop_sent_at is not None or self.handle is None:
                return False
            self.stop_sent_at = time.monotonic()
            return True


def buffers_held_by(runnable: Runnable) -> list[Buffer[Any]]:
    """The buffers ``runnable`` holds in its attributes (and in lists, tuples, sets and dicts of them)."""
    found: list[Buffer[Any]] = []
    values = list(getattr(runnable, "__dict__", {}).values())
    for depth in range(2):
        nested: list[Any] = []
        for value in values:
            if isinstance(value, Buffer):
                found.append(value)
            elif depth == 0 and isinstance(value, list | tuple | set | frozenset):
                nested.extend(value)
            elif depth == 0 and isinstance(value, dict):
                nested.extend(value.values())
        values = nested
    return found


def inputs_of(runnable: Runnable) -> frozenset[int]:
    """Ids of the buffers ``runnable`` holds without publishing to them: the buffers it reads."""
    outputs = {id(out) for out in runnable.outputs}
    return frozenset(id(b) for b in buffers_held_by(runnable) if id(b) not in outputs)
