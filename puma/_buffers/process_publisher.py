"""The publishing end of a process buffer: permits, the one wait for room, frames written under the write lock.

A publisher takes one of the buffer's ``capacity`` semaphore permits per
value and writes each value (or batch) as one frame of the wire codec
(:mod:`puma._core.codec`) under the write lock.  A publisher that finds no
permit never sleeps on the permits themselves: it counts itself as waiting
and sleeps on the buffer's "room" pipe in its one wait (its runnable's, or
the main program's :class:`~puma._core.current.OutsideContext`), so a
producer held back by a slow consumer still runs its commands.

Room tokens are scarce on purpose.  A waiting publisher counts itself with
the room it needs: one permit for a value; for a batch, all it still has to
write, up to half the capacity, so it writes a useful frame rather than
whatever single permit came back.  A subscriber giving permits back writes
one token per waiter the free room can serve, the least demanding first,
and a waiter that took all it wanted passes the rest on the same way.  So
``M`` blocked publishers are not all woken to find, ``M - 1`` of them,
nothing, and a batch is not woken for room it cannot use.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
from collections.abc import Iterable
from itertools import repeat, takewhile
from typing import TYPE_CHECKING, Any, TypeVar

from puma._buffers import process_large as _large
from puma._buffers.base import Publisher
from puma._buffers.shared import CLOSED, COMPLETED, WRITER
from puma._core import codec
from puma._core import current as _current
from puma._core.errors import BufferClosedError, BufferFull, SerializedError, serialize_error
from puma._core.waiting import Deadline
from puma._frames import registry as _frames

if TYPE_CHECKING:
    from puma._buffers.process import ProcessBuffer

__all__ = ["BATCH", "COMPLETE", "ITEM", "OOB", "ProcessPublisher"]

T = TypeVar("T")

#: Kind bytes of a process buffer's frames.
ITEM = 0  # one value
BATCH = 1  # a list of values, taking one permit each
COMPLETE = 2  # a publisher's completion: None or its serialized error
OOB = 3  # a value (or batch) whose large buffers follow the frame raw: counts, sizes, inner kind, pickle

_HIGHEST = pickle.HIGHEST_PROTOCOL
_ATOMIC = select.PIPE_BUF  # a pipe write of at most this many bytes is all or nothing


class ProcessPublisher(Publisher[T]):
    """A process buffer's publishing end, in the process of the runnable that owns it."""

    def __init__(self, buffer: ProcessBuffer[T], owner: str) -> None:
        super().__init__(buffer, owner)
        self._b = buffer
        self._fd = buffer._writer.fileno()
        self._check = buffer._check
        self._slots = buffer._slots
        self._lock = buffer._lock
        self._shared = buffer._shared
        self._pid = os.getpid()
        self._tag = _frames.buffer_tag(buffer._key)
        buffer._publishers_here.add(self)

    def _closed_error(self) -> BufferClosedError:
        b = self._b
        if b._released:
            return b._released_error()
        if self._shared[CLOSED] == 2 and not self._completed:
            return b._broken_error()
        return super()._closed_error()

    # --- permits ---------------------------------------------------------------------------
    def _grab(self, want: int) -> int:
        """Take up to ``want`` permits free now, without waiting (a C loop: no bytecode per permit)."""
        acquire = self._slots.acquire
        if not acquire(False):
            return 0
        if want == 1:
            return 1
        return 1 + len(list(takewhile(bool, map(acquire, repeat(False, want - 1)))))

    def _take(self, want: int, deadline: Deadline) -> int:
        """Take between 1 and ``want`` permits, waiting for room; raise if that fails.

        The one wait for room.  Counting ourselves as waiting (under the meta
        lock) comes before every look for permits, so a subscriber giving
        permits back either leaves them for that look or sees us waiting and
        writes a room token: no lost wake-up.
        """
        b = self._b
        shared = self._shared
        if self._completed or shared[CLOSED] or b._released:
            raise self._closing()
        got = self._grab(want)
        if got:
            return got
        ctx = _current.waiting_context()
        useful = min(want, b._useful)
        room_fd = b._room_reader.fileno()

        def ready() -> bool:
            nonlocal got
            if shared[CLOSED] or self._completed or b._released:
                return True
            b._take_token()
            if useful > 1 and b._free() < useful:
                return False  # wait for room for a useful part of the batch, not a single permit
            got = self._grab(want)
            return got > 0

        with b._meta_guard:
            b._want_room(useful, 1)
        try:
            ok = ctx.wait((room_fd,), deadline.remaining(), ready)
        finally:
            with b._meta_guard:
                b._want_room(useful, -1)
                # Took all we wanted (room may be left), or leave (timeout, stop) with a token
                # perhaps consumed: the next waiters may use what is free.
                wakes = b._wakes_due() if got in (want, 0) else 0
            if wakes:
                b._write_tokens(wakes)
        if got:
            return got
        if not ok:
            raise BufferFull(f"buffer {b.name!r} stayed full for {deadline.timeout} s")
        raise self._closing()

    # --- frames ----------------------------------------------------------------------------
    def _write(self, value: Any, kind: int) -> None:
        """Pickle ``value`` and write it as one frame (plus its out-of-band buffers), under the write lock."""
        oob: list[pickle.PickleBuffer] = []
        sending = _frames.sending
        sending.tag = self._tag  # a frame handed over in this pickle notes the buffer it went into
        try:
            data = pickle.dumps(value, _HIGHEST, buffer_callback=oob.append)
        finally:
            sending.tag = 0
        fd = self._fd
        shared = self._shared
        pid = self._pid
        broken = False
        if not oob:
            if len(data) <= codec.INLINE:
                frame = codec.frame(kind, data)
                with self._lock:
                    broken = shared[CLOSED] == 2  # nothing may follow a half-written frame
                    if not broken:
                        shared[WRITER] = pid if len(frame) <= _ATOMIC else -pid
                        codec.write_all(fd, frame)
                        shared[WRITER] = 0
            else:
                with self._lock:
                    broken = shared[CLOSED] == 2
                    if not broken:
                        shared[WRITER] = -pid
                        codec.write_frame(fd, kind, data)
                        shared[WRITER] = 0
        else:
            raws = [buf.raw() for buf in oob]
            if _large.wants_arena(raws) and self._write_shared(raws, kind, data):
                return
            # Out of band: a frame holding the buffers' sizes, the inner kind and the pickle; then
            # each raw buffer straight from the array's memory.
            meta = struct.pack(f"!I{len(raws)}QB", len(raws), *(r.nbytes for r in raws), kind)
            with self._lock:
                broken = shared[CLOSED] == 2
                if not broken:
                    shared[WRITER] = -pid
                    codec.write_all(fd, codec.frame(OOB, meta + data))
                    for raw in raws:
                        if raw.nbytes:
                            codec.write_all(fd, raw)
                    shared[WRITER] = 0
        if broken:
            raise self._b._broken_error()

    def _write_shared(self, raws: list[memoryview], kind: int, data: bytes) -> bool:
        """Write a value with large buffers as a handle frame, its buffers copied into the buffer's arena.

        False if the arena has no room (the value then goes through the pipe whole).
        """
        packed = _large.pack(self._b._arena, raws, kind, data)
        if packed is None:
            return False
        parts, refs = packed
        body = b"".join(parts)
        frame = codec.frame(_large.SHARED, body)
        shared = self._shared
        pid = self._pid
        with self._lock:
            broken = shared[CLOSED] == 2
            if not broken:
                shared[WRITER] = pid if len(frame) <= _ATOMIC else -pid
                codec.write_all(self._fd, frame)
                shared[WRITER] = 0
        if broken:
            self._b._arena.abandon(refs)
            raise self._b._broken_error()
        return True

    def _refund(self, count: int) -> None:
        """Give back permits taken for values that were not written."""
        self._b._give_back(count)

    # --- the public face -------------------------------------------------------------------
    def publish(self, value: T, timeout: float | None = None) -> None:
        check = self._check
        if check is not None and not isinstance(value, check):
            raise self._b._type_error(value)
        if self._completed or self._shared[CLOSED] or not self._slots.acquire(False):
            self._take(1, Deadline(timeout))  # raises, or waits for room
        try:
            self._write(value, ITEM)
        except BaseException:
            self._refund(1)
            raise

    def try_publish(self, value: T) -> bool:
        check = self._check
        if check is not None and not isinstance(value, check):
            raise self._b._type_error(value)
        if self._completed or self._shared[CLOSED] or self._b._released:
            raise self._closing()
        if not self._slots.acquire(False):
            return False
        try:
            self._write(value, ITEM)
        except BaseException:
            self._refund(1)
            raise
        return True

    def publish_many(self, values: Iterable[T], timeout: float | None = None) -> None:
        check = self._check
        pending = list(values)
        if check is not None and not all(map(isinstance, pending, repeat(check))):  # a C loop
            raise self._b._type_error(next(v for v in pending if not isinstance(v, check)))
        deadline = Deadline(timeout)  # for the whole call, not for each wait
        start = 0
        total = len(pending)
        while start < total:
            taken = self._take(total - start, deadline)
            try:
                self._write(pending[start : start + taken], BATCH)
            except BaseException:
                self._refund(taken)
                raise
            start += taken

    def complete(self, error: BaseException | None = None) -> None:
        if self._completed:
            return
        self._completed = True
        b = self._b
        if self._shared[CLOSED] or b._released:
            return  # nobody reads it, or the stream is broken and has ended for its readers
        frozen: SerializedError | None = None if error is None else serialize_error(error)
        try:
            self._write(frozen, COMPLETE)
        except BufferClosedError:
            return  # broken meanwhile: its readers are told by the Runner
        with b._meta_guard:
            self._shared[COMPLETED] += 1
