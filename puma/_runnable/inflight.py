"""A restartable runnable's inputs, on the child's side: what it holds when it ends, and what it is given back.

A runnable its Runner may restart (see :class:`puma.RestartPolicy`) runs with
an :class:`InputLedger`.  Every subscription it makes is followed:

* the value (or the values of one ``receive_many``) it received last and has
  not come back for: the value *in flight*, which its error concerns;
* the values the subscription read from the buffer ahead of what it handed
  out (a process buffer reads in bulk).

When ``execute`` ends (an error, a stop, or a clean end) the ledger reports
both to the parent (:func:`report`), which hands them to the next
incarnation: it receives them first, in order, before anything still in the
buffer (:attr:`InputLedger.stash`).  So a restart loses and duplicates
nothing that was queued.  A process killed outright (``SIGKILL``) reports
nothing itself: its process buffers' readers keep a journal
(:mod:`puma._buffers.journal`) that the parent reads instead.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from puma._buffers.journal import Journal, journal_path

__all__ = ["LEFTOVERS", "InputLedger"]

LEFTOVERS = "_puma.leftovers"  #: the status key the report travels under


class _Input:
    """One followed subscription."""

    __slots__ = ("in_flight", "journal", "pending", "subscription")

    def __init__(self, subscription: Any, redeliver: list[Any], rest: list[Any]) -> None:
        self.subscription = subscription
        self.pending: deque[tuple[Any, bool]] = deque((v, True) for v in redeliver)
        self.pending.extend((v, False) for v in rest)
        self.in_flight: list[tuple[Any, bool]] = []
        self.journal: Journal | None = None


class InputLedger:
    """Follows the inputs of one incarnation of a restartable runnable."""

    def __init__(self, stash: dict[str, tuple[list[Any], list[Any]]] | None, journals: str | None = None) -> None:
        self.stash = dict(stash or {})  # buffer key -> (values redelivered, values handed back)
        self.inputs: list[tuple[str, _Input]] = []
        self.journals = journals  # the prefix of this incarnation's journals (None: keep none)

    def follow(self, subscription: Any) -> None:
        """``subscription`` was made in the runnable: follow it (its buffer's stash comes first)."""
        key = subscription.buffer.supervision.key
        redeliver, rest = self.stash.pop(key, ([], []))
        first = all(k != key for k, _ in self.inputs)
        state = _Input(subscription, redeliver, rest)  # a second subscription to one buffer gets no stash
        self.inputs.append((key, state))
        journal = None
        if first and self.journals is not None and hasattr(subscription, "_journal"):
            journal = state.journal = subscription._journal = Journal(journal_path(self.journals, key))
        given = 0
        receive = subscription.receive
        receive_many = subscription.receive_many
        ready = subscription.ready
        pending = state.pending

        def receive_followed(timeout: float | None = None) -> Any:
            nonlocal given
            state.in_flight = []
            if journal is not None:
                journal.done()
            if pending:
                entry = pending.popleft()
                state.in_flight = [entry]
                if journal is not None:
                    given += 1
                    journal.stash_taken(given)
                return entry[0]
            value = receive(timeout)
            state.in_flight = [(value, False)]
            return value

        def receive_many_followed(max_items: int, timeout: float | None = None) -> list[Any]:
            nonlocal given
            if journal is not None:
                journal.done()
            if pending:
                if max_items < 1:
                    raise ValueError(f"max_items must be at least 1, got {max_items}")
                entries = [pending.popleft() for _ in range(min(max_items, len(pending)))]
                state.in_flight = entries
                if journal is not None:
                    given += len(entries)
                    journal.stash_taken(given)
                return [v for v, _ in entries]
            state.in_flight = []
            values: list[Any] = receive_many(max_items, timeout)
            state.in_flight = [(v, False) for v in values]
            return values

        def ready_followed() -> bool:
            return bool(pending) or ready()

        subscription.receive = receive_followed
        subscription.receive_many = receive_many_followed
        subscription.ready = ready_followed

    def report(self) -> dict[str, tuple[list[tuple[Any, bool]], list[Any]]]:
        """Per buffer key: the values in flight (each with: was it a redelivery?) and those not handed out."""
        out: dict[str, tuple[list[tuple[Any, bool]], list[Any]]] = {}
        for key, (redeliver, rest) in self.stash.items():  # never subscribed this time: all goes back
            out[key] = ([], [*redeliver, *rest])
        for key, state in self.inputs:
            rest = [v for v, _ in state.pending]
            try:
                rest.extend(state.subscription._leftovers())
            except Exception:  # noqa: BLE001, S110 - a buffer already released keeps nothing
                pass
            in_flight, before = out.get(key, ([], []))
            if state.in_flight or rest or before:
                out[key] = ([*in_flight, *state.in_flight], [*before, *rest])
        return out

    def close(self) -> None:
        """This incarnation reported what it held: its journals are not needed any more."""
        for _key, state in self.inputs:
            if state.journal is not None:
                state.subscription._journal = None
                state.journal.close()
                state.journal = None
