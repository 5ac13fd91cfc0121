"""A buffer that crosses processes: a pipe bounded by a count of free places, shared by many publishers and readers.

Design (see docs/architecture.md and docs/buffers.md):

* Values are pickled with protocol 5 by the publisher itself and written to a
  one-way pipe as frames of the one wire codec (:mod:`puma._core.codec`)
  under a process-shared write lock, one ``write`` per value or batch.  There
  is no feeder thread, so a process never hangs at exit flushing a queue
  whose reader is gone.  Large contiguous buffers (numpy arrays) travel out
  of band: from 64 KiB, copied once into the buffer's shared-memory arena
  with only a handle in the frame, the reader's array using the arena's
  memory (:mod:`puma._buffers.process_large`); smaller ones in a small header
  frame, then each raw buffer straight from the array's memory, received
  into the ``bytearray`` that becomes the new array's memory
  (:mod:`puma._buffers.process_publisher`).
* Subscribers read the pipe in bulk under a read lock and never split a frame
  between them; a value goes to exactly one of them
  (:mod:`puma._buffers.process_subscription`).
* A count of free places (``capacity`` at first, in shared memory under the
  meta lock) bounds the values in flight (in the pipe and in the readers'
  hands): a publisher takes one per value, a batch all it can use in one
  step, and readers give them back in groups as they hand values out.  A
  publisher that finds no room sleeps on the room pipe; a reader giving room
  back writes one "room" token when a waiter can use it, and each woken
  publisher passes on the room it leaves.  Where the platform allows
  (``EPOLLEXCLUSIVE``), one token wakes one sleeping publisher, not all.
* The stream ends when every publisher that joined has completed and no
  hold is outstanding; completions are counted in shared memory by whichever
  reader reads them, and the end is written on an end channel that every
  reader's one wait watches (:mod:`puma._buffers.shared`).
* A process killed holding one of the process-shared locks is handled by the
  Runner through :meth:`ProcessBuffer._free_locks_of`; one killed in the
  middle of a frame leaves the stream broken, and every reader then ends with
  the error the Runner gives, after every whole value before the break.
* :meth:`StreamSupervision.release` closes every descriptor the buffer opened
  in this process and unlinks its named semaphores at once.
"""

from __future__ import annotations

import os
import pickle
import select
import weakref
from multiprocessing import util as _mp_util
from multiprocessing.synchronize import SemLock
from typing import Any, TypeVar

from puma._buffers import journal as _journal
from puma._buffers.base import Buffer, BufferStatistics, Publisher, StreamHold, Subscription, _checker
from puma._buffers.process_publisher import COMPLETE, ITEM, ProcessPublisher
from puma._buffers.process_room import RoomAccounting
from puma._buffers.process_subscription import ProcessSubscription
from puma._buffers.shared import (
    BROKEN,
    CLOSED,
    COMPLETED,
    END_CLEAN,
    END_DRAIN,
    END_ERROR,
    ENDED,
    GIVEN,
    HOLDS,
    MAX_READERS,
    META_HOLDER,
    PUBLISHERS,
    READER,
    SEEN,
    SHARED_SLOTS,
    SUBSCRIBER,
    SUBSCRIBERS,
    TOKENS,
    WAITING,
    WRITER,
    EndChannel,
    Guard,
    free_locks_of,
)
from puma._buffers.supervision import StreamSupervision
from puma._core import codec
from puma._core import current as _context
from puma._core.errors import BufferClosedError, PumaError, serialize_error
from puma._core.waiting import Poller, Waker, wake_one_at_a_time
from puma._frames.arena import Arena

__all__ = ["ProcessBuffer", "live_process_buffers"]

T = TypeVar("T")

# The frame layout's names, for code that forges frames (tests/_helpers.py): the codec's own.
_HEAD = codec.HEAD
_ITEM = ITEM
_WRITER = WRITER
_DRAIN_READ = 1 << 18

_live: weakref.WeakSet[ProcessBuffer[Any]] = weakref.WeakSet()


def live_process_buffers() -> list[ProcessBuffer[Any]]:
    """Process buffers made in this process and still alive (for leak checks)."""
    return list(_live)


def _unlink_now(lock: Any) -> None:
    """Unlink a SemLock's name now, not when it is collected.

    Under spawn and forkserver multiprocessing names each semaphore (in
    /dev/shm) and registers a ``util.Finalize`` that unlinks the name and
    unregisters it from the resource tracker when the lock is collected.
    Calling that finalizer early is what the collector would do, at once;
    the semaphore itself stays usable by every process that has it open.
    Under fork the name was unlinked when it was made (nothing is found).
    """
    name = getattr(lock._semlock, "name", None)
    if name is None:
        return
    registry: dict[Any, Any] = getattr(_mp_util, "_finalizer_registry", {})
    cleanup = getattr(SemLock, "_cleanup", None)
    for finalizer in list(registry.values()):
        if getattr(finalizer, "_callback", None) is cleanup and getattr(finalizer, "_args", None) == (name,):
            finalizer()  # runs once: later calls (and the collector's) do nothing


class ProcessBuffer(RoomAccounting, Buffer[T]):
    """A buffer whose publishers and subscribers may live in different processes."""

    def __init__(self, item_type: type[T] | Any, size: int, name: str, context: Any) -> None:
        super().__init__(item_type, size, name)
        _live.add(self)
        self._reader, self._writer = context.Pipe(duplex=False)
        # Readers never block in a read: one that finds the pipe empty (another reader was
        # first) waits in its one wait instead.
        os.set_blocking(self._reader.fileno(), False)
        # "Room" tokens, one byte each (see process_publisher).  A pipe, not a semaphore, so a
        # waiting publisher in a runnable waits on it and on its command pipe in one poll.  Both
        # ends non-blocking: a token read by another waiter first is not waited for, and a
        # full pipe already holds tokens enough.
        self._room_reader, self._room_writer = context.Pipe(duplex=False)
        os.set_blocking(self._room_reader.fileno(), False)
        os.set_blocking(self._room_writer.fileno(), False)
        self._end = EndChannel(context)
        self._lock = context.Lock()  # held while a frame is written
        self._read_lock = context.Lock()  # held while a reader reads the pipe (to a frame boundary)
        self._meta = context.Lock()  # guards the shared counters, never held long
        self._shared = context.RawArray("q", SHARED_SLOTS)
        self._shared[GIVEN] = size  # every place given back to begin with (see process_room)
        self._group = max(1, size // 4)  # places given back (and room made) at a time
        self._useful = max(1, size // 2)  # the most room a blocked batch waits for before it writes part
        self._key = f"{os.getpid()}:{id(self)}"  # names this buffer in messages from the Runner
        self._arena = Arena.create(self._key)  # large out-of-band buffers (see process_large); no memory yet
        self._local_state()

    def _local_state(self) -> None:
        """What belongs to this process only (made again in each process the buffer reaches)."""
        self._meta_guard = Guard(self._meta, self._shared, META_HOLDER)
        self._failure: BaseException | None = None  # set by fail_readers_here, for readers in this process
        self._wakers: set[Waker] = set()  # the one waits of readers here waiting now
        self._publishers_here: weakref.WeakSet[ProcessPublisher[T]] = weakref.WeakSet()
        self._subscriptions: weakref.WeakSet[ProcessSubscription[T]] = weakref.WeakSet()
        self._released = False
        self._stats: BufferStatistics | None = None  # the last figures, once released
        self._kept: dict[str, list[tuple[int, int]]] = {}  # arena blocks adopted for a dead reader's journal
        # One room token wakes one waiting publisher, not every one (see process_publisher).
        wake_one_at_a_time(self._room_reader.fileno(), crowded=self._crowded)

    def _crowded(self) -> bool:
        """Whether several publishers wait for room now (a hint: then one token must wake only one)."""
        return int(self._shared[WAITING]) > 1

    def __getstate__(self) -> dict[str, Any]:
        if self._released:
            raise BufferClosedError(str(self._released_error()))
        state = dict(self.__dict__)
        for local in ("_check", "_meta_guard", "_failure", "_wakers", "_publishers_here", "_subscriptions"):
            state.pop(local, None)
        for local in ("_released", "_stats", "_kept"):
            state.pop(local, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._check = _checker(self._item_type)
        self._local_state()

    # --- errors that state the broken rule -------------------------------------------------
    def _released_error(self) -> BufferClosedError:
        return BufferClosedError(f"buffer {self.name!r} was released when its Runner closed")

    def _broken_error(self) -> BufferClosedError:
        return BufferClosedError(
            f"buffer {self.name!r} is broken: a process died (or a second Ctrl-C stopped it) in the middle of writing "
            "or reading a value"
        )

    def _ended_error(self) -> BufferClosedError:
        return BufferClosedError(
            f"buffer {self.name!r}: its stream has ended (every publisher that joined has completed and no hold "
            "is outstanding), so no publisher may join it; hold it open with hold_open() to replace a publisher"
        )

    def _check_usable(self) -> None:
        if self._released:
            raise self._released_error()

    # --- the public face -------------------------------------------------------------------
    def subscribe(self) -> Subscription[T]:
        self._check_usable()
        ctx = _context.current()
        mark = (ctx.token if ctx is not None else 0) + 1
        shared = self._shared
        with self._meta_guard:
            tokens = [int(shared[i]) for i in range(TOKENS, TOKENS + MAX_READERS)]
            if mark not in tokens:
                if 0 not in tokens:
                    raise PumaError(f"buffer {self.name!r} has {MAX_READERS} subscribing runnables, the most it takes")
                shared[TOKENS + tokens.index(0)] = mark
            if not shared[SUBSCRIBER]:
                shared[SUBSCRIBER] = mark
            shared[SUBSCRIBERS] += 1
        if ctx is not None and not any(b is self for b in ctx.subscribed):
            ctx.subscribed.append(self)
        subscription = ProcessSubscription(self, ctx)
        self._subscriptions.add(subscription)
        return subscription

    def hold_open(self) -> StreamHold:
        self._check_usable()
        with self._meta_guard:
            if self._shared[ENDED]:
                raise self._ended_error()
            self._shared[HOLDS] += 1
        return StreamHold(self, self._let_go)

    def _let_go(self) -> None:
        """A hold is released: the stream may end now."""
        if self._released:
            return
        with self._meta_guard:
            self._shared[HOLDS] -= 1
            self._end_if_done()

    def statistics(self) -> BufferStatistics:
        if self._stats is not None:
            return self._stats
        shared = self._shared
        size = max(0, self.capacity - self._free())
        return BufferStatistics(
            self.name,
            self.capacity,
            max(size, 0),
            int(shared[PUBLISHERS]),
            int(shared[COMPLETED]),
            int(shared[SUBSCRIBERS]),
            int(shared[HOLDS]),
            bool(shared[ENDED]),
        )

    @property
    def supervision(self) -> StreamSupervision:
        return _ProcessSupervision(self)

    # --- the stream's end ------------------------------------------------------------------
    def _end_if_done(self) -> None:
        """End the stream if every joined publisher's completion was read and no hold is out (meta held)."""
        shared = self._shared
        if not shared[ENDED] and shared[SEEN] >= shared[PUBLISHERS] and shared[HOLDS] <= 0:
            self._end.declare(shared, END_CLEAN, None)

    def _count_completions(self, completions: list[Any]) -> None:
        """Completions a reader read from the pipe (None, or a serialized error), in order."""
        with self._meta_guard:
            shared = self._shared
            for payload in completions:
                shared[SEEN] += 1
                if payload is not None:
                    self._end.declare(shared, END_ERROR, payload)  # the first error ends it for every reader
            self._end_if_done()

    def _end_error(self) -> BaseException | None:
        """The error the stream ended with (None: it completed).  Once ENDED is set."""
        with self._meta_guard:  # the declaring process writes the channel holding it
            return self._end.error(self._shared)

    def _broke_mid_frame(self) -> None:
        """This process stopped half-way through writing a frame (a second Ctrl-C): the stream ends for every reader."""
        self._declare_drain(self._broken_error())
        for waker in list(self._wakers):
            waker.wake()

    def _declare_drain(self, error: BaseException) -> None:
        """End the stream for every reader with ``error``, after the whole values still in the pipe."""
        with self._meta_guard:
            self._end.declare(self._shared, END_DRAIN, error)

    # --- used by puma itself -----------------------------------------------------------------
    def _register_publisher(self, delta: int = 1) -> None:
        self._join(delta, refuse=False)

    def _join(self, delta: int, refuse: bool) -> None:
        """``delta`` publishers join (or, negative, a failed launch takes them back).

        Once the stream has ended nobody may join: ``refuse`` raises the
        error; otherwise (the Runner's older call, made after it recorded the
        child) the join is ignored and the publisher is refused when it opens
        in the child (:meth:`_open_publisher`), so the runnable fails with
        the same error.
        """
        if delta > 0:
            self._check_usable()
        with self._meta_guard:
            shared = self._shared
            if shared[ENDED]:
                if refuse and delta > 0:
                    raise self._ended_error()
                return  # nobody joins an ended stream; so nobody leaves it either
            shared[PUBLISHERS] += delta
            if delta < 0 and shared[SEEN]:
                self._end_if_done()  # a launch that failed: the others may all have completed

    def _open_publisher(self, owner: str) -> Publisher[T]:
        self._check_usable()
        if self._shared[ENDED]:
            # A publisher that joined cannot see its stream end before it completes: this one
            # joined after the end.
            raise self._ended_error()
        return ProcessPublisher(self, owner)

    def _subscriber_token(self) -> int:
        return max(int(self._shared[SUBSCRIBER]) - 1, 0)

    def _is_subscribed(self) -> bool:
        return bool(self._shared[SUBSCRIBER])

    def _readers(self) -> frozenset[int]:
        shared = self._shared
        return frozenset(int(shared[i]) - 1 for i in range(TOKENS, TOKENS + MAX_READERS) if shared[i])

    def _crossable(self) -> bool:
        return True

    def _interrupt_publishers(self) -> None:
        # Wake every publisher waiting for room so it sees its stop request.  One token per
        # publisher: one about to sleep finds its token and does not.
        if not self._released:
            self._write_tokens(max(int(self._shared[PUBLISHERS]), 1))

    def _close(self) -> None:
        if self._released:
            return
        shared = self._shared
        if not shared[CLOSED]:
            shared[CLOSED] = 1
        self._write_tokens(max(int(shared[PUBLISHERS]), 1))
        self._drain()

    def _drain(self) -> None:
        """Discard whatever is readable now (the Runner calls this once no reader remains)."""
        if self._released:
            return
        fd = self._reader.fileno()
        poller = Poller((fd,))
        try:
            while poller.poll(0):
                if not os.read(fd, _DRAIN_READ):
                    return
        except OSError:
            pass  # empty (non-blocking), or closed

    def _reader_fd(self) -> int:
        fd: int = self._reader.fileno()
        return fd

    def _free_locks_of(self, pid: int) -> bool:
        """The process ``pid`` died: free the locks it held.  False if the stream is broken.

        A reader that died in the middle of a frame leaves nothing any reader
        can go on with: the stream ends for all of them here.  A publisher's
        break ends it when the Runner passes on the publisher's error
        (:meth:`_fail` or :meth:`_complete_for`).
        """
        shared = self._shared
        reader_died = shared[READER] == -pid
        intact = free_locks_of(
            pid, shared, ((self._meta, META_HOLDER), (self._read_lock, READER), (self._lock, WRITER))
        )
        if reader_died:
            self._declare_drain(
                BufferClosedError(f"buffer {self.name!r} is broken: a subscriber died in the middle of reading a value")
            )
        return intact

    def _complete_for(self, owner: str, error: BaseException) -> bool:
        """Complete on behalf of a publisher that died; never blocks for long.

        In the stream when it can (after the values it wrote); else, when the
        pipe is broken or full, on the end channel: every reader ends with the
        error after the whole values still in the pipe.
        """
        shared = self._shared
        if shared[CLOSED] == 1 or self._released:
            return True
        frame = codec.frame(COMPLETE, pickle.dumps(serialize_error(error), pickle.HIGHEST_PROTOCOL))
        if not shared[BROKEN] and len(frame) <= select.PIPE_BUF and self._lock.acquire(True, 1.0):
            try:
                _, writable, _ = select.select([], [self._writer.fileno()], [], 0)
                if writable and shared[CLOSED] != 2:
                    os.write(self._writer.fileno(), frame)  # at most PIPE_BUF bytes: one atomic write
                    with self._meta_guard:
                        shared[COMPLETED] += 1
                    return True
            finally:
                self._lock.release()
        self._declare_drain(error)
        return True

    def _fail(self, error: BaseException) -> None:
        """End the streams of the readers in this process with ``error``, after what they can still receive.

        The Runner calls it (here, or through INPUT_FAILED in a reader's
        process) when a publisher died leaving the stream broken: then it
        ends for every reader, everywhere.
        """
        if self._shared[BROKEN]:
            self._declare_drain(error)
        self._failure = error
        for waker in list(self._wakers):
            waker.wake()

    def _release(self) -> None:
        """Close this process's descriptors and unlink the semaphores' names now (see supervision.release)."""
        if self._released:
            return
        self._stats = self.statistics()
        self._released = True
        for publisher in list(self._publishers_here):
            publisher._completed = True  # its fast path refuses at once; _closed_error says why
        for subscription in list(self._subscriptions):
            subscription._release_now()
        for waker in list(self._wakers):
            waker.wake()
        wake_one_at_a_time(self._room_reader.fileno(), on=False)
        for connection in (self._reader, self._writer, self._room_reader, self._room_writer):
            connection.close()
        self._end.close()
        self._arena.close()
        for lock in (self._lock, self._read_lock, self._meta):
            _unlink_now(lock)


class _ProcessSupervision(StreamSupervision):
    """A process buffer's side for the supervisor."""

    __slots__ = ("_b",)

    def __init__(self, buffer: ProcessBuffer[Any]) -> None:
        self._b = buffer

    @property
    def key(self) -> str:
        return self._b._key

    @property
    def crossable(self) -> bool:
        return True

    def join(self, count: int = 1) -> None:
        self._b._join(count, refuse=True)

    def readers(self) -> frozenset[int]:
        return self._b._readers()

    def interrupt_publishers(self) -> None:
        self._b._interrupt_publishers()

    def close(self) -> None:
        self._b._close()

    def drain_fd(self) -> int | None:
        return None if self._b._released else self._b._reader_fd()

    def drain(self) -> None:
        self._b._drain()

    def free_held_by(self, pid: int) -> bool:
        return self._b._free_locks_of(pid)

    def complete_for(self, owner: str, error: BaseException) -> bool:
        return self._b._complete_for(owner, error)

    def fail_readers_here(self, error: BaseException) -> None:
        self._b._fail(error)

    def finish_read(self, journal: str, pid: int) -> bool:
        b = self._b
        finished = _journal.finish_read(journal, b, pid)
        # Before the dead reader's blocks are freed: those its journal's values use are kept to recover them.
        kept = _journal.keep_blocks(journal, b._arena, pid)
        if kept:
            b._kept[journal] = kept
        return finished

    def recover(self, journal: str) -> tuple[int, int, list[Any], list[Any]] | None:
        try:
            return _journal.recover(journal, self._b)  # large values copied out of the blocks kept
        finally:
            self.forget(journal)

    def forget(self, journal: str) -> None:
        self._b._arena.release(self._b._kept.pop(journal, []))

    def release(self) -> None:
        self._b._release()
