"""A process buffer's room: the places free, the publishers waiting for room, the tokens that wake them.

The free room is two counters in the buffer's shared slots: ``TAKEN``, the
places publishers ever took, written only under the write lock (it only
grows: a place taken and not used is given back through ``GIVEN``), and
``GIVEN``, the places ever given back (the capacity to begin with, then
every value read), written only under the meta lock; ``GIVEN - TAKEN``
places are free.  Each counter has one lock, so neither update is lost,
and a ``publish`` or a ``publish_many`` takes its places and writes its
frame under the one write lock it needs anyway, at once or when its wait
for room ends (:meth:`RoomAccounting._look_for_room` writes the frame a
waiter pickled before it slept); a batch takes or gives back any number of
places in one short step (a semaphore would cost one operation per place:
14 us for 100 of them here, more than the batch's pickling).  A reading of
``TAKEN`` without the write lock may be old, which only makes the free room
look larger: a waiter woken for it looks again and sleeps.

Everything a wake-up decision reads (``GIVEN``, ``WAITING``, the want
slots, ``ROOM_TOKENS``) is written under the meta lock.  A publisher that
finds no room counts itself as waiting under that lock and looks at the
free room again there, so a reader giving room back (under the same lock)
either leaves room it sees or sees it waiting and writes a room token.
Lock order: the write lock, then the meta lock.

A publisher that finds no room sleeps on the buffer's room pipe.  A reader
giving room back writes one token when a waiter can use it; the woken
publisher passes on the room it leaves.  Tokens on their way are counted,
so a sleeper is not woken twice before it has run.  Where the platform has
``EPOLLEXCLUSIVE`` one token wakes one sleeper
(:func:`puma._core.waiting.wake_one_at_a_time`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from puma._buffers import shared as _shared_module
from puma._buffers.shared import (
    CLOSED,
    GIVEN,
    META_HOLDER,
    ROOM_TOKENS,
    TAKEN,
    WAITING,
    WANT_FLOORS,
    WANT_SLOTS,
    WANTS,
    WRITER,
    Guard,
    want_slot,
    write_whole,
)

__all__ = ["RoomAccounting"]


class RoomAccounting:
    """The room methods of :class:`~puma._buffers.process.ProcessBuffer` (a mixin: it holds no state of its own)."""

    _shared: Any
    _lock: Any
    _meta: Any
    _meta_guard: Guard
    _room_reader: Any
    _room_writer: Any
    _writer: Any
    _broke_mid_frame: Callable[[], None]

    def _free(self) -> int:
        """Places free now (read without the locks: a hint, never smaller than the truth)."""
        shared = self._shared
        taken = int(shared[TAKEN])  # read first: it only grows, so an old one errs high
        return int(shared[GIVEN]) - taken

    def _take_free(self, want: int, pid: int) -> int:
        """Take up to ``want`` free places now, without waiting; how many were taken (``pid``: ours).

        Under the write lock, the one lock that writes ``TAKEN`` (taken
        inline: this is every ``try_publish``'s path), and only when places
        look free: a full buffer is told without waiting for that lock.
        """
        if self._free() <= 0:
            return 0  # the reading errs high: none is free (and the write lock, perhaps held
            # through a long write, is not waited for)
        shared = self._shared
        lock = self._lock
        lock.acquire()
        try:  # a KeyboardInterrupt between the two must not leave the lock taken
            shared[WRITER] = pid
            taken = shared[TAKEN]
            free = shared[GIVEN] - taken
            got = want if want <= free else max(free, 0)
            shared[TAKEN] = taken + got
        finally:
            shared[WRITER] = 0
            lock.release()
        return got

    def _take_or_wait(self, want: int, useful: int, pid: int) -> int:
        """Take up to ``want`` places; if there are none, count the caller as waiting for ``useful``."""
        while True:
            got = self._take_free(want, pid)
            if got:
                return got
            with self._meta_guard:
                self._want_room(useful, 1)
                if self._free() <= 0:  # GIVEN cannot change under this lock: a reader will see us
                    return 0
                self._want_room(useful, -1)  # room came back meanwhile: take it

    def _look_for_room(
        self, want: int, useful: int, token: bool, pid: int, frame: bytes | None = None
    ) -> tuple[int, int, bool]:
        """A waiting publisher looks again (``token``: it read a room token): places taken, tokens to pass on.

        It takes places only when at least ``useful`` are free (or all it
        wants); taking them ends its wait, and room it leaves is passed on to
        the next waiters.  ``frame``: the values of all ``want`` places,
        written in the same hold of the write lock when all of them are taken
        (the third item says it was).
        """
        with self._meta_guard:
            shared = self._shared
            if token and shared[ROOM_TOKENS] > 0:  # tokens written to interrupt publishers are not counted
                shared[ROOM_TOKENS] -= 1
            free = self._free()
            if free <= 0 or free < useful:
                return 0, 0, False  # the true room is no larger
        lock = self._lock
        lock.acquire()
        got = wakes = 0
        failed = False
        try:
            shared[WRITER] = pid
            with self._meta_guard:
                taken = shared[TAKEN]
                free = shared[GIVEN] - taken
                if free <= 0 or free < useful:
                    return 0, 0, False  # another publisher was first
                got = min(want, free)
                shared[TAKEN] = taken + got
                self._want_room(useful, -1)
                wakes = self._wakes_due()
            written = False
            if frame is not None and got == want and shared[CLOSED] == 0:
                failed = True
                write_whole(self._writer.fileno(), shared, pid, (frame,), self._broke_mid_frame)
                failed = False
                written = True
            return got, wakes, written
        finally:
            shared[WRITER] = 0
            lock.release()
            if failed:  # the write raised (Ctrl-C): as if this look had found no room
                with self._meta_guard:
                    self._want_room(useful, 1)  # still waiting: the caller's clean-up counts it out
                if wakes:
                    self._write_tokens(wakes)
                self._give_back(got)  # the places it took go back, waking a waiter

    def _stop_waiting(self, useful: int) -> int:
        """A waiting publisher leaves without room (timeout, stop, end): tokens to pass on."""
        with self._meta_guard:
            self._want_room(useful, -1)
            return self._wakes_due()

    def _read_token(self) -> bool:
        """Take one room token if there is one; False if another waiter was first (or none came)."""
        try:
            return bool(os.read(self._room_reader.fileno(), 1))
        except BlockingIOError:
            return False

    def _write_tokens(self, count: int) -> None:
        """Write ``count`` room tokens, one write each: each write wakes one waiting publisher."""
        fd = self._room_writer.fileno()
        try:
            for _ in range(count):
                os.write(fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full of tokens: every waiter finds one (ROOM_TOKENS only errs high)

    def _wakes_due(self, most: int | None = None) -> int:
        """How many waiting publishers the free room can serve now, at most ``most`` (under the meta lock).

        A waiting publisher says how much room it needs (its want slot, see
        :data:`WANT_FLOORS`), so a batch of 100 is not woken for every few
        places that come back, only to find too few and sleep again.  The
        tokens are counted as written (the caller writes them, after the lock).
        """
        shared = self._shared
        # Waiters already woken (a token on its way to each) are not woken again: on two
        # cores a woken waiter may not have run yet when the next room comes back.
        waiting = int(shared[WAITING]) - int(shared[ROOM_TOKENS])
        if waiting <= 0:
            return 0
        free = self._free()
        wakes = 0
        for k in range(WANT_SLOTS):  # the least demanding first; each needs at least its floor
            floor = WANT_FLOORS[k]
            if free < floor:
                break
            count = int(shared[WANTS + k])
            if count:
                served = min(count, free // floor)
                wakes += served
                free -= served * floor
        wakes = min(wakes, waiting) if most is None else min(wakes, waiting, most)
        shared[ROOM_TOKENS] += wakes
        return wakes

    def _want_room(self, useful: int, delta: int) -> None:
        """A publisher starts (``delta`` 1) or stops (-1) waiting for ``useful`` places; under the meta lock."""
        shared = self._shared
        shared[WAITING] += delta
        shared[want_slot(useful)] += delta

    def _give_back(self, count: int) -> None:
        """Give back ``count`` places (values read, or not written after all), waking a waiter if one can use them.

        One waiter at most: the woken publisher passes on what it leaves (see
        :meth:`_look_for_room`), so the reader, which every publisher waits
        for, is not the process preempted by each wake-up.
        """
        # The meta guard's work, written out: this runs for every value a reader takes.
        shared = self._shared
        lock = self._meta
        lock.acquire()
        try:
            shared[META_HOLDER] = _shared_module._pid
            shared[GIVEN] += count
            wakes = self._wakes_due(1) if shared[WAITING] else 0
        finally:
            shared[META_HOLDER] = 0
            lock.release()
        if wakes:
            self._write_tokens(wakes)  # after the lock: the woken publisher takes it at once
