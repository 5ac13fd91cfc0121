"""A buffer that crosses processes: a pipe bounded by a semaphore.

Design (see docs/architecture.md):

* Values are pickled with protocol 5 by the publisher itself and written to a
  one-way pipe under a process-shared lock (so messages from several
  publishers never interleave).  There is no feeder thread, so a process never
  hangs at exit flushing a queue whose reader is gone.
* Large contiguous buffers (numpy arrays) travel out of band: a small header
  frame, then each raw buffer straight from the array's memory, received into a
  writable ``bytearray`` that becomes the new array's memory.
* A semaphore of ``size`` permits bounds the number of values in flight:
  publishers take one per value, the subscriber gives it back on receipt.
* When the subscriber ends, the Runner closes the buffer: publishers get
  :class:`~puma.BufferClosedError`, and the Runner drains the pipe so a
  publisher blocked in a write is freed.
* The subscriber's wait is one ``poll`` over the pipe and the runnable's
  command pipe.
"""

from __future__ import annotations

import pickle
import select
import struct
import time
import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any, TypeVar

from puma import _context
from puma._buffer import Buffer, BufferStatistics, Publisher, Subscription
from puma._errors import (
    BufferClosedError,
    BufferEmpty,
    BufferFull,
    SerializedError,
    StopRequested,
    deserialize_error,
    serialize_error,
)
from puma._wait import Poller

__all__ = ["ProcessBuffer"]

T = TypeVar("T")

_ITEM = 0
_BATCH = 1
_COMPLETE = 2
_OOB = 3

_PUBLISHERS = 0
_SUBSCRIBER = 1  # runner token of the subscriber + 1; 0 = nobody yet
_CLOSED = 2

_NOTHING: Any = object()
_HIGHEST = pickle.HIGHEST_PROTOCOL


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
        self._lock = context.Lock()  # held while a message is written
        self._meta = context.Lock()  # guards the shared counters, never held long
        self._shared = context.RawArray("q", 3)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_check", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from puma._buffer import _checker

        self.__dict__.update(state)
        self._check = _checker(self._item_type)

    def _crossable(self) -> bool:
        return True

    def subscribe(self) -> Subscription[T]:
        ctx = _context.current()
        with self._meta:
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

    def _register_publisher(self, delta: int = 1) -> None:
        with self._meta:
            self._shared[_PUBLISHERS] += delta

    def _open_publisher(self, owner: str) -> Publisher[T]:
        return _ProcessPublisher(self, owner)

    def _subscriber_token(self) -> int:
        return max(int(self._shared[_SUBSCRIBER]) - 1, 0)

    def _is_subscribed(self) -> bool:
        return bool(self._shared[_SUBSCRIBER])

    def _interrupt_publishers(self) -> None:
        # One extra permit wakes a publisher blocked on a full buffer; if it
        # sees its stop request it keeps the permit, so the count stays right.
        self._slots.release()

    def _close(self) -> None:
        self._shared[_CLOSED] = 1
        for _ in range(max(int(self._shared[_PUBLISHERS]), 1)):
            self._slots.release()
        self._drain()

    def _drain(self) -> None:
        """Discard whatever is readable now (the Runner calls this after the subscriber ended)."""
        reader = self._reader
        try:
            while reader.poll(0):
                reader.recv_bytes()
        except (EOFError, OSError):
            pass

    def _reader_fd(self) -> int:
        fd: int = self._reader.fileno()
        return fd

    def _complete_for(self, owner: str, error: BaseException) -> bool:
        """Complete on behalf of a publisher that died; never blocks for long."""
        if self._shared[_CLOSED]:
            return True
        payload = bytes([_COMPLETE]) + pickle.dumps(serialize_error(error), _HIGHEST)
        if len(payload) > select.PIPE_BUF - 4 or not self._lock.acquire(True, 1.0):
            return False
        try:
            _, writable, _ = select.select([], [self._writer.fileno()], [], 0)
            if not writable:
                return False
            self._writer.send_bytes(payload)
            return True
        finally:
            self._lock.release()


class _ProcessPublisher(Publisher[T]):
    def __init__(self, buffer: ProcessBuffer[T], owner: str) -> None:
        super().__init__(buffer, owner)
        self._b = buffer
        self._send = buffer._writer.send_bytes
        self._slots = buffer._slots
        self._lock = buffer._lock
        self._shared = buffer._shared

    def _closing(self) -> BaseException:
        ctx = _context.current()
        if ctx is not None and ctx.service():
            return StopRequested()
        return self._closed_error()

    def _take_slot(self, timeout: float | None) -> None:
        """Take one permit, waiting if the buffer is full; raise if that fails."""
        if self._completed or self._shared[_CLOSED]:
            raise self._closing()
        if self._slots.acquire(False):
            return
        ctx = _context.current()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if ctx is not None:
                ctx.check_stop()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise BufferFull(f"buffer {self._b.name!r} stayed full for {timeout} s")
            if self._slots.acquire(True, remaining):
                if ctx is not None and ctx.service():
                    raise StopRequested  # keeps the interrupting permit: see _interrupt_publishers
                if self._shared[_CLOSED]:
                    self._slots.release()
                    raise self._closed_error()
                return

    def _write(self, value: Any, kind: int) -> None:
        oob: list[pickle.PickleBuffer] = []
        data = pickle.dumps(value, _HIGHEST, buffer_callback=oob.append)
        if not oob:
            with self._lock:
                self._send(bytes((kind,)) + data)
            return
        raws = [buf.raw() for buf in oob]
        header = struct.pack(f"!BI{len(raws)}Q", _OOB, len(raws), *(r.nbytes for r in raws))
        with self._lock:
            self._send(header + bytes((kind,)) + data)
            for raw in raws:
                self._send(raw)

    def publish(self, value: T, timeout: float | None = None) -> None:
        check = self._b._check
        if check is not None and not isinstance(value, check):
            raise self._b._type_error(value)
        self._take_slot(timeout)
        try:
            self._write(value, _ITEM)
        except BaseException:
            self._slots.release()
            raise

    def try_publish(self, value: T) -> bool:
        check = self._b._check
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
        check = self._b._check
        pending = list(values)
        if check is not None:
            for value in pending:
                if not isinstance(value, check):
                    raise self._b._type_error(value)
        start = 0
        while start < len(pending):
            self._take_slot(timeout)
            taken = 1
            limit = len(pending) - start
            while taken < limit and self._slots.acquire(False):
                taken += 1
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
    def __init__(self, buffer: ProcessBuffer[T], ctx: _context.ChildContext | None) -> None:
        super().__init__(buffer)
        self._b = buffer
        self._reader = buffer._reader
        self._fd = buffer._reader.fileno()
        self._recv = buffer._reader.recv_bytes
        self._slots = buffer._slots
        self._items: deque[Any] = deque()
        self._completed = 0
        self._ctx = ctx
        ctx_fds = ctx.fds if ctx is not None else ()
        self._poller = Poller((self._fd, *ctx_fds))
        self._data_poller = Poller((self._fd,))

    def _fds(self) -> tuple[int, ...]:
        return (self._fd,)

    def ready(self) -> bool:
        return bool(self._items) or self._ended is not None or bool(self._data_poller.poll(0))

    def _read(self) -> Any:
        """Read one message; return a value, or _NOTHING after a completion or batch."""
        data = self._recv()
        kind = data[0]
        if kind == _OOB:
            (count,) = struct.unpack_from("!I", data, 1)
            sizes = struct.unpack_from(f"!{count}Q", data, 5)
            offset = 5 + 8 * count
            kind = data[offset]
            buffers = []
            for size in sizes:
                raw = bytearray(size)
                if size:
                    self._reader.recv_bytes_into(raw)
                else:
                    self._recv()
                buffers.append(raw)
            payload = pickle.loads(memoryview(data)[offset + 1 :], buffers=buffers)
        else:
            payload = pickle.loads(memoryview(data)[1:])
        if kind == _ITEM:
            self._slots.release()
            return payload
        if kind == _BATCH:
            for _ in payload:
                self._slots.release()
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

    def receive(self, timeout: float | None = None) -> T:
        ctx = self._ctx
        while True:
            if self._items:
                value: T = self._items.popleft()
                return value
            if self._ended is not None:
                raise self._ended
            ready = self._poller.poll(0)
            if ready:
                if ctx is not None and (len(ready) > 1 or ready[0] != self._fd):
                    ctx.check_stop()
                if self._fd in ready:
                    result = self._read()
                    if result is not _NOTHING:
                        return result  # type: ignore[no-any-return]
                continue
            if ctx is not None and not ctx.fds and ctx.link.has_message():
                ctx.check_stop()  # a thread runnable reading a process buffer
            if not self._wait(timeout):
                raise BufferEmpty(f"buffer {self._b.name!r}: nothing arrived within {timeout} s")

    def _wait(self, timeout: float | None) -> bool:
        ctx = self._ctx
        if ctx is not None:
            poller = self._data_poller
            return ctx.wait((self._fd,), timeout, lambda: bool(poller.poll(0)))
        return bool(self._data_poller.poll(timeout))

    def receive_many(self, max_items: int, timeout: float | None = None) -> list[T]:
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        out: list[T] = [self.receive(timeout)]
        while len(out) < max_items:
            if self._items:
                out.append(self._items.popleft())
                continue
            if self._ended is not None or not self._data_poller.poll(0):
                break
            result = self._read()
            if result is not _NOTHING:
                out.append(result)
        return out
