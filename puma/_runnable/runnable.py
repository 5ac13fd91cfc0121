"""The Runnable: the unit of work that runs in a thread or a process.

Subclass it, declare the buffers it publishes to, and put the work in
:meth:`Runnable.execute`.  The same class runs in a thread or in a process; the
Runner decides which, through the execution environment it is given.

In the parent the runnable object is the user's handle on the running work:
its :func:`~puma.run_in_child_scope` methods send commands, and
:meth:`Runnable.status` / :meth:`Runnable.wait_status` read what the child
reported.  In the child it is the object whose ``execute`` runs.
"""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, ClassVar, Protocol, TypeVar

from puma import _attributes
from puma._attributes import ScopedAttribute, parent_only, unmanaged
from puma._buffers.base import Buffer, Publisher
from puma._core import logs as _logging
from puma._core import messages as msg
from puma._core.errors import (
    RunnableNotRunningError,
    StopRequested,
    UsageError,
    is_clean_exit,
    visible_exit,
)
from puma._runnable import context as _context
from puma._runnable.inflight import LEFTOVERS, InputLedger

__all__ = ["RunRecord", "Runnable", "run_child"]

T = TypeVar("T")

_MISSING: Any = object()


class RunRecord(Protocol):
    """What a runnable's handle uses of the Runner's record of it (the Runner provides it)."""

    statuses: dict[str, Any]

    def send_command(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]: ...
    def call_command(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any: ...
    def wait_status(self, key: str, predicate: Callable[[Any], bool] | None, timeout: float | None) -> Any: ...


class Runnable(abc.ABC):
    """Base class of everything a :class:`~puma.Runner` runs.

    Args:
        name: shown in logs, errors and statistics.
        outputs: the buffers this runnable publishes to.  Each is completed when
            :meth:`execute` ends (with the error, if it raised), so downstream
            runnables always end.

    Examples:
        A runnable that reports a status and answers a command until stopped:

        >>> import puma
        >>> class Greeter(puma.Runnable):
        ...     def __init__(self, greeting: str) -> None:
        ...         super().__init__("greeter")
        ...         self._greeting = greeting
        ...     def execute(self) -> None:
        ...         self.send_status("said", f"{self._greeting}, world")
        ...         self.wait_for_stop()  # commands run meanwhile
        ...     @puma.run_in_child_scope
        ...     def shout(self) -> str:
        ...         return self._greeting.upper()
        >>> with puma.Runner(puma.ThreadEnvironment()) as runner:
        ...     greeter = runner.start(Greeter("hello"))
        ...     print(greeter.wait_status("said", timeout=30))
        ...     print(greeter.shout())  # runs in the child, returns here
        ...     runner.stop()
        hello, world
        HELLO
    """

    # puma's own state is scoped like any user attribute (docs/attributes.md): the record is the
    # parent's bookkeeping (statuses, command futures) and never goes to the child.
    _puma_name: ScopedAttribute[str] = unmanaged()
    _puma_outputs: ScopedAttribute[tuple[Buffer[Any], ...]] = unmanaged()
    _puma_record: ScopedAttribute[RunRecord | None] = parent_only(
        why="a runnable's statuses and commands are used from the parent that started it"
    )

    #: Objects of this class made inside a child are handles, not the child's own objects.
    _puma_handle: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _attributes.install_seal(cls)  # scopes take effect once the object is constructed

    def __init__(self, name: str, outputs: Iterable[Buffer[Any]] = ()) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a runnable's name must be a non-empty str, got {name!r}")
        outs = tuple(outputs)
        for out in outs:
            if not isinstance(out, Buffer):
                raise TypeError(f"runnable {name!r}: outputs must be puma buffers, got {type(out).__name__}")
        self._puma_name = name
        self._puma_outputs = outs
        self._puma_record = None

    # --- what the user implements ----------------------------------------------
    @abc.abstractmethod
    def execute(self) -> None:
        """The work, run in the child (thread or process). Return to end normally."""

    # --- both sides -------------------------------------------------------------
    @property
    def name(self) -> str:
        """The runnable's name."""
        return self._puma_name

    @property
    def outputs(self) -> tuple[Buffer[Any], ...]:
        """The buffers this runnable publishes to."""
        return self._puma_outputs

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._puma_name!r}>"

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if "_puma_record" in state:  # the parent's bookkeeping stays in the parent
            state["_puma_record"] = None
        return state

    # --- child side -------------------------------------------------------------
    def _puma_context(self, what: str) -> _context.ChildContext:
        ctx = _context.current()
        if ctx is None or ctx.runnable is not self:
            raise UsageError(
                f"runnable {self._puma_name!r}: {what} can only be used inside its own execute() while it runs"
            )
        return ctx

    @property
    def stop_requested(self) -> bool:
        """True once the runnable has been asked to stop. Also runs pending commands.

        Check it between values in a loop that does not wait on a buffer.  Only
        meaningful inside :meth:`execute`; in the parent it is always False.
        """
        ctx = _context.current()
        if ctx is None or ctx.runnable is not self:
            return False
        return ctx.service()

    def wait_for_stop(self, timeout: float | None = None) -> bool:
        """Block until asked to stop (True) or ``timeout`` passes (False), running commands meanwhile.

        For runnables that react to commands only, or pace themselves: one
        wait, no polling.
        """
        ctx = self._puma_context("wait_for_stop()")
        try:
            ctx.wait((), timeout, lambda: False, "a stop or a command (wait_for_stop)")
        except StopRequested:
            return True
        return False

    def service_commands(self) -> None:
        """Run pending commands now; raise :class:`~puma.StopRequested` if asked to stop."""
        self._puma_context("service_commands()").check_stop()

    def publisher(self, buffer: Buffer[T]) -> Publisher[T]:
        """The publishing end of one of this runnable's ``outputs``.

        Call it inside :meth:`execute`.  The same publisher is returned each
        time; it is completed when ``execute`` ends if the code did not.
        """
        ctx = self._puma_context("publisher()")
        if not any(buffer is out for out in self._puma_outputs):
            raise UsageError(
                f"runnable {self._puma_name!r} cannot publish to buffer {buffer.name!r}: "
                "it is not one of its outputs (pass it in outputs=[...])"
            )
        existing = ctx.publishers.get(id(buffer))
        if existing is None:
            existing = buffer._open_publisher(self._puma_name)
            ctx.publishers[id(buffer)] = existing
        return existing

    def send_status(self, key: str, value: Any) -> None:
        """Report a status to the parent (e.g. progress), readable there by ``key``.

        The parent keeps the latest value of each key (:meth:`status`) and can
        wait for one (:meth:`wait_status`).  Statuses never crowd out errors.
        Records this runnable logged before the status are written by the
        parent's handlers before the parent sees the status.
        """
        if not isinstance(key, str):
            raise TypeError(f"a status key must be a str, got {type(key).__name__}")
        ctx = self._puma_context("send_status()")
        _logging.flush_child()  # records logged before this status reach the parent first
        ctx.link.send_status((msg.STATUS, key, value))

    # --- parent side ------------------------------------------------------------
    def status(self, key: str, default: Any = None) -> Any:
        """The latest value the child reported under ``key`` (``default`` if none yet)."""
        record = self._puma_record
        if record is None:
            return default
        return record.statuses.get(key, default)

    def wait_status(
        self,
        key: str,
        predicate: Callable[[Any], bool] | None = None,
        timeout: float | None = 10.0,
    ) -> Any:
        """Wait until the child reports ``key`` (with a value satisfying ``predicate``).

        Returns at once if the latest value already qualifies.  Raises
        ``TimeoutError`` after ``timeout`` seconds, and
        :class:`~puma.RunnableNotRunningError` if the runnable ends first.
        """
        record = self._puma_record
        if record is None:
            raise RunnableNotRunningError(f"runnable {self._puma_name!r} has not been started")
        return record.wait_status(key, predicate, timeout)

    def _puma_send_command(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        record = self._puma_record
        if record is None:
            raise RunnableNotRunningError(
                f"cannot run command {name!r}: runnable {self._puma_name!r} has not been started by a Runner"
            )
        return record.send_command(name, args, kwargs)


def run_child(
    runnable: Runnable, ctx: _context.ChildContext, setup: Callable[[], None] | None = None, announced: bool = False
) -> None:
    """Run ``runnable`` in this thread/process and report the outcome through ``ctx``.

    Sends STARTED (unless ``announced``: the caller sent it already), runs
    ``setup`` (the rest of a child process's set-up, done while the parent
    learns that the child runs), runs ``execute``, completes every output
    (with the error if it failed), flushes logs, then sends FINISHED with the
    error (or None).
    """
    link = ctx.link
    error: BaseException | None = None
    stopped = False
    with ctx:
        if not announced:
            link.send((msg.STARTED, os.getpid(), threading.current_thread().name))
        try:
            if setup is not None:
                setup()
            _attributes.enter_child(runnable)  # child factories of scoped attributes, before any command runs
            ctx.enter_step()  # a stop sent already is seen; commands wait for execute (after on_start)
            try:
                ctx.service()
            finally:
                ctx.leave_step()
            if not ctx.stop_requested:
                runnable.execute()
            else:
                stopped = True
        except StopRequested:
            stopped = True
        except BaseException as exc:  # noqa: BLE001 - everything is reported to the parent
            if not is_clean_exit(exc):
                error = visible_exit(exc, f"runnable {runnable.name!r}")
                ctx.own(error)
        ledger = ctx.ledger
        if ledger is not None:  # its Runner may restart it: what it held goes back, its streams stay open
            _report_leftovers(link, ledger)
        for out in runnable.outputs:
            try:
                pub = ctx.publishers.get(id(out))
                if pub is None:
                    pub = out._open_publisher(runnable.name)
                pub.complete(error if ledger is None else None)
            except Exception:  # noqa: BLE001, S110 - a closed buffer has nobody to tell
                pass
    _logging.flush_child()
    link.send_finished(error, stopped, _lingering_threads())


def _report_leftovers(link: _context.ChildLink, ledger: InputLedger) -> None:
    """Send the parent what this incarnation held of its inputs (see :mod:`puma._runnable.inflight`)."""
    try:
        leftovers = ledger.report()
        if leftovers:
            link.send_status((msg.STATUS, LEFTOVERS, leftovers))
    except Exception:  # noqa: BLE001, S110 - values that cannot travel back are lost with this incarnation
        pass
    finally:
        ledger.close()


def _lingering_threads() -> tuple[str, ...]:
    """In a child process's main thread: the non-daemon threads that will keep the process from exiting."""
    main = threading.main_thread()
    if threading.current_thread() is not main:
        return ()  # a thread child: the process is the parent's own
    return tuple(t.name for t in threading.enumerate() if t is not main and not t.daemon and t.is_alive())
