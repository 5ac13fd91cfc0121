"""A buffer between threads of one process: a deque under a lock.

Publishing appends and wakes the subscriber's :class:`~puma._core.waiting.Waker` (the
one wait of the runnable that subscribed).  A publisher that finds the buffer
full waits for room in its own runnable's one wait (so its commands run and
its stop is seen meanwhile), or on a condition outside any runnable.
A thread buffer cannot be sent to a child process: trying names the attribute.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any, TypeVar

from puma._buffers.base import Buffer, BufferStatistics, Publisher, Subscription
from puma._buffers.supervision import StreamSupervision
from puma._core import current as _context
from puma._core.errors import BufferClosedError, BufferEmpty, BufferFull, NotPicklableError, PumaError
from puma._core.waiting import Waker

__all__ = ["ThreadBuffer"]

T = TypeVar("T")


class _Complete:
    """The in-stream mark a publisher leaves when it completes."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


class ThreadBuffer(Buffer[T]):
    """A buffer whose publishers and subscriber all live in one process."""

    def __init__(self, item_type: type[T] | Any, size: int, name: str) -> None:
        super().__init__(item_type, size, name)
        self._lock = threading.Lock()
        self._not_full = threading.Condition(self._lock)  # publishers outside any runnable wait here
        self._room_waiters: list[Waker] = []  # the one waits of publishers in runnables, waiting for room
        self._items: deque[Any] = deque()
        self._waker: Waker | None = None
        self._publishers = 0
        self._completed = 0
        self._closed = False
        self._subscribed = False
        self._token = 0

    def __reduce__(self) -> Any:
        raise NotPicklableError(
            f"thread buffer {self.name!r} cannot be sent to a process: "
            "make it with ProcessEnvironment.buffer() to connect processes"
        )

    def subscribe(self) -> Subscription[T]:
        with self._lock:
            if self._subscribed:
                raise BufferClosedError(f"buffer {self.name!r} already has its one subscriber")
            self._subscribed = True
            ctx = _context.current()
            self._token = ctx.token if ctx is not None else 0
            self._waker = ctx.waker if ctx is not None else Waker()
            if ctx is not None:
                ctx.subscribed.append(self)
            return _ThreadSubscription(self, self._waker)

    def statistics(self) -> BufferStatistics:
        with self._lock:
            size = sum(1 for item in self._items if not isinstance(item, _Complete))
            return BufferStatistics(self.name, self.capacity, size, self._publishers, self._completed)

    @property
    def supervision(self) -> StreamSupervision:
        return _ThreadSupervision(self)

    def _register_publisher(self, delta: int = 1) -> None:
        with self._lock:
            self._publishers += delta

    def _open_publisher(self, owner: str) -> Publisher[T]:
        return _ThreadPublisher(self, owner)

    def _subscriber_token(self) -> int:
        return self._token

    def _is_subscribed(self) -> bool:
        return self._subscribed

    def _interrupt_publishers(self) -> None:
        with self._lock:
            self._room_made()

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            self._items.clear()
            self._room_made()

    def _room_made(self) -> None:
        """Wake every waiting publisher (call with the lock held)."""
        self._not_full.notify_all()
        for waker in self._room_waiters:
            waker.wake()

    def _wake(self) -> None:
        waker = self._waker
        if waker is not None:
            waker.wake()


class _ThreadPublisher(Publisher[T]):
    def __init__(self, buffer: ThreadBuffer[T], owner: str) -> None:
        super().__init__(buffer, owner)
        self._b = buffer

    def publish(self, value: T, timeout: float | None = None) -> None:
        b = self._b
        check = b._check
        if check is not None and not isinstance(value, check):
            raise b._type_error(value)
        while True:
            with b._lock:
                if len(b._items) < b._capacity and not b._closed and not self._completed:
                    b._items.append(value)
                    waker = b._waker
                    if waker is not None:
                        waker.wake()
                    return
            if not self._wait_for_room(timeout):
                raise BufferFull(f"buffer {b.name!r} stayed full for {timeout} s")

    def _wait_for_room(self, timeout: float | None) -> bool:
        """Wait until the buffer has room (True) or ``timeout`` passes (False).

        In a runnable the wait is the runnable's one wait, so its commands run
        and its stop is seen while it waits; elsewhere, the buffer's condition.
        """
        ctx = _context.current()
        if ctx is None:
            return self._wait_for_room_outside(timeout)
        b = self._b
        deadline = None if timeout is None else time.monotonic() + timeout
        waker = ctx.waker
        while True:
            waker.clear()
            ctx.check_stop()
            with b._lock:
                closed = self._completed or b._closed
                if not closed:
                    if len(b._items) < b._capacity:
                        return True
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return False
                    b._room_waiters.append(waker)
            if closed:
                raise self._closing()  # outside the lock: it runs pending commands
            try:
                waker.wait(ctx.fds, remaining)  # room, a command, a stop, or the deadline
            finally:
                with b._lock:
                    b._room_waiters.remove(waker)

    def _wait_for_room_outside(self, timeout: float | None) -> bool:
        """:meth:`_wait_for_room` for a publisher outside any runnable (the main program)."""
        b = self._b
        deadline = None if timeout is None else time.monotonic() + timeout
        with b._lock:
            while True:
                if self._completed or b._closed:
                    raise self._closed_error()
                if len(b._items) < b._capacity:
                    return True
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                b._not_full.wait(remaining)

    def try_publish(self, value: T) -> bool:
        b = self._b
        check = b._check
        if check is not None and not isinstance(value, check):
            raise b._type_error(value)
        with b._lock:
            closed = self._completed or b._closed
            if not closed:
                if len(b._items) >= b._capacity:
                    return False
                b._items.append(value)
        if closed:
            raise self._closing()
        b._wake()
        return True

    def publish_many(self, values: Iterable[T], timeout: float | None = None) -> None:
        b = self._b
        check = b._check
        pending = list(values)
        if check is not None:
            for value in pending:
                if not isinstance(value, check):
                    raise b._type_error(value)
        start = 0
        while start < len(pending):
            with b._lock:
                closed = self._completed or b._closed
                room = 0 if closed else b._capacity - len(b._items)
                if room > 0:
                    b._items.extend(pending[start : start + room])
                    start += room
            if closed:
                raise self._closing()
            if room > 0:
                b._wake()
            elif not self._wait_for_room(timeout):
                raise BufferFull(f"buffer {b.name!r} stayed full for {timeout} s")

    def complete(self, error: BaseException | None = None) -> None:
        b = self._b
        with b._lock:
            if self._completed:
                return
            self._completed = True
            if not b._closed:
                b._items.append(_Complete(error))
        b._wake()


class _ThreadSubscription(Subscription[T]):
    def __init__(self, buffer: ThreadBuffer[T], waker: Waker) -> None:
        super().__init__(buffer)
        self._b = buffer
        self._waker = waker
        ctx = _context.current()
        self._ctx = ctx if ctx is not None and ctx.waker is waker else None

    def _fds(self) -> tuple[int, ...]:
        return ()

    def ready(self) -> bool:
        return bool(self._b._items) or self._ended is not None

    def _take(self) -> Any:
        """Pop one entry (value or completion) under the lock; the caller knows there is one."""
        b = self._b
        with b._lock:
            item = b._items.popleft()
            b._not_full.notify()
            for waker in b._room_waiters:
                waker.wake()
        return item

    def _handle_complete(self, mark: _Complete) -> BaseException | None:
        """Count a completion; return what ends the stream, if it has ended."""
        b = self._b
        b._completed += 1
        if mark.error is not None:
            return self._end(mark.error)
        if b._completed >= b._publishers:
            return self._end(None)
        return None

    def receive(self, timeout: float | None = None) -> T:
        ctx = self._ctx
        if ctx is not None and ctx.has_command():
            ctx.check_stop()  # a stop is seen even while values keep coming
        while True:
            if self._ended is not None:
                raise self._ended
            if self._b._items:
                item = self._take()
                if type(item) is _Complete:
                    ended = self._handle_complete(item)
                    if ended is not None:
                        raise ended
                    continue
                value: T = item
                return value
            if not self._wait(timeout):
                raise BufferEmpty(f"buffer {self._b.name!r}: nothing arrived within {timeout} s")

    def _wait(self, timeout: float | None) -> bool:
        items = self._b._items
        ctx = _context.current()
        if ctx is not None and ctx.waker is self._waker:
            return ctx.wait((), timeout, lambda: bool(items))
        if ctx is not None:
            raise PumaError(
                f"runnable {ctx.name!r} waits on buffer {self._b.name!r}, which was subscribed outside it: "
                "call subscribe() inside execute(), so the wait also hears commands and stop requests"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        waker = self._waker
        while True:
            waker.clear()
            if items:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            waker.wait((), remaining)

    def receive_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        out: list[T] = [self.receive(timeout)]
        b = self._b
        with b._lock:
            while b._items and len(out) < max_items:
                item = b._items[0]
                if type(item) is _Complete:
                    break
                out.append(b._items.popleft())
            b._room_made()
        return out


class _ThreadSupervision(StreamSupervision):
    """A thread buffer's side for the supervisor: it holds no resource a dead process could keep."""

    __slots__ = ("_b",)

    def __init__(self, buffer: ThreadBuffer[Any]) -> None:
        self._b = buffer

    @property
    def key(self) -> str:
        return f"{os.getpid()}:{id(self._b)}"

    @property
    def crossable(self) -> bool:
        return False

    def join(self, count: int = 1) -> None:
        self._b._register_publisher(count)

    def readers(self) -> frozenset[int]:
        b = self._b
        return frozenset({b._token}) if b._subscribed else frozenset()

    def interrupt_publishers(self) -> None:
        self._b._interrupt_publishers()

    def close(self) -> None:
        self._b._close()

    def drain_fd(self) -> int | None:
        return None

    def drain(self) -> None:
        return None

    def free_held_by(self, pid: int) -> bool:
        return True

    def complete_for(self, owner: str, error: BaseException) -> bool:
        return True  # its publishers are threads of this process: each completes its own stream

    def fail_readers_here(self, error: BaseException) -> None:
        b = self._b
        with b._lock:
            b._items.append(_Complete(error))
        b._wake()

    def release(self) -> None:
        return None
