"""A buffer between threads of one process: a deque under a lock.

Publishers append values (and, when they complete, a completion mark) to one
deque; any number of subscriptions pop from its front, so each value goes to
exactly one of them.  Nobody is woken for nothing:

* a reader about to sleep puts its one wait's :class:`~puma._core.waiting.Waker`
  on a list; each value published wakes one waiting reader (the first), and
  the end of the stream wakes them all;
* a publisher that finds the deque full waits in its one wait (its
  runnable's, or the main program's :class:`~puma._core.current.OutsideContext`)
  after putting itself on a list with the room it needs (1, or a useful part
  of a batch); each value taken wakes the waiters at the front for whom
  there is now room, and no more.

A waiter woken that leaves without using what woke it (a timeout, a stop)
passes the wake-up on.  A thread buffer cannot be sent to a child process:
trying names the attribute.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterable
from itertools import islice, repeat, starmap
from typing import Any, TypeVar

from puma._buffers.base import Buffer, BufferStatistics, Publisher, StreamHold, Subscription
from puma._buffers.supervision import StreamSupervision
from puma._core import current as _context
from puma._core.errors import BufferClosedError, BufferEmpty, BufferFull, NotPicklableError, PumaError, StopRequested
from puma._core.waiting import Deadline, Waker
from puma._frames import handover as _handover
from puma._frames.frame import Frame, published
from puma._frames.registry import open_pools as _pools

_PLAIN = _handover.PLAIN
_SKIP = _handover.SKIP
_arrive = _handover.arrive
_find = _handover.find

__all__ = ["ThreadBuffer"]

T = TypeVar("T")


class _Complete:
    """The in-stream mark a publisher leaves when it completes (or the Runner, to fail the readers)."""

    __slots__ = ("error", "publisher")

    def __init__(self, error: BaseException | None, publisher: bool = True) -> None:
        self.error = error
        self.publisher = publisher  # False: not a publisher's completion (fail_readers_here)


class _RoomWaiter:
    """A publisher waiting for room: its one wait's waker and the room it waits for."""

    __slots__ = ("need", "waker")

    def __init__(self, waker: Waker, need: int) -> None:
        self.waker = waker
        self.need = need


_EMPTY: Any = object()  # nothing to take now
_END: Any = object()  # the stream has ended


class ThreadBuffer(Buffer[T]):
    """A buffer whose publishers and subscribers all live in one process."""

    def __init__(self, item_type: type[T] | Any, size: int, name: str) -> None:
        super().__init__(item_type, size, name)
        self._lock = threading.Lock()
        self._items: deque[Any] = deque()
        self._read_waiters: deque[Waker] = deque()  # readers about to sleep, first come first woken
        # Waits outside this buffer (a servicing runnable over several inputs) that found nothing
        # in ready() and may sleep now: each is woken by the next value, and forgotten.
        self._idle_waiters: list[Waker] = []
        self._room_waiters: deque[_RoomWaiter] = deque()
        self._group = max(1, size // 16)  # the room a blocked batch waits for (or all it still needs)
        self._publishers = 0
        self._completed = 0  # publishers that completed
        self._seen = 0  # completions taken from the deque
        self._holds = 0
        self._subscribers = 0
        self._readers: dict[int, None] = {}  # Runner tokens of the subscribing runnables (0: the main program)
        self._ended = False
        self._end_error: BaseException | None = None
        self._closed = False
        self._released = False
        # Frames inside other values are looked for (and handed over, see puma._frames.handover) only
        # while a pool is open in this process (none open: no frame exists) and if the item type allows
        # them; _frames: a frame (or a value holding one) was ever put in, so readers claim what they take.
        self._scan = _handover.may_hold_frames(self._check)
        self._frames = False

    def _put(self, value: Any, found: Any) -> Any:
        """What the deque keeps for ``value``: a frame handed over, a carrier of the frames found in it (lock held)."""
        if found is not None:
            self._frames = True
            return _handover.hand_over(found)
        if type(value) is Frame:
            self._frames = True
            return published(value)
        return value

    def __reduce__(self) -> Any:
        raise NotPicklableError(
            f"thread buffer {self.name!r} cannot be sent to a process: "
            "make it with ProcessEnvironment.buffer() to connect processes"
        )

    def _released_error(self) -> BufferClosedError:
        return BufferClosedError(f"buffer {self.name!r} was released when its Runner closed")

    def _ended_error(self) -> BufferClosedError:
        return BufferClosedError(
            f"buffer {self.name!r}: its stream has ended (every publisher that joined has completed and no hold "
            "is outstanding), so no publisher may join it; hold it open with hold_open() to replace a publisher"
        )

    def subscribe(self) -> Subscription[T]:
        ctx = _context.current()
        with self._lock:
            if self._released:
                raise self._released_error()
            self._subscribers += 1
            self._readers[ctx.token if ctx is not None else 0] = None
        if ctx is not None and not any(b is self for b in ctx.subscribed):
            ctx.subscribed.append(self)
        return _ThreadSubscription(self, ctx)

    def hold_open(self) -> StreamHold:
        with self._lock:
            if self._released:
                raise self._released_error()
            if self._ended:
                raise self._ended_error()
            self._holds += 1
        return StreamHold(self, self._let_go)

    def _let_go(self) -> None:
        with self._lock:
            self._holds -= 1
            self._end_if_done()

    def statistics(self) -> BufferStatistics:
        with self._lock:
            size = sum(1 for item in self._items if type(item) is not _Complete)
            return BufferStatistics(
                self.name,
                self.capacity,
                size,
                self._publishers,
                self._completed,
                self._subscribers,
                self._holds,
                self._ended,
            )

    @property
    def supervision(self) -> StreamSupervision:
        return _ThreadSupervision(self)

    # --- the stream's end (all with the lock held) -----------------------------------------
    def _end_stream(self, error: BaseException | None) -> None:
        if not self._ended:
            self._ended = True
            self._end_error = error
            while self._read_waiters:  # the end wakes every reader
                self._read_waiters.popleft().wake()
            self._wake_idle()

    def _wake_idle(self) -> None:
        """Wake the outside waits that found nothing (lock held)."""
        idle = self._idle_waiters
        if idle:
            for waker in idle:
                waker.wake()
            idle.clear()

    def _end_if_done(self) -> None:
        if not self._ended and self._seen >= self._publishers and self._holds <= 0:
            self._end_stream(None)

    def _ends_next(self) -> bool:
        """True if what a reader takes next is the stream's end (no value before it)."""
        if self._ended:
            return True
        items = self._items
        return bool(items) and type(items[0]) is _Complete and items[0].error is not None

    def _take_locked(self) -> Any:
        """The next value, _END once the stream has ended, or _EMPTY (lock held)."""
        items = self._items
        while not self._ended:
            if not items:
                return _EMPTY
            item = items.popleft()
            if type(item) is _Complete:
                if item.publisher:
                    self._seen += 1
                if item.error is not None:
                    self._end_stream(item.error)  # the first error ends it for every reader
                else:
                    self._end_if_done()
                continue
            if self._room_waiters:
                self._make_room()
            return item
        return _END

    # --- room ----------------------------------------------------------------------------------
    def _make_room(self) -> None:
        """Wake the waiting publishers at the front for whom there is room now, and no more (lock held)."""
        waiters = self._room_waiters
        if self._closed:
            while waiters:
                waiters.popleft().waker.wake()
            return
        room = self._capacity - len(self._items)
        while waiters and waiters[0].need <= room:
            waiter = waiters.popleft()
            room -= waiter.need
            waiter.waker.wake()

    def _wake_readers(self, count: int) -> None:
        """``count`` values were appended: wake as many waiting readers (lock held)."""
        waiters = self._read_waiters
        while waiters and count > 0:
            waiters.popleft().wake()
            count -= 1
        if self._idle_waiters:
            self._wake_idle()

    # --- used by puma itself -----------------------------------------------------------------
    def _register_publisher(self, delta: int = 1) -> None:
        self._join(delta, refuse=False)

    def _join(self, delta: int, refuse: bool) -> None:
        """``delta`` publishers join, or leave after a failed launch (see ProcessBuffer._join)."""
        with self._lock:
            if delta > 0 and self._released:
                raise self._released_error()
            if self._ended:
                if refuse and delta > 0:
                    raise self._ended_error()
                return  # nobody joins an ended stream; so nobody leaves it either
            self._publishers += delta
            if delta < 0 and self._seen:
                self._end_if_done()  # a launch that failed: the others may all have completed

    def _open_publisher(self, owner: str) -> Publisher[T]:
        if self._released:
            raise self._released_error()
        if self._ended:
            raise self._ended_error()  # it joined after the end (a publisher that joined keeps it open)
        return _ThreadPublisher(self, owner)

    def _subscriber_token(self) -> int:
        return next(iter(self._readers), 0)

    def _is_subscribed(self) -> bool:
        return bool(self._readers)

    def _interrupt_publishers(self) -> None:
        with self._lock:
            waiters = self._room_waiters
            while waiters:  # every one: each looks at its stop
                waiters.popleft().waker.wake()

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            self._items.clear()
            self._make_room()

    def _fail(self, error: BaseException) -> None:
        with self._lock:
            self._items.append(_Complete(error, publisher=False))  # after the values already there
            self._wake_readers(len(self._read_waiters))

    def _release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            self._closed = True
            self._items.clear()
            self._end_stream(self._released_error())
            self._make_room()


class _ThreadPublisher(Publisher[T]):
    def __init__(self, buffer: ThreadBuffer[T], owner: str) -> None:
        super().__init__(buffer, owner)
        self._b = buffer

    def _closed_error(self) -> BufferClosedError:
        if self._b._released:
            return self._b._released_error()
        return super()._closed_error()

    def _wait_for_room(self, need: int, deadline: Deadline) -> bool:
        """The one wait for room: until ``need`` values fit (True), the deadline (False), or a stop (raises).

        Returns True as well when the buffer closed or this publisher
        completed: the caller looks again and raises.
        """
        b = self._b
        ctx = _context.waiting_context()
        me = _RoomWaiter(ctx.waker, need)
        waiters = b._room_waiters

        def ready() -> bool:
            with b._lock:
                if b._closed or self._completed or b._capacity - len(b._items) >= need:
                    return True
                if me not in waiters:
                    waiters.append(me)
                return False

        ok = False
        try:
            ok = ctx.wait((), deadline.remaining(), ready, f"room in buffer {b.name!r}")
        finally:
            with b._lock:
                if me in waiters:
                    waiters.remove(me)
                elif not ok:
                    b._make_room()  # woken, but leaving without using the room: pass it on
        return ok

    def publish(self, value: T, timeout: float | None = None) -> None:
        b = self._b
        check = b._check
        if check is not None and not isinstance(value, check):
            raise b._type_error(value)
        if _pools and b._scan and type(value) not in _PLAIN:  # a pool is open here: look for frames inside
            found = _find(value)
            handover = found is not None or type(value) is Frame
        else:
            found, handover = None, type(value) is Frame
        deadline: Deadline | None = None
        while True:
            with b._lock:
                closed = b._closed or self._completed
                if not closed and len(b._items) < b._capacity:
                    b._items.append(b._put(value, found) if handover else value)
                    if b._read_waiters:
                        b._read_waiters.popleft().wake()  # one value, one reader
                    if b._idle_waiters:
                        b._wake_idle()
                    return
            if closed:
                raise self._closing()  # outside the lock: it runs pending commands
            if deadline is None:
                deadline = Deadline(timeout)
            if not self._wait_for_room(1, deadline):
                raise BufferFull(f"buffer {b.name!r} stayed full for {timeout} s")

    def try_publish(self, value: T) -> bool:
        b = self._b
        check = b._check
        if check is not None and not isinstance(value, check):
            raise b._type_error(value)
        if _pools and b._scan and type(value) not in _PLAIN:  # a pool is open here: look for frames inside
            found = _find(value)
            handover = found is not None or type(value) is Frame
        else:
            found, handover = None, type(value) is Frame
        with b._lock:
            closed = self._completed or b._closed
            if not closed:
                if len(b._items) >= b._capacity:
                    return False
                b._items.append(b._put(value, found) if handover else value)
                b._wake_readers(1)
        if closed:
            raise self._closing()
        return True

    def publish_many(self, values: Iterable[T], timeout: float | None = None) -> None:
        b = self._b
        check = b._check
        pending = list(values)
        if check is not None and not all(map(isinstance, pending, repeat(check))):  # a C loop
            raise b._type_error(next(v for v in pending if not isinstance(v, check)))
        found: list[Any] | None = None
        if b._scan and _pools:  # a frame pool is open here: frames inside values are handed over too
            found = [_find(v) for v in pending]  # each is looked in before any goes in
            if not any(f is not None for f in found):
                found = None
        if self._completed or b._closed:
            raise self._closing()  # an empty batch too, as in a process buffer
        deadline = Deadline(timeout)  # for the whole call, not for each wait
        start = 0
        while start < len(pending):
            with b._lock:
                closed = self._completed or b._closed
                room = 0 if closed else b._capacity - len(b._items)
                if room > 0:
                    chunk = pending[start : start + room]
                    if found is not None:
                        chunk = [b._put(v, f) for v, f in zip(chunk, found[start : start + room], strict=True)]
                    elif Frame in map(type, chunk):  # frames are handed over as they go in
                        chunk = [b._put(v, None) for v in chunk]
                    b._items.extend(chunk)
                    start += len(chunk)
                    b._wake_readers(len(chunk))
            if closed:
                raise self._closing()
            if room <= 0 and not self._wait_for_room(min(len(pending) - start, b._group), deadline):
                raise BufferFull(f"buffer {b.name!r} stayed full for {timeout} s")

    def complete(self, error: BaseException | None = None) -> None:
        b = self._b
        with b._lock:
            if self._completed:
                return
            self._completed = True
            if not b._closed:
                b._completed += 1
                b._items.append(_Complete(error))
                b._wake_readers(1)  # whoever takes the mark wakes the rest if it ends the stream


class _ThreadSubscription(Subscription[T]):
    def __init__(self, buffer: ThreadBuffer[T], ctx: _context.Context | None) -> None:
        super().__init__(buffer)
        self._b = buffer
        self._ctx = ctx  # the runnable that subscribed (None: the main program or a plain thread)

    def _fds(self) -> tuple[int, ...]:
        return ()

    def ready(self) -> bool:
        """True if :meth:`receive` would not wait.

        When False, the caller's wait (its runnable's, or this thread's) is
        woken by the next value or the end: a waiter over several inputs
        calls this just before it sleeps.
        """
        b = self._b
        if b._items or b._ended or self._ended is not None:
            return True
        waker = _context.waiting_context().waker
        with b._lock:
            if b._items or b._ended:
                return True
            if waker not in b._idle_waiters:
                b._idle_waiters.append(waker)
        return False

    def _finish(self) -> BaseException:
        """The stream has ended: end this subscription the same way."""
        b = self._b
        if b._released:
            return self._end(b._released_error())
        return self._end(b._end_error)

    def _wait(self, deadline: Deadline) -> bool:
        """The one wait for a value: until one is there or the stream ended (True), or the deadline (False)."""
        b = self._b
        ctx = _context.waiting_context()
        if ctx.in_runnable and self._ctx is not ctx:
            raise PumaError(
                f"runnable {ctx.name!r} waits on buffer {b.name!r}, which was subscribed outside it: "
                "call subscribe() inside execute(), so the wait also hears commands and stop requests"
            )
        waker = ctx.waker
        waiters = b._read_waiters

        def ready() -> bool:
            with b._lock:
                if b._items or b._ended:
                    return True
                if waker not in waiters:
                    waiters.append(waker)
                return False

        ok = False
        try:
            ok = ctx.wait((), deadline.remaining(), ready, f"a value of buffer {b.name!r}")
        finally:
            with b._lock:
                if waker in waiters:
                    waiters.remove(waker)
                elif not ok and b._items:
                    b._wake_readers(1)  # woken for a value, but leaving: pass it on
        return ok

    def receive(self, timeout: float | None = None) -> T:
        ctx = self._ctx
        b = self._b
        if ctx is not None and ctx.has_command() and not b._ends_next():
            try:
                ctx.check_stop()  # a stop is seen even while values keep coming
            except StopRequested:
                if not b._ends_next():  # an end that came before the stop is told first
                    raise
        deadline: Deadline | None = None
        while True:
            if self._ended is not None:
                raise self._ended
            if b._items or b._ended:
                with b._lock:
                    item = b._take_locked()
                if item is _END:
                    raise self._finish()
                if item is not _EMPTY:
                    if b._frames and (type(item) is Frame or type(item) is _handover.Carrier):
                        item = _arrive(item)  # its frames claimed now: one dropped meanwhile is skipped
                        if item is _SKIP:
                            continue
                    value: T = item
                    return value
            if deadline is None:
                deadline = Deadline(timeout)
            if not self._wait(deadline):
                raise BufferEmpty(f"buffer {b.name!r}: nothing arrived within {timeout} s")

    def receive_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        out: list[T] = [self.receive(timeout)]
        b = self._b
        with b._lock:
            items = b._items
            want = min(max_items - 1, len(items))
            if want and not b._ended:
                if _Complete in map(type, islice(items, want)):  # C loops, no call per value
                    want = list(map(type, islice(items, want))).index(_Complete)  # the next receive takes it
                out.extend(starmap(items.popleft, repeat((), want)))
            if b._room_waiters:
                b._make_room()
        if b._frames and len(out) > 1:
            kept = out[:1]
            for item in out[1:]:
                if type(item) is Frame or type(item) is _handover.Carrier:
                    arrived = _arrive(item)
                    if arrived is not _SKIP:
                        kept.append(arrived)
                else:
                    kept.append(item)
            out = kept
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
        self._b._join(count, refuse=True)

    def readers(self) -> frozenset[int]:
        return frozenset(self._b._readers)

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
        self._b._fail(error)

    def release(self) -> None:
        self._b._release()
