"""A buffer that crosses processes: a pipe bounded by a semaphore.

Design (see docs/architecture.md):

* Values are pickled with protocol 5 by the publisher itself and written to a
  one-way pipe under a process-shared lock (so messages from several
  publishers never interleave), one ``write`` per value: a frame of a 4-byte
  length, a kind byte and the pickle.  There is no feeder thread, so a process
  never hangs at exit flushing a queue whose reader is gone.
* Large contiguous buffers (numpy arrays) travel out of band: a small header
  frame, then each raw buffer straight from the array's memory, received into a
  writable ``bytearray`` that becomes the new array's memory.
* The subscriber reads the pipe in bulk (one ``read`` takes whatever is
  there, often many frames) into its own buffer and unpickles a frame only
  when it hands the value out, so a busy stream costs no system call per
  value.  It looks at its command pipe whenever it reads the data pipe, and at
  least every couple of milliseconds while it serves values already read.
* A semaphore of ``size`` permits bounds the number of values in flight:
  publishers take one per value, the subscriber gives it back on receipt -- in
  groups of up to ``size // 16`` while it works through values it has already
  read, and all it owes before it reads the pipe again or waits.  So a full
  buffer wakes a blocked publisher with room for a good batch, not one value
  at a time (which would make it write one-value frames and keep the stream
  in that slow regime); publishers may find the buffer full that many values
  early, never late.
* A publisher that finds no permit never sleeps on the permits themselves: it
  counts itself as waiting and sleeps on a "room" pipe, where the subscriber
  writes one token per waiting publisher after giving back a group (the
  Runner too, to interrupt or close).  One wake-up then finds room for a
  batch, and giving permits back costs no system call (no sleeper on them to
  wake).  In a runnable that sleep is the runnable's one wait, over the room
  pipe and its command pipe, so a producer held back by a slow consumer still
  runs its commands and sees its stop.
* When the subscriber ends, the Runner closes the buffer: publishers get
  :class:`~puma.BufferClosedError`, and the Runner drains the pipe so a
  publisher blocked in a write is freed.
* A process killed while it holds one of the two process-shared locks would
  leave them held for ever, so each lock's holder writes its pid into shared
  memory; when the Runner sees a process die it frees what that pid held
  (:meth:`ProcessBuffer._free_locks_of`).  A value written in one ``write`` of
  at most ``PIPE_BUF`` bytes is all there or not at all; a publisher that died
  in the middle of a longer one left part of a value in the pipe, so the
  stream is broken: the Runner then tells the subscriber through its command
  channel, which ends its stream with the publisher's error once it has
  received every whole value before it.
* The subscriber's wait is one ``poll`` over the pipe and the runnable's
  command pipe.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import time
import weakref
from collections import deque
from collections.abc import Iterable
from itertools import repeat, starmap, takewhile
from typing import Any, TypeVar

from puma._buffers.base import Buffer, BufferStatistics, Publisher, Subscription, _checker
from puma._buffers.supervision import StreamSupervision
from puma._core import current as _context
from puma._core.errors import (
    BufferClosedError,
    BufferEmpty,
    BufferFull,
    SerializedError,
    deserialize_error,
    serialize_error,
)
from puma._core.waiting import Poller, Waker

__all__ = ["ProcessBuffer"]

T = TypeVar("T")

_ITEM = 0
_BATCH = 1
_COMPLETE = 2
_OOB = 3

_PUBLISHERS = 0
_SUBSCRIBER = 1  # runner token of the subscriber + 1; 0 = nobody yet
_CLOSED = 2
_WAITING = 3  # publishers asleep (or about to be) on the room pipe
_WRITER = 4  # pid of the process holding _lock (negated while it writes more than PIPE_BUF bytes)
_META_HOLDER = 5  # pid of the process holding _meta
_BROKEN = 6  # a publisher died in the middle of a value: the stream cannot be read past it
_SHARED_SLOTS = 7

_NOTHING: Any = object()  # a frame was handled but gave no value (a batch, a completion)
_NEED: Any = object()  # no whole frame is buffered: read the pipe
_HIGHEST = pickle.HIGHEST_PROTOCOL

_HEAD = struct.Struct("!IB")  # frame: length of what follows the 4 length bytes, then the kind byte
_COUNT = struct.Struct("!I")
_BIG = 1 << 16  # pickles larger than this are written after their header, not copied onto it
_READ_BUFFER = 1 << 18  # the subscriber's read buffer; grows for a frame that does not fit
_COMMAND_CHECK = 0.002  # seconds: most a subscriber serving buffered values goes without looking at commands
_ATOMIC = select.PIPE_BUF  # a pipe write of at most this many bytes is all or nothing
_ORPHAN_WAIT = 0.5  # seconds a lock stays taken, with no holder named, before it is deemed its dead taker's


class _Guard:
    """A process-shared lock that writes its holder's pid into shared memory while held.

    So the Runner can free it when the holder dies (see :meth:`ProcessBuffer._free_locks_of`).
    """

    __slots__ = ("_lock", "_shared", "_slot")

    def __init__(self, lock: Any, shared: Any, slot: int) -> None:
        self._lock = lock
        self._shared = shared
        self._slot = slot

    def __enter__(self) -> None:
        self._lock.acquire()
        self._shared[self._slot] = os.getpid()

    def __exit__(self, *exc: object) -> None:
        self._shared[self._slot] = 0
        self._lock.release()


def _write_all(fd: int, data: Any) -> None:
    """Write every byte of ``data`` (a pipe write can be cut short by a signal)."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data).cast("B")
        while written < len(view):
            written += os.write(fd, view[written:])


_live: weakref.WeakSet[ProcessBuffer[Any]] = weakref.WeakSet()


def live_process_buffers() -> list[ProcessBuffer[Any]]:
    """Process buffers made in this process and still alive (for leak checks)."""
    return list(_live)


class ProcessBuffer(Buffer[T]):
    """A buffer whose publishers and subscriber may live in different processes."""

    def __init__(self, item_type: type[T] | Any, size: int, name: str, context: Any) -> None:
        super().__init__(item_type, size, name)
        _live.add(self)
        self._reader, self._writer = context.Pipe(duplex=False)
        self._slots = context.Semaphore(size)
        # "Room" tokens, one byte each, written when permits come back and publishers wait. A
        # pipe, not a semaphore, so a waiting publisher in a runnable waits on it and on its
        # command pipe in one poll. Both ends non-blocking: a token read by another waiter
        # first is not waited for, and a full pipe already holds tokens enough.
        self._room_reader, self._room_writer = context.Pipe(duplex=False)
        os.set_blocking(self._room_reader.fileno(), False)
        os.set_blocking(self._room_writer.fileno(), False)
        self._lock = context.Lock()  # held while a message is written
        self._meta = context.Lock()  # guards the shared counters, never held long
        self._shared = context.RawArray("q", _SHARED_SLOTS)
        self._key = f"{os.getpid()}:{id(self)}"  # names this buffer in messages from the Runner
        self._failure: BaseException | None = None  # set in the subscriber's process: see INPUT_FAILED
        self._meta_guard = _Guard(self._meta, self._shared, _META_HOLDER)
        self._waker: Waker | None = None  # a subscription outside any runnable waits on it too

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_check", None)
        state.pop("_meta_guard", None)
        state["_failure"] = None
        state["_waker"] = None
        return state

    def _fail(self, error: BaseException) -> None:
        """End the stream of a subscriber in this process with ``error`` (the Runner: it is broken)."""
        self._failure = error
        if self._waker is not None:
            self._waker.wake()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._check = _checker(self._item_type)
        self._meta_guard = _Guard(self._meta, self._shared, _META_HOLDER)

    def _free_locks_of(self, pid: int) -> bool:
        """The process ``pid`` died: free the locks it held.  False if the stream is broken.

        Broken: it died in the middle of writing a value longer than one atomic
        pipe write (now or earlier).  Called by the Runner's supervisor only.
        """
        shared = self._shared
        for lock, slot in ((self._meta, _META_HOLDER), (self._lock, _WRITER)):
            holder = shared[slot]
            if holder in (pid, -pid):
                if holder < 0:
                    shared[_BROKEN] = 1
                shared[slot] = 0
                lock.release()
            # Else free now (we take it and let go), or held by a process killed in the instant
            # between taking it and writing its pid (or clearing its pid and letting go): then
            # nothing of a value was half written, and letting go frees it.  A live process that
            # took it meanwhile names itself at once: its lock is left alone.
            elif holder == 0 and (lock.acquire(True, _ORPHAN_WAIT) or shared[slot] == 0):
                lock.release()  # ours now, or its taker is deemed dead
        return not shared[_BROKEN]

    def _crossable(self) -> bool:
        return True

    def subscribe(self) -> Subscription[T]:
        ctx = _context.current()
        with self._meta_guard:
            if self._shared[_SUBSCRIBER]:
                raise BufferClosedError(f"buffer {self.name!r} already has its one subscriber")
            self._shared[_SUBSCRIBER] = (ctx.token if ctx is not None else 0) + 1
        if ctx is not None:
            ctx.subscribed.append(self)
        return _ProcessSubscription(self, ctx)

    def statistics(self) -> BufferStatistics:
        try:
            size = self.capacity - self._slots.get_value()
        except NotImplementedError:  # macOS has no sem_getvalue
            size = -1
        return BufferStatistics(self.name, self.capacity, max(size, 0), int(self._shared[_PUBLISHERS]), -1)

    @property
    def supervision(self) -> StreamSupervision:
        return _ProcessSupervision(self)

    def _register_publisher(self, delta: int = 1) -> None:
        with self._meta_guard:
            self._shared[_PUBLISHERS] += delta

    def _open_publisher(self, owner: str) -> Publisher[T]:
        return _ProcessPublisher(self, owner)

    def _subscriber_token(self) -> int:
        return max(int(self._shared[_SUBSCRIBER]) - 1, 0)

    def _is_subscribed(self) -> bool:
        return bool(self._shared[_SUBSCRIBER])

    def _interrupt_publishers(self) -> None:
        # Wake publishers waiting for room so they see their stop request.  One
        # token per publisher: one about to sleep finds its token and does not.
        self._wake_publishers(max(int(self._shared[_PUBLISHERS]), 1))

    def _wake_publishers(self, at_least: int = 0) -> None:
        """Write a room token per waiting publisher (and at least ``at_least``)."""
        with self._meta_guard:
            count = max(int(self._shared[_WAITING]), at_least)
            if count:
                try:
                    os.write(self._room_writer.fileno(), bytes(count))
                except BlockingIOError:
                    pass  # the pipe is full of tokens: every waiter finds one

    def _close(self) -> None:
        self._shared[_CLOSED] = 1
        for _ in range(max(int(self._shared[_PUBLISHERS]), 1)):
            self._slots.release()
        self._wake_publishers(max(int(self._shared[_PUBLISHERS]), 1))
        self._drain()

    def _drain(self) -> None:
        """Discard whatever is readable now (the Runner calls this after the subscriber ended)."""
        fd = self._reader.fileno()
        poller = Poller((fd,))
        try:
            while poller.poll(0):
                if not os.read(fd, _READ_BUFFER):
                    return
        except OSError:
            pass

    def _reader_fd(self) -> int:
        fd: int = self._reader.fileno()
        return fd

    def _complete_for(self, owner: str, error: BaseException) -> bool:
        """Complete on behalf of a publisher that died; never blocks for long."""
        if self._shared[_CLOSED]:
            return True
        if self._shared[_BROKEN]:
            return False  # a completion frame would follow part of a value: the Runner tells the subscriber
        payload = pickle.dumps(serialize_error(error), _HIGHEST)
        frame = _HEAD.pack(len(payload) + 1, _COMPLETE) + payload
        if len(frame) > select.PIPE_BUF or not self._lock.acquire(True, 1.0):
            return False
        try:
            _, writable, _ = select.select([], [self._writer.fileno()], [], 0)
            if not writable:
                return False
            os.write(self._writer.fileno(), frame)  # at most PIPE_BUF bytes: one atomic write
            return True
        finally:
            self._lock.release()


class _ProcessPublisher(Publisher[T]):
    def __init__(self, buffer: ProcessBuffer[T], owner: str) -> None:
        super().__init__(buffer, owner)
        self._b = buffer
        self._fd = buffer._writer.fileno()
        self._check = buffer._check
        self._slots = buffer._slots
        self._lock = buffer._lock
        self._shared = buffer._shared
        self._pid = os.getpid()
        self._room_fd = buffer._room_reader.fileno()
        self._room_poller: Poller | None = None

    def _take_slot(self, timeout: float | None) -> None:
        """Take one permit, waiting if the buffer is full; raise if that fails.

        The wait is on the room pipe, not on the permits (see the module
        notes): count ourselves as waiting and look for a permit under the
        meta lock, so a subscriber giving permits back either leaves one for
        that look or sees us waiting and writes a room token.
        """
        shared = self._shared
        if self._completed or shared[_CLOSED]:
            raise self._closing()
        slots = self._slots
        if slots.acquire(False):
            return
        ctx = _context.current()
        deadline = None if timeout is None else time.monotonic() + timeout
        meta = self._b._meta_guard
        while True:
            if ctx is not None:
                ctx.waker.clear()  # before looking: a thread runnable's command wakes it after this
                ctx.check_stop()
            if shared[_CLOSED]:
                raise self._closing()
            remaining = None if deadline is None else deadline - time.monotonic()
            with meta:
                if slots.acquire(False):
                    return
                if remaining is not None and remaining <= 0:
                    raise BufferFull(f"buffer {self._b.name!r} stayed full for {timeout} s")
                shared[_WAITING] += 1
            try:
                self._wait_for_room(ctx, remaining)
            finally:
                with meta:
                    shared[_WAITING] -= 1

    def _wait_for_room(self, ctx: _context.Context | None, timeout: float | None) -> None:
        """Sleep until a room token comes (taking it), or a command or stop for our runnable, or ``timeout``.

        In a runnable this is the runnable's one wait, so its commands run while
        the buffer is full.  A stale token only makes the caller look again.
        """
        room = self._room_fd
        if ctx is not None:
            ready = ctx.waker.wait((room, *ctx.fds), timeout)  # cleared by the caller before it looked
        else:
            if self._room_poller is None:
                self._room_poller = Poller((room,))
            ready = self._room_poller.poll(timeout)
        if room in ready:
            try:
                os.read(room, 1)
            except BlockingIOError:
                pass  # another waiter took it

    def _write(self, value: Any, kind: int) -> None:
        """Pickle ``value`` and write it as one frame (plus its out-of-band buffers)."""
        oob: list[pickle.PickleBuffer] = []
        data = pickle.dumps(value, _HIGHEST, buffer_callback=oob.append)
        fd = self._fd
        shared = self._shared
        if not oob:
            if len(data) <= _BIG:
                frame = _HEAD.pack(len(data) + 1, kind) + data
                with self._lock:
                    shared[_WRITER] = self._pid if len(frame) <= _ATOMIC else -self._pid
                    _write_all(fd, frame)
                    shared[_WRITER] = 0
            else:
                with self._lock:
                    shared[_WRITER] = -self._pid
                    _write_all(fd, _HEAD.pack(len(data) + 1, kind))
                    _write_all(fd, data)
                    shared[_WRITER] = 0
            return
        # Out of band: a frame holding the buffers' sizes, the kind and the pickle; then the raw bytes.
        raws = [buf.raw() for buf in oob]
        meta = struct.pack(f"!I{len(raws)}QB", len(raws), *(r.nbytes for r in raws), kind)
        with self._lock:
            shared[_WRITER] = -self._pid
            _write_all(fd, _HEAD.pack(len(meta) + len(data) + 1, _OOB) + meta + data)
            for raw in raws:
                if raw.nbytes:
                    _write_all(fd, raw)
            shared[_WRITER] = 0

    def publish(self, value: T, timeout: float | None = None) -> None:
        check = self._check
        if check is not None and not isinstance(value, check):
            raise self._b._type_error(value)
        if self._completed or self._shared[_CLOSED] or not self._slots.acquire(False):
            self._take_slot(timeout)  # raises, or waits for room
        try:
            self._write(value, _ITEM)
        except BaseException:
            self._slots.release()
            raise

    def try_publish(self, value: T) -> bool:
        check = self._check
        if check is not None and not isinstance(value, check):
            raise self._b._type_error(value)
        if self._completed or self._shared[_CLOSED]:
            raise self._closing()
        if not self._slots.acquire(False):
            return False
        try:
            self._write(value, _ITEM)
        except BaseException:
            self._slots.release()
            raise
        return True

    def publish_many(self, values: Iterable[T], timeout: float | None = None) -> None:
        check = self._check
        pending = list(values)
        if check is not None:
            for value in pending:
                if not isinstance(value, check):
                    raise self._b._type_error(value)
        start = 0
        while start < len(pending):
            self._take_slot(timeout)
            # every further permit free now, taken in a C loop (no bytecode per permit)
            taken = 1 + len(list(takewhile(bool, map(self._slots.acquire, repeat(False, len(pending) - start - 1)))))
            chunk = pending[start : start + taken]
            try:
                self._write(chunk, _BATCH)
            except BaseException:
                for _ in range(taken):
                    self._slots.release()
                raise
            start += taken

    def complete(self, error: BaseException | None = None) -> None:
        if self._completed:
            return
        self._completed = True
        if self._shared[_CLOSED]:
            return
        frozen: SerializedError | None = None if error is None else serialize_error(error)
        self._write(frozen, _COMPLETE)


class _ProcessSubscription(Subscription[T]):
    def __init__(self, buffer: ProcessBuffer[T], ctx: _context.Context | None) -> None:
        super().__init__(buffer)
        self._b = buffer
        self._reader = buffer._reader  # keeps the descriptor open
        self._fd = buffer._reader.fileno()
        self._slots = buffer._slots
        self._owed = 0  # permits of values received but not given back yet
        self._release_at = max(1, buffer.capacity // 16)
        self._items: deque[Any] = deque()  # values of a batch frame not handed out yet
        self._completed = 0
        self._ctx = ctx
        ctx_fds = ctx.fds if ctx is not None else ()
        self._poller = Poller((self._fd, *ctx_fds))
        self._data_poller = Poller((self._fd,))
        # Bytes read from the pipe: whole frames from _head, maybe a partial one before _tail.
        self._buf = bytearray(_READ_BUFFER)
        self._view = memoryview(self._buf)
        self._head = 0
        self._tail = 0
        self._next_check = 0.0  # when to look at commands while serving buffered values

    def _fds(self) -> tuple[int, ...]:
        return (self._fd,)

    def ready(self) -> bool:
        return (
            bool(self._items)
            or self._ended is not None
            or self._whole_frame()
            or bool(self._data_poller.poll(0))
            or self._broken(end=False)
        )

    def _broken(self, end: bool = True) -> bool:
        """True if the stream can bring nothing more: a publisher died in the middle of a value.

        Only asked when the pipe has nothing readable: every whole value before
        the break has been received.  ``end``: end the subscription with the
        publisher's error (from the Runner) or a :class:`~puma.BufferClosedError`.
        """
        failure = self._b._failure
        if failure is None:
            if not self._b._shared[_BROKEN]:
                return False
            failure = BufferClosedError(
                f"buffer {self._b.name!r} is broken: one of its publishers died while writing a value"
            )
        if end:
            self._end(failure)
        return True

    def _whole_frame(self) -> bool:
        start = self._head
        if self._tail - start < 5:
            return False
        size: int = _COUNT.unpack_from(self._buf, start)[0]
        return start + 4 + size <= self._tail

    def _fill(self) -> None:
        """Read what the pipe holds (it is readable) after the buffered bytes."""
        start, end = self._head, self._tail
        if start == end:
            start = end = 0
            if len(self._buf) > _READ_BUFFER:  # a big frame is done with: back to the usual size
                self._buf = bytearray(_READ_BUFFER)
                self._view = memoryview(self._buf)
        else:
            need = 5 if end - start < 4 else 4 + _COUNT.unpack_from(self._buf, start)[0]
            if start + need > len(self._buf):  # the partial frame does not fit after its start
                kept = bytes(self._view[start:end])
                if need > len(self._buf):
                    self._buf = bytearray(max(need, 2 * len(self._buf)))
                    self._view = memoryview(self._buf)
                self._view[: len(kept)] = kept
                start, end = 0, len(kept)
        count = os.readv(self._fd, [self._view[end:]])
        if count == 0:
            raise EOFError(f"buffer {self._b.name!r}: its pipe was closed by every publisher")
        self._head, self._tail = start, end + count

    def _read_exact(self, target: bytearray) -> None:
        """Fill ``target`` with the next bytes of the stream: buffered ones first, then from the pipe."""
        view = memoryview(target)
        done = min(len(target), self._tail - self._head)
        if done:
            view[:done] = self._view[self._head : self._head + done]
            self._head += done
        while done < len(target):  # the publisher is writing the rest now, under its lock
            if not self._data_poller.poll(0):
                self._wait(None)  # servicing commands: a stop, or word that the publisher died
                if not self._data_poller.poll(0) and self._broken():
                    assert self._ended is not None
                    raise self._ended
                continue
            count = os.readv(self._fd, [view[done:]])
            if count == 0:
                raise EOFError(f"buffer {self._b.name!r}: its pipe was closed in the middle of a value")
            done += count

    def _next(self) -> Any:
        """The next value from the buffered bytes; _NOTHING after a batch or completion; _NEED if no whole frame."""
        start = self._head
        if self._tail - start < 5:
            return _NEED
        size, kind = _HEAD.unpack_from(self._buf, start)
        stop = start + 4 + size
        if stop > self._tail:
            return _NEED
        self._head = stop
        body = self._view[start + 5 : stop]
        if kind == _ITEM:
            try:
                return pickle.loads(body)
            finally:
                self._give_back(1)
        if kind == _OOB:
            (count,) = _COUNT.unpack_from(body, 0)
            sizes = struct.unpack_from(f"!{count}Q", body, 4)
            offset = 4 + 8 * count
            kind = body[offset]
            buffers = [bytearray(size) for size in sizes]
            for raw in buffers:
                self._read_exact(raw)
            try:
                payload = pickle.loads(body[offset + 1 :], buffers=buffers)
            finally:
                if kind == _ITEM:
                    self._give_back(1)
            if kind == _ITEM:
                return payload
        else:
            payload = pickle.loads(body)
        if kind == _BATCH:
            self._give_back(len(payload))
            self._items.extend(payload)
            return _NOTHING
        # a completion
        self._completed += 1
        if payload is not None:
            error = payload if isinstance(payload, BaseException) else deserialize_error(payload)
            self._end(error)
        elif self._completed >= int(self._b._shared[_PUBLISHERS]):
            self._end(None)
        return _NOTHING

    def _give_back(self, count: int) -> None:
        """Owe ``count`` more permits; give them all back once a group's worth is owed."""
        owed = self._owed + count
        if owed >= self._release_at:
            self._owed = 0
            self._release(owed)
        else:
            self._owed = owed

    def _settle(self) -> None:
        """Give back every permit owed (before reading the pipe or waiting)."""
        owed = self._owed
        if owed:
            self._owed = 0
            self._release(owed)

    def _release(self, count: int) -> None:
        deque(starmap(self._slots.release, repeat((), count)), 0)  # one call per permit, in C
        self._b._wake_publishers()  # once, for the whole group

    def _commands(self) -> None:
        """While values come from the buffer, look at commands every _COMMAND_CHECK seconds."""
        ctx = self._ctx
        if ctx is not None:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + _COMMAND_CHECK
                ctx.check_stop()

    def _refill(self, deadline: float | None) -> bool:
        """No whole frame is buffered: read more, servicing commands meanwhile; False on timeout."""
        self._settle()
        ctx = self._ctx
        ready = self._poller.poll(0)
        if ready:
            if ctx is not None and (len(ready) > 1 or ready[0] != self._fd):
                ctx.check_stop()
            if self._fd in ready:
                self._fill()
            return True
        if ctx is not None and not ctx.fds and ctx.has_command():
            ctx.check_stop()  # a thread runnable reading a process buffer
        if self._broken():
            return True
        remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        if not self._wait(remaining):
            return False
        if self._data_poller.poll(0):
            self._fill()
        else:
            self._broken()
        return True

    def receive(self, timeout: float | None = None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        self._commands()
        while True:
            if self._items:
                value: T = self._items.popleft()
                return value
            if self._ended is not None:
                raise self._ended
            result = self._next()
            if result is _NEED:
                if not self._refill(deadline):
                    raise BufferEmpty(f"buffer {self._b.name!r}: nothing arrived within {timeout} s")
                continue
            if result is not _NOTHING:
                return result  # type: ignore[no-any-return]

    def _wait(self, timeout: float | None) -> bool:
        """Wait until the pipe is readable (servicing commands); False on timeout."""
        ctx = self._ctx
        poller = self._data_poller
        if ctx is not None:
            return ctx.wait((self._fd,), timeout, lambda: bool(poller.poll(0)) or self._broken(end=False))
        # Outside any runnable (the main program): the buffer's Waker, which the Runner pokes
        # if the stream breaks, stands in for the command channel.
        waker = self._b._waker
        if waker is None:
            waker = self._b._waker = Waker()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            waker.clear()
            if poller.poll(0) or self._broken(end=False):
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            waker.wait((self._fd,), remaining)

    def receive_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        out: list[T] = [self.receive(timeout)]
        items = self._items
        while len(out) < max_items:
            if items:
                room = max_items - len(out)
                if len(items) <= room:
                    out.extend(items)
                    items.clear()
                else:
                    out.extend(items.popleft() for _ in range(room))
                continue
            if self._ended is not None:
                break
            result = self._next()
            if result is _NEED:
                self._settle()
                if not self._data_poller.poll(0):
                    break
                self._fill()
            elif result is not _NOTHING:
                out.append(result)
        return out


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
        self._b._register_publisher(count)

    def readers(self) -> frozenset[int]:
        b = self._b
        return frozenset({b._subscriber_token()}) if b._is_subscribed() else frozenset()

    def interrupt_publishers(self) -> None:
        self._b._interrupt_publishers()

    def close(self) -> None:
        self._b._close()

    def drain_fd(self) -> int | None:
        return self._b._reader_fd()

    def drain(self) -> None:
        self._b._drain()

    def free_held_by(self, pid: int) -> bool:
        return self._b._free_locks_of(pid)

    def complete_for(self, owner: str, error: BaseException) -> bool:
        return self._b._complete_for(owner, error)

    def fail_readers_here(self, error: BaseException) -> None:
        self._b._fail(error)

    def release(self) -> None:
        return None
