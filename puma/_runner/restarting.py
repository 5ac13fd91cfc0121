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

from collections.abc import Callable
from typing import Any

from puma._core.errors import PumaError
from puma._runnable.runnable import Runnable
from puma._runner.records import ChildRecord, Lifecycle
from puma._runner.resources import join_outputs

__all__ = ["launch", "replace"]


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


def launch(runner: Any, record: ChildRecord, stash: dict[str, Any], join: bool) -> None:
    """Start the waiting incarnation ``record``; ``join``: it joins its outputs' streams as a publisher."""
    child = record.environment.prepare(record.runnable)
    child._puma_keeps_outputs = True  # type: ignore[attr-defined]
    if stash:
        child._puma_stash = stash  # type: ignore[attr-defined]
    if join:
        join_outputs(record.runnable)
    record.move_to(Lifecycle.LAUNCHING)
    runner._launch_now(record, child)
    supervisor = runner._supervisor
    if supervisor is not None:
        supervisor.rewatch = True
    runner._notify()
