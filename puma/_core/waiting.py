"""One wait over everything a waiter listens to.

A :class:`Waker` is the single place where a runnable (or the Runner's
supervisor) sleeps.  Two kinds of source wake it:

* sources in the same process (thread buffers, thread command queues) call
  :meth:`Waker.wake`;
* sources that are file descriptors (process buffers' pipes, command pipes,
  process sentinels) are passed to :meth:`Waker.wait`, which blocks in
  ``multiprocessing.connection.wait`` over them plus a self-pipe that
  :meth:`Waker.wake` writes to.

When there are no descriptors to watch the wait is a plain condition wait, so a
pure-thread pipeline never pays for a system call per value.  ``wake()`` is
cheap when a wake-up is already pending (the common case under load).
"""

from __future__ import annotations

import os
import select
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from puma._core import signals as _signals
from puma._core.condition import Condition

__all__ = ["Deadline", "Poller", "Waker"]

_FD_SETSIZE = 1024  # select()'s limit on Linux and macOS


class Deadline:
    """When a wait of ``timeout`` seconds (``None``: no limit) started now runs out.

    The one place deadline arithmetic is written: ``remaining()`` is the time
    left (``None`` for no limit, never below 0), ``expired`` says it ran out.
    """

    __slots__ = ("_at", "timeout")

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self._at = None if timeout is None else time.monotonic() + timeout

    @classmethod
    def at(cls, when: float | None) -> Deadline:
        """A deadline at the monotonic time ``when`` (``None``: no limit)."""
        deadline = cls(None)
        if when is not None:
            deadline._at = when
            deadline.timeout = max(when - time.monotonic(), 0.0)
        return deadline

    @property
    def when(self) -> float | None:
        """The monotonic time it runs out (``None``: never)."""
        return self._at

    def remaining(self) -> float | None:
        """Seconds left (0.0 once expired); ``None`` if there is no limit."""
        at = self._at
        if at is None:
            return None
        return max(at - time.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        """True once the deadline has passed."""
        return self._at is not None and time.monotonic() >= self._at

    def earliest(self, other: float | None) -> float | None:
        """The time left until this deadline or ``other`` seconds from now, whichever comes first."""
        left = self.remaining()
        if other is None:
            return left
        return other if left is None else min(left, other)


#: Descriptors whose waiters are woken one at a time (see :func:`wake_one_at_a_time`), each with
#: what says whether several may be waiting on it now (a weak reference: the registry keeps
#: nothing alive).
_EXCLUSIVE: dict[int, weakref.WeakMethod[Callable[[], bool]] | None] = {}
_HAS_EXCLUSIVE = hasattr(select, "EPOLLEXCLUSIVE")
_exclusive_version = 0  # changes whenever _EXCLUSIVE does (a poller's look-up of its members is kept until then)


def wake_one_at_a_time(fd: int, on: bool = True, crowded: Callable[[], bool] | None = None) -> None:
    """Mark (``on``) or unmark the readable descriptor ``fd`` as one whose waiters are woken one per write.

    Where the platform has ``EPOLLEXCLUSIVE`` (Linux), a wait that watches such a
    descriptor uses an epoll registration with that flag, so one write wakes one
    of the processes waiting on it instead of all of them (a buffer's room
    tokens: one token serves one waiting publisher).  Elsewhere every waiter
    wakes and the one that reads the byte wins, as before.  Waiters must read
    what woke them and a writer must write one byte per waiter it means to wake.

    ``crowded``: a bound method saying whether others may be waiting too
    (read at each sleep, without a lock: a hint).  When it says no, the wait
    sleeps in its usual poll: an epoll made for one sleep costs a few system
    calls, worth paying only when a write would otherwise wake many.
    """
    global _exclusive_version
    if on and _HAS_EXCLUSIVE:
        _EXCLUSIVE[fd] = None if crowded is None else weakref.WeakMethod(crowded)
    else:
        _EXCLUSIVE.pop(fd, None)
    _exclusive_version += 1


def _exclusive_now(fd: int) -> bool:
    """Whether a sleep on ``fd`` should be one of the waiters woken one at a time."""
    if fd not in _EXCLUSIVE:
        return False
    ref = _EXCLUSIVE.get(fd)
    if ref is None:
        return True
    crowded = ref()
    return crowded is not None and crowded()


class _Poller:
    """Readability of a fixed set of file descriptors (and writability of some), one system call per wait."""

    __slots__ = ("_epoll", "_epoll_key", "_exclusive", "_exclusive_seen", "_fds", "_poll", "_select", "_writable")

    def __init__(self, fds: Sequence[int], writable: Sequence[int] = ()) -> None:
        self._fds = list(fds)
        self._writable = list(writable)
        self._poll = None
        self._epoll: Any = None  # the exclusive sleeps' epoll, kept until close_epoll()
        self._epoll_key: tuple[int, tuple[int, ...]] = (0, ())
        self._exclusive: list[int] = []  # its descriptors marked one-at-a-time, as of _exclusive_seen
        self._exclusive_seen = -1
        # poll() counts its timeout in whole milliseconds (rounded up); select() in microseconds.
        # A timed wait (a tick deadline) uses select when every descriptor fits in an fd_set.
        self._select = all(fd < _FD_SETSIZE for fd in (*self._fds, *self._writable))
        if hasattr(select, "poll"):
            self._poll = select.poll()
            masks: dict[int, int] = {}
            for fd in self._fds:
                masks[fd] = select.POLLIN | select.POLLPRI
            for fd in self._writable:
                masks[fd] = masks.get(fd, 0) | select.POLLOUT
            for fd, mask in masks.items():
                self._poll.register(fd, mask)

    def poll(self, timeout: float | None) -> list[int]:
        """The ready descriptors: readable (or hung up), or writable for those watched so; at most ``timeout`` s."""
        if _EXCLUSIVE and (timeout is None or timeout > 0):
            # Looked up again whenever the marks change: a descriptor number may be closed and
            # used again.
            if self._exclusive_seen != _exclusive_version:
                self._exclusive = [fd for fd in self._fds if fd in _EXCLUSIVE]
                self._exclusive_seen = _exclusive_version
            if self._exclusive:
                exclusive = [fd for fd in self._exclusive if _exclusive_now(fd)]
                if exclusive:
                    return self._sleep_exclusive(exclusive, timeout)
        if self._poll is not None and (timeout is None or timeout <= 0 or not self._select):
            ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
            return [fd for fd, _ev in self._poll.poll(ms)]
        ready, writable, _ = select.select(self._fds, self._writable, [], timeout)
        return ready + [fd for fd in writable if fd not in ready] if writable else ready

    def _sleep_exclusive(self, exclusive: list[int], timeout: float | None) -> list[int]:
        """Sleep in an epoll, the one-at-a-time descriptors registered ``EPOLLEXCLUSIVE``.

        The epoll is made at the first such sleep and kept for the next ones
        until :meth:`close_epoll`, which the waiter calls when its wait ends
        (a publisher woken for room that another took sleeps again without
        making a new one).  Not kept longer: an epoll set holds open files, not
        numbers, so a kept one would go on watching nothing once a descriptor
        number is closed and used again; and one inherited through ``fork``
        would be shared with the parent (the key holds the process id).  An
        idle registration takes no wake-up: the kernel passes an exclusive
        wake-up on to the next waiter when nobody sleeps in that epoll.
        """
        key = (os.getpid(), tuple(exclusive))
        ep = self._epoll
        if ep is None or self._epoll_key != key:
            self.close_epoll()
            ep = select.epoll()
            try:
                read_mask = select.EPOLLIN | select.EPOLLPRI
                writable = set(self._writable)
                for fd in set(self._fds) - writable:
                    if fd in exclusive:
                        ep.register(fd, select.EPOLLIN | select.EPOLLEXCLUSIVE)
                    else:
                        ep.register(fd, read_mask)
                for fd in writable:
                    ep.register(fd, select.EPOLLOUT | (read_mask if fd in self._fds else 0))
            except BaseException:
                ep.close()
                raise
            self._epoll, self._epoll_key = ep, key
        return [fd for fd, _ev in ep.poll(-1 if timeout is None else timeout)]

    def close_epoll(self) -> None:
        """Close the epoll kept for exclusive sleeps, if one was made (at the end of a wait)."""
        ep = self._epoll
        if ep is not None:
            self._epoll = None
            if self._epoll_key[0] == os.getpid():
                ep.close()
            # (one inherited through fork is left to the collector: its number may be in use here)


Poller = _Poller


class Waker:
    """A level-triggered wake-up flag that can also wait on file descriptors.

    Usage by the waiter::

        waker.clear()
        ...check every source without blocking...
        waker.wait(fds, timeout)   # returns at once if wake() ran since clear()
    """

    __slots__ = (
        "__weakref__",
        "_byte_sent",
        "_cond",
        "_fd_waiting",
        "_pending",
        "_poll_key",
        "_poll_writable",
        "_poller",
        "_rfd",
        "_wfd",
    )

    def __init__(self) -> None:
        self._cond = Condition()
        self._pending = False
        self._fd_waiting = False
        self._rfd = -1
        self._wfd = -1
        self._byte_sent = False
        self._poll_key: tuple[int, ...] = ()
        self._poll_writable: Sequence[int] = ()
        self._poller: _Poller | None = None

    def wake(self) -> None:
        """Wake the waiter (now, or at its next wait). Safe from any thread."""
        if self._pending:  # fast path: a wake-up is already on its way
            return
        # The waiter sets _fd_waiting before it looks at _pending, and this sets
        # _pending before it looks at _fd_waiting: one of the two sees the other
        # (the GIL orders them), so a waiter about to poll either polls with a
        # zero timeout or gets the byte.  A byte too many only makes one wait
        # return early, and the waiter drains them all.
        self._pending = True
        try:
            self._deliver()
        except KeyboardInterrupt:
            # A Ctrl-C cut the delivery short: later wakes take the fast path above, so
            # this one must still arrive (delivering twice is harmless).
            self._deliver()
            raise

    def _deliver(self) -> None:
        if self._fd_waiting:
            if not self._byte_sent:
                self._byte_sent = True
                os.write(self._wfd, b"\0")
            return
        with self._cond:
            self._cond.notify_all()

    def clear(self) -> None:
        """Forget past wake-ups; call before checking the sources."""
        self._pending = False

    @property
    def pending(self) -> bool:
        """True if :meth:`wake` ran since the last :meth:`clear`."""
        return self._pending

    def wait(self, fds: Sequence[int] = (), timeout: float | None = None, writable: Sequence[int] = ()) -> list[int]:
        """Block until woken, one of the file descriptors ``fds`` is readable, or ``timeout``.

        Returns the readable members of ``fds`` (empty when woken or timed out),
        and the members of ``writable`` that can be written to.
        """
        if not fds and not writable:
            with self._cond:
                if not self._pending:
                    self._cond.wait(timeout)
            return []
        poller = self._poller
        if fds != self._poll_key or writable != self._poll_writable or poller is None:
            poller = self._new_poller(tuple(fds), tuple(writable))
        # On the main thread a signal noted by any thread wakes this wait (see puma._core.signals).
        main = _signals.main_thread() and _signals.watching()
        # No lock on this path (see wake): announce the wait, then look at _pending.
        self._fd_waiting = True
        try:
            if main:
                _signals.on_signal(self.wake)
            ready = poller.poll(0.0 if self._pending else timeout)
        finally:
            self._fd_waiting = False
            if main:
                _signals.on_signal(None)
        rfd = self._rfd
        if rfd in ready:
            self._byte_sent = False
            try:
                while len(os.read(rfd, 64)) == 64:
                    pass
            except BlockingIOError:
                pass
            return [fd for fd in ready if fd != rfd]
        return ready

    def _new_poller(self, key: tuple[int, ...], writable: tuple[int, ...]) -> _Poller:
        with self._cond:
            if self._rfd < 0:
                self._rfd, self._wfd = os.pipe()
                os.set_blocking(self._wfd, False)
                os.set_blocking(self._rfd, False)
            if self._poller is not None:
                self._poller.close_epoll()
            self._poller = poller = _Poller([*key, self._rfd], writable)
            self._poll_key = key
            self._poll_writable = writable
        return poller

    def done_waiting(self) -> None:
        """A wait that may have slept exclusively has ended: close what it kept for its next sleep."""
        poller = self._poller
        if poller is not None:
            poller.close_epoll()

    def close(self) -> None:
        """Release the self-pipe, if one was made."""
        self.done_waiting()
        with self._cond:
            for fd in (self._rfd, self._wfd):
                if fd >= 0:
                    os.close(fd)
            self._rfd = self._wfd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - interpreter shutdown
            pass

    def __reduce__(self) -> Any:
        raise TypeError("a Waker belongs to one process and cannot be pickled")
