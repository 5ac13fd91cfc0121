"""Starting many runnables at once (``Runner.start_all``): prepare them all, then launch them all.

A process child made by fork shares its parent's memory pages until one side
writes to one: every page the parent writes after a fork is copied first (a
page fault), and the copy left behind becomes private memory of the child.
Launching runnables one by one interleaves the parent's work for the next
runnable (checking it, cloning and probing it, filing its record) with the
forks, so each fork makes that work fault again and each child keeps the
pages it touched.  Here every runnable is checked, prepared and filed first,
then every child's handle is made (its pipes, its process object, its log
listener's share), and the starts (the forks) then follow one another with
only the fork in between: what each start made known (the child's pid) is
written down after the last, and the supervisor is woken once.  A page the
parent writes between two forks is one more private page in every child; a
page it writes before the first or after the last stays shared among the
children.

What one runnable that cannot start does is the same as one start after
another: the runnables before it are launched, the error propagates, and
nothing after it is started.  Ctrl-C before the launches leaves none started;
a first Ctrl-C during the forks takes effect after the last, once every start
is accounted for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from puma._buffers.base import Buffer
from puma._core.signals import CtrlCDeferred
from puma._runnable.runnable import Runnable
from puma._runner.records import Lifecycle
from puma._runner.resources import leave

if TYPE_CHECKING:
    from puma._environments.base import ChildHandle, Environment
    from puma._runner.records import ChildRecord

__all__ = ["Filed", "admit", "make_handle", "start_batch", "start_handle", "unfile"]

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
    """Launch each filed runnable in order; one that fails takes back itself and those after it.

    Every handle (its pipes, its process object) is made first, then the
    children are started one after another: between two forks the parent runs
    only the start itself, so the pages the children share stay shared.
    """
    records: list[ChildRecord] = []
    try:
        if threading.current_thread() is not threading.main_thread() and any(
            each.record.environment.launch_needs_lasting_thread for each in filed
        ):
            _launch_one_by_one(runner, filed, launched, records)  # each through the supervisor's thread
        else:
            _launch_in_two_steps(runner, filed, launched, records)
    finally:
        if records:
            admit(runner, records)


def _launch_one_by_one(runner: Any, filed: list[Filed], launched: list[Any], records: list[ChildRecord]) -> None:
    for i, each in enumerate(filed):
        try:
            runner._launch_filed(each, False, False)
        except BaseException:
            for rest in reversed(filed[i + 1 :]):
                unfile(runner, rest)
            raise
        records.append(each.record)
        launched.append(each.record.runnable)


def _launch_in_two_steps(runner: Any, filed: list[Filed], launched: list[Any], records: list[ChildRecord]) -> None:
    made: list[tuple[Filed, ChildHandle]] = []
    failure: Exception | None = None
    try:
        for i, each in enumerate(filed):
            try:
                runner._policy.starting(each.record, each.child)
                made.append((each, make_handle(runner, each.record, each.child)))
            except Exception as exc:  # noqa: BLE001 - raised below, once those made before it start
                for rest in reversed(filed[i:]):
                    unfile(runner, rest)
                failure = exc
                break
    except BaseException:  # Ctrl-C before any start: none is started
        for each, handle in reversed(made):
            _discard(runner, each, handle)
        for rest in reversed(filed[len(made) :]):
            unfile(runner, rest)
        raise
    # The starts (the forks) first, one after another, then what each made known. A first
    # Ctrl-C takes effect after the loop, so every start is accounted for when it does.
    forked = 0
    with CtrlCDeferred():
        try:
            for _each, handle in made:
                handle.start()  # nothing else here: each object touched is a page in every child
                forked += 1
        except BaseException:
            failed = made[forked][0]  # (its handle took itself back)
            failed.record.handle = None
            unfile(runner, failed)
            for rest, rest_handle in reversed(made[forked + 1 :]):
                _discard(runner, rest, rest_handle)
            raise
        finally:
            for each, handle in made[:forked]:
                _started(each.record, handle)
                records.append(each.record)
                launched.append(each.record.runnable)
    if failure is not None:
        raise failure


def make_handle(runner: Any, record: ChildRecord, child: Runnable, claim: bool = False) -> ChildHandle:
    """Make and file ``child``'s handle (its pipes, its process object), without starting it."""
    handle = record.environment.launch(child, record.token, lambda m: runner._deliver(record, m), runner._watch)
    record.handle = handle
    record.start_claimed = claim and handle.claimable
    record.move_to(Lifecycle.STARTING)  # before the start: a thread child may report STARTED at once
    return handle


def start_handle(record: ChildRecord, handle: ChildHandle) -> None:
    """Start the child of a handle made by :func:`make_handle`; the supervisor may watch it from then on."""
    _start(record, handle)
    _started(record, handle)


def _start(record: ChildRecord, handle: ChildHandle) -> None:
    try:
        handle.start()
    except BaseException:
        record.handle = None
        raise


def _started(record: ChildRecord, handle: ChildHandle) -> None:
    handle.started()
    record.pid = handle.pid
    record.launched = True


def _discard(runner: Any, filed: Filed, handle: ChildHandle) -> None:
    """Take back a runnable whose handle was made but never started."""
    filed.record.handle = None
    handle.close()
    unfile(runner, filed)


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
