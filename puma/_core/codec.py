"""The one wire format of puma's pipes: command channels, status channels and process buffers.

A frame is a length header and a body::

    header: 4-byte big-endian signed length of the body
            (or -1, then an 8-byte big-endian length, for bodies of 2 GiB or more)
    body:   one kind byte, then the payload (a pickle, or what the kind says)

The header is :class:`multiprocessing.connection.Connection`'s, so either end
of a pipe may also be a ``Connection`` (``recv_bytes`` returns the body).  Each
stream gives its own meaning to the kind byte: a channel sends pickled
messages (:data:`MESSAGE`), a process buffer values, batches, completions and
values with out-of-band buffers.

Writers build a small frame in one piece (one ``write``, atomic up to
``PIPE_BUF`` bytes on a pipe) and a large one as header, then payload, so a
big pickle is never copied onto its header.  :class:`FrameReader` takes
whatever a descriptor holds in one ``read`` and hands out whole bodies.
"""

from __future__ import annotations

import os
import struct
from typing import Any

__all__ = [
    "HEAD",
    "MESSAGE",
    "FrameReader",
    "frame",
    "frame_parts",
    "header",
    "parse_header",
    "write_all",
]

SIZE = struct.Struct("!i")
BIG_SIZE = struct.Struct("!Q")
#: The header and kind byte of a frame whose body is under 2 GiB, packed in one call: ``HEAD.pack(body_size, kind)``.
HEAD = struct.Struct("!iB")
#: Kind byte of a pickled message on a command or status channel.
MESSAGE = 0
_KIND = [bytes((i,)) for i in range(256)]  # the kind byte of each kind, made once
INLINE = 1 << 16  # payloads up to this size are written in one piece with their header
_READ = 1 << 16  # a read takes at most this much, unless a big frame needs more
_MOST_READ = 1 << 22


def header(body_size: int) -> bytes:
    """The header of a frame whose body is ``body_size`` bytes (kind byte included)."""
    return SIZE.pack(body_size) if body_size < 0x7FFFFFFF else SIZE.pack(-1) + BIG_SIZE.pack(body_size)


def frame(kind: int, payload: bytes | bytearray | memoryview) -> bytes:
    """A whole frame in one piece: header, kind byte, payload."""
    return header(len(payload) + 1) + _KIND[kind] + payload


def parse_header(buf: bytes | bytearray | memoryview, start: int, end: int) -> tuple[int, int]:
    """``(header size, body size)`` of the frame at ``buf[start:end]``; ``(0, 0)`` if its header is not all there."""
    if end - start < 4:
        return 0, 0
    size: int = SIZE.unpack_from(buf, start)[0]
    if size != -1:
        return 4, size
    if end - start < 12:
        return 0, 0
    big: int = BIG_SIZE.unpack_from(buf, start + 4)[0]
    return 12, big


def write_all(fd: int, data: Any) -> None:
    """Write every byte of ``data`` to ``fd`` (a write can be cut short by a signal or a big payload)."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data).cast("B")
        while written < len(view):
            written += os.write(fd, view[written:])


def frame_parts(kind: int, payload: bytes | bytearray | memoryview) -> tuple[Any, ...]:
    """A frame as the pieces to write: whole when small, else header then payload (never copied onto it)."""
    if len(payload) <= INLINE:
        return (frame(kind, payload),)
    return (header(len(payload) + 1) + _KIND[kind], payload)


class FrameReader:
    """Frames read from a descriptor in bulk: one ``read`` takes every frame there."""

    __slots__ = ("_buf", "_fd")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buf = bytearray()

    def whole(self) -> bool:
        """True if a whole frame is buffered."""
        head, size = parse_header(self._buf, 0, len(self._buf))
        return head > 0 and len(self._buf) >= head + size

    def take(self) -> bytearray | None:
        """The next whole frame's body (kind byte first), or None if none is buffered."""
        buf = self._buf
        head, size = parse_header(buf, 0, len(buf))
        end = head + size
        if head == 0 or len(buf) < end:
            return None
        body = buf[head:end]
        del buf[:end]  # cheap: a bytearray drops its front without moving the rest
        return body

    def fill(self) -> None:
        """One read: whatever the descriptor holds (blocks until something comes)."""
        head, size = parse_header(self._buf, 0, len(self._buf))
        want = max(_READ, min(head + size - len(self._buf), _MOST_READ)) if head else _READ
        chunk = os.read(self._fd, want)
        if not chunk:
            raise EOFError("the other end of the pipe has closed")
        self._buf += chunk

    def take_all(self) -> list[bytearray]:
        """Every frame there now: reads once, and more only to finish a frame begun."""
        if not self.whole():
            self.fill()
        bodies = []
        while True:
            body = self.take()
            if body is not None:
                bodies.append(body)
            elif self._buf:
                self.fill()  # the rest of a frame being written now
            else:
                return bodies
