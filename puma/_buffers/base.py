"""Typed, bounded FIFO buffers between runnables: the common face.

A buffer has many publishers and any number of subscribers.  Each publisher
is obtained inside a running runnable (``self.publisher(buffer)``); each call
of :meth:`Buffer.subscribe` gives a new :class:`Subscription`, and several
subscriptions share the buffer's values as a work queue: each value goes to
exactly one of them.

The stream ends when every publisher that joined has completed and no hold
is outstanding (:meth:`Buffer.hold_open`), so no more may join.  Then every
subscription ends, after handing out the values it already holds.  An error
given to :meth:`Publisher.complete` ends the stream for every subscriber with
that error (with its original traceback).

Two implementations share this face: :class:`~puma._buffers.thread.ThreadBuffer`
(a deque under a lock) and :class:`~puma._buffers.process.ProcessBuffer` (a pipe
bounded by a semaphore).  Environments make the right one.
"""

from __future__ import annotations

import abc
import types
import typing
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from puma._buffers.supervision import StreamSupervision
from puma._core import current as _context
from puma._core.errors import (
    BufferClosedError,
    BufferCompleted,
    NotPicklableError,
    StopRequested,
    UsageError,
    is_clean_exit,
)

__all__ = ["Buffer", "BufferStatistics", "Publisher", "StreamHold", "Subscription"]

T = TypeVar("T")


@dataclass(frozen=True)
class BufferStatistics:
    """A snapshot of a buffer, for monitoring.

    The same figures wherever it is read (any process that has the buffer).

    Attributes:
        name: the buffer's name.
        capacity: most values it holds before publishers block.
        size: values published and not yet handed out by a subscriber (a value
            being written counts; across processes it may count up to
            ``capacity // 4`` per subscriber that were handed out but whose
            room is not given back yet).
        publishers: publishers that joined the stream so far.
        completed: publishers that have completed.
        subscribers: subscriptions made so far (every call of ``subscribe()``).
        holds: holds outstanding (:meth:`Buffer.hold_open`).
        ended: True once the stream has ended (no publisher may join any more).
    """

    name: str
    capacity: int
    size: int
    publishers: int
    completed: int
    subscribers: int = 0
    holds: int = 0
    ended: bool = False


def _checker(item_type: Any) -> type | tuple[type, ...] | None:
    """The class (or classes) ``isinstance`` checks published values against."""
    if item_type is None or item_type is object or item_type is typing.Any:
        return None
    if isinstance(item_type, tuple):
        members: tuple[Any, ...] = item_type
    elif typing.get_origin(item_type) in (typing.Union, types.UnionType):
        members = typing.get_args(item_type)
    else:
        members = (item_type,)
    classes: list[type] = []
    for member in members:
        cls = typing.get_origin(member) or member
        if not isinstance(cls, type):
            raise TypeError(f"a buffer's item type must be a class (or a union or tuple of classes), not {item_type!r}")
        classes.append(cls)
    return classes[0] if len(classes) == 1 else tuple(classes)


class Buffer(abc.ABC, Generic[T]):
    """A typed, bounded FIFO buffer with many publishers and any number of subscribers.

    Make one with an environment: ``env.buffer(int, 10, "raw")``.  Give it to
    the producing runnable as an output (``Runnable(name, outputs=[buffer])``)
    and to the consuming runnables, which call :meth:`subscribe` in their
    ``execute`` (or subscribe in the main program).  Several subscriptions
    share the values: each goes to exactly one of them.

    The stream ends when every publisher that joined has completed and no
    hold (:meth:`hold_open`) is outstanding.  A runnable with the buffer in
    its ``outputs`` joins when the Runner starts it and leaves by completing.

    Examples:
        A buffer of at most two values between a runnable and the main program:

        >>> import puma
        >>> class Letters(puma.Runnable):
        ...     def __init__(self, out: puma.Buffer[str]) -> None:
        ...         super().__init__("letters", outputs=[out])
        ...         self._out = out
        ...     def execute(self) -> None:
        ...         with self.publisher(self._out) as pub:
        ...             for letter in "abc":
        ...                 pub.publish(letter)  # waits while the buffer is full
        >>> env = puma.ThreadEnvironment()
        >>> with puma.Runner(env) as runner:
        ...     letters = env.buffer(str, 2, "letters")
        ...     producer = runner.start(Letters(letters))
        ...     print(list(letters.subscribe()))  # ends when the publisher completes
        ...     print(letters.statistics().ended)
        ['a', 'b', 'c']
        True
    """

    def __init__(self, item_type: type[T] | Any, size: int, name: str) -> None:
        if isinstance(size, bool) or not isinstance(size, int):
            raise TypeError(f"buffer {name!r}: size must be an int, not {type(size).__name__}")
        if size <= 0:
            raise ValueError(f"buffer {name!r}: size must be at least 1, got {size}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"a buffer's name must be a non-empty str, got {name!r}")
        self._name = name
        self._capacity = size
        self._item_type = item_type
        self._check = _checker(item_type)

    @property
    def name(self) -> str:
        """The buffer's name (used in messages and statistics)."""
        return self._name

    @property
    def capacity(self) -> int:
        """Most values the buffer holds before publishers block."""
        return self._capacity

    @property
    def item_type(self) -> Any:
        """The type every published value must be an instance of."""
        return self._item_type

    def __repr__(self) -> str:
        kind = getattr(self._item_type, "__name__", repr(self._item_type))
        return f"<{type(self).__name__} {self._name!r} of {kind}, capacity {self._capacity}>"

    def _type_error(self, value: object) -> TypeError:
        expected = getattr(self._item_type, "__name__", repr(self._item_type))
        text = repr(value)
        if len(text) > 60:
            text = text[:57] + "..."
        return TypeError(f"buffer {self._name!r} carries {expected}, got {type(value).__name__}: {text}")

    @abc.abstractmethod
    def subscribe(self) -> Subscription[T]:
        """A new receiving end; every subscription of a buffer shares its values (each goes to one of them).

        Call it inside the consuming runnable's ``execute`` (so its waits also
        hear the runnable's commands), or in the main program.

        Raises:
            BufferClosedError: the buffer was released (its Runner closed).
        """

    @abc.abstractmethod
    def hold_open(self) -> StreamHold:
        """Keep the stream from ending until the returned hold is released.

        While any hold is outstanding the stream does not end, even when
        every publisher that joined has completed, so a stage can lose its
        last publisher and gain a new one.  Releasing the last hold after
        every publisher completed ends the stream.  Use it as a context
        manager, or call :meth:`StreamHold.release` (idempotent).  A hold
        taken inside a runnable is not released if its process dies: release
        it in a ``finally``.

        Raises:
            BufferClosedError: the stream has already ended, or the buffer was released.
        """

    def publisher(self, owner: str = "the main program") -> Publisher[T]:
        """A publishing end for code outside any runnable: the main program, or a thread of its own.

        It joins the stream at once, so the stream does not end before it
        completes: use it as a context manager (completed on exit, with the
        error if the block raised, which then ends the stream for every
        reader) or call :meth:`Publisher.complete`.  ``owner`` names it in
        messages.  Inside a runnable, publish through
        :meth:`Runnable.publisher <puma.Runnable.publisher>` of one of its
        ``outputs`` instead: its Runner then completes it if the runnable dies.

        Raises:
            UsageError: called inside a running runnable.
            BufferClosedError: the stream has ended, or the buffer was released.
        """
        ctx = _context.current()
        if ctx is not None:
            raise UsageError(
                f"buffer.publisher() inside runnable {ctx.name!r}: publish through self.publisher(buffer) "
                f"and pass {self._name!r} in outputs=[...], so its Runner completes the stream if it dies"
            )
        self._join(1, refuse=True)
        try:
            return self._open_publisher(owner)
        except BaseException:
            self._join(-1, refuse=False)
            raise

    @abc.abstractmethod
    def statistics(self) -> BufferStatistics:
        """A snapshot of the buffer's state (it still answers after the buffer was released)."""

    @property
    @abc.abstractmethod
    def supervision(self) -> StreamSupervision:
        """The supervisor's side of this buffer (what a Runner does when runnables start, end or die)."""

    # --- used by puma itself -------------------------------------------------
    @abc.abstractmethod
    def _register_publisher(self, delta: int = 1) -> None:
        """Count one more publisher (in the parent, when a runnable starts); -1 undoes it.

        Raises:
            BufferClosedError: the stream has ended (a publisher may not join it any more).
        """

    @abc.abstractmethod
    def _join(self, delta: int, refuse: bool) -> None:
        """``delta`` publishers join (or, negative, leave before opening); ``refuse``: raise if the stream ended."""

    @abc.abstractmethod
    def _open_publisher(self, owner: str) -> Publisher[T]:
        """The publishing end for the runnable ``owner`` (in the child)."""

    @abc.abstractmethod
    def _subscriber_token(self) -> int:
        """Which runnable subscribed first (its Runner token); 0 for none or the main program.

        Kept for the Runner's older calls; ``supervision.readers()`` names them all.
        """

    @abc.abstractmethod
    def _is_subscribed(self) -> bool:
        """True once anyone (a runnable or the main program) has subscribed."""

    @abc.abstractmethod
    def _interrupt_publishers(self) -> None:
        """Wake publishers blocked on a full buffer so they can see a stop request."""

    @abc.abstractmethod
    def _close(self) -> None:
        """The subscriber is gone: refuse new values, discard the queued ones, wake publishers."""

    def _crossable(self) -> bool:
        """True if the buffer can be sent to a child process."""
        return False


class Publisher(abc.ABC, Generic[T]):
    """The publishing end of a buffer, owned by one running runnable.

    Use it as a context manager to complete it on exit (with the error, if the
    block raised); the runnable also completes any publisher left open when
    its ``execute`` ends.
    """

    def __init__(self, buffer: Buffer[T], owner: str) -> None:
        self._buffer = buffer
        self._owner = owner
        self._completed = False

    @property
    def buffer(self) -> Buffer[T]:
        """The buffer this publisher writes to."""
        return self._buffer

    @property
    def completed(self) -> bool:
        """True once :meth:`complete` has run."""
        return self._completed

    def _closed_error(self) -> BufferClosedError:
        if self._completed:
            return BufferClosedError(f"buffer {self._buffer.name!r}: publisher {self._owner!r} has already completed")
        return BufferClosedError(
            f"buffer {self._buffer.name!r}: its last subscriber has ended; nothing reads it any more"
        )

    def _closing(self) -> BaseException:
        """What to raise on a closed buffer: a stop request that came first, else the closed error.

        When everything stops, a subscriber may end (and the buffer close) before
        the publisher has read its own stop; that is a stop, not an error.
        Call it holding no lock: it runs pending commands.
        """
        ctx = _context.current()
        if ctx is not None and ctx.service():
            return StopRequested()
        return self._closed_error()

    @abc.abstractmethod
    def publish(self, value: T, timeout: float | None = None) -> None:
        """Append ``value``, blocking while the buffer is full.

        Raises:
            TypeError: ``value`` is not of the buffer's type.
            BufferFull: still full after ``timeout`` seconds.
            BufferClosedError: the publisher completed, every subscriber ended, or the buffer was released.
            StopRequested: the runnable was asked to stop while it waited.
        """

    @abc.abstractmethod
    def try_publish(self, value: T) -> bool:
        """Append ``value`` if there is room now; False if the buffer is full."""

    @abc.abstractmethod
    def publish_many(self, values: Iterable[T], timeout: float | None = None) -> None:
        """Append every value, in order, in as few hand-overs as room allows."""

    @abc.abstractmethod
    def complete(self, error: BaseException | None = None) -> None:
        """Leave the stream, optionally with an error that ends it for every subscriber.

        The stream ends once every publisher that joined has completed and no
        hold is outstanding.  Completing twice is a no-op (the first completion wins).
        """

    def __enter__(self) -> Publisher[T]:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is not None and (isinstance(exc, StopRequested | GeneratorExit) or is_clean_exit(exc)):
            exc = None  # a stop, or a clean exit: the stream just ends
        if exc is not None:
            ctx = _context.current()
            if ctx is not None:
                ctx.own(exc)  # the copy downstream and the one reported are one error
                if getattr(ctx, "ledger", None) is not None:
                    exc = None  # a restartable runnable: its Runner tells the readers, or restarts it
        self.complete(exc)


class Subscription(abc.ABC, Generic[T]):
    """The receiving end of a buffer. Iterate it to receive until the stream ends.

    Inside a running runnable every wait also listens to the runnable's
    commands, and raises :class:`~puma.StopRequested` when it is asked to stop.
    """

    def __init__(self, buffer: Buffer[T]) -> None:
        self._buffer = buffer
        self._ended: BaseException | None = None  # BufferCompleted or the error
        ledger = getattr(_context.current(), "ledger", None)
        if ledger is not None:  # a runnable its Runner may restart: its inputs are followed
            ledger.follow(self)

    @property
    def buffer(self) -> Buffer[T]:
        """The buffer this subscription reads."""
        return self._buffer

    def __reduce__(self) -> Any:
        raise NotPicklableError(
            f"a subscription of buffer {self._buffer.name!r} cannot be sent to a process: "
            "call subscribe() inside execute()"
        )

    @property
    def ended(self) -> bool:
        """True once the stream has ended (completed, or with an error)."""
        return self._ended is not None

    @abc.abstractmethod
    def receive(self, timeout: float | None = None) -> T:
        """The next value, waiting at most ``timeout`` seconds (``None``: no limit).

        Raises:
            BufferCompleted: the stream ended: every publisher that joined completed, no hold is outstanding.
            BufferEmpty: nothing arrived within ``timeout``.
            Exception: the error a publisher completed with, as raised in it.
            StopRequested: the runnable was asked to stop while it waited.
            BufferClosedError: the stream broke (a publisher died mid-value), or the buffer was released.
        """

    @abc.abstractmethod
    def receive_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        """Wait for at least one value, then return up to ``max_items`` already there."""

    @abc.abstractmethod
    def ready(self) -> bool:
        """True if :meth:`receive` would return (or raise) without waiting."""

    @abc.abstractmethod
    def _fds(self) -> tuple[int, ...]:
        """File descriptors that become readable when data arrives (empty for threads)."""

    def _leftovers(self) -> list[T]:
        """Take the values read from the buffer but not handed out yet (a restartable runnable ends)."""
        return []

    def _end(self, error: BaseException | None) -> BaseException:
        if self._ended is None:
            self._ended = error if error is not None else BufferCompleted(f"buffer {self._buffer.name!r} has completed")
        return self._ended

    def __iter__(self) -> Iterator[T]:
        while True:
            try:
                value = self.receive()
            except BufferCompleted as done:
                done.__traceback__ = None  # kept by the reader: its frames would keep the last value alive
                return
            yield value


class StreamHold:
    """Keeps a buffer's stream from ending while it is held (see :meth:`Buffer.hold_open`).

    A context manager; :meth:`release` is idempotent.
    """

    __slots__ = ("_buffer", "_let_go", "_released")

    def __init__(self, buffer: Buffer[Any], let_go: Callable[[], None]) -> None:
        self._buffer = buffer
        self._let_go = let_go
        self._released = False

    @property
    def buffer(self) -> Buffer[Any]:
        """The buffer held open."""
        return self._buffer

    @property
    def released(self) -> bool:
        """True once :meth:`release` has run."""
        return self._released

    def release(self) -> None:
        """Let the stream end (now, if every publisher that joined has completed). Releasing twice is a no-op."""
        if not self._released:
            self._released = True
            self._let_go()

    def __enter__(self) -> StreamHold:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self._released else "held"
        return f"<StreamHold of buffer {self._buffer.name!r}, {state}>"
