"""How a Runner ends and reports runnables that would not end, and what it does at interpreter exit."""

from __future__ import annotations

import atexit
import sys
import traceback
import weakref
from collections.abc import Callable
from typing import Any

from puma._core import messages as msg
from puma._core.errors import StuckRunnableError
from puma._runner.records import ChildRecord
from puma._runner.supervisor import KILL_GRACE, Supervisor

__all__ = ["kill_all", "stuck_error", "terminate_stuck", "track"]


def stuck_error(record: ChildRecord, stop_timeout: float) -> StuckRunnableError:
    """The error for ``record``, which outlived its stop timeout (or its exit after finishing)."""
    kind = record.handle.kind if record.handle is not None else "child"
    if record.finished and not record.unkillable:
        keeps = (
            f"non-daemon threads still running: {', '.join(record.lingering)}"
            if record.lingering
            else "a non-daemon thread or an atexit handler?"
        )
        return StuckRunnableError(
            f"runnable {record.name!r} (pid {record.pid}) finished, but its {kind} did not exit within "
            f"{stop_timeout} s ({keeps}); it was terminated"
        )
    if record.unkillable:
        return StuckRunnableError(
            f"runnable {record.name!r} (a {kind}) did not end within {stop_timeout} s of being asked "
            f"to stop; a {kind} cannot be killed, so it is left running as a daemon"
        )
    how = f"killed (SIGTERM did not end it within {KILL_GRACE} s)" if record.killed else "terminated"
    return StuckRunnableError(
        f"runnable {record.name!r} (pid {record.pid}) did not end within {stop_timeout} s "
        f"of being asked to stop; it was {how}"
    )


def terminate_stuck(
    records: list[ChildRecord], supervisor: Supervisor, stop_timeout: float, wait_all_ended: Callable[[float], bool]
) -> None:
    """Terminate, then kill, those of ``records`` still running after their stop timeout; report them.

    Run again (after a Ctrl-C cut it short), it reports no runnable twice.
    """
    stuck = [r for r in records if not r.ended and r.handle is not None]
    if not stuck:
        return
    for record in stuck:
        if record.unkillable:
            continue  # reported already
        record.stuck = True
        handle = record.handle
        if handle is not None and not handle.terminate():
            # It cannot be ended from outside (a thread): report it and leave it running (a daemon).
            record.unkillable = True
            supervisor.deliver(record, (msg.FINISHED, stuck_error(record, stop_timeout), False))
    if not wait_all_ended(KILL_GRACE):
        for record in stuck:
            handle = record.handle
            if not record.ended and handle is not None and not record.unkillable:
                record.killed = True
                handle.kill()
        wait_all_ended(KILL_GRACE)


def kill_all(records: list[ChildRecord]) -> None:
    """End every child that can be ended from outside, now (a second Ctrl-C)."""
    for record in list(records):
        handle = record.handle
        if not record.ended and handle is not None:
            record.stuck = record.killed = True
            handle.kill()


_live: weakref.WeakSet[Any] = weakref.WeakSet()
_atexit_registered = False


def track(runner: Any) -> None:
    global _atexit_registered
    _live.add(runner)
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_close_all)


def _close_all() -> None:
    """At interpreter exit: stop children of Runners nobody closed, leaving no orphans.

    What their runnables raised is written to stderr: exiting anyway, but not silently.
    """
    for runner in list(_live):
        if not runner._closed:
            try:
                runner.close()
            except BaseException as exc:  # noqa: BLE001 - reported, not raised: the interpreter is exiting
                try:
                    print("puma: a Runner was left open until exit; closing it raised:", file=sys.stderr)
                    traceback.print_exception(exc, file=sys.stderr)
                except BaseException:  # noqa: BLE001, S110 - stderr may be gone
                    pass
