"""The links between a Runner and each runnable it runs.

A link carries the command channel (parent to child), the control channel
(child to parent: started, command results, the final outcome) and the status
channel (child to parent: user statuses and log records).  The control channel
is separate from the status channel so that no amount of user traffic can
crowd out the final error; neither ever drops a message (pipes block instead).

* :class:`ThreadLink`: in-memory; the child's messages go straight into the
  supervisor's inbox, the parent's wake the child's :class:`~puma._core.waiting.Waker`.
* :class:`ProcessLink` / :class:`ProcessChildLink`: a duplex pipe for commands
  and control, a one-way pipe for statuses, and a one-way "reply" pipe for the
  answers to blocking command calls.

A blocking command call on a process runnable (``runnable.command(...)``) is
answered straight to the calling thread: the caller sends the CALL marked
"direct" and reads the answer from the reply pipe itself, so the round trip is
caller -> child -> caller, with no hop through the supervisor thread and no
future to wake.  One thread at a time does so per runnable (others, and
:meth:`~puma.BoundCommand.submit`, take the supervisor's path).  If a direct
call is abandoned (timeout, Ctrl-C) its answer may still come: the link is
then marked ``orphaned``, later calls take the supervisor's path, and the
supervisor drains the reply pipe, so the child never blocks writing to it.

Every message uses :class:`multiprocessing.connection.Connection`'s framing (a
4-byte big-endian length, then the pickle), so either end may use a
``Connection``; the hot ends write a frame with one ``os.write`` and read with
:class:`_FrameReader`, which takes whatever a descriptor holds in one ``read``
(a command costs the child one wait, one read and one write, like a bare pipe).
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any, Protocol

from puma._core import messages as msg
from puma._core.errors import NotPicklableError, RunnableNotRunningError, serialize_error
from puma._core.waiting import Poller, Waker

__all__ = ["ChildLink", "ProcessChildLink", "ProcessLink", "ThreadLink"]

_SIZE = struct.Struct("!i")  # Connection's frame header
_BIG_SIZE = struct.Struct("!Q")  # after a -1 header, for messages of 2 GiB or more
_INLINE = 1 << 16  # messages up to this size are written in one piece with their header
_READ = 1 << 16  # a read takes at most this much, unless a big message needs more
_MOST_READ = 1 << 22


def _header(n: int) -> bytes:
    """The Connection frame header of an ``n``-byte message."""
    return _SIZE.pack(n) if n < 0x7FFFFFFF else _SIZE.pack(-1) + _BIG_SIZE.pack(n)


def _send_frame(fd: int, data: bytes) -> None:
    """Write ``data`` as one Connection frame (readable by ``Connection.recv_bytes``)."""
    n = len(data)
    header = _header(n)
    if n <= _INLINE:
        _write_all(fd, header + data)
    else:
        _write_all(fd, header)
        _write_all(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    written = os.write(fd, data)
    if written < len(data):  # a big message, or a write cut short by a signal
        view = memoryview(data)
        while written < len(view):
            written += os.write(fd, view[written:])


class _FrameReader:
    """Connection frames read from a descriptor in bulk: one ``read`` takes every message there."""

    __slots__ = ("_buf", "_fd")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def _frame(self) -> tuple[int, int]:
        """(header size, body size) of the first buffered frame; (0, 0) if its header is not all here."""
        buf = self._buf
        if len(buf) < 4:
            return 0, 0
        size: int = _SIZE.unpack_from(buf, 0)[0]
        if size != -1:
            return 4, size
        if len(buf) < 12:
            return 0, 0
        big: int = _BIG_SIZE.unpack_from(buf, 4)[0]
        return 12, big

    def whole(self) -> bool:
        """True if a whole message is buffered."""
        head, size = self._frame()
        return head > 0 and len(self._buf) >= head + size

    def take(self) -> bytearray | None:
        """The next whole message's bytes, or None if none is buffered."""
        head, size = self._frame()
        end = head + size
        if head == 0 or len(self._buf) < end:
            return None
        body = self._buf[head:end]
        del self._buf[:end]  # cheap: a bytearray drops its front without moving the rest
        return body

    def fill(self) -> None:
        """One read: whatever the descriptor holds (blocks until something comes)."""
        head, size = self._frame()
        want = max(_READ, min(head + size - len(self._buf), _MOST_READ)) if head else _READ
        chunk = os.read(self._fd, want)
        if not chunk:
            raise EOFError("the other end of the link has closed")
        self._buf += chunk

    def take_all(self) -> list[bytearray]:
        """Every message there now: reads once, and more only to finish a message begun."""
        if not self.whole():
            self.fill()
        bodies = []
        while True:
            body = self.take()
            if body is not None:
                bodies.append(body)
            elif self._buf:
                self.fill()  # the rest of a message being written now
            else:
                return bodies


class ChildLink(Protocol):
    """What a running runnable uses to talk to its Runner."""

    waker: Waker
    fds: tuple[int, ...]

    def has_message(self) -> bool: ...
    def receive(self) -> tuple[Any, ...]: ...
    def receive_all(self) -> list[tuple[Any, ...]]: ...
    def send(self, message: tuple[Any, ...]) -> None: ...
    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None: ...
    def send_error(self, call_id: int, error: BaseException, note: str, direct: bool = False) -> None: ...
    def send_status(self, message: tuple[Any, ...]) -> None: ...
    def send_finished(self, error: BaseException | None, stopped: bool) -> None: ...


class ThreadLink:
    """Both ends of the link to a thread runnable (one object, shared memory)."""

    def __init__(self, to_parent: Callable[[tuple[Any, ...]], None]) -> None:
        self.waker = Waker()
        self.fds: tuple[int, ...] = ()
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._to_parent = to_parent

    # parent side
    def post(self, message: tuple[Any, ...]) -> None:
        """Send a command to the child."""
        self._inbox.append(message)
        self.waker.wake()

    # child side
    def has_message(self) -> bool:
        return bool(self._inbox)

    def receive(self) -> tuple[Any, ...]:
        return self._inbox.popleft()

    def receive_all(self) -> list[tuple[Any, ...]]:
        inbox = self._inbox
        return [inbox.popleft() for _ in range(len(inbox))]

    def send(self, message: tuple[Any, ...]) -> None:
        self._to_parent(message)

    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None:
        self._to_parent((msg.RESULT, call_id, True, result))

    def send_error(self, call_id: int, error: BaseException, note: str, direct: bool = False) -> None:
        self._to_parent((msg.RESULT, call_id, False, serialize_error(error, note)))

    send_status = send

    def send_finished(self, error: BaseException | None, stopped: bool) -> None:
        self._to_parent((msg.FINISHED, error, stopped))

    def close(self) -> None:
        self.waker.close()


class ProcessChildLink:
    """The child's end of a :class:`ProcessLink`; pickled into the child process."""

    def __init__(self, control: Connection, status: Connection, reply: Connection) -> None:
        self._control = control  # the Connections keep the descriptors open
        self._status = status
        self._reply = reply
        self._control_fd = control.fileno()
        self._status_fd = status.fileno()
        self._reply_fd = reply.fileno()
        self._lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._reply_lock = threading.Lock()
        self._poller: Poller | None = None
        self._reader = _FrameReader(self._control_fd)
        self.waker = Waker()
        self.fds: tuple[int, ...] = (self._control_fd,)

    def __getstate__(self) -> dict[str, Any]:
        return {"control": self._control, "status": self._status, "reply": self._reply}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["control"], state["status"], state["reply"])  # type: ignore[misc]

    def has_message(self) -> bool:
        if self._reader.whole():
            return True
        if self._poller is None:
            self._poller = Poller(self.fds)
        return bool(self._poller.poll(0))

    def receive(self) -> tuple[Any, ...]:
        reader = self._reader
        while (body := reader.take()) is None:
            reader.fill()
        message: tuple[Any, ...] = pickle.loads(body)
        return message

    def receive_all(self) -> list[tuple[Any, ...]]:
        return [pickle.loads(body) for body in self._reader.take_all()]

    def send(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            _send_frame(self._control_fd, data)

    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None:
        try:
            data = pickle.dumps((msg.RESULT, call_id, True, result), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001
            error = NotPicklableError(f"the command's result ({type(result).__name__}) cannot be pickled: {exc}")
            data = pickle.dumps((msg.RESULT, call_id, False, serialize_error(error, note)))
        self._answer(data, direct)

    def send_error(self, call_id: int, error: BaseException, note: str, direct: bool = False) -> None:
        data = pickle.dumps(
            (msg.RESULT, call_id, False, serialize_error(error, note)), protocol=pickle.HIGHEST_PROTOCOL
        )
        self._answer(data, direct)

    def _answer(self, data: bytes, direct: bool) -> None:
        """A command's answer: to the waiting caller (direct) or to the supervisor."""
        if direct:
            with self._reply_lock:
                _send_frame(self._reply_fd, data)
        else:
            with self._lock:
                _send_frame(self._control_fd, data)

    def send_status(self, message: tuple[Any, ...]) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        with self._status_lock:
            _send_frame(self._status_fd, data)

    def send_finished(self, error: BaseException | None, stopped: bool) -> None:
        frozen = serialize_error(error) if error is not None else None
        self.send((msg.FINISHED, frozen, stopped))

    def close(self) -> None:
        self._control.close()
        self._status.close()
        self._reply.close()


class ProcessLink:
    """The parent's end of the link to a process runnable."""

    def __init__(self, context: Any) -> None:
        # A child sets its parent-death signal through ctypes (_environment._die_with_parent).
        # Imported here, in the parent, a forked child finds it loaded instead of paying
        # some 3 ms to import it (most of what a fork start costs beyond a bare Process).
        import ctypes  # noqa: F401

        self.control, child_control = context.Pipe(duplex=True)
        self.status, child_status = context.Pipe(duplex=False)
        self.reply, child_reply = context.Pipe(duplex=False)
        self.child = ProcessChildLink(child_control, child_status, child_reply)
        self._lock = threading.Lock()
        self._caller = threading.Lock()  # held by the one thread making a direct call
        self._guard = threading.Lock()  # guards _closed and the reply pipe's closing
        self._closed = False
        self._wake_fds: tuple[int, int] | None = None  # a self-pipe: close() wakes a direct caller with it
        self._call_poll: Any = None  # select.poll over the reply pipe and that self-pipe
        self._reply_reader: _FrameReader | None = None
        self.orphaned = False  # a direct call was abandoned: its answer may still come
        # Commands are written without blocking: what the pipe cannot take now waits in _out
        # (whole frames, the first perhaps partly written) and is written when it can be, by
        # the supervisor (which watches the pipe for room while anything waits: on_pending
        # tells it) or by the next sender.  So no sender, the supervisor least of all, ever
        # blocks on a child that does not read its commands.  _queued and _sent count bytes.
        self._sender = socket.socket(fileno=os.dup(self.control.fileno()))
        self._sender.settimeout(None)  # blocking, whatever socket.setdefaulttimeout() says: it shares the
        # open file, so a timeout (O_NONBLOCK) would also make the Connection's reads non-blocking
        self._failed: OSError | None = None  # the child is gone: what writing to it raised
        self._out = bytearray()
        self._queued = 0
        self._sent = 0
        self._send_poll: Any = None
        self.on_pending: Callable[[], None] | None = None

    @property
    def pending(self) -> bool:
        """True while commands wait for room in the pipe."""
        return bool(self._out)

    def post(self, message: tuple[Any, ...]) -> None:
        """Send a command to the child without blocking.

        Raises ``OSError`` if the child is gone (or the link closed), and a
        pickling error if the message cannot be sent; nothing is sent then.
        """
        self._post(message)

    def _post(self, message: tuple[Any, ...]) -> tuple[int, int]:
        """:meth:`post`, returning where the frame ends in the byte stream and its length (see :meth:`_wait_sent`)."""
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        header = _header(len(data))
        with self._lock:
            if self._closed:
                raise OSError("the link to the child is closed")
            if self._failed is not None:
                raise self._failed
            was_pending = bool(self._out)
            self._out += header
            self._out += data
            size = len(header) + len(data)
            self._queued += size
            end = self._queued
            if not was_pending:
                self._write_out_or_fail()
            pending = bool(self._out)
        if pending and not was_pending and self.on_pending is not None:
            self.on_pending()
        return end, size

    def flush(self) -> None:
        """Write what the pipe takes now of the commands waiting (the supervisor, when it has room)."""
        with self._lock:
            if self._out and not self._closed:
                try:
                    self._write_out_or_fail()
                except OSError:
                    pass  # the child is gone; its end is reported from its sentinel
        if not self._out and self.on_pending is not None:
            self.on_pending()  # nothing waits any more: the supervisor stops watching for room

    def _write_out_or_fail(self) -> None:
        """:meth:`_write_out`; when the child is gone, drop what waits and fail later sends too."""
        try:
            self._write_out()
        except OSError as exc:
            self._failed = exc
            self._out.clear()  # nobody reads them
            raise

    def _write_out(self) -> None:
        """Write from ``_out`` until it is empty or the pipe is full (hold ``_lock``)."""
        out = self._out
        while out:
            try:
                written = self._sender.send(out, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            del out[:written]
            self._sent += written

    def _wait_sent(self, end: int, size: int, deadline: float | None) -> str:
        """Wait until the pipe has taken the frame of ``size`` bytes ending at ``end``, writing meanwhile.

        Returns "sent"; or, at ``deadline``, "withdrawn" (none of it was
        written yet: it is taken back, as if never sent) or "queued" (begun:
        the rest is written later).  Raises ``OSError`` when the child is gone.
        """
        if self._sent >= end:
            return "sent"
        if self._send_poll is None:
            self._send_poll = select.poll()
            self._send_poll.register(self.control.fileno(), select.POLLOUT)
            if self._wake_fds is not None:
                self._send_poll.register(self._wake_fds[0], select.POLLIN)
        while True:
            with self._lock:
                if self._closed:
                    raise OSError("the link to the child is closed")
                if self._failed is not None:
                    raise self._failed
                self._write_out_or_fail()
                if self._sent >= end:
                    return "sent"
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    start = end - size
                    if self._sent > start:
                        return "queued"
                    del self._out[start - self._sent : end - self._sent]  # frames after it move up
                    self._queued -= size
                    return "withdrawn"
            self._send_poll.poll(-1 if remaining is None else int(remaining * 1000) + 1)

    def call(self, message: tuple[Any, ...], timeout: float | None, name: str) -> tuple[bool, Any] | None:
        """Send a direct CALL and wait, in this thread, for its answer ``(ok, value)``.

        Returns None, having sent nothing, if the call must take the
        supervisor's path instead (another thread is calling, or the link is
        orphaned).  Raises ``TimeoutError`` after ``timeout`` seconds,
        :class:`~puma.RunnableNotRunningError` if the child ends first, and
        ``OSError`` (the child is gone) or a pickling error from sending.
        """
        if self.orphaned or not self._caller.acquire(False):
            return None
        sent = answered = False
        try:
            if self._wake_fds is None or self._closed:  # else close() wakes us: we hold _caller
                with self._guard:
                    if self._closed:
                        raise RunnableNotRunningError(f"runnable {name!r} has ended")
                    if self._wake_fds is None:
                        self._open_call_poll()
            reader = self._reply_reader
            poll = self._call_poll.poll
            reply_fd = self.reply.fileno()
            assert reader is not None
            call_id = message[1]
            deadline = None if timeout is None else time.monotonic() + timeout
            end, size = self._post(message)
            sent = True
            delivery = self._wait_sent(end, size, deadline)
            if delivery != "sent":  # the child takes no commands
                sent = delivery == "queued"  # then its answer may still come
                raise TimeoutError(f"runnable {name!r} did not take the command within {timeout} s")
            readable = closed = False
            while True:
                try:
                    answer = self._answer_for(call_id, reader, readable)
                except (EOFError, OSError):
                    answered = True  # the child is gone: nothing more can come
                    raise RunnableNotRunningError(f"runnable {name!r} ended before answering") from None
                if answer is not None:
                    answered = True
                    return answer
                if closed:
                    answered = True
                    raise RunnableNotRunningError(f"runnable {name!r} ended before answering")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"runnable {name!r} did not answer within {timeout} s")
                closed = self._closed  # closed: one last look at what the child wrote before it went
                ms = 0 if closed else -1 if remaining is None else int(remaining * 1000) + 1
                readable = any(fd == reply_fd for fd, _ in poll(ms))
        finally:
            if sent and not answered:
                self.orphaned = True  # its answer may still come: the supervisor drains it
            self._caller.release()
            if self._closed:  # close() left the reply pipe to us, or closes it itself
                with self._guard:
                    if not self._caller.locked():
                        self._close_reply()

    def _open_call_poll(self) -> None:
        read_end, write_end = os.pipe()
        self._wake_fds = (read_end, write_end)
        self._reply_reader = _FrameReader(self.reply.fileno())
        poll = select.poll()
        poll.register(self.reply.fileno(), select.POLLIN)
        poll.register(read_end, select.POLLIN)
        self._call_poll = poll

    def _close_reply(self) -> None:
        """Close the reply pipe and the self-pipe (under _guard, with no caller polling them)."""
        self.reply.close()
        if self._wake_fds is not None:
            for fd in self._wake_fds:
                os.close(fd)
            self._wake_fds = None

    @staticmethod
    def _answer_for(call_id: int, reader: _FrameReader, readable: bool) -> tuple[bool, Any] | None:
        """``(ok, value)`` for ``call_id`` from the answers read (reading once if ``readable``)."""
        while True:
            body = reader.take()
            if body is None:
                if not readable:
                    return None
                readable = False
                reader.fill()
                continue
            answer = pickle.loads(body)
            if answer[1] == call_id:  # else: the answer to an abandoned call
                return answer[2], answer[3]

    def drain_replies(self) -> None:
        """Discard the answers of abandoned direct calls (the supervisor, once orphaned)."""
        if not self._caller.acquire(False):
            return
        try:  # bytes, not messages: nobody reads this pipe's messages any more
            fd = self.reply.fileno()
            poller = Poller((fd,))
            while not self._closed and poller.poll(0):
                if not os.read(fd, _READ):
                    return
        except OSError:
            pass
        finally:
            self._caller.release()

    def close_child_end(self) -> None:
        """Close the parent's copy of the child's ends once the child has them."""
        self.child.close()

    def close(self) -> None:
        with self._lock:
            self._out.clear()
            self._sender.close()
        self.control.close()
        self.status.close()
        with self._guard:
            self._closed = True
            if not self._caller.locked():
                self._close_reply()
            elif self._wake_fds is not None:
                os.write(self._wake_fds[1], b"\0")  # the caller closes the reply pipe on its way out
