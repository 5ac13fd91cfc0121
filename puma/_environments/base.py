"""Execution environments: where runnables run, and the buffers that fit.

Switching a whole program between threads and processes is one line: make a
:class:`~puma.ThreadEnvironment` or a :class:`~puma.ProcessEnvironment`, give
it to the Runner and make every buffer through it.  The environment is the
only place that knows the difference: it launches a child and hands the
Runner a :class:`ChildHandle`, the one small interface the supervisor drives
(post a message, what to watch in its one wait, what a ready descriptor
brought, terminate, kill, join, how the child exited, close).  The Runner and
its supervisor contain no thread/process branch.

A new environment (a pool of pre-started processes, a remote machine) is a
subclass of :class:`Environment` that implements :meth:`Environment.buffer`,
:meth:`Environment.prepare` and :meth:`Environment.launch`, and a
:class:`ChildHandle`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, overload

from puma._buffers.base import Buffer
from puma._core import messages as msg
from puma._core.errors import PumaError, serialize_error
from puma._core.waiting import Waker
from puma._runnable.context import ChildContext
from puma._runnable.runnable import Runnable, run_child

if TYPE_CHECKING:
    from puma._frames.pool import FramePool
    from puma._frames.region import SharedRegion

__all__ = ["ChildHandle", "Environment", "ExitStatus", "Message", "MessageLink", "serve_child"]

T = TypeVar("T")

#: A message between a Runner and a child: a tuple whose first item is a kind from ``puma._core.messages``.
Message = tuple[Any, ...]


@dataclass(frozen=True)
class ExitStatus:
    """How a child ended, as far as its environment can tell.

    Attributes:
        exitcode: the process exit code (negative: killed by that signal);
            ``None`` for a child that has no exit code (a thread) or has not
            exited yet.
        cause: why it ended, when the environment knows better than the exit
            code tells (e.g. the fork server that made it died).
    """

    exitcode: int | None
    cause: str | None = None


class ChildHandle(abc.ABC):
    """The supervisor's grip on one launched child, whatever runs it.

    All methods are called by the Runner's supervisor thread, except
    :meth:`post`, :meth:`call`, :meth:`terminate` and :meth:`kill`, which any
    thread may call (they are safe after :meth:`close`: they do nothing, or
    raise ``OSError`` for :meth:`post`).
    """

    #: "thread" or "process": for messages that tell the user what ran the child.
    kind: ClassVar[str] = "child"
    #: True if :meth:`first_message` may be used (the caller reads the child's STARTED itself).
    claimable: ClassVar[bool] = False

    def __init__(self, pid: int | None) -> None:
        self.pid = pid

    @abc.abstractmethod
    def start(self) -> None:
        """Start the child made by :meth:`Environment.launch`.

        Separate from the launch so the Runner files the handle before the
        child can send anything.  A start interrupted half-way (Ctrl-C after a
        fork) leaves nothing behind: the handle kills what it started, closes,
        and the exception propagates.
        """

    def started(self) -> None:  # noqa: B027 - optional: most handles know everything once started
        """Record what the start made known (the child's pid); called after :meth:`start`.

        Separate from the start so a batch of process starts (``start_all``)
        writes nothing between two forks: what the parent writes there is
        private memory of every child (see :mod:`puma._runner.starting`).
        """

    # --- parent to child ----------------------------------------------------------
    @abc.abstractmethod
    def post(self, message: Message) -> None:
        """Send a message to the child without blocking.

        Raises ``OSError`` if the child is gone, and the pickling error if the
        message cannot be sent (nothing is sent then).
        """

    def call(self, message: Message, timeout: float | None, name: str) -> tuple[bool, Any] | None:
        """A blocking command call answered straight to the calling thread: ``(ok, value)``.

        Returns ``None``, having sent nothing, when the call must take the
        supervisor's path instead (the default).
        """
        return None

    @property
    def abandoned_call(self) -> bool:
        """True once a direct call was abandoned (its answer may still come and is drained)."""
        return False

    # --- what the supervisor watches --------------------------------------------------
    @abc.abstractmethod
    def watched(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The descriptors to wait on: ``(readable, writable)``.

        A child whose messages arrive in memory (a thread) watches nothing:
        its messages reach the supervisor through the ``deliver`` function it
        was launched with.
        """

    @abc.abstractmethod
    def ready(self, fd: int) -> tuple[list[Message], bool]:
        """Service the watched descriptor ``fd``: ``(messages it brought, the child has exited)``.

        Reads a bounded batch, so one chatty child does not hold the
        supervisor; the wait wakes again at once for the rest.
        """

    @abc.abstractmethod
    def remaining_messages(self) -> list[Message]:
        """Every message the child sent and nobody read yet (at its end)."""

    # --- its end -------------------------------------------------------------------
    @abc.abstractmethod
    def has_exited(self) -> bool:
        """True once the child's thread or process has ended (after a FINISHED it may take a while)."""

    @abc.abstractmethod
    def exit_status(self) -> ExitStatus:
        """How it ended (call once :meth:`has_exited`)."""

    @abc.abstractmethod
    def join(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the child to end; True if it has."""

    @abc.abstractmethod
    def terminate(self) -> bool:
        """Ask the child to end now (SIGTERM); False if it cannot be ended from outside (a thread)."""

    @abc.abstractmethod
    def kill(self) -> None:
        """End the child at once (SIGKILL) if it can be."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the handle holds (pipes, the process object). Idempotent."""

    def first_message(self, timeout: float) -> Message | None:
        """For a :attr:`claimable` handle: wait for and read the child's first message.

        ``None`` if the child ended first or ``timeout`` passed.
        """
        raise NotImplementedError(f"a {self.kind} child's first message is read by the supervisor")


class MessageLink(abc.ABC):
    """The child's end of a link whose transport is :meth:`send` (parent-bound) and :meth:`receive_all`.

    An environment's child side implements the transport; this class builds
    the messages a running runnable sends (results, statuses, its end) on it.
    Pass it, with the runnable, to :func:`serve_child`.
    """

    #: What the child's one wait sleeps on; the parent side wakes it when it posts.
    waker: Waker
    #: Descriptors that become readable when the parent sends something (empty if it wakes :attr:`waker`).
    fds: tuple[int, ...] = ()

    @abc.abstractmethod
    def has_message(self) -> bool:
        """True if a message from the parent waits."""

    def has_buffered_message(self) -> bool:
        """True if a message already taken off :attr:`fds` waits (one a poll of them cannot show).

        The default, :meth:`has_message`, is always right; a link that reads
        ahead from its descriptors answers from what it holds, without a system call.
        """
        return self.has_message()

    @abc.abstractmethod
    def receive_all(self) -> list[Message]:
        """Every message from the parent there now."""

    @abc.abstractmethod
    def send(self, message: Message) -> None:
        """Send ``message`` to the parent (the supervisor's ``deliver`` or a pipe)."""

    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None:
        """A command's result."""
        self.send((msg.RESULT, call_id, True, result))

    def send_error(self, call_id: int, error: BaseException, note: str, direct: bool = False) -> None:
        """A command's exception (with the child's traceback)."""
        self.send((msg.RESULT, call_id, False, serialize_error(error, note)))

    def send_status(self, message: Message) -> None:
        """A user status or a batch of log records."""
        self.send(message)

    def send_finished(self, error: BaseException | None, stopped: bool, lingering: tuple[str, ...] = ()) -> None:
        """The runnable's end: its error (or None), whether a stop ended it, the threads that outlive it."""
        self.send((msg.FINISHED, None if error is None else serialize_error(error), stopped, lingering))


def serve_child(runnable: Runnable, link: MessageLink, token: int) -> None:
    """Run ``runnable`` (from :meth:`Environment.prepare`) in this thread, talking to its Runner through ``link``.

    Sends STARTED, runs ``execute`` while servicing commands and stops,
    completes its outputs, and sends FINISHED: what every environment's child
    does.
    """
    run_child(runnable, ChildContext(runnable, link, token))


class Environment(abc.ABC):
    """Where runnables run (threads or processes) and how buffers are made."""

    #: True if the thread that launches a child must outlive it (Linux's parent-death
    #: signal is tied to the thread that forked); the Runner then launches from the main
    #: thread or its supervisor thread.
    launch_needs_lasting_thread: ClassVar[bool] = False

    @overload
    def buffer(self, item_type: type[T], size: int, name: str) -> Buffer[T]: ...
    @overload
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]: ...
    @abc.abstractmethod
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]:
        """A bounded FIFO buffer of ``size`` values of ``item_type`` named ``name``.

        ``item_type`` is checked with ``isinstance`` on every publish (a class,
        a tuple or union of classes, or ``object`` for anything).
        """

    @property
    def is_process(self) -> bool:
        """True if runnables run in child processes."""
        return False

    def frame_pool(
        self, shape: int | tuple[int, ...], dtype: Any = "uint8", count: int = 4, name: str = "frames", **options: Any
    ) -> FramePool:
        """A :class:`~puma.frames.FramePool` of ``count`` numpy chunks for runnables of this environment.

        Shared memory in a process environment, plain arrays in a thread
        environment; ``options`` as :class:`~puma.frames.FramePool` takes them
        (``drop_oldest``).
        """
        from puma._frames.pool import FramePool

        return FramePool(self, shape, dtype, count, name, **options)

    def shared_region(
        self, shape: int | tuple[int, ...], dtype: Any = "float64", parts: int = 1, name: str = "region"
    ) -> SharedRegion:
        """A :class:`~puma.frames.SharedRegion`: one array that workers write ``parts`` disjoint parts of."""
        from puma._frames.region import SharedRegion

        return SharedRegion(self, shape, dtype, parts, name)

    @abc.abstractmethod
    def prepare(self, runnable: Runnable) -> Runnable:
        """Check, in the caller's thread, that ``runnable`` can run here; return what the child runs.

        That is a clone of ``runnable`` with its attributes' scopes applied.
        Raises a clear error (naming the attribute or the buffer) when it
        cannot run here.
        """

    @abc.abstractmethod
    def launch(
        self,
        child: Runnable,
        token: int,
        deliver: Callable[[Message], None],
        on_change: Callable[[], None],
    ) -> ChildHandle:
        """Make ``child`` (from :meth:`prepare`) ready to start; return its handle (see :meth:`ChildHandle.start`).

        Args:
            child: what to run.
            token: the Runner's number for it (its buffers name their readers by it).
            deliver: where a child whose messages travel in memory sends them.
            on_change: called (from any thread) when what the handle watches changed.
        """


def check_outputs_cross(runnable: Runnable, outputs: Sequence[Buffer[Any]]) -> None:
    """Raise if a runnable bound for a process publishes to a buffer that cannot leave this one."""
    for out in outputs:
        if not out.supervision.crossable:
            raise PumaError(
                f"runnable {runnable.name!r} runs in a process but its output {out.name!r} is a "
                "thread buffer; make it with ProcessEnvironment.buffer()"
            )
