"""A diagnosis of a Runner at one moment: who runs, where each is blocked, how full each buffer is.

:meth:`~puma.Runner.snapshot` asks every live runnable what it is doing (a
WHERE message, answered at once from inside any wait in puma, even in the
middle of a command); one that does not answer in time is busy in its own
code.  The Runner shows the snapshot when ``join(timeout)`` times out and on
Ctrl-C, so a hang is never silent.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from puma._buffers.base import Buffer, BufferStatistics
from puma._runner.records import ChildRecord, buffers_held_by

__all__ = ["RunnableSnapshot", "RunnerSnapshot", "take"]


@dataclass(frozen=True)
class RunnableSnapshot:
    """One runnable, as its Runner sees it.

    Attributes:
        name: the runnable's name.
        state: ``"restarting"``, ``"launching"``, ``"starting"``, ``"running"``, ``"finishing"`` or ``"ended"``.
        pid: the process it runs in.
        activity: what it is doing, in words (where it is blocked).
        stop_requested: True once it has been asked to stop.
        error: what it raised or how it died, if it failed.
    """

    name: str
    state: str
    pid: int | None
    activity: str
    stop_requested: bool
    error: BaseException | None


@dataclass(frozen=True)
class RunnerSnapshot:
    """A Runner at one moment; ``str()`` of it is a report for people.

    Attributes:
        runnables: each runnable, in start order.
        buffers: the statistics of each buffer its runnables use.
        errors: the errors received so far (raised or not yet).
        restarts: the restart policy's statistics (a :class:`puma.supervision.RestartStatistics`),
            if the Runner has one.
    """

    runnables: tuple[RunnableSnapshot, ...]
    buffers: tuple[BufferStatistics, ...]
    errors: tuple[BaseException, ...]
    restarts: Any = None

    def __str__(self) -> str:
        lines = ["puma Runner snapshot:"]
        for r in self.runnables:
            stop = ", asked to stop" if r.stop_requested else ""
            failed = f", failed: {type(r.error).__name__}: {r.error}" if r.error is not None else ""
            lines.append(f"  runnable {r.name!r} (pid {r.pid}): {r.state}{stop}; {r.activity}{failed}")
        for b in self.buffers:
            lines.append(
                f"  buffer {b.name!r}: {b.size}/{b.capacity} values waiting, "
                f"{b.completed} of {b.publishers} publishers completed"
            )
        if self.restarts is not None:
            lines.append(f"  {self.restarts}")
        if self.errors:
            lines.append(f"  errors received: {len(self.errors)}")
            lines.extend(f"    {type(e).__name__}: {e}" for e in self.errors)
        return "\n".join(lines)


def take(
    records: Sequence[ChildRecord], errors: Sequence[BaseException], timeout: float, restarts: Any = None
) -> RunnerSnapshot:
    """Ask the live runnables where they are (waiting at most ``timeout`` s in all) and build the snapshot."""
    asked = [r for r in records if r.ask_activity()]
    deadline = time.monotonic() + timeout
    answers = {id(r): r.wait_activity(deadline) for r in asked}
    runnables = []
    for record in records:
        if record.ended:
            activity = "ended" + (" (stopped)" if record.stopped else "")
        elif id(record) in answers:
            activity = answers[id(record)] or f"in its own code (not waiting in puma: no answer within {timeout} s)"
        else:
            activity = record.state.value
        runnables.append(
            RunnableSnapshot(record.name, record.state.value, record.pid, activity, record.stop_sent, record.error)
        )
    seen: dict[int, Buffer[Any]] = {}
    for record in records:
        for buffer in (*record.runnable.outputs, *buffers_held_by(record.runnable)):
            seen.setdefault(id(buffer), buffer)
    stats = []
    for buffer in seen.values():
        try:
            stats.append(buffer.statistics())
        except Exception:  # noqa: BLE001, S112 - a diagnosis shows what it can
            continue
    return RunnerSnapshot(tuple(runnables), tuple(stats), tuple(errors), restarts)
