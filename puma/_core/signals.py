"""Signals wake the main thread in every sleep puma makes it take.

CPython runs a signal's Python handler (the ``KeyboardInterrupt`` of a
Ctrl-C) only in the main thread, between two bytecodes.  The C-level handler
that notes the signal runs in whichever thread the kernel picked, and a main
thread asleep in a lock's ``acquire`` or in ``poll()`` wakes for it only if
the signal was delivered to that very thread after it fell asleep.  A Ctrl-C
delivered to a busy thread runnable, or to the main thread in the
microseconds between its last check and its sleep, would be acted on only at
the next signal: a program that ignores the first Ctrl-C.

The C handler also writes a byte to the *wake-up descriptor*
(``signal.set_wakeup_fd``), and a byte in a pipe cannot be missed.  So every
sleep of the main thread in puma watches such a pipe too:

* :func:`wakeup_fd` makes puma's pipe the wake-up descriptor, unless the
  program set one of its own (then that one is left alone, and so is the
  race), and gives its read end: :class:`~puma._core.waiting.Waker` adds it to
  its poll on the main thread and :func:`drain` empties it.
* :func:`main_sleeper` is what a :class:`~puma._core.condition.Condition` wait
  uses on the main thread in place of a waiter lock: the notifier writes a byte
  to a second pipe, and the sleep polls both.

A sleep woken by a signal empties the pipe and returns to Python code, where
the handler runs (and raises ``KeyboardInterrupt``); after a handler that does
not raise, the wait returns as a spurious wake-up does, so a handler that sets
a flag is seen by the waiter's loop.  A child made by ``fork`` drops the
parent's pipes (they would be shared with it) and makes its own at first use.
A process that ignores SIGINT (puma's process children) has no Python handler
to wake for and makes none.
"""

from __future__ import annotations

import _thread
import os
import select
import signal
import threading
import time
from typing import Any

try:
    import _signal  # type: ignore[import-not-found]

    _getsignal: Any = _signal.getsignal  # plain ints: no enum conversion (copy-on-write faults in a fork child)
except ImportError:  # an implementation without CPython's _signal module
    _getsignal = signal.getsignal

__all__ = ["CtrlCDeferred", "PipeWaiter", "Sleeper", "claim", "drain", "give_back", "main_sleeper", "wakeup_fd"]

_HAS_POLL = hasattr(select, "poll")
_SIGINT = int(signal.SIGINT)
_SIG_IGN = int(signal.SIG_IGN)


class PipeWaiter:
    """A :class:`~puma._core.condition.Condition` waiter whose release writes to the sleeper's pipe.

    ``released`` is the truth; the byte only wakes the poll (a byte left over
    from an earlier sleep just makes a sleep look again).
    """

    __slots__ = ("_sleeper", "released")

    def __init__(self, sleeper: Sleeper) -> None:
        self._sleeper = sleeper
        self.released = False

    def release(self) -> None:
        """Wake the sleep this waiter is for (a Condition's notify calls it, holding its lock)."""
        if self.released:
            raise RuntimeError("release unlocked lock")
        self.released = True
        sleeper = self._sleeper
        if sleeper.open:  # (a waiter inherited through fork belongs to the parent: nothing to wake)
            os.write(sleeper.note_w, b"\0")


class Sleeper:
    """The main thread's sleep: a notify writes to one pipe, a signal to the other, one poll watches both."""

    __slots__ = ("note_r", "note_w", "open", "poll", "sig_r", "sig_w")

    def __init__(self) -> None:
        self.note_r, self.note_w = os.pipe()
        self.sig_r, self.sig_w = os.pipe()
        for fd in (self.note_r, self.note_w, self.sig_r, self.sig_w):
            os.set_blocking(fd, False)
        self.poll = select.poll()
        self.poll.register(self.note_r, select.POLLIN)
        self.poll.register(self.sig_r, select.POLLIN)
        self.open = True

    def waiter(self) -> PipeWaiter:
        """A new waiter for one sleep (the Condition keeps it until it notifies or the sleep ends)."""
        return PipeWaiter(self)

    def sleep(self, waiter: PipeWaiter, timeout: float | None) -> bool:
        """Sleep until ``waiter`` is released (True), ``timeout`` s pass or a signal comes (False).

        A signal's handler runs as this returns to Python code (raising
        ``KeyboardInterrupt`` for a Ctrl-C); one that does not raise, say one
        that sets a flag, ends the sleep all the same: a spurious wake-up, so
        the caller looks at its state again.  A sleep inside a handler that
        interrupted another (both on the main thread) may take the other's
        byte: each looks at its own waiter's flag.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        ms: int | None = None
        while not waiter.released:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return waiter.released
                ms = int(left * 1000 + 0.999)
            signalled = False
            for fd, _events in self.poll.poll(ms):
                drain(fd)  # (the handler runs at this call)
                signalled = signalled or fd == self.sig_r
            if signalled:
                return waiter.released
        return True

    def close(self) -> None:
        """Close the pipes (this process's; after fork, the inherited numbers are closed too)."""
        self.open = False
        for fd in (self.note_r, self.note_w, self.sig_r, self.sig_w):
            try:
                os.close(fd)
            except OSError:
                pass


_sleeper: Sleeper | None = None
_state = 0  # 0: not looked at yet in this process; 1: puma's pipe is the wake-up descriptor; -1: not used


_main_ident = threading.main_thread().ident


def _main_thread() -> bool:
    return _thread.get_ident() == _main_ident


def _set_up() -> Sleeper | None:
    """Make the pipes and the wake-up descriptor on the main thread's first sleep here."""
    global _sleeper, _state
    _state = -1
    if not _HAS_POLL or _getsignal(_SIGINT) == _SIG_IGN:
        return None
    sleeper = Sleeper()
    try:
        old = signal.set_wakeup_fd(sleeper.sig_w, warn_on_full_buffer=False)
    except ValueError:  # not the main interpreter
        sleeper.close()
        return None
    if old != -1:
        signal.set_wakeup_fd(old)  # the program watches signals itself: its descriptor stays
        _sleeper = sleeper  # the notify pipe still serves the Condition waits
        return sleeper
    _sleeper = sleeper
    _state = 1
    return sleeper


def wakeup_fd() -> int:
    """On the main thread, the read end of the pipe a signal writes to; -1 elsewhere (or if not puma's)."""
    if _state < 0 or _thread.get_ident() != _main_ident:
        return -1
    if _state == 0:
        _set_up()
    if _state == 1 and _sleeper is not None:
        return _sleeper.sig_r
    return -1


def main_sleeper() -> Sleeper | None:
    """The main thread's :class:`Sleeper`; None off the main thread (or where signals need none)."""
    if not _main_thread():
        return None
    return _sleeper if _state else _set_up()


class CtrlCDeferred:
    """``with CtrlCDeferred():`` on the main thread: a first Ctrl-C in the block takes effect as it ends.

    For a frame written in several parts: a ``KeyboardInterrupt`` between two
    of them would leave half a frame in the pipe.  The program's SIGINT
    handler (Python's, which raises ``KeyboardInterrupt``, or its own) is
    called when the block ends, as if the Ctrl-C had come then; a second
    Ctrl-C in the block calls it at once (a write that cannot end, into a
    pipe nobody reads, must not make Ctrl-C useless).  Elsewhere, and where
    SIGINT has no Python handler, it does nothing.
    """

    __slots__ = ("_old", "_pressed")

    def __init__(self) -> None:
        self._old: Any = None
        self._pressed: tuple[int, Any] | None = None

    def __enter__(self) -> CtrlCDeferred:
        if _thread.get_ident() == _main_ident:
            old = signal.getsignal(signal.SIGINT)
            if callable(old):
                signal.signal(signal.SIGINT, self._on_ctrl_c)
                self._old = old
        return self

    def _on_ctrl_c(self, signum: int, frame: Any) -> None:
        if self._pressed is not None:
            self._old(signum, frame)  # the second: at once
        self._pressed = (signum, frame)

    def __exit__(self, *exc: object) -> None:
        old = self._old
        if old is None:
            return
        self._old = None
        signal.signal(signal.SIGINT, old)
        pressed = self._pressed
        if pressed is not None:
            self._pressed = None
            if exc[0] is None:
                old(*pressed)  # the Ctrl-C deferred, now: KeyboardInterrupt (or the program's handler)


def drain(fd: int) -> None:
    """Read a non-blocking pipe empty."""
    try:
        while len(os.read(fd, 256)) == 256:
            pass
    except BlockingIOError:
        pass


def claim() -> int:
    """Make puma's pipe the wake-up descriptor even if the program set one; the old one, for :func:`give_back`.

    For a wait that handles signals itself for a while (a batch map's Ctrl-C).
    Main thread only.
    """
    global _state
    if _state == 0:
        _set_up()
    sleeper = _sleeper
    if sleeper is None:
        return -1
    old = signal.set_wakeup_fd(sleeper.sig_w, warn_on_full_buffer=False)
    if old != sleeper.sig_w:
        _state = 1
    return old


def give_back(old: int) -> None:
    """Put back the wake-up descriptor :func:`claim` replaced."""
    global _state
    sleeper = _sleeper
    if sleeper is None or old == sleeper.sig_w:
        return
    if old != -1:
        signal.set_wakeup_fd(old)
        _state = -1


def _after_fork_in_child() -> None:
    global _main_ident, _sleeper, _state
    _main_ident = _thread.get_ident()  # the thread that forked is the child's main thread
    sleeper = _sleeper
    _sleeper = None
    if sleeper is not None:
        if _state == 1:
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass
        sleeper.close()
    _state = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
