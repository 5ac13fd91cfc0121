"""Finishing a frame a process buffer's subscription began reading, under the buffer's read lock.

A subscription never lets go of the read lock in the middle of a frame: the
next reader would find the pipe mid-frame.  So a frame whose start a bulk
read brought is finished here, waiting for the publisher writing it now if
need be: its header and body into the subscription's read buffer (grown for
it), an out-of-band frame's raw buffers straight into the ``bytearray``
objects that become the arrays' memory.  A restartable reader's journal
(:mod:`puma._buffers.journal`) is told of every byte as it arrives.  A
stream broken meanwhile (the frame's writer died) drops the partial frame.
"""

from __future__ import annotations

import os
from typing import Any

from puma._buffers.journal import Journal
from puma._buffers.shared import BROKEN, ENDED
from puma._core.waiting import Poller

__all__ = ["FrameReading"]

_BREAK_CHECK = 0.05  # seconds: see _await_rest


class FrameReading:
    """The frame-finishing methods of :class:`~puma._buffers.process_subscription.ProcessSubscription` (a mixin)."""

    _b: Any
    _fd: int
    _shared: Any
    _journal: Journal | None
    _buf: bytearray
    _view: memoryview
    _tail: int
    _raws: tuple[int, list[bytearray]] | None
    _data_poller: Poller
    _rest_poller: Poller

    def _read_more(self, start: int, stop: int) -> bool:
        """Read the pipe until the frame at ``start`` is buffered up to ``stop``; False if the stream broke.

        Grows the buffer first if need be (``_head`` is 0: nothing moves).  On
        a break the partial frame is dropped (``_tail`` becomes ``start``).
        """
        if stop <= self._tail:
            return True
        if self._journal is not None:
            self._journal.expect(stop)
        if stop > len(self._buf):
            buf = bytearray(max(stop, 2 * len(self._buf)))
            buf[: self._tail] = self._view[: self._tail]
            self._buf, self._view = buf, memoryview(buf)
        if not self._read_into(self._view, self._tail, stop):
            self._tail = start
            return False
        self._tail = stop
        return True

    def _read_raws(self, frame_at: int, start: int, sizes: tuple[int, ...]) -> bool:
        """The raw buffers after the out-of-band frame at ``frame_at`` are not all read: read them into their targets.

        What was read of them already is copied; the rest goes straight from the pipe into the buffers.
        """
        buffers = [bytearray(size) for size in sizes]
        if self._journal is not None:
            self._journal.expect(start + sum(sizes))
        pos = start
        at = start  # where the raw buffer begins in the stream (and in a journal's copy of it)
        for raw in buffers:
            have = max(min(len(raw), self._tail - pos), 0)
            if have:
                raw[:have] = self._view[pos : pos + have]
                pos += have
            if have < len(raw) and not self._read_into(memoryview(raw), have, len(raw), at):
                self._tail = frame_at
                return False
            at += len(raw)
        self._tail = start  # the raw bytes live in the buffers now
        self._raws = (frame_at, buffers)
        return True

    def _read_into(self, view: memoryview, start: int, stop: int, at: int = 0) -> bool:
        """Fill ``view[start:stop]`` from the pipe (a publisher is writing it now); False if the stream broke.

        ``view[0]`` is at ``at`` in the stream this fill read (for the journal).
        """
        fd = self._fd
        journal = self._journal
        while start < stop:
            if journal is not None:
                journal.reading()
            try:
                count = os.readv(fd, [view[start:stop]])
                if journal is not None:
                    journal.wrote(at + start, view[start : start + count])
            except BlockingIOError:
                if journal is not None:
                    journal.wrote(at + start, view[:0])
                if self._shared[BROKEN]:
                    return False  # its writer died: the rest never comes (and nothing is written after)
                self._await_rest()
                continue
            if count == 0:
                raise EOFError(f"buffer {self._b.name!r}: its pipe was closed in the middle of a value")
            start += count
        return True

    def _await_rest(self) -> None:
        """Block until the pipe is readable, or the stream ends (a break is declared on the end channel).

        Not the one wait for a value: this finishes a frame a publisher is
        writing now, holding the read lock, and must not stop half-way (that
        would leave the pipe mid-frame for the other readers), so it does not
        run commands, like a publisher's own write of a large frame.  Once the
        end channel is readable it stays so: from then on the pipe alone is
        watched, looking for a break every ``_BREAK_CHECK`` seconds (a
        writer's death after the stream ended has no other signal).
        """
        if self._shared[ENDED]:
            self._data_poller.poll(_BREAK_CHECK)
        else:
            self._rest_poller.poll(None)
