"""The receiving end of a process buffer: bulk reads under the read lock, frames handed out one by one.

Each subscription reads the pipe in bulk (one ``readv`` takes whatever is
there, often many frames) into its own bytes and unpickles a frame only when
it hands the value out, so a busy stream costs no system call per value.
Several subscriptions (in any processes) may share one buffer, each value
going to exactly one of them:

* a subscription reads only under the buffer's read lock, and before it lets
  go it finishes reading any frame it began, including the raw out-of-band
  buffers that follow an out-of-band header (read straight into the
  ``bytearray`` that becomes the array's memory), so the pipe is always at a
  frame boundary between readers (:mod:`puma._buffers.process_reading`);
* while others share the buffer a subscription reads only a few values'
  worth ahead of what it hands out (the count of free places already bounds the values
  in flight to the capacity), so no reader hoards work;
* completions are counted in shared memory as they leave the pipe, by
  whichever reader reads them; the stream's end is written on the buffer's
  end channel, which every reader's one wait watches (see
  :mod:`puma._buffers.shared`).  A reader ends after handing out the values
  it already holds.

Places go back in groups of ``capacity // 4`` while a subscription works
through values it already read, and all it owes before it reads the pipe
again or waits.  Large groups on purpose: each give-back that finds
publishers waiting writes a room token, and the reader, which every
publisher waits for, is the process a wake-up preempts; with 16 blocked
batch publishers, groups of a quarter instead of a sixteenth made a third
as many writes and carried 1.5x the values.
"""

from __future__ import annotations

import os
import pickle
import struct
import time
import weakref
from collections import deque
from collections.abc import Iterator
from itertools import repeat, starmap
from typing import TYPE_CHECKING, Any, TypeVar

from puma._buffers import process_large as _large
from puma._buffers.base import Subscription
from puma._buffers.journal import Journal
from puma._buffers.process_publisher import BATCH, COMPLETE, HANDED, ITEM, OOB
from puma._buffers.process_reading import FrameReading
from puma._buffers.shared import (
    END_CLEAN,
    END_DRAIN,
    END_ERROR,
    ENDED,
    READER,
    SUBSCRIBERS,
)
from puma._core import codec
from puma._core import current as _current
from puma._core.errors import BufferCompleted, BufferEmpty, StopRequested, deserialize_error
from puma._core.waiting import Deadline, Poller
from puma._frames.frame import dropped_arrivals as _dropped
from puma._frames.frame import received_handle
from puma._frames.handover import SKIP, carries_dropped, without_dropped

if TYPE_CHECKING:
    from puma._buffers.process import ProcessBuffer

__all__ = ["ProcessSubscription"]

T = TypeVar("T")

_NO_DEADLINE = Deadline(None)  # (a deadline without a limit never changes: one for every wait)
_ONE_VALUE = frozenset((ITEM, HANDED))  # kinds of a frame holding one value: a pickle, or a frame's handle

_NOTHING: Any = object()  # a frame was handled but gave no value (a batch, a completion)
_NEED: Any = object()  # no whole frame is buffered: read the pipe
_SIZE = codec.SIZE
_COUNT = struct.Struct("!I")
_READ_BUFFER = 1 << 18  # a subscription's read buffer; grows for a frame that does not fit
_COMMAND_CHECK = 0.002  # seconds: most a subscriber serving buffered values goes without looking at commands
_never: list[int] = []  # a pipe nobody writes to, made once per process (a forked child's copy is as quiet)


def _never_readable() -> int:
    """A descriptor that never becomes readable (see :meth:`ProcessSubscription._fds`)."""
    if not _never:
        _never.extend(os.pipe())  # both ends stay open: no hang-up is reported either
    return _never[0]


class ProcessSubscription(FrameReading, Subscription[T]):
    """One reader of a process buffer, in the process (and runnable) that subscribed."""

    def __init__(self, buffer: ProcessBuffer[T], ctx: _current.Context | None) -> None:
        # A restartable runnable's reader keeps a journal (set while the base class follows it).
        self._journal: Journal | None = None
        self._batch_at = 0  # where the batch being handed out from _items starts (for the journal)
        self._batch_taken = 0
        super().__init__(buffer)
        self._b = buffer
        self._fd = buffer._reader.fileno()
        self._end_fd = buffer._end.fd
        self._shared = buffer._shared
        self._read_lock = buffer._read_lock
        self._pid = os.getpid()
        self._owed = 0  # places of values received but not given back yet
        self._release_at = buffer._group
        self._items: deque[Any] = deque()  # values of a batch frame not handed out yet
        self._skips = False  # _items may hold SKIP (a restartable reader's dropped frames)
        self._ctx = ctx  # the runnable that subscribed, for the periodic look at its commands
        self._data_poller = Poller((self._fd,))
        self._wait_fds = (self._fd, self._end_fd)
        self._waiting_for = f"a value of buffer {buffer.name!r}"  # what its wait is, in words (see activity)
        self._rest_poller = Poller((self._fd, self._end_fd))
        # Bytes read from the pipe: whole frames from _head to _tail (see _fill).
        self._buf = bytearray(_READ_BUFFER)
        self._view = memoryview(self._buf)
        self._head = 0
        self._tail = 0
        # The raw buffers of the last out-of-band frame read, when they were read straight from
        # the pipe into their targets: (that frame's position, the buffers).
        self._raws: tuple[int, list[bytearray]] | None = None
        self._frame_bytes = 64.0  # running mean size of a frame, to read a few values ahead when sharing
        self._next_check = 0.0  # when to look at commands while serving buffered values
        self._starved = False  # the last refill had to wait for the pipe (see _refill)
        self._end_copy = -1  # this subscription's own descriptor of the end channel (see _fds)
        self._end_finalizer: weakref.finalize | None = None  # type: ignore[type-arg]

    def _fds(self) -> tuple[int, ...]:
        """The pipe and this subscription's own copy of the end channel's descriptor.

        A waiter over many inputs (a servicing runnable) watches these for as
        long as it runs.  The end channel stays readable once the stream has
        ended, so when this subscription ends its copy is made to refer to a
        pipe nobody writes to (``dup2``): the descriptor number the waiter
        watches goes quiet instead of waking it for ever.
        """
        if self._end_copy < 0 and not self._b._released:
            self._end_copy = os.dup(self._end_fd)
            self._end_finalizer = weakref.finalize(self, os.close, self._end_copy)
            if self._ended is not None:
                os.dup2(_never_readable(), self._end_copy)
        return (self._fd, self._end_copy) if self._end_copy >= 0 else (self._fd,)

    def _end(self, error: BaseException | None) -> BaseException:
        ended = super()._end(error)
        if self._end_copy >= 0:
            os.dup2(_never_readable(), self._end_copy)  # this reader has ended: its copy goes quiet
        return ended

    def _close_copy(self) -> None:
        """Close this subscription's copy of the end channel (the buffer is released)."""
        if self._end_finalizer is not None:
            self._end_finalizer()  # closes it, once
            self._end_finalizer = None
        self._end_copy = -1

    def ready(self) -> bool:
        return (
            bool(self._items)
            or self._ended is not None
            or self._head < self._tail
            or bool(self._data_poller.poll(0))
            or bool(self._shared[ENDED])
            or self._b._failure is not None
            or self._b._released
        )

    def _release_now(self) -> None:
        """The buffer was released in this process: forget what is held, end, close what it opened."""
        self._items.clear()
        self._head = self._tail = 0
        self._raws = None
        self._end(self._b._released_error())
        self._close_copy()

    # --- reading the pipe --------------------------------------------------------------------
    def _fill(self) -> bool:
        """Read what the pipe holds now, under the read lock, up to a frame boundary; False if nothing.

        Called only when every byte read before has been handed out.
        """
        shared = self._shared
        buf = self._buf
        if len(buf) > _READ_BUFFER:  # a big frame is done with: back to the usual size
            buf = self._buf = bytearray(_READ_BUFFER)
            self._view = memoryview(buf)
        limit = len(buf)
        sharing = shared[SUBSCRIBERS] > 1
        if sharing:
            # Others share the buffer: read about a group's worth of frames, not all there is.
            limit = min(limit, max(64, int(self._frame_bytes * self._release_at)))
        lock = self._read_lock
        journal = self._journal
        lock.acquire()
        # Negated: dying in here leaves the pipe perhaps mid-frame, which the Runner must treat as
        # broken (unless the reader keeps a journal: then the Runner finishes the frame).
        shared[READER] = -self._pid
        try:
            if journal is not None:
                journal.begin()
                journal.reading()
            try:
                count = os.readv(self._fd, [self._view if limit == len(buf) else self._view[:limit]])
            except BlockingIOError:
                if journal is not None:
                    journal.wrote(0, self._view[:0])
                return False  # another reader took it
            if count == 0:
                raise EOFError(f"buffer {self._b.name!r}: its pipe was closed by every publisher")
            if journal is not None:
                journal.wrote(0, self._view[:count])  # what was read is kept before it is used
            self._head, self._tail = 0, count
            frames = self._complete_frames()
            if journal is not None:
                journal.counted()
        finally:
            shared[READER] = 0
            lock.release()
        if frames and sharing:  # (the size of a frame, on average, for the limit above)
            self._frame_bytes = 0.8 * self._frame_bytes + 0.2 * (self._tail / frames)
        return True

    def _complete_frames(self) -> int:
        """Walk the frames read; finish the last one if it is partial; count completions.  Returns frames.

        Holding the read lock, with every byte before ``_head`` handed out
        (``_head`` is 0).  The pipe is at a frame boundary afterwards (unless
        the stream broke: then the partial frame is dropped, and nothing was
        written after it).
        """
        unpack = _SIZE.unpack_from
        p = self._head
        frames = 0
        completions: list[Any] | None = None
        while p < self._tail:
            if self._tail - p >= 5 and (size := unpack(self._buf, p)[0]) >= 0:  # the usual 4-byte header
                head = 4
            else:
                if not self._read_more(p, p + 5):
                    break
                if unpack(self._buf, p)[0] < 0 and not self._read_more(p, p + 13):  # a body of 2 GiB or more
                    break
                head, size = codec.parse_header(self._buf, p, self._tail)
            end = p + head + size
            if end > self._tail and not self._read_more(p, end):
                break
            kind = self._buf[p + head]
            frames += 1
            if kind == COMPLETE:
                if completions is None:
                    completions = []
                completions.append(pickle.loads(self._view[p + head + 1 : end]))
            elif kind == _large.SHARED:
                _large.claim(self._b._arena, self._view[p + head + 1 : end])  # a reader killed now gives them back
            elif kind == OOB:
                body = self._view[p + head + 1 : end]
                (n,) = _COUNT.unpack_from(body, 0)
                sizes = struct.unpack_from(f"!{n}Q", body, 4)
                raw_bytes = sum(sizes)
                if self._tail - end >= raw_bytes:
                    end += raw_bytes
                elif not self._read_raws(p, end, sizes):
                    break
                else:
                    end = self._tail  # the last frame read: its raw buffers were read into their targets
            p = end
        if completions:
            self._b._count_completions(completions)
        return frames

    # --- handing values out ------------------------------------------------------------------
    def _next(self) -> Any:
        """The next value from the bytes read; _NOTHING after a batch or completion; _NEED if none is buffered."""
        start = self._head
        if start >= self._tail:
            return _NEED
        buf = self._buf
        size: int = _SIZE.unpack_from(buf, start)[0]
        head = 4
        if size < 0:
            head, size = codec.parse_header(buf, start, self._tail)
        stop = start + head + size
        self._head = stop
        kind = buf[start + head]
        body = self._view[start + head + 1 : stop]
        if self._journal is not None:
            self._journal.taken(start, 1)
        if kind in _ONE_VALUE:
            try:
                value = pickle.loads(body) if kind == ITEM else received_handle(body)
            finally:
                self._give_back(1)
            # A frame dropped before it arrived (a drop-oldest pool) is not delivered.
            return _NOTHING if _dropped and carries_dropped(value) else value
        if kind in (OOB, _large.SHARED):
            kind, payload = self._out_of_band(kind, body, start, stop)
            if kind == ITEM:
                return _NOTHING if _dropped and carries_dropped(payload) else payload
        else:
            payload = pickle.loads(body)
        if kind == BATCH:
            self._give_back(len(payload))
            if _dropped:
                if self._journal is None:
                    payload = without_dropped(payload)
                else:
                    # A restartable reader's journal counts a batch's values by place: a value
                    # holding a dropped frame keeps its place, as SKIP, counted when it is passed.
                    marked = without_dropped(payload, keep_places=True)
                    self._skips = self._skips or marked is not payload
                    payload = marked
            self._items.extend(payload)
            if self._journal is not None:
                self._journal_batch(start)
            return _NOTHING
        # A completion, counted when it was read.  An error ends this reader's stream here (the
        # others end with it after the values they hold).
        if payload is not None:
            self._end(payload if isinstance(payload, BaseException) else deserialize_error(payload))
        return _NOTHING

    def _out_of_band(self, kind: int, body: memoryview, start: int, stop: int) -> tuple[int, Any]:
        """The inner kind and payload of the value with out-of-band buffers at ``start`` (an ITEM's place owed).

        Its large buffers are in the buffer's arena (a SHARED frame), or follow the frame raw (OOB).
        """
        shared = kind == _large.SHARED
        offset = _large.inner_kind_at(body) if shared else 4 + 8 * _COUNT.unpack_from(body, 0)[0]
        kind = body[offset]
        try:
            if shared:
                return kind, _large.load(self._b._arena, body)[1]
            raws = self._raws
            if raws is not None and raws[0] == start:
                buffers = raws[1]
                self._raws = None
            else:
                buffers = []
                pos = stop
                for n in struct.unpack_from(f"!{(offset - 4) // 8}Q", body, 4):
                    buffers.append(bytearray(self._view[pos : pos + n]))
                    pos += n
                self._head = pos
            return kind, pickle.loads(body[offset + 1 :], buffers=buffers)
        finally:
            if kind == ITEM:
                self._give_back(1)

    def _journal_batch(self, start: int) -> None:
        """The batch frame at ``start`` is being handed out (a restartable reader's journal follows it)."""
        self._batch_at, self._batch_taken = start, 0
        assert self._journal is not None
        self._journal.taken(start, 0)

    def _give_back(self, count: int) -> None:
        """Owe ``count`` more places; give them all back once a group's worth is owed."""
        owed = self._owed + count
        if owed >= self._release_at:
            self._owed = 0
            self._b._give_back(owed)
        else:
            self._owed = owed
        if self._journal is not None:
            self._journal.owing(self._owed, self._head)  # the frames before _head gave their permits

    def _settle(self) -> None:
        """Give back every place owed (before reading the pipe or waiting)."""
        owed = self._owed
        if owed:
            self._owed = 0
            self._b._give_back(owed)
            if self._journal is not None:
                self._journal.owing(0, self._head)

    def _commands(self) -> None:
        """While values come from the buffer, look at commands every _COMMAND_CHECK seconds."""
        ctx = self._ctx
        if ctx is not None:
            now = time.monotonic()
            if now >= self._next_check and not self._end_is_next():
                self._next_check = now + _COMMAND_CHECK
                try:
                    ctx.check_stop()
                except StopRequested:
                    if self._end_is_next():  # it came before the stop: told first (the stop stays requested)
                        return
                    raise

    def _end_is_next(self) -> bool:
        """True if the stream's end comes next, before any value (read from the pipe if nothing is buffered).

        A stream's end that reached the reader before its stop is told
        (its error raised), not masked by the stop.
        """
        if self._items:
            return False
        if self._ended is not None:
            return True
        start = self._head
        if start >= self._tail:
            # Nothing read yet: read what the pipe holds now, as the next receive would.
            self._settle()
            if not self._fill():
                return self._ending() is not None
            start = self._head
        head, _ = codec.parse_header(self._buf, start, self._tail)
        return head != 0 and start + head < self._tail and self._buf[start + head] == COMPLETE

    def _ending(self) -> BaseException | None:
        """What ends this reader now that it holds nothing: None if the stream goes on."""
        b = self._b
        if b._released:
            self._release_now()
            return self._ended
        how = self._shared[ENDED]
        if how in (END_CLEAN, END_ERROR):
            return self._end(b._end_error())
        if how == END_DRAIN or b._failure is not None:
            # Every whole value still in the pipe first (the others read theirs likewise).
            if self._fill():
                return None
            return self._end(b._failure if b._failure is not None else b._end_error())
        return None

    def _refill(self, deadline: Deadline) -> bool:
        """No whole frame is buffered: read more, or wait (servicing commands); False on timeout."""
        self._settle()
        ctx = self._ctx
        looked = waited = False
        while True:
            if self._ending() is not None or self._head < self._tail:
                return True
            # A reader that had to wait last time (values come one at a time) goes straight to
            # the wait, which returns at once if the pipe is readable: no read that finds nothing.
            if (waited or not self._starved) and self._fill():
                self._starved = waited
                return True
            if not looked and ctx is not None and not ctx.fds and ctx.has_command():
                try:
                    ctx.check_stop()  # a thread runnable reading a process buffer (after what is there)
                except StopRequested:
                    if self._fill() or self._ending() is not None:
                        return True  # it came before the stop: taken first (the stop stays requested)
                    raise
            looked = True
            if not self._wait(deadline):
                return False
            waited = True
            # The wait looked at commands; what woke it (a value, the stream's end and its
            # error) is taken before the next look.
            self._next_check = time.monotonic() + _COMMAND_CHECK
            if not self._b._released:
                # The usual wake-up: values, read at once (the values in the pipe come before
                # the end of their stream in any case, see _ending).
                try:
                    if self._fill():
                        self._starved = True
                        return True
                except EOFError:
                    pass  # every publisher's end closed: the loop looks at the stream's end first

    def _stream_over(self) -> bool:
        """The stream ended, failed here or was released (the pipe readable ends a wait by itself: not polled here)."""
        b = self._b
        return bool(self._shared[ENDED]) or b._failure is not None or b._released

    def _wait(self, deadline: Deadline) -> bool:
        """The one wait for a value: the pipe readable, the stream ended, or a failure here; False on timeout."""
        ctx = _current.waiting_context()
        waker = ctx.waker
        wakers = self._b._wakers
        wakers.add(waker)  # fail_readers_here and release wake it (a main-program reader has no commands)
        try:
            return ctx.wait(self._wait_fds, deadline.remaining(), self._stream_over, self._waiting_for, True)
        finally:
            wakers.discard(waker)

    def receive(self, timeout: float | None = None) -> T:
        self._commands()
        deadline: Deadline | None = None
        while True:
            if self._items:
                value: T = self._items.popleft()
                if self._journal is not None:
                    self._batch_taken += 1
                    self._journal.taken(self._batch_at, self._batch_taken)
                    if value is SKIP:
                        continue  # held a frame dropped before it arrived: passed, not delivered
                return value
            if self._ended is not None:
                raise self._ended
            if self._head >= self._tail:  # nothing buffered (what _next would say): read, or wait
                if deadline is None:
                    deadline = _NO_DEADLINE if timeout is None else Deadline(timeout)
                if not self._refill(deadline):
                    raise BufferEmpty(f"buffer {self._b.name!r}: nothing arrived within {timeout} s")
                continue  # (a stream that ended meanwhile has _ended set)
            result = self._next()
            if result is not _NOTHING:
                return result  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[T]:
        # What Subscription.__iter__ does (receive until the stream completes), with the usual
        # frame, one small value, handled right here: no call per value but pickle's.  A reader
        # its Runner may restart is followed (its receive is wrapped, its journal kept): it
        # takes the plain path.
        if self._journal is not None or "receive" in vars(self):
            yield from Subscription.__iter__(self)
            return
        items = self._items
        loads = pickle.loads
        unpack = _SIZE.unpack_from
        dropped = _dropped
        while True:
            self._commands()
            if items:
                yield items.popleft()
                continue
            start = self._head
            if self._ended is None and start < self._tail:
                buf = self._buf
                size: int = unpack(buf, start)[0]
                kind = buf[start + 4]
                if size >= 0 and kind in _ONE_VALUE:
                    stop = start + 4 + size
                    self._head = stop
                    try:
                        body = self._view[start + 5 : stop]
                        value: T = loads(body) if kind == ITEM else received_handle(body)  # type: ignore[assignment]
                    finally:
                        owed = self._owed + 1
                        if owed >= self._release_at:
                            self._owed = 0
                            self._b._give_back(owed)
                        else:
                            self._owed = owed
                    if dropped and carries_dropped(value):
                        continue  # a frame dropped before it arrived is not delivered
                    yield value
                    continue
            try:
                value = self.receive()
            except BufferCompleted as done:
                done.__traceback__ = None  # kept by the reader: its frames would keep the last value alive
                return
            yield value

    def _leftovers(self) -> list[T]:
        out: list[T] = list(self._items)
        self._items.clear()
        while self._ended is None:
            result = self._next()  # only what was read already: the pipe is left to the next reader
            if result is _NEED:
                break
            if result is not _NOTHING:
                out.append(result)
            out.extend(self._items)
            self._items.clear()
        self._settle()
        if self._skips:
            out = [value for value in out if value is not SKIP]
        return out

    def receive_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        out: list[T] = [self.receive(timeout)]
        items = self._items
        shared = self._shared
        while len(out) < max_items:
            if items:
                room = max_items - len(out)
                taken = min(room, len(items))
                if len(items) <= room:
                    out.extend(items)
                    items.clear()
                else:
                    out.extend(starmap(items.popleft, repeat((), room)))  # a C loop
                if self._journal is not None:
                    self._batch_taken += taken
                    self._journal.taken(self._batch_at, self._batch_taken)
                continue
            if self._ended is not None:
                break
            result = self._next()
            if result is _NEED:
                self._settle()
                # A journal's fill forgets the values handed out before it: those are returned first.
                if shared[ENDED] or self._b._released or (self._journal is not None and out) or not self._fill():
                    break
            elif result is not _NOTHING:
                out.append(result)
        if self._skips:
            out = [value for value in out if value is not SKIP]  # dropped frames, passed (see _next)
        return out
