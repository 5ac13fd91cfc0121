"""The restart policy: a Runner that restarts what crashed, as an Erlang/OTP supervisor does, with back-off.

:class:`RestartPolicy` is a :class:`~puma._runner.policy.FailurePolicy`
(``Runner(on_failure=RestartPolicy(...))``).  It decides, at each end of a
runnable, whether it comes back (its kind, the error, the intensity
window), how long it waits first (back-off with jitter, reset after a healthy
run), and which others restart with it (the strategy).  The mechanics of a
restart (a new incarnation in the old one's place, its inputs handed back,
its outputs kept open) are in :mod:`puma._runner.restarting`.
"""

from __future__ import annotations

import enum
import logging
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from puma._buffers.base import StreamHold
from puma._core.condition import Condition
from puma._core.errors import ChildDiedError, PumaError, StuckRunnableError
from puma._core.waiting import Deadline
from puma._runnable.inflight import LEFTOVERS
from puma._runnable.runnable import Runnable
from puma._runner import restarting as _restarting
from puma._runner.policy import FailurePolicy, StopOthers, downstream_of
from puma._runner.records import ChildRecord, Lifecycle, buffers_held_by

__all__ = ["Crash", "DeadLetter", "Restart", "RestartPolicy", "RestartStatistics", "TooManyRestartsError"]

log = logging.getLogger("puma.supervision")

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Decision = Literal["restart", "stop", "continue"]
_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")
_DECISIONS = ("restart", "stop", "continue")


class Restart(enum.StrEnum):
    """When a runnable is restarted (Erlang/OTP's restart types)."""

    PERMANENT = "permanent"  #: always, even after a clean end
    TRANSIENT = "transient"  #: after an error or a death only (the default)
    TEMPORARY = "temporary"  #: never; its failure is reported as without a restart policy


@dataclass(frozen=True)
class Crash:
    """One end of a runnable that the restart policy acted on.

    Attributes:
        runnable: its name.
        incarnation: 0 for the first start, 1 after one restart, ...
        pid: the process it ran in.
        error: what it raised or how it died (:class:`~puma.ChildDiedError`); None for a clean end.
        action: ``"restart"``, ``"stop"`` (the others stopped), ``"continue"`` (not restarted,
            the others go on) or ``"escalate"`` (too many restarts: everything stopped).
        delay: seconds waited before the restart (the back-off).
        at: when (``time.time()``).
        cause: the cause in words when there is no error (``"restarts with 'middle'"``: a group strategy).
    """

    runnable: str
    incarnation: int
    pid: int | None
    error: BaseException | None
    action: str
    delay: float
    at: float
    cause: str = ""

    def __str__(self) -> str:
        cause = f"{type(self.error).__name__}: {self.error}" if self.error is not None else self.cause or "ended"
        then = f" in {self.delay:.3f} s" if self.action == "restart" else ""
        return f"{self.runnable!r} #{self.incarnation} (pid {self.pid}): {cause} -> {self.action}{then}"


@dataclass(frozen=True)
class DeadLetter:
    """A value a runnable was processing when it crashed, and was not given again.

    Attributes:
        runnable: the runnable's name.
        buffer: the name of the buffer the value came from.
        value: the value.
        error: the crash's error.
        at: when (``time.time()``).
    """

    runnable: str
    buffer: str
    value: Any
    error: BaseException
    at: float


@dataclass(frozen=True)
class RestartStatistics:
    """What a restart policy has done so far; ``str()`` gives a one-line summary.

    Attributes:
        restarts: restarts made (or scheduled).
        by_runnable: restarts per runnable name.
        crashes: every end the policy acted on, oldest first.
        dead_letters: the values that were in flight at a crash and were not given again.
        redelivered: values given again to the next incarnation (``redeliver=True``).
        escalated: the policy gave up (too many restarts) and stopped everything.
    """

    restarts: int
    by_runnable: dict[str, int] = field(default_factory=dict)
    crashes: tuple[Crash, ...] = ()
    dead_letters: tuple[DeadLetter, ...] = ()
    redelivered: int = 0
    escalated: bool = False

    def __str__(self) -> str:
        per = ", ".join(f"{name!r}: {n}" for name, n in sorted(self.by_runnable.items())) or "none"
        last = f"; last: {self.crashes[-1]}" if self.crashes else ""
        gave_up = "; gave up (too many restarts)" if self.escalated else ""
        return (
            f"restarts: {self.restarts} ({per}), dead letters: {len(self.dead_letters)}, "
            f"redelivered: {self.redelivered}{gave_up}{last}"
        )


class TooManyRestartsError(PumaError):
    """More restarts than the policy's intensity allows: everything was stopped.

    Attributes:
        crashes: the crash history (:class:`Crash`), oldest first.
    """

    def __init__(self, message: str, crashes: Sequence[Crash] = ()) -> None:
        super().__init__(message)
        self.crashes = tuple(crashes)

    def __reduce__(self) -> Any:
        return (type(self), (str(self), self.crashes))


class RestartPolicy(FailurePolicy):
    """Restart a runnable that fails or dies, as an Erlang/OTP supervisor does, with back-off.

    Pass it as ``Runner(env, on_failure=RestartPolicy(...))``; without it a Runner
    stops everything at the first failure (``on_failure="stop"``, the default).
    One policy object serves one Runner, and keeps its statistics
    (:meth:`statistics`, also in :meth:`puma.Runner.snapshot`).

    A restarted runnable is a fresh object: the original the Runner was given
    is prepared again exactly as on its first start (a new clone, scoped
    attributes applied anew, a new process), or ``factories[name]()`` is called
    for one.  It receives first what the crashed incarnation held of its inputs
    (nothing queued is lost or duplicated), then what is still in its buffers;
    its outputs stay open meanwhile, so readers see no end of stream.  The
    value it was processing at the crash goes to :attr:`dead_letters` with the
    error, or, with ``redeliver=True``, is given once more (at-least-once).
    This holds for a process killed outright (``SIGKILL``) too: its readers
    keep a journal the Runner reads after the death, whatever the values
    (see docs/supervision.md for the limits).

    Args:
        strategy: who restarts with the failed runnable: ``"one_for_one"`` (only it),
            ``"one_for_all"`` (every runnable), ``"rest_for_one"`` (it and those
            downstream of it, in pipeline order).
        restart: the default kind (:class:`Restart`): ``"transient"``.
        kinds: a kind per runnable name, overriding ``restart``.
        max_restarts: at most this many restarts within ``period`` seconds; one
            more and the policy escalates: it stops everything and the Runner
            raises :class:`TooManyRestartsError` with the crash history.
        period: see ``max_restarts``.
        backoff: ``(first, most)`` seconds: the first restart of a runnable is
            immediate, the next waits ``first``, doubling up to ``most``.
        jitter: up to this fraction is added to each wait at random (0.2: +20 %).
        reset_after: a runnable that ran this long since its last start is
            restarted at once again (its back-off starts over).
        on_error: a decision per exception class, the most specific first:
            ``"restart"`` (the default), ``"stop"`` (stop the others, as without
            a policy) or ``"continue"`` (not restarted, the others go on).
            A death is a :class:`~puma.ChildDiedError`.
        redeliver: give the value in flight at a crash once more (at-least-once)
            instead of listing it as a dead letter.
        factories: per runnable name, a function making its next incarnation
            (same name, same outputs).
    """

    def __init__(
        self,
        strategy: Strategy = "one_for_one",
        *,
        restart: Restart | str = Restart.TRANSIENT,
        kinds: Mapping[str, Restart | str] | None = None,
        max_restarts: int = 3,
        period: float = 10.0,
        backoff: tuple[float, float] = (0.1, 10.0),
        jitter: float = 0.2,
        reset_after: float = 30.0,
        on_error: Mapping[type[BaseException], Decision] | None = None,
        redeliver: bool = False,
        factories: Mapping[str, Callable[[], Runnable]] | None = None,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(_STRATEGIES)}, not {strategy!r}")
        if max_restarts < 0 or period <= 0 or reset_after <= 0:
            raise ValueError("max_restarts must be >= 0, period and reset_after positive")
        if len(backoff) != 2 or not 0 <= backoff[0] <= backoff[1]:
            raise ValueError(f"backoff must be (first, most) with 0 <= first <= most, not {backoff!r}")
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {jitter!r}")
        for kind, action in (on_error or {}).items():
            if not (isinstance(kind, type) and issubclass(kind, BaseException)) or action not in _DECISIONS:
                raise ValueError(f"on_error maps exception classes to {_DECISIONS}, not {kind!r}: {action!r}")
        self.strategy = strategy
        self.restart = Restart(restart)
        self.kinds = {name: Restart(kind) for name, kind in (kinds or {}).items()}
        self.max_restarts = max_restarts
        self.period = period
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.jitter = jitter
        self.reset_after = reset_after
        self.on_error = dict(on_error or {})
        self.redeliver = redeliver
        self.factories = dict(factories or {})
        self._runner: Any = None
        self._lock = self._changed = Condition()  # a Ctrl-C in a wait cannot leave it locked
        self._settled = 0  # crashes whose consequence is in place (see wait_crashes)
        self._unsettled: dict[int, int] = {}  # token -> restarts noted, its new incarnation not in place yet
        self._crashes: list[Crash] = []
        self._dead: list[DeadLetter] = []
        self._redelivered = 0
        self._by_name: Counter[str] = Counter()
        self._window: deque[float] = deque()  # when the restarts within the period were made
        self._streak: dict[int, int] = {}  # restarts in a row per token (the back-off's exponent)
        self._started_at: dict[int, float] = {}
        self._holds: dict[int, list[StreamHold]] = {}  # the outputs kept open per token
        self._stash: dict[int, dict[str, tuple[list[Any], list[Any]]]] = {}
        self._delay: dict[int, float] = {}
        self._due: dict[int, float] = {}  # token -> when the waiting incarnation starts
        self._owes: dict[int, bool] = {}  # token -> the waiting incarnation inherits its publishers
        self._told: dict[int, BaseException] = {}  # not restarted: tell its readers this when it has ended
        self._decisions: dict[int, str] = {}
        self._journals: dict[int, str] = {}  # token -> the journals' prefix of its running incarnation
        self._given: dict[int, dict[str, tuple[list[Any], list[Any]]]] = {}  # token -> the stash it was given
        self._stopping_all = False
        self._escalated = False

    def __repr__(self) -> str:
        return f"RestartPolicy({self.strategy!r}, restart={self.restart.value!r}, max_restarts={self.max_restarts})"

    # --- what users read ------------------------------------------------------------------------
    @property
    def dead_letters(self) -> tuple[DeadLetter, ...]:
        """The values in flight at a crash that were not given again, oldest first."""
        with self._lock:
            return tuple(self._dead)

    @property
    def crashes(self) -> tuple[Crash, ...]:
        """Every end the policy acted on, oldest first."""
        with self._lock:
            return tuple(self._crashes)

    def statistics(self) -> RestartStatistics:
        """What the policy has done so far (safe from any thread)."""
        with self._lock:
            return RestartStatistics(
                sum(self._by_name.values()),
                dict(self._by_name),
                tuple(self._crashes),
                tuple(self._dead),
                self._redelivered,
                self._escalated,
            )

    def wait_crashes(self, count: int, timeout: float | None = None) -> RestartStatistics:
        """Wait until the policy has acted on ``count`` crashes in all; its statistics then.

        A crash is acted on once its consequence is in place: for a restart, the
        new incarnation has taken the old one's place (it may still wait out its
        back-off).

        Raises:
            TimeoutError: fewer within ``timeout`` seconds.
        """
        deadline = Deadline(timeout)
        with self._changed:
            while self._settled < count:
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"{self._settled} crashes acted on within {timeout} s, not {count}")
                self._changed.wait(remaining)
        return self.statistics()

    def kind_of(self, name: str) -> Restart:
        """The restart kind of the runnable called ``name``."""
        return self.kinds.get(name, self.restart)

    def decision_for(self, error: BaseException) -> Decision:
        """What ``on_error`` says for ``error`` (the most specific class wins); ``"restart"`` if nothing."""
        for cls in type(error).__mro__:
            if cls in self.on_error:
                return self.on_error[cls]
        return "restart"

    # --- FailurePolicy ----------------------------------------------------------------------------
    @property
    def stops_on_failure(self) -> bool:  # type: ignore[override]
        return self._stopping_all or self._escalated

    def bind(self, runner: Any) -> FailurePolicy:
        if self._runner is not None and self._runner is not runner:
            raise PumaError(
                "a RestartPolicy serves one Runner (it keeps that Runner's statistics): make one per Runner"
            )
        self._runner = runner
        return self

    def report(self) -> Any:
        return self.statistics()

    def failed(self, record: ChildRecord, records: Sequence[ChildRecord], stop: Callable[[ChildRecord], None]) -> None:
        decision = self._decisions.pop(record.token, "stop")
        if self._escalated or decision == "continue":
            return
        self._stopping_all = True
        StopOthers().failed(record, records, stop)

    def admits(self, record: ChildRecord, records: Sequence[ChildRecord], failed: Sequence[ChildRecord]) -> bool:
        if self._escalated:
            return False
        return not self._stopping_all or StopOthers().admits(record, records, failed)

    def starting(self, record: ChildRecord, child: Any) -> None:
        if self.kind_of(record.name) is Restart.TEMPORARY:
            return  # never restarted: it runs as without a policy
        child._puma_keeps_outputs = True
        child._puma_journals = self._journals[record.token] = _restarting.journals_of(record)
        self._holds[record.token] = [out.hold_open() for out in record.runnable.outputs]
        self._started_at[record.token] = time.monotonic()

    def died(self, record: ChildRecord, pid: int) -> None:
        if record.token in self._journals:
            _restarting.finish_reads(record, self._journals[record.token], pid)

    def ending(self, record: ChildRecord, error: BaseException | None, broken: bool = False) -> bool:
        token = record.token
        runner = self._runner
        if token not in self._holds:
            return False  # temporary
        leftovers = record.statuses.pop(LEFTOVERS, None)
        if leftovers is None and isinstance(error, ChildDiedError | StuckRunnableError):  # it could not report
            leftovers = _restarting.recovered(record, self._journals.get(token, ""), self._given.get(token, {}))
        leftovers = leftovers or {}
        if record.restart_pending:  # stopped to restart with another (or a second report of one end)
            self._keep(record, error, leftovers)
            return True
        if runner._closed or self._escalated or self._stopping_all or record.stop_sent:
            self._give_back_lost(record, error, leftovers)
            self._told_if(record, error)
            return False
        kind = self.kind_of(record.name)
        if error is None:
            if kind is not Restart.PERMANENT or record.stopped:
                return False
            decision: str = "restart"
        elif isinstance(error, StuckRunnableError) or not record.has_started:
            decision = "stop"
        else:
            decision = "stop" if broken else self.decision_for(error)
        if decision != "restart":
            self._decisions[token] = decision
            self._note(record, error, decision, 0.0)
            self._give_back_lost(record, error, leftovers)
            self._told_if(record, error)
            return False
        now = time.monotonic()
        while self._window and now - self._window[0] > self.period:
            self._window.popleft()
        if len(self._window) >= self.max_restarts:
            self._note(record, error, "escalate", 0.0)
            self._give_back_lost(record, error, leftovers)
            self._escalate(record, error)
            return True
        self._window.append(now)
        streak = self._streak.get(token, 0)
        if now - self._started_at.get(token, now) >= self.reset_after:
            streak = 0
        delay = self._wait(streak)
        self._streak[token] = streak + 1
        record.restart_pending = True
        self._keep(record, error, leftovers)
        self._delay[token] = delay
        self._note(record, error, "restart", delay)
        self._restart_with(record, delay)
        return True

    def ended(self, record: ChildRecord) -> None:
        token = record.token
        if token not in self._holds:
            return
        if token in self._journals:
            _restarting.forget_journals(record, self._journals.pop(token))
        self._given.pop(token, None)
        completed_itself = record.finished_at is not None  # it reported its end: it left its streams
        if record.restart_pending and not (self._runner._closed or self._escalated):
            try:
                _restarting.replace(self._runner, record, self.factories.get(record.name))
            except Exception as exc:  # noqa: BLE001 - a factory that fails: reported as the runnable's error
                self._owes[token] = not completed_itself
                self._give_up(record, exc)
                return
            self._owes[token] = not completed_itself
            self._due[token] = time.monotonic() + self._delay.pop(token, 0.0)
            self._settle(token)
            return
        if record.restart_pending:  # the Runner closes, or the policy gave up: no new incarnation
            self._owes[token] = not completed_itself
            self._give_up(record, None)
            return
        self._let_go(token, self._told.pop(token, None))

    def due_in(self) -> float | None:
        now = time.monotonic()
        waits = [max(0.0, due - now) for due in self._due.values()]
        stop = _restarting.end_overdue(self._runner, act=False)  # a stop for a restart that outlives its timeout
        return min([*waits, stop] if stop is not None else waits, default=None)

    def tick(self) -> None:
        _restarting.end_overdue(self._runner, act=True)
        if not self._due:
            return
        runner = self._runner
        now = time.monotonic()
        for record in list(runner._records):
            due = self._due.get(record.token)
            if due is None or record.state is not Lifecycle.RESTARTING:
                continue
            if runner._closed or self._escalated or record.stop_wanted:
                self._give_up(record, None)
            elif due <= now:
                del self._due[record.token]
                stash = self._stash.pop(record.token, {})
                self._given[record.token] = stash
                journals = self._journals[record.token] = _restarting.journals_of(record)
                owes = self._owes.pop(record.token, False)  # the dead one's place in its streams is taken over
                try:
                    _restarting.launch(runner, record, stash, not owes, journals)
                except Exception as exc:  # noqa: BLE001 - it cannot start again: reported as its error
                    record.move_to(Lifecycle.ENDED)
                    self._owes[record.token] = owes
                    self._give_up(record, exc)
                    continue
                self._started_at[record.token] = time.monotonic()

    # --- internals --------------------------------------------------------------------------------
    def _wait(self, streak: int) -> float:
        if streak == 0:
            return 0.0
        first, most = self.backoff
        wait: float = min(most, first * 2.0 ** (streak - 1))
        return wait * (1 + self.jitter * random.random())  # noqa: S311

    def _restart_with(self, record: ChildRecord, delay: float) -> None:
        """The strategy: stop the others that restart with ``record`` (they come back when they have ended)."""
        runner = self._runner
        records = list(runner._records)
        if self.strategy == "one_for_all":
            group = {r.token for r in records}
        elif self.strategy == "rest_for_one":
            group = downstream_of(record, records)
        else:
            return
        for other in records:
            skip = other is record or other.token not in group or other.token not in self._holds
            if skip or other.ended or other.restart_pending:
                continue
            other.restart_pending = True
            self._delay[other.token] = delay
            self._note(other, None, "restart", delay, f"restarts with {record.name!r}")
            runner._send_stop(other)

    def _keep(self, record: ChildRecord, error: BaseException | None, leftovers: dict[str, Any]) -> None:
        """What the ending incarnation held of its inputs goes to the next one (or to the dead letters)."""
        stash = self._stash.setdefault(record.token, {})
        for key, (in_flight, rest) in leftovers.items():
            again: list[Any] = []
            for value, redelivered in in_flight:
                if error is None or isinstance(error, StuckRunnableError):
                    again.append(value)  # it was stopped: the value was not its fault
                elif self.redeliver and not redelivered:
                    again.append(value)
                    with self._lock:
                        self._redelivered += 1
                else:
                    self._dead_letter(record, key, value, error)
            before_again, before_rest = stash.get(key, ([], []))
            stash[key] = ([*before_again, *again], [*before_rest, *rest])

    def _give_back_lost(self, record: ChildRecord, error: BaseException | None, leftovers: dict[str, Any]) -> None:
        """Not restarted: the values in flight are dead letters (the rest ends with it)."""
        if error is None:
            return
        for key, (in_flight, _rest) in leftovers.items():
            for value, _again in in_flight:
                self._dead_letter(record, key, value, error)

    def _dead_letter(self, record: ChildRecord, key: str, value: Any, error: BaseException) -> None:
        name = next((b.name for b in buffers_held_by(record.runnable) if b.supervision.key == key), key)
        with self._lock:
            self._dead.append(DeadLetter(record.name, name, value, error, time.time()))
        # The log keeps strings only: a record must not keep the value, the error or its frames alive.
        log.warning(
            "runnable %r: value %s from buffer %r is a dead letter (%s)", record.name, repr(value), name, str(error)
        )

    def _told_if(self, record: ChildRecord, error: BaseException | None) -> None:
        if error is not None and not isinstance(error, ChildDiedError | StuckRunnableError):
            self._told[record.token] = error

    def _note(
        self, record: ChildRecord, error: BaseException | None, action: str, delay: float, cause: str = ""
    ) -> None:
        crash = Crash(record.name, record.incarnation, record.pid, error, action, delay, time.time(), cause)
        with self._changed:
            self._crashes.append(crash)
            if action == "restart":
                self._by_name[record.name] += 1
                self._unsettled[record.token] = self._unsettled.get(record.token, 0) + 1
            else:
                self._settled += 1
            self._changed.notify_all()
        if action == "restart":
            window = (len(self._window), self.max_restarts, self.period)
            log.warning("runnable %s; restart %d of at most %d within %s s", str(crash), *window)
        else:
            log.error("runnable %s", str(crash))

    def _escalate(self, record: ChildRecord, crash: BaseException | None) -> None:
        """Too many restarts: stop everything; the Runner raises :class:`TooManyRestartsError`."""
        runner = self._runner
        self._escalated = True
        history = self.crashes
        lines = "\n".join(f"  {c}" for c in history)
        error = TooManyRestartsError(
            f"more than {self.max_restarts} restarts within {self.period} s; everything was stopped. Crashes:\n{lines}",
            history,
        )
        if crash is None or not isinstance(crash, ChildDiedError | StuckRunnableError):
            self._told[record.token] = error  # its streams end with it (a death's carry the death)
        runner._add_error(record, error)
        for other in list(runner._records):
            if other is not record:
                runner._send_stop(other)
        supervisor = runner._supervisor
        if supervisor is not None:
            supervisor.call_soon(supervisor.close_unread_buffers)

    def _give_up(self, record: ChildRecord, error: BaseException | None) -> None:
        """No new incarnation after all (the Runner closes, the policy gave up, it cannot be made)."""
        runner = self._runner
        token = record.token
        self._settle(token)
        self._due.pop(token, None)
        self._stash.pop(token, None)
        # It cannot come back: as a failure without a policy, the others stop.
        if error is not None and runner._add_error(record, error) and not self._escalated:
            self._stopping_all = True
            StopOthers().failed(record, list(runner._records), runner._send_stop)
        if record.state is Lifecycle.RESTARTING:
            record.move_to(Lifecycle.ENDED)
        ending = error or self._told.pop(token, None)
        if self._owes.pop(token, False):  # the crashed incarnation never left its streams
            ending = ending or PumaError(f"runnable {record.name!r} was to be restarted when its Runner stopped")
            for out in record.runnable.outputs:
                out.supervision.complete_for(record.name, ending)
            self._let_go(token, None)
        else:
            self._let_go(token, ending if error is not None else None)
        runner._notify()

    def _settle(self, token: int) -> None:
        with self._changed:
            self._settled += self._unsettled.pop(token, 0)
            self._changed.notify_all()

    def _let_go(self, token: int, error: BaseException | None) -> None:
        """It has ended for good: tell its readers ``error`` (if any), release its outputs."""
        runner = self._runner
        record = runner._by_token.get(token)
        supervisor = runner._supervisor
        if error is not None and record is not None and supervisor is not None:
            for out in record.runnable.outputs:
                supervisor._tell_readers(out.supervision, error)
        for hold in self._holds.pop(token, []):
            hold.release()
