"""The publishing end of a process buffer: places, the one wait for room, frames written under the write lock.

A publisher takes one of the buffer's ``capacity`` free places per value (a
batch takes all it can use in one step; see :mod:`puma._buffers.process_room`
for the counts of places) and writes each value (or batch) as one frame of
the wire codec (:mod:`puma._core.codec`) under the write lock.  When no frame
pool is open in the process (pickling hands nothing over) the value or batch
is pickled first, and taking its places and writing it are one hold of the
write lock, at once or when its wait for room ends: 16 publishers of batches
contend for that lock once per batch, not twice.  A publisher that finds no
room counts itself as waiting, in the same step, and sleeps on the buffer's
"room" pipe in its one wait (its runnable's, or the main program's
:class:`~puma._core.current.OutsideContext`), so a producer held back by a
slow consumer still runs its commands.

Room tokens are scarce on purpose.  A waiting publisher counts itself with
the room it needs: one place for a value; for a batch, all it still has to
write, up to half the capacity, so it writes a useful frame rather than
whatever single place came back.  A reader giving room back writes one
token when a waiter can use it; the woken publisher takes its room and
passes what it leaves on the same way, and tokens already on their way are
counted, so ``M`` blocked publishers are not all woken to find, ``M - 1``
of them, nothing, a batch is not woken for room it cannot use, and the
reader (which every publisher waits for) is not the process every wake-up
preempts.  Where the platform has ``EPOLLEXCLUSIVE`` one token wakes one
sleeping publisher (see :func:`puma._core.waiting.wake_one_at_a_time`).
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterable
from itertools import repeat
from select import PIPE_BUF
from typing import TYPE_CHECKING, Any, TypeVar

from puma._buffers import process_large as _large
from puma._buffers.base import Publisher
from puma._buffers.shared import CLOSED, COMPLETED, GIVEN, TAKEN, WRITER, write_whole
from puma._core import codec
from puma._core import current as _current
from puma._core.errors import BufferClosedError, BufferFull, SerializedError, serialize_error
from puma._core.waiting import Deadline
from puma._frames import registry as _frames
from puma._frames.frame import Frame

if TYPE_CHECKING:
    from puma._buffers.process import ProcessBuffer

__all__ = ["BATCH", "COMPLETE", "HANDED", "ITEM", "OOB", "ProcessPublisher"]

T = TypeVar("T")

#: Kind bytes of a process buffer's frames.
ITEM = 0  # one value
BATCH = 1  # a list of values, taking one place each
COMPLETE = 2  # a publisher's completion: None or its serialized error
OOB = 3  # a value (or batch) whose large buffers follow the frame raw: counts, sizes, inner kind, pickle
HANDED = 5  # one frame of a frame pool, handed over: its handle (puma._frames.frame.Frame._handle), no pickle

_HIGHEST = pickle.HIGHEST_PROTOCOL
_HEAD = codec.HEAD


class ProcessPublisher(Publisher[T]):
    """A process buffer's publishing end, in the process of the runnable that owns it."""

    def __init__(self, buffer: ProcessBuffer[T], owner: str) -> None:
        super().__init__(buffer, owner)
        self._b = buffer
        self._fd = buffer._writer.fileno()
        self._check = buffer._check
        self._take_free = buffer._take_free
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

    # --- room ------------------------------------------------------------------------------
    def _take(self, want: int, deadline: Deadline, frame: bytes | None = None) -> tuple[int, bool]:
        """Take between 1 and ``want`` places, waiting for room; raise if that fails.

        The one wait for room.  Finding no room and counting ourselves as
        waiting are one step under the meta lock, so a reader giving room back
        either leaves it for us or sees us waiting and writes a room token.

        ``frame``: the values' frame, pickled already (nothing in it is handed
        over); when the wait ends with all ``want`` places taken it is written
        under the same hold of the write lock.  Returns the places taken and
        whether the frame was written.
        """
        b = self._b
        shared = self._shared
        if self._completed or shared[CLOSED] or b._released:
            raise self._closing()
        useful = min(want, b._useful)
        got = b._take_or_wait(want, useful, self._pid)
        if got:
            return got, False
        ctx = _current.waiting_context()
        room_fd = b._room_reader.fileno()
        waiting = True
        first = True
        written = False

        def ready() -> bool:
            nonlocal got, waiting, first, written
            if shared[CLOSED] or self._completed or b._released:
                return True
            # Wait for room for a useful part of a batch, not a single place.  The first look
            # (before any sleep) reads no token: none was written for us yet.
            token = False if first else b._read_token()
            first = False
            got, wakes, written = b._look_for_room(want, useful, token, self._pid, frame)
            if not got:
                return False
            waiting = False
            if wakes:
                b._write_tokens(wakes)  # room left over: the next waiters
            return True

        try:
            ok = ctx.wait((room_fd,), deadline.remaining(), ready, f"room in buffer {b.name!r}")
        finally:
            ctx.waker.done_waiting()  # the epoll its sleeps kept, if they were exclusive
            if waiting:
                # Leaving without room (timeout, stop, end), perhaps with a token read: the next
                # waiters may use what is free.
                wakes = b._stop_waiting(useful)
                if wakes:
                    b._write_tokens(wakes)
        if got:
            return got, written
        if not ok:
            raise BufferFull(f"buffer {b.name!r} stayed full for {deadline.timeout} s")
        raise self._closing()

    # --- frames ----------------------------------------------------------------------------
    def _pickle(self, value: Any, oob: list[pickle.PickleBuffer]) -> bytes:
        """``value``'s pickle, its large buffers appended to ``oob`` (a frame in it is handed over to this buffer)."""
        sending = _frames.sending
        sending.tag = self._tag  # a frame handed over in this pickle notes the buffer it went into
        try:
            return pickle.dumps(value, _HIGHEST, buffer_callback=oob.append)
        finally:
            sending.tag = 0

    def _write(self, value: Any, kind: int) -> None:
        """Pickle ``value`` and write it as one frame (plus its out-of-band buffers), under the write lock."""
        oob: list[pickle.PickleBuffer] = []
        data = self._pickle(value, oob)
        self._send(data, oob, kind)

    def _send(self, data: bytes, oob: list[pickle.PickleBuffer], kind: int) -> None:
        """Write a pickle as one frame (plus its out-of-band buffers), under the write lock."""
        fd = self._fd
        shared = self._shared
        pid = self._pid
        broken = False
        if not oob:
            parts = codec.frame_parts(kind, data)
            with self._lock:
                broken = shared[CLOSED] == 2  # nothing may follow a half-written frame
                if not broken:
                    write_whole(fd, shared, pid, parts, self._b._broke_mid_frame)
        else:
            raws = [buf.raw() for buf in oob]
            if _large.wants_arena(raws) and self._write_shared(raws, kind, data):
                return
            # Out of band: a frame holding the buffers' sizes, the inner kind and the pickle; then
            # each raw buffer straight from the array's memory.
            meta = struct.pack(f"!I{len(raws)}QB", len(raws), *(r.nbytes for r in raws), kind)
            parts = (codec.frame(OOB, meta + data), *(raw for raw in raws if raw.nbytes))
            with self._lock:
                broken = shared[CLOSED] == 2
                if not broken:
                    write_whole(fd, shared, pid, parts, self._b._broke_mid_frame)
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
                write_whole(self._fd, shared, pid, (frame,), self._b._broke_mid_frame)
        if broken:
            self._b._arena.abandon(refs)
            raise self._b._broken_error()
        return True

    def _refund(self, count: int) -> None:
        """Give back places taken for values that were not written."""
        self._b._give_back(count)

    # --- the public face -------------------------------------------------------------------
    def publish(self, value: T, timeout: float | None = None) -> None:
        check = self._check
        if check is not None and not isinstance(value, check):
            raise self._b._type_error(value)
        shared = self._shared
        if not (self._completed or shared[CLOSED]) and shared[GIVEN] - shared[TAKEN] > 0:
            # The usual case: room, and a small value written under the one write lock, which
            # takes its place too.
            if _frames.open_pools:
                self._publish_handing_over(value, timeout)
                return
            # No frame pool is open in this process, so pickling hands nothing over: the value
            # is pickled before the lock, which is held only to take the place and write.
            oob: list[pickle.PickleBuffer] = []
            data = pickle.dumps(value, _HIGHEST, buffer_callback=oob.append)
            if oob or len(data) > codec.INLINE:
                if not self._take_free(1, self._pid):
                    self._take(1, Deadline(timeout))
            else:
                frame = codec.frame(ITEM, data)
                if self._write_taking(frame, 1) or self._take(1, Deadline(timeout), frame)[1]:
                    return
                # (the room came back before the wait began: the place is ours, the frame not written)
            try:
                self._send(data, oob, ITEM)
            except BaseException:
                self._refund(1)
                raise
            return
        self._take(1, Deadline(timeout))  # raises, or waits for room
        try:
            self._write(value, ITEM)
        except BaseException:
            self._refund(1)
            raise

    def _write_taking(self, frame: bytes, count: int) -> bool:
        """Take ``count`` places and write ``frame`` (their values), under the write lock; False if too few are free."""
        shared = self._shared
        lock = self._lock
        lock.acquire()
        try:  # a KeyboardInterrupt anywhere in here must not leave the lock taken
            pid = self._pid
            shared[WRITER] = pid
            taken = shared[TAKEN]
            if shared[GIVEN] - taken < count or shared[CLOSED]:
                return False
            shared[TAKEN] = taken + count
            write_whole(self._fd, shared, pid, (frame,), self._b._broke_mid_frame)
            return True
        finally:
            shared[WRITER] = 0
            lock.release()

    def _publish_handing_over(self, value: T, timeout: float | None) -> None:
        """Publish a value that may hold frames: pickled (each frame handed over) only once its place is ours."""
        shared = self._shared
        data: bytes | None = None
        oob: list[pickle.PickleBuffer] = []
        lock = self._lock
        refund = False
        lock.acquire()
        try:
            pid = self._pid
            shared[WRITER] = pid
            taken = shared[TAKEN]
            if shared[GIVEN] - taken > 0 and shared[CLOSED] == 0:
                shared[TAKEN] = taken + 1
                handle = None
                try:
                    if type(value) is Frame:  # a frame alone: its handle (it notes this buffer), without pickle
                        handle = value._handle(self._tag)  # type: ignore[attr-defined]  # (T: a Frame here)
                    if handle is None:
                        data = self._pickle(value, oob)
                except BaseException:
                    # The place goes back as a reader's would (TAKEN only grows), waking a waiter.
                    refund = True
                    raise
                if handle is not None:
                    frame = _HEAD.pack(len(handle) + 1, HANDED) + handle
                    if len(frame) <= PIPE_BUF:  # the usual few hundred bytes: one write, all or nothing
                        os.write(self._fd, frame)
                    else:
                        write_whole(self._fd, shared, pid, (frame,), self._b._broke_mid_frame)
                    return
                assert data is not None
                if not oob and len(data) <= codec.INLINE:
                    write_whole(self._fd, shared, pid, (codec.frame(ITEM, data),), self._b._broke_mid_frame)
                    return
        finally:
            shared[WRITER] = 0
            lock.release()
            if refund:
                self._refund(1)
        if data is None:  # the room went meanwhile (or the stream closed)
            self._take(1, Deadline(timeout))  # raises, or waits for room
        try:
            if data is None:
                data = self._pickle(value, oob)
            self._send(data, oob, ITEM)
        except BaseException:
            self._refund(1)
            raise

    def try_publish(self, value: T) -> bool:
        check = self._check
        if check is not None and not isinstance(value, check):
            raise self._b._type_error(value)
        if self._completed or self._shared[CLOSED] or self._b._released:
            raise self._closing()
        if not self._take_free(1, self._pid):
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
        b = self._b
        if self._completed or self._shared[CLOSED] or b._released:
            raise self._closing()  # before the fast path below, which looks only at the room
        deadline = Deadline(timeout)  # for the whole call, not for each wait
        start = 0
        total = len(pending)
        while start < total:
            want = total - start
            data: bytes | None = None
            if not _frames.open_pools:
                # Nothing in it is handed over (no frame pool is open here): the rest of the batch
                # is pickled before the lock, and taking its places and writing it is one hold
                # of the write lock, now or when the wait for room ends.
                oob: list[pickle.PickleBuffer] = []
                data = pickle.dumps(pending[start:] if start else pending, _HIGHEST, buffer_callback=oob.append)
                if not oob and len(data) <= codec.INLINE:
                    frame = codec.frame(BATCH, data)
                    if self._write_taking(frame, want):
                        return
                    taken, written = self._take(want, deadline, frame)
                    if written:
                        start += taken
                        continue
                else:
                    taken = self._take(want, deadline)[0]
                if taken < want:
                    data = None  # a part only: pickled again
            else:
                taken = self._take(want, deadline)[0]
            try:
                if data is None:
                    self._write(pending[start : start + taken], BATCH)
                else:
                    self._send(data, oob, BATCH)
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
