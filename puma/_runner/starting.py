"""Starting many runnables at once (``Runner.start_all``): prepare them all, then launch them all.

A process child made by fork shares its parent's memory pages until one side
writes to one: every page the parent writes after a fork is copied first (a
page fault), and the copy left behind becomes private memory of the child.
Launching runnables one by one interleaves the parent's work for the next
runnable (checking it, cloning and probing it, filing its record) with the
forks, so each fork makes that work fault again and each child keeps the
pages it touched.  Here every runnable is checked, prepared and filed first,
and the launches (pipes, process object, fork) then follow one another with as
little in between as can be; the supervisor is woken once, after the last.

What one runnable that cannot start does is the same as one start after
another: the runnables before it are launched, the error propagates, and
nothing after it is started.  Ctrl-C before the launches leaves none started.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from puma._buffers.base import Buffer
from puma._runnable.runnable import Runnable
from puma._runner.resources import leave

if TYPE_CHECKING:
    from puma._environments.base import Environment
    from puma._runner.records import ChildRecord

__all__ = ["Filed", "admit", "start_batch", "unfile"]

R = TypeVar("R", bound=Runnable)


@dataclass(slots=True)
class Filed:
    """A runnable checked, prepared and filed, not launched yet."""

    record: ChildRecord
    child: Runnable  # what its environment runs (from Environment.prepare)
    joined: list[Buffer[Any]]  # the streams it joined as a publisher


def start_batch(runner: Any, runnables: Iterable[R], environment: Environment | None) -> list[R]:
    """Prepare every runnable, then launch them one after another; returns those launched, in order."""
    filed: list[Filed] = []
    launched: list[R] = []
    try:
        try:
            for runnable in runnables:
                filed.append(runner._file(runnable, environment))
        except Exception:
            _launch(runner, filed, launched)  # those before it start, as one by one they would have
            raise
        except BaseException:
            for each in reversed(filed):  # Ctrl-C before any launch: none is started
                unfile(runner, each)
            raise
        _launch(runner, filed, launched)
    finally:
        if launched:
            runner._ensure_supervisor().watch()  # once: each wake-up costs its loop
    return launched


def _launch(runner: Any, filed: list[Filed], launched: list[Any]) -> None:
    """Launch each filed runnable in order; one that fails takes back itself and those after it."""
    records: list[ChildRecord] = []
    try:
        for i, each in enumerate(filed):
            try:
                runner._launch_filed(each, False, False)
            except BaseException:
                for rest in reversed(filed[i + 1 :]):
                    unfile(runner, rest)
                raise
            records.append(each.record)
            launched.append(each.record.runnable)
    finally:
        if records:
            admit(runner, records)


def unfile(runner: Any, filed: Filed) -> None:
    """Take back the record of a runnable that was filed but will not be launched (as if never filed)."""
    record = filed.record
    record.start_claimed = False
    leave(filed.joined)
    with runner._cond:
        runner._records.remove(record)
        del runner._by_token[record.token]
        record.runnable._puma_record = None
        runner._cond.notify_all()


def admit(runner: Any, launched: list[ChildRecord]) -> None:
    """Stop what was just launched if the Runner is already stopping after a failure."""
    failed = [r for r in runner._records if r.error is not None]
    if not failed:
        return
    supervisor = runner._supervisor
    for record in launched:
        if not runner._policy.admits(record, runner._records, failed):
            runner._send_stop(record)
            if supervisor is not None:
                supervisor.call_soon(supervisor.close_unread_buffers)
