"""Waiting primitives that a Ctrl-C cannot leave locked.

Python raises ``KeyboardInterrupt`` in the main thread at the next check
between two bytecodes, and ``threading.Condition`` (with everything built on
it: ``Event``, ``queue.Queue``, ``concurrent.futures.Future``) has such checks
between taking its lock and entering the protected block: its ``__enter__`` is
a Python function that returns after the lock is taken, and its ``wait``
gives the lock back in a Python call outside its ``try``.  A Ctrl-C landing
there leaves the lock held by a main thread that has moved on, and the next
thread that notifies (a supervisor delivering a status, a producer waking its
reader) blocks for ever: a program that hangs on Ctrl-C.

:class:`Condition` is its own lock, a C ``RLock``, so ``with condition:``
takes the lock and enters the block in one step, and its :meth:`Condition.wait`
gives the lock back inside its ``try`` and takes it back in its ``finally``.
:class:`Event` and :func:`new_future` are the stdlib's ``Event`` and ``Future``
on such a condition.  Only the main thread receives ``KeyboardInterrupt``;
everything a user's main thread can reach in puma waits on these.
"""

from __future__ import annotations

import _thread
import time
from concurrent.futures import Future
from typing import Any, TypeVar

from puma._core import signals as _signals

__all__ = ["Condition", "Event", "new_future"]

T = TypeVar("T")


class Condition(_thread.RLock):  # type: ignore[misc]  # final in the stubs, subclassable in C
    """A condition variable that is its own lock, safe against ``KeyboardInterrupt``.

    Use it like ``threading.Condition``: ``with condition:`` around the state,
    :meth:`wait` inside, :meth:`notify_all` after a change.  It is not meant
    to be held twice by one thread while waiting (a wait gives back one level).
    """

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        super().__init__()
        self._waiters: list[Any] = []  # each waiter's own lock, held until it is notified

    def wait(self, timeout: float | None = None) -> bool:
        """Give the lock back, sleep until notified or ``timeout`` s, take the lock again; True if notified."""
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _thread.allocate_lock()
        waiter.acquire()
        self._waiters.append(waiter)
        # On the main thread a signal noted by any thread releases the waiter too (see
        # puma._core.signals): a Ctrl-C another thread received still wakes this sleep.
        main = _signals.main_thread() and _signals.watching()
        try:
            if main:
                _signals.on_signal(waiter.release)
            self.release()  # inside the try: a Ctrl-C right after it still takes the lock back below
            if timeout is None:
                waiter.acquire()
            elif timeout > 0:
                waiter.acquire(True, timeout)
            else:
                waiter.acquire(False)
        finally:
            # Take the lock back, even through a Ctrl-C landing between the check and the
            # acquire (a loop inside one try: no point where an interrupt escapes unlocked).
            interrupted: BaseException | None = None
            while True:
                try:
                    while not self._is_owned():  # type: ignore[attr-defined]
                        self.acquire()
                    break
                except KeyboardInterrupt as exc:
                    interrupted = exc
            # A notify takes its waiters off the list: one still there timed out, or a signal woke it.
            # (A membership test, not a caught ValueError: the usual path raises nothing.)
            notified = waiter not in self._waiters
            if not notified:
                self._waiters.remove(waiter)
            if main:
                _signals.on_signal(None)  # last: an interrupt here leaves it set, which is harmless
            if interrupted is not None:
                raise interrupted
        return notified

    def notify(self, n: int = 1) -> None:
        """Wake up to ``n`` waiters (the lock must be held)."""
        waiters = self._waiters
        for waiter in waiters[:n]:
            try:
                waiter.release()
            except RuntimeError:
                pass  # released already by a notify a Ctrl-C cut short
            waiters.remove(waiter)

    def notify_all(self) -> None:
        """Wake every waiter (the lock must be held)."""
        self.notify(len(self._waiters))

    def wait_for_deadline(self, deadline: float | None) -> bool:
        """:meth:`wait` until the monotonic time ``deadline`` (``None``: no limit); False once it has passed."""
        if deadline is None:
            self.wait()
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.wait(remaining)
        return True


class Event:
    """``threading.Event`` on a :class:`Condition`: a Ctrl-C in :meth:`wait` leaves nothing locked."""

    __slots__ = ("_cond", "_flag")

    def __init__(self) -> None:
        self._cond = Condition()
        self._flag = False

    def is_set(self) -> bool:
        """True once :meth:`set` ran (and :meth:`clear` did not since)."""
        return self._flag

    def set(self) -> None:
        """Set the flag and wake every waiter."""
        with self._cond:
            self._flag = True
            self._cond.notify_all()

    def clear(self) -> None:
        """Reset the flag."""
        with self._cond:
            self._flag = False

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the flag is set or ``timeout`` s have passed; the flag then."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._flag:
                if not self._cond.wait_for_deadline(deadline):
                    break
            return self._flag


def new_future() -> Future[Any]:
    """A ``concurrent.futures.Future`` whose ``result()`` a Ctrl-C cannot leave locked."""
    future: Future[Any] = Future()
    future._condition = Condition()  # type: ignore[assignment]
    return future
