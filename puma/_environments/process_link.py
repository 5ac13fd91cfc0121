"""The link between a Runner and a runnable in a child process.

Three pipes, each with one job:

* the **control** pipe (duplex): commands parent to child; child to parent
  STARTED, command results through the supervisor, and FINISHED with the
  outcome.  Never crowded by user traffic, so no amount of statuses or logs
  can hold back the final error;
* the **status** pipe (child to parent): user statuses and log records;
* the **reply** pipe (child to parent): the answers to blocking command calls.

A blocking command call (``runnable.command(...)``) is answered straight to
the calling thread: the caller sends the CALL marked "direct" and reads the
answer from the reply pipe itself, so the round trip is caller -> child ->
caller, with no hop through the supervisor thread and no future to wake.  One
thread at a time does so per runnable (others, and
:meth:`~puma.BoundCommand.submit`, take the supervisor's path).  If a direct
call is abandoned (timeout, Ctrl-C) its answer may still come: the link is
then marked ``orphaned``, later calls take the supervisor's path, and the
supervisor drains the reply pipe, so the child never blocks writing to it.

Commands are written without blocking: what a full pipe cannot take waits in
the link and the supervisor writes it as room comes, so no sender, the
supervisor least of all, ever blocks on a child that does not read.

Every message is one frame of :mod:`puma._core.codec` (kind
:data:`~puma._core.codec.MESSAGE`, then the pickle).  The header is
``Connection``'s, so the parent reads with ``Connection.recv_bytes``; the
child's hot path writes a frame with one ``os.write`` and reads with
:class:`~puma._core.codec.FrameReader`, which takes whatever the pipe holds in
one ``read`` (a command costs the child one wait, one read and one write, like
a bare pipe).
"""

from __future__ import annotations

import os
import pickle
import select
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from puma._core import codec
from puma._core import messages as msg
from puma._core.errors import NotPicklableError, RunnableNotRunningError, serialize_error
from puma._core.waiting import Deadline, Poller, Waker

__all__ = ["ProcessChildLink", "ProcessLink", "announce_started", "decode", "encode"]

_HIGHEST = pickle.HIGHEST_PROTOCOL
_MESSAGE = bytes((codec.MESSAGE,))


def encode(message: tuple[Any, ...]) -> bytes:
    """A message's frame body: the kind byte, then the pickle."""
    return _MESSAGE + pickle.dumps(message, protocol=_HIGHEST)


def decode(body: bytes | bytearray) -> Any:
    """The message in a frame body (see :func:`encode`)."""
    if not body or body[0] != codec.MESSAGE:
        raise EOFError("a message frame of an unknown kind: the pipe is out of step")
    return pickle.loads(memoryview(body)[1:])


def _send(fd: int, body: bytes) -> None:
    """Write one frame whose body (kind byte first) is ``body``: in one piece when small."""
    if len(body) <= codec.INLINE:
        codec.write_all(fd, codec.header(len(body)) + body)
    else:
        codec.write_all(fd, codec.header(len(body)))
        codec.write_all(fd, body)


# STARTED from a process child, one frame made once: its pid is known to the parent (the
# handle's), and pickling it afresh would make a forked child copy the pages of the pickler's
# state and of what it looks up: 13 pages of private memory for one small message.
_STARTED_BODY = encode((msg.STARTED, None, "MainThread"))
_STARTED_FRAME = codec.header(len(_STARTED_BODY)) + _STARTED_BODY


def announce_started(control: Connection) -> None:
    """In the child: send STARTED on its control pipe, before its link is made (the first frame on it)."""
    codec.write_all(control.fileno(), _STARTED_FRAME)


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
        self._reader = codec.FrameReader(self._control_fd)
        self.waker = Waker()
        self.fds: tuple[int, ...] = (self._control_fd,)

    def __getstate__(self) -> dict[str, Any]:
        return {"control": self._control, "status": self._status, "reply": self._reply}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["control"], state["status"], state["reply"])  # type: ignore[misc]

    def has_buffered_message(self) -> bool:
        return self._reader.whole()

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
        message: tuple[Any, ...] = decode(body)
        return message

    def receive_all(self) -> list[tuple[Any, ...]]:
        return [decode(body) for body in self._reader.take_all()]

    def send(self, message: tuple[Any, ...]) -> None:
        data = encode(message)
        with self._lock:
            _send(self._control_fd, data)

    def send_result(self, call_id: int, result: Any, note: str, direct: bool = False) -> None:
        try:
            data = encode((msg.RESULT, call_id, True, result))
        except Exception as exc:  # noqa: BLE001
            error = NotPicklableError(f"the command's result ({type(result).__name__}) cannot be pickled: {exc}")
            data = encode((msg.RESULT, call_id, False, serialize_error(error, note)))
        self._answer(data, direct)

    def send_error(self, call_id: int, error: BaseException, note: str, direct: bool = False) -> None:
        data = encode((msg.RESULT, call_id, False, serialize_error(error, note)))
        self._answer(data, direct)

    def _answer(self, data: bytes, direct: bool) -> None:
        """A command's answer: to the waiting caller (direct) or to the supervisor."""
        if direct:
            with self._reply_lock:
                _send(self._reply_fd, data)
        else:
            with self._lock:
                _send(self._control_fd, data)

    def send_status(self, message: tuple[Any, ...]) -> None:
        data = encode(message)
        with self._status_lock:
            _send(self._status_fd, data)

    def send_finished(self, error: BaseException | None, stopped: bool, lingering: tuple[str, ...] = ()) -> None:
        frozen = serialize_error(error) if error is not None else None
        self.send((msg.FINISHED, frozen, stopped, lingering))

    def close(self) -> None:
        self._control.close()
        self._status.close()
        self._reply.close()


class ProcessLink:
    """The parent's end of the link to a process runnable."""

    def __init__(self, context: Any) -> None:
        self.control, child_control = context.Pipe(duplex=True)
        self.status, child_status = context.Pipe(duplex=False)
        self.reply, child_reply = context.Pipe(duplex=False)
        # The child's ends, which the child makes its ProcessChildLink of: made there, not here,
        # where every object made between two forks is a page the next fork makes the parent copy.
        self.child_ends: tuple[Connection, Connection, Connection] = (child_control, child_status, child_reply)
        self._lock = threading.Lock()
        self._caller = threading.Lock()  # held by the one thread making a direct call
        self._guard = threading.Lock()  # guards _closed and the reply pipe's closing
        self._closed = False
        self._wake_fds: tuple[int, int] | None = None  # a self-pipe: close() wakes a direct caller with it
        self._call_poll: Any = None  # select.poll over the reply pipe and that self-pipe
        self._reply_reader: codec.FrameReader | None = None
        self.orphaned = False  # a direct call was abandoned: its answer may still come
        # Commands are written without blocking: what the pipe cannot take now waits in _out
        # (whole frames, the first perhaps partly written) and is written when it can be, by
        # the supervisor (which watches the pipe for room while anything waits: on_pending
        # tells it) or by the next sender.  So no sender, the supervisor least of all, ever
        # blocks on a child that does not read its commands.  _queued and _sent count bytes.
        # The socket commands are written with (a duplicate of the control pipe's descriptor) is
        # made with the first command: a start does not pay for it (see _sender_socket).
        self._sender: socket.socket | None = None
        self._sender_closed = False  # close() has run: no sender may be made any more
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
        data = encode(message)
        header = codec.header(len(data))
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
        sender = self._sender or self._sender_socket()
        while out:
            try:
                written = sender.send(out, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            del out[:written]
            self._sent += written

    def _sender_socket(self) -> socket.socket:
        """The socket commands are written with, made on first use (hold ``_lock``)."""
        if self._sender_closed:
            raise OSError("the link to the child is closed")
        sender = socket.socket(fileno=os.dup(self.control.fileno()))
        sender.settimeout(None)  # blocking, whatever socket.setdefaulttimeout() says: it shares the
        # open file, so a timeout (O_NONBLOCK) would also make the Connection's reads non-blocking
        self._sender = sender
        return sender

    def _wait_sent(self, end: int, size: int, deadline: Deadline) -> str:
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
                remaining = deadline.remaining()
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
            deadline = Deadline(timeout)
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
                remaining = deadline.remaining()
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
        self._reply_reader = codec.FrameReader(self.reply.fileno())
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
    def _answer_for(call_id: int, reader: codec.FrameReader, readable: bool) -> tuple[bool, Any] | None:
        """``(ok, value)`` for ``call_id`` from the answers read (reading once if ``readable``)."""
        while True:
            body = reader.take()
            if body is None:
                if not readable:
                    return None
                readable = False
                reader.fill()
                continue
            answer = decode(body)
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
                if not os.read(fd, 1 << 16):
                    return
        except OSError:
            pass
        finally:
            self._caller.release()

    def close_child_end(self) -> None:
        """Close the parent's copy of the child's ends once the child has them."""
        for end in self.child_ends:
            end.close()

    def close(self) -> None:
        with self._lock:
            self._out.clear()
            self._sender_closed = True
            if self._sender is not None:
                self._sender.close()
        self.control.close()
        self.status.close()
        with self._guard:
            self._closed = True
            if not self._caller.locked():
                self._close_reply()
            elif self._wake_fds is not None:
                os.write(self._wake_fds[1], b"\0")  # the caller closes the reply pipe on its way out
