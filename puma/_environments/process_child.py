"""What a child process runs: the entry point, and tying the child's life to the Runner's.

Only what must come first is done before the child reports STARTED (a start
is on the caller's critical path, and in a forked child every object touched
for the first time costs a copy-on-write page fault); the rest runs while the
parent wakes up.
"""

from __future__ import annotations

import faulthandler
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from puma._core import logs as _logging
from puma._environments.pickling import Sealed
from puma._environments.process_link import ProcessChildLink, announce_started
from puma._frames import memory as _memory
from puma._runnable.context import ChildContext
from puma._runnable.runnable import Runnable, run_child

__all__ = ["prctl", "process_main"]

_PRCTL: list[Any] = []

# What a child does before it reports STARTED is on every start's critical path, and in a
# forked child each object touched for the first time costs a copy-on-write page fault.
# signal.signal() converts its arguments and result through enums (some 200 us of faults
# there); _signal.signal, the C function it wraps, takes plain ints (some 15 us).
_SIGINT = int(signal.SIGINT)
_SIGKILL = int(signal.SIGKILL)
_SIG_IGN = int(signal.SIG_IGN)
_PR_SET_PDEATHSIG = 1
_PIDFD_OPEN: Callable[[int], int] | None = getattr(os, "pidfd_open", None)
_set_signal: Callable[[int, int], Any]
try:
    import _signal  # type: ignore[import-not-found]

    _set_signal = _signal.signal
except ImportError:  # an implementation without CPython's _signal module
    _set_signal = signal.signal


def prctl() -> Any:
    """libc's prctl on Linux, looked up once (before a fork, so forked children inherit it)."""
    if not _PRCTL:
        function = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                function = ctypes.CDLL(None).prctl  # (no errno kept: a failed call changes nothing here)
            except (OSError, AttributeError):
                function = None
        _PRCTL.append(function)
    return _PRCTL[0]


def _die_with_parent(parent_pid: int) -> None:
    """End this child process when the Runner's process dies, whatever the start method.

    Linux's parent-death signal covers fork and spawn (the kernel sends SIGKILL
    when the launching thread dies); under forkserver the parent is the fork
    server, which outlives the Runner's process while children exist, so a
    daemon thread also blocks on a pidfd of the Runner's process and kills this
    process when it becomes readable (the process ended).  No polling.
    """
    function = _PRCTL[0] if _PRCTL else prctl()  # (looked up in the parent, before a fork)
    if function is not None:
        function(_PR_SET_PDEATHSIG, _SIGKILL)
    pidfd_open = _PIDFD_OPEN
    if pidfd_open is None or os.getppid() == parent_pid:
        return  # the parent-death signal above already ties us to the Runner's process
    try:
        pidfd = pidfd_open(parent_pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)  # the parent is already gone
        return
    except OSError:
        return

    def watch() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="puma-parent-watch", daemon=True).start()


def process_main(
    sent: Runnable | Sealed,
    ends: tuple[Connection, Connection, Connection],
    token: int,
    log_settings: Any,
    parent_pid: int,
    *,
    name: str,
    own_group: bool = True,
    segment_owner: int | None = None,
) -> None:
    """Entry point of a child process.

    Only what must come first is done before the child reports STARTED:
    ignoring Ctrl-C (the parent decides how children stop), and opening a
    sealed runnable (a failure there is reported as the runnable's error, in
    place of STARTED).  The rest of the set-up runs after, while the parent
    wakes up, and before ``execute``: tying the child's life to the Runner's
    process (which also catches a parent that died before then), logging,
    faulthandler.

    ``ends``: the child's ends of its link's pipes (control, status, reply).
    ``own_group``: lead a process group of its own, which the processes it
    starts join, so the Runner can end the whole tree with it.
    ``segment_owner``: the process that owns the named shared memory made here
    (None where segments are anonymous: Linux's memfd).
    """
    _set_signal(_SIGINT, _SIG_IGN)  # Ctrl-C reaches the whole process group
    if segment_owner is not None:  # (not on Linux)
        _memory.set_segment_owner(segment_owner)  # named shared memory made here is the Runner's
    if own_group:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass  # not permitted here (a session leader): its tree is not tracked
    thread = threading.current_thread()
    if thread.name != "MainThread":  # fork copies the launching thread's name (a write is a page)
        thread.name = "MainThread"
    try:
        runnable: Runnable = sent.open() if isinstance(sent, Sealed) else sent
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as the runnable's error
        link = ProcessChildLink(*ends)
        _die_with_parent(parent_pid)
        exc.add_note(f"raised while rebuilding runnable {name!r} in its child process {os.getpid()}")
        try:
            exc._puma_origin = f"{name}:{os.getpid()}:rebuild"  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001, S110 - an exception without a __dict__ is reported all the same
            pass
        link.send_finished(exc, False)
        return

    # STARTED first, written straight to the pipe: making the link and the runnable's context
    # (objects and code touched for the first time: page faults in a forked child) comes after.
    announce_started(ends[0])
    link = ProcessChildLink(*ends)

    def setup() -> None:
        _die_with_parent(parent_pid)
        _enable_faulthandler()
        _logging.setup_child(log_settings, link, runnable.name)

    try:
        run_child(runnable, ChildContext(runnable, link, token), setup, announced=True)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


def _enable_faulthandler() -> None:
    """Print the child's Python stack on a crash (segfault, abort), to stderr.

    The ``sys.stderr`` a child inherits may be no file (a notebook's, a test's
    capture): then the process's own stderr, file descriptor 2.
    """
    try:
        faulthandler.enable()
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError and a ValueError
        faulthandler.enable(file=2)
