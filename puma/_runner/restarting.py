"""How a crashed runnable comes back: a new incarnation in the old one's place, its inputs handed back.

The restart policy (:mod:`puma._runner.restart_policy`) decides; this module
does, in the supervisor thread:

* :func:`replace`: when the old incarnation has ended, a new
  :class:`~puma._runner.records.ChildRecord` takes its place (same token, so
  its buffers know it as the same reader; same place in start order, which is
  pipeline order), in state ``RESTARTING`` while it waits out its back-off.
  ``join()`` waits for it as for any runnable not ended;
* :func:`launch`: the runnable is prepared again exactly as on a first start
  (``environment.prepare``: a fresh clone, scoped attributes applied anew),
  given what the old incarnation held of its inputs (the *stash*, received
  first), joins its outputs again if the old one left them (an error or a
  stop: it completed them itself; a death leaves its place to the new one),
  and is launched.

The outputs stay open throughout: the policy holds each stream open
(:meth:`~puma.Buffer.hold_open`) from the first start until the runnable
ends for good.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from puma._buffers.base import Buffer
from puma._buffers.journal import journal_dir, journal_path, remove
from puma._core.errors import PumaError
from puma._runnable.runnable import Runnable
from puma._runner.records import ChildRecord, Lifecycle, buffers_held_by
from puma._runner.resources import join_outputs, leave
from puma._runner.supervisor import KILL_GRACE

__all__ = ["end_overdue", "finish_reads", "forget_journals", "journals_of", "launch", "recovered", "replace"]

_incarnations = itertools.count(1)
log = logging.getLogger("puma.supervision")


def replace(runner: Any, old: ChildRecord, factory: Callable[[], Runnable] | None) -> ChildRecord:
    """Put a new incarnation of ``old`` (ended) in its place, waiting to start; return its record."""
    runnable = old.runnable
    if factory is not None:
        made = factory()
        if not isinstance(made, Runnable) or made.name != old.name:
            raise PumaError(f"the factory of runnable {old.name!r} must make a puma.Runnable called {old.name!r}")
        if [id(b) for b in made.outputs] != [id(b) for b in old.runnable.outputs]:
            raise PumaError(f"the factory of runnable {old.name!r} must make one with the same outputs")
        runnable = made
    new = ChildRecord(runnable, old.environment, old.token, runner)
    new.state = Lifecycle.RESTARTING
    new.incarnation = old.incarnation + 1
    with runner._cond:
        index = next(i for i, r in enumerate(runner._records) if r is old)
        runner._records[index] = new
        runner._by_token[old.token] = new
        old.runnable._puma_record = new  # the caller's object answers for the new incarnation
        runnable._puma_record = new
        runner._cond.notify_all()
    return new


def journals_of(record: ChildRecord) -> str:
    """A new prefix for the journals of ``record``'s incarnation about to start (unique on this machine)."""
    return os.path.join(journal_dir(), f"puma-journal-{os.getpid()}-{record.token}-{next(_incarnations)}")


def _inputs(record: ChildRecord) -> dict[str, Buffer[Any]]:
    outputs = {id(out) for out in record.runnable.outputs}
    return {b.supervision.key: b for b in buffers_held_by(record.runnable) if id(b) not in outputs}


def recovered(record: ChildRecord, journals: str, given: dict[str, Any]) -> dict[str, Any]:
    """What ``record``'s incarnation held of its inputs when it died, from its journals and the stash it was given.

    In the form the incarnation would have reported it: per buffer key, the
    values in flight (each with: was it a redelivery?) and those not handed out.
    """
    out: dict[str, Any] = {}
    for key, buffer in _inputs(record).items():
        redeliver, rest = given.get(key, ([], []))
        pending = [(v, True) for v in redeliver] + [(v, False) for v in rest]
        found = buffer.supervision.recover(journal_path(journals, key))
        if found is None:  # it kept no journal (it never subscribed): the whole stash goes back
            in_flight: list[Any] = []
            kept = [v for v, _ in pending]
        else:
            done, taken, held, ahead = found
            in_flight = [*pending[done:taken], *((v, False) for v in held)]
            kept = [*(v for v, _ in pending[taken:]), *ahead]
        if in_flight or kept:
            out[key] = (in_flight, kept)
    return out


def finish_reads(record: ChildRecord, journals: str, pid: int) -> None:
    """``record``'s process ``pid`` died: finish the values it was in the middle of reading, from its journals.

    One that cannot be finished leaves its buffer broken: said in the log
    (its readers end with a :class:`~puma.BufferClosedError`).
    """
    for key, buffer in _inputs(record).items():
        if not buffer.supervision.finish_read(journal_path(journals, key), pid):
            log.error(
                "runnable %r (pid %d) died in the middle of reading a value from buffer %r and the rest of that "
                "value cannot be read for it: the stream is broken for its readers",
                record.name,
                pid,
                buffer.name,
            )


def end_overdue(runner: Any, act: bool) -> float | None:
    """End from outside a process stopped to be restarted that outlived its stop timeout; seconds until the next is due.

    What an Erlang/OTP supervisor does with a child that does not stop
    within its shutdown time: it is terminated (``SIGTERM``), then killed
    after a grace; that end is a :class:`~puma.StuckRunnableError`, and it is
    restarted with the others (the value it held is given again: not its
    fault).  A thread cannot be ended from outside: left to the Runner's
    ``join`` and close, as without a policy.  ``act``: False only says when.
    """
    now = time.monotonic()
    soonest: float | None = None
    for record in list(runner._records):
        handle = record.handle
        if not record.restart_pending or record.ended or record.stop_sent_at is None or record.killed:
            continue
        if handle is None or handle.kind == "thread":
            continue
        due = record.stop_sent_at + runner._stop_timeout + (KILL_GRACE if record.stuck else 0.0)
        if due > now or not act:
            soonest = max(due - now, 0.0) if soonest is None else min(soonest, max(due - now, 0.0))
        elif not record.stuck:
            log.warning(
                "runnable %r did not stop within %s s to be restarted: terminated, then killed if need be",
                record.name,
                runner._stop_timeout,
            )
            record.stuck = True
            record.stop_sent_at = now - runner._stop_timeout  # the kill is due a grace from now
            handle.terminate()
            soonest = KILL_GRACE if soonest is None else min(soonest, KILL_GRACE)
        else:
            record.killed = True
            handle.kill()
    return soonest


def forget_journals(record: ChildRecord, journals: str) -> None:
    """Remove what journals of ``record``'s incarnation are left (one killed before it could)."""
    for key, buffer in _inputs(record).items():
        path = journal_path(journals, key)
        remove(path)
        buffer.supervision.forget(path)  # what was kept to recover it (large values' shared memory)


def launch(runner: Any, record: ChildRecord, stash: dict[str, Any], join: bool, journals: str) -> None:
    """Start the waiting incarnation ``record``; ``join``: it joins its outputs' streams as a publisher."""
    child = record.environment.prepare(record.runnable)
    child._puma_keeps_outputs = True  # type: ignore[attr-defined]
    child._puma_journals = journals  # type: ignore[attr-defined]
    if stash:
        child._puma_stash = stash  # type: ignore[attr-defined]
    joined = join_outputs(record.runnable) if join else []
    record.move_to(Lifecycle.LAUNCHING)
    try:
        runner._launch_now(record, child)
    except BaseException:
        leave(joined)
        raise
    supervisor = runner._supervisor
    if supervisor is not None:
        supervisor.rewatch = True
    runner._notify()
