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
(``signal.set_wakeup_fd``), and a byte in a pipe cannot be missed.  puma makes
a pipe of its own that descriptor (unless the program set one: then that one
is left alone, and so is the race), and a thread of its own, the watcher,
blocks reading it.  Each sleep of the main thread in puma first names what
wakes it (:func:`on_signal`: a Condition's waiter lock, a Waker's ``wake``),
and the watcher calls that when a byte comes.  The sleep then ends as a
spurious wake-up does; the handler runs as the main thread goes back to Python
code (raising ``KeyboardInterrupt`` for a Ctrl-C), and a handler that only
sets a flag is seen by the waiter's loop.  Notifying a sleeper stays what it
was (a lock released): the watcher only adds wake-ups.

The watcher starts with the main thread's first sleep in puma.  A process that
ignores SIGINT (puma's process children) has no Python handler to wake for and
starts none; a child made by ``fork`` drops the parent's pipe and starts its
own watcher when it needs one.
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

try:
    import _signal  # type: ignore[import-not-found]

    _getsignal: Any = _signal.getsignal  # plain ints: no enum conversion (copy-on-write faults in a fork child)
except ImportError:  # an implementation without CPython's _signal module
    _getsignal = signal.getsignal

__all__ = ["CtrlCDeferred", "claim", "give_back", "main_thread", "on_signal", "watching"]

_SIGINT = int(signal.SIGINT)
_SIG_IGN = int(signal.SIG_IGN)
WATCHER_NAME = "puma-signal-watcher"

_main_ident = threading.main_thread().ident
_pipe: tuple[int, int] | None = None  # (read end, write end) of the wake-up pipe, in this process
_state = 0  # 0: not looked at yet here; 1: puma's pipe is the wake-up descriptor; -1: not watching
_wake: Callable[[], None] | None = None  # what wakes the main thread's current sleep


def main_thread() -> bool:
    """True on the main thread of this process."""
    return _thread.get_ident() == _main_ident


def watching() -> bool:
    """On the main thread: start watching for signals if need be; True if a signal will wake its sleeps."""
    if _state == 0:
        _set_up()
    return _state == 1


def on_signal(wake: Callable[[], None] | None) -> None:
    """Name what ends the main thread's coming sleep when a signal comes (None once it has ended)."""
    global _wake
    _wake = wake


def _set_up() -> None:
    global _pipe, _state
    _state = -1
    if _thread.get_ident() != _main_ident or _getsignal(_SIGINT) == _SIG_IGN:
        return
    try:
        read_end, write_end = os.pipe()
    except OSError:  # out of descriptors: waits work as before, without the watcher
        return
    os.set_blocking(write_end, False)  # the C handler never blocks
    try:
        old = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # not the main interpreter
        os.close(read_end)
        os.close(write_end)
        return
    _pipe = (read_end, write_end)
    if old != -1:
        signal.set_wakeup_fd(old)  # the program watches signals itself: its descriptor stays
        return
    if _start_watcher():
        _state = 1
    else:
        signal.set_wakeup_fd(-1)


_watcher: list[threading.Thread] = []  # the watcher of this process, once started


def _start_watcher() -> bool:
    """Start this process's watcher if it is not running; False if no thread can be started."""
    if not _watcher and _pipe is not None:
        thread = threading.Thread(target=_watch, args=(_pipe[0],), name=WATCHER_NAME, daemon=True)
        try:
            thread.start()
        except RuntimeError:  # "can't start new thread"
            return False
        _watcher.append(thread)
    return bool(_watcher)


def _watch(read_end: int) -> None:
    """The watcher: each signal noted by the C handler wakes the main thread's sleep, if it sleeps."""
    while True:
        try:
            if not os.read(read_end, 256):
                return
        except OSError:
            return
        wake = _wake
        if wake is not None:
            try:
                wake()
            except RuntimeError:
                pass  # a waiter lock released already (notified meanwhile)


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
        if self._pressed is None:
            self._pressed = (signum, frame)  # the first: when the block ends
            return
        self._pressed = None
        self._old(signum, frame)  # the second: at once (it stands for both)

    def __exit__(self, *exc: object) -> None:
        old = self._old
        if old is None:
            return
        self._old = None
        signal.signal(signal.SIGINT, old)
        pressed = self._pressed
        if pressed is not None:
            # The Ctrl-C deferred, now: KeyboardInterrupt (or the program's handler), also when the
            # block failed otherwise (the user asked to stop; that failure becomes its context).
            self._pressed = None
            old(*pressed)


def claim() -> int:
    """Make puma's pipe the wake-up descriptor even if the program set one; the old one, for :func:`give_back`.

    For a wait that handles signals itself for a while (a batch map's Ctrl-C).
    Main thread only.
    """
    global _state
    if _state == 0:
        _set_up()
    if _pipe is None:
        return -1
    old = signal.set_wakeup_fd(_pipe[1], warn_on_full_buffer=False)
    if old != _pipe[1] and _start_watcher():
        _state = 1
    return old


def give_back(old: int) -> None:
    """Put back the wake-up descriptor :func:`claim` replaced."""
    global _state
    if _pipe is None or old in (-1, _pipe[1]):
        return
    signal.set_wakeup_fd(old)
    _state = -1


def _after_fork_in_child() -> None:
    global _main_ident, _pipe, _state, _wake
    _main_ident = _thread.get_ident()  # the thread that forked is the child's main thread
    pipe, _pipe, _wake = _pipe, None, None
    _watcher.clear()  # (threads do not survive fork)
    if pipe is not None:
        if _state == 1:
            try:
                signal.set_wakeup_fd(-1)
            except ValueError:
                pass
        for fd in pipe:
            try:
                os.close(fd)  # the parent's: its watcher reads it
            except OSError:
                pass
    _state = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
