"""What the processes using one process buffer share: counters, locks that name their holder, the end channel.

A process buffer's state that every process must see lives in one small
``RawArray`` of 64-bit integers (the *slots* below), guarded by a
process-shared lock (``meta``) that is never held for long; the one
exception, ``TAKEN`` (places taken by publishers), is written under the
write lock (see :mod:`puma._buffers.process_room`).  Three locks
serialise the pipe:

* the **write** lock: one publisher writes a frame (and, for out-of-band
  values, the raw buffers after it) at a time, so frames never interleave;
* the **read** lock: one subscriber reads the pipe at a time, and before it
  lets go it finishes reading any frame it began (raw buffers included), so
  between readers the pipe always sits at a frame boundary;
* the **meta** lock: the counters.

Lock order: read, then meta; write, then meta.  Each holder
writes its pid into a slot while it holds a lock, so the Runner can free a
lock whose holder died (:func:`free_locks_of`); a holder that is in the
middle of a frame writes its pid negated, so a death there marks the
stream broken.

The **end channel** is a socket pair written once, when the stream ends, and
never read: it stays readable, so every reader's one wait (in any process)
sees the end, including a reader asleep on an empty pipe.  What ended it is
in the slots (:data:`ENDED`) and, for an error, in the bytes written, which
readers look at with ``MSG_PEEK``.
"""

from __future__ import annotations

import bisect
import math
import os
import pickle
import socket
from collections.abc import Callable, Sequence
from select import PIPE_BUF
from typing import Any

from puma._core import codec
from puma._core.errors import BufferClosedError, SerializedError, deserialize_error, serialize_error
from puma._core.forking import refresh_in_children
from puma._core.signals import CtrlCDeferred

__all__ = [
    "BROKEN",
    "CLOSED",
    "COMPLETED",
    "ENDED",
    "END_CLEAN",
    "END_DRAIN",
    "END_ERROR",
    "GIVEN",
    "HOLDS",
    "META_HOLDER",
    "PUBLISHERS",
    "READER",
    "ROOM_TOKENS",
    "SEEN",
    "SHARED_SLOTS",
    "SUBSCRIBER",
    "SUBSCRIBERS",
    "TAKEN",
    "WAITING",
    "WANTS",
    "WANT_FLOORS",
    "WANT_SLOTS",
    "WRITER",
    "EndChannel",
    "Guard",
    "free_locks_of",
    "want_slot",
    "write_whole",
]

# --- the slots ------------------------------------------------------------------------------
PUBLISHERS = 0  # publishers that joined
SUBSCRIBER = 1  # Runner token of the first subscriber + 1; 0 = nobody yet
CLOSED = 2  # 0: open; 1: closed (no reader remains); 2: broken (a writer died mid-frame)
WAITING = 3  # publishers asleep (or about to be) on the room pipe
WRITER = 4  # pid holding the write lock (negated while it writes more than PIPE_BUF bytes)
META_HOLDER = 5  # pid holding the meta lock
BROKEN = 6  # a publisher or a reader died in the middle of a frame: the pipe cannot be read past it
READER = 7  # pid holding the read lock (negated while the pipe is not at a frame boundary)
COMPLETED = 8  # publishers that completed (wrote their completion)
SEEN = 9  # completions read out of the pipe by the subscribers
HOLDS = 10  # stream holds outstanding (Buffer.hold_open)
ENDED = 11  # how the stream ended (END_*); 0 while it goes on
SUBSCRIBERS = 12  # subscriptions made, in every process
END_SIZE = 13  # bytes written on the end channel
ROOM_TOKENS = 14  # room tokens written to the room pipe and not yet read (see ProcessBuffer._wakes_due)
GIVEN = 15  # places given back (the capacity, then every value read or not written after all); meta lock
WANTS = 16  # first of the want slots: waiting publishers by the room they need (see WANT_FLOORS)
WANT_SLOTS = 64
TOKENS = WANTS + WANT_SLOTS  # first of the reader-token slots: Runner token + 1 of each distinct subscribing runnable
MAX_READERS = 64
TAKEN = TOKENS + MAX_READERS  # places taken by publishers, ever; written under the write lock only
SHARED_SLOTS = TAKEN + 1

#: Want slot ``k`` counts the waiting publishers that need at least ``WANT_FLOORS[k]`` places (and
#: less than the next floor): floors a quarter of a power of two apart, so a waiter is woken when the
#: room is within about 19 % of what it needs, never later.
WANT_FLOORS = tuple(math.ceil(2 ** (k / 4)) for k in range(WANT_SLOTS))


def want_slot(need: int) -> int:
    """The want slot of a publisher waiting for ``need`` places."""
    return WANTS + max(0, bisect.bisect_right(WANT_FLOORS, need) - 1)


#: Ended: every publisher that joined completed and no hold is outstanding (the pipe is empty).
END_CLEAN = 1
#: Ended by an error completion read from the pipe: readers end after the values they hold.
END_ERROR = 2
#: Ended by the supervisor (a broken stream, or a completion the pipe could not take): readers
#: first receive every whole value still in the pipe, then end with the error.
END_DRAIN = 3

_ORPHAN_WAIT = 0.5  # seconds a lock stays taken, with no holder named, before it is deemed its dead taker's
_MOST_END_BYTES = 1 << 15  # an error's pickle larger than this is replaced by a short one (see EndChannel)


_pid = os.getpid()  # this process's id, kept: a Guard is taken on every value written


_pid_kept = False


def _forked() -> None:
    global _pid
    _pid = os.getpid()


def _keep_pid() -> None:
    """The first Guard in this process: _pid is refreshed now, and in every child forked from now on."""
    global _pid_kept
    _pid_kept = True
    _forked()
    refresh_in_children(_forked)


class Guard:
    """A process-shared lock that writes its holder's pid into shared memory while held.

    So the Runner can free it when the holder dies (see :func:`free_locks_of`).
    """

    __slots__ = ("_lock", "_shared", "_slot")

    def __init__(self, lock: Any, shared: Any, slot: int) -> None:
        self._lock = lock
        self._shared = shared
        self._slot = slot
        if not _pid_kept:
            _keep_pid()

    def __enter__(self) -> None:
        self._lock.acquire()
        self._shared[self._slot] = _pid

    def __exit__(self, *exc: object) -> None:
        self._shared[self._slot] = 0
        self._lock.release()


def write_whole(fd: int, shared: Any, pid: int, parts: Sequence[Any], broke: Callable[[], None]) -> None:
    """Write one frame, ``parts`` one after the other, holding the write lock: never half of it unnoticed.

    A frame in one part of at most ``PIPE_BUF`` bytes is one write, all or
    nothing.  Any other is marked as being written (the pid negated in
    ``WRITER``: a death now breaks the stream, see :func:`free_locks_of`); a
    first Ctrl-C meanwhile takes effect once it is whole; and a failure
    half-way (a second Ctrl-C) breaks the stream before it is raised, and
    ``broke()`` ends it for every reader: they get a clear error instead of
    half a frame.
    """
    if len(parts) == 1 and len(parts[0]) <= PIPE_BUF:
        shared[WRITER] = pid
        codec.write_all(fd, parts[0])
        shared[WRITER] = 0
        return
    with CtrlCDeferred():  # (the deferred Ctrl-C is raised as this ends: the frame is whole by then)
        try:
            shared[WRITER] = -pid
            for part in parts:
                codec.write_all(fd, part)
        except BrokenPipeError:
            raise  # every reader is gone: nothing will read what was written
        except BaseException:
            shared[BROKEN] = 1
            if not shared[CLOSED]:
                shared[CLOSED] = 2  # before the lock is let go: no publisher writes after the break
            broke()
            raise
        finally:
            shared[WRITER] = 0


def free_locks_of(pid: int, shared: Any, locks: tuple[tuple[Any, int], ...]) -> bool:
    """The process ``pid`` died: free each ``(lock, holder slot)`` it held.  False if the pipe is broken.

    Broken: it died in the middle of a frame (its pid negated in the slot),
    now or earlier.  Called by the Runner's supervisor only.
    """
    for lock, slot in locks:
        holder = shared[slot]
        if holder in (pid, -pid):
            if holder < 0:
                shared[BROKEN] = 1
                if not shared[CLOSED]:
                    shared[CLOSED] = 2  # before the lock is let go: no publisher writes after the break
            shared[slot] = 0
            lock.release()
        # Else free now (we take it and let go), or held by a process killed in the instant
        # between taking it and writing its pid (or clearing its pid and letting go): then
        # nothing of a frame was half done, and letting go frees it.  A live process that
        # took it meanwhile names itself at once: its lock is left alone.
        elif holder == 0 and (lock.acquire(True, _ORPHAN_WAIT) or shared[slot] == 0):
            lock.release()  # ours now, or its taker is deemed dead
    return not shared[BROKEN]


class EndChannel:
    """A socket pair written once when the stream ends and never consumed, so it stays readable.

    Made with ``context.Pipe(duplex=True)`` (a socket pair on POSIX) so it
    crosses to children like the buffer's other pipes, under every start
    method.  Call :meth:`declare` holding the buffer's meta lock.
    """

    __slots__ = ("_reader", "_writer")

    def __init__(self, context: Any) -> None:
        self._reader, self._writer = context.Pipe(duplex=True)
        os.set_blocking(self._writer.fileno(), False)

    @property
    def fd(self) -> int:
        """The descriptor that becomes readable, for good, when the stream ends."""
        fd: int = self._reader.fileno()
        return fd

    def declare(self, shared: Any, how: int, error: BaseException | SerializedError | None) -> bool:
        """End the stream (``how``: an ``END_*``), with ``error`` if any; False if it had ended already."""
        if shared[ENDED]:
            return False
        payload = b""
        if error is not None:
            frozen = error if isinstance(error, SerializedError) else serialize_error(error)
            payload = pickle.dumps(frozen, pickle.HIGHEST_PROTOCOL)
            if len(payload) > _MOST_END_BYTES:
                # The channel's socket buffer must take it in one write (nobody ever reads it):
                # keep the error's type and message, drop what made it large.
                short = BufferClosedError(f"the stream ended with {type(error).__name__}: {str(error)[:2000]}")
                payload = pickle.dumps(serialize_error(short), pickle.HIGHEST_PROTOCOL)
        shared[END_SIZE] = len(payload) + 1
        shared[ENDED] = how  # set first: a reader woken by the write finds it
        codec.write_all(self._writer.fileno(), codec.frame(0, payload))
        return True

    def error(self, shared: Any) -> BaseException | None:
        """The error the stream ended with (None for a clean end); call after :data:`ENDED` is set."""
        size = int(shared[END_SIZE])
        sock = socket.socket(fileno=self._reader.fileno())
        try:
            data = b""
            while len(data) < 4 + size:  # the writer may still be writing (it holds the meta lock)
                data = sock.recv(4 + size, socket.MSG_PEEK)
        finally:
            sock.detach()  # the descriptor stays the Connection's
        payload = data[5:]
        if not payload:
            return None
        frozen = pickle.loads(payload)
        return frozen if isinstance(frozen, BaseException) else deserialize_error(frozen)

    def fds(self) -> tuple[int, int]:
        """Both descriptors (to close them on release)."""
        return self._reader.fileno(), self._writer.fileno()

    def close(self) -> None:
        """Close both ends in this process."""
        self._reader.close()
        self._writer.close()
