"""What a Runner does when one of its runnables fails: the failure policy, and who is downstream of whom.

A policy is an object the supervisor calls once per failure (an error raised
by the runnable, or its death).  Today's two policies:

* :class:`StopOthers` (``on_failure="stop"``, the default): stop every other
  runnable except those downstream of the failed one, which end by
  themselves when the error reaches them through their buffers;
* :class:`LeaveRunning` (``on_failure="continue"``): the others go on; the
  errors are still raised by ``join()`` and ``close()``.

Restart policies plug in here: the supervisor also tells the policy when a
runnable starts, ends and has ended, and lets it act on time (a restart's
back-off) through :meth:`FailurePolicy.due_in` and :meth:`FailurePolicy.tick`
(see :mod:`puma._runner.restarting`).
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any, Literal

from puma._runner.records import ChildRecord

__all__ = ["FailurePolicy", "LeaveRunning", "StopOthers", "downstream_of", "policy_for"]


def downstream_of(record: ChildRecord, records: Sequence[ChildRecord]) -> set[int]:
    """Tokens of the runnables that read, directly or not, what ``record`` publishes.

    A reader is a runnable subscribed to the buffer, or one holding the buffer
    without publishing to it (it will subscribe: it may not have yet).
    """
    by_token = {r.token: r for r in records}
    found: set[int] = set()
    frontier = [record]
    while frontier:
        current = frontier.pop()
        for out in current.runnable.outputs:
            readers = [r for r in records if id(out) in r.inputs]
            readers.extend(by_token[token] for token in out.supervision.readers() if token in by_token)
            for reader in readers:
                if reader.token not in found:
                    found.add(reader.token)
                    frontier.append(reader)
    return found


class FailurePolicy(abc.ABC):
    """Decides what happens to the other runnables when one fails or dies."""

    #: True if ``join()`` returns (raising) at the first failure instead of waiting for everything.
    stops_on_failure: bool = False

    @abc.abstractmethod
    def failed(self, record: ChildRecord, records: Sequence[ChildRecord], stop: Callable[[ChildRecord], None]) -> None:
        """``record`` failed; ``stop`` asks another runnable to stop (called from the supervisor)."""

    def admits(self, record: ChildRecord, records: Sequence[ChildRecord], failed: Sequence[ChildRecord]) -> bool:
        """Whether ``record``, started after the runnables ``failed`` failed, may run on."""
        return True

    # --- hooks for policies that restart (no-ops here) ---------------------------------------------
    def bind(self, runner: Any) -> FailurePolicy:
        """The policy a Runner uses (one with state of its own binds to one Runner)."""
        return self

    def starting(self, record: ChildRecord, child: Any) -> None:
        """``record`` is about to be launched, running ``child`` (the caller's thread)."""
        return None

    def died(self, record: ChildRecord, pid: int) -> None:
        """``record``'s process ``pid`` died without reporting its end (the supervisor, before it frees its locks)."""
        return None

    def ending(self, record: ChildRecord, error: BaseException | None, broken: bool = False) -> bool:
        """``record`` ends (``error``: how; ``broken``: it left an output broken); True if the policy takes the error.

        Called by the supervisor before it acts on the end.
        """
        return False

    def ended(self, record: ChildRecord) -> None:
        """``record`` has ended (the supervisor)."""
        return None

    def due_in(self) -> float | None:
        """Seconds until the policy must act again (:meth:`tick`); None: only when woken."""
        return None

    def tick(self) -> None:
        """Act on what is due (the supervisor, at each turn of its loop)."""
        return None

    def report(self) -> Any:
        """What the policy shows in a snapshot (None: nothing)."""
        return None


class StopOthers(FailurePolicy):
    """Stop every other runnable except those downstream of the failed one (the default)."""

    stops_on_failure = True

    def failed(self, record: ChildRecord, records: Sequence[ChildRecord], stop: Callable[[ChildRecord], None]) -> None:
        downstream = downstream_of(record, records)
        for other in list(records):
            if other is not record and other.token not in downstream:
                stop(other)

    def admits(self, record: ChildRecord, records: Sequence[ChildRecord], failed: Sequence[ChildRecord]) -> bool:
        # The Runner is stopping after a failure: only a reader of a failed runnable's output
        # runs on (to receive the error).
        return any(record.token in downstream_of(f, records) for f in failed if f is not record)

    def __repr__(self) -> str:
        return "StopOthers()"


class LeaveRunning(FailurePolicy):
    """Leave the others running; the errors are still raised."""

    def failed(self, record: ChildRecord, records: Sequence[ChildRecord], stop: Callable[[ChildRecord], None]) -> None:
        return None

    def __repr__(self) -> str:
        return "LeaveRunning()"


def policy_for(on_failure: Literal["stop", "continue"] | FailurePolicy) -> FailurePolicy:
    """The policy an ``on_failure`` argument names."""
    if isinstance(on_failure, FailurePolicy):
        return on_failure
    if on_failure == "stop":
        return StopOthers()
    if on_failure == "continue":
        return LeaveRunning()
    raise ValueError(f"on_failure must be 'stop' or 'continue', not {on_failure!r}")
