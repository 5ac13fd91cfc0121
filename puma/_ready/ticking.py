"""Ticking: a runnable's optional periodic call, on a precision clock, against absolute deadlines.

A ticking runnable calls its ``on_tick(timestamp)`` every ``interval`` seconds.
Ticks are scheduled on a fixed grid ``anchor + k * interval`` (the anchor is
the moment ticking was resumed, or the interval last changed), so lateness
never accumulates into drift.  When the runnable falls behind (its own work
outlasted one or more intervals) the missed ticks are skipped: one late tick is
delivered at once, for the most recent grid point that has passed, and the next
one comes back on the grid.  Ticks are never bunched and never early.

The clock is :func:`tick_clock`: monotonic, system-wide (the same reading in
every process, so timestamps from different runnables compare), and at least
millisecond-precise.  Per platform:

* Linux: ``time.monotonic()`` is ``clock_gettime(CLOCK_MONOTONIC)``, 1 ns
  resolution, one clock for the whole machine (verified by the tests).
* macOS: ``time.monotonic()`` is ``mach_absolute_time()``, system-wide since
  Python 3.10, sub-microsecond.
* Windows: ``time.monotonic()`` was ``GetTickCount64()`` (about 15.6 ms) before
  Python 3.13, so :func:`tick_clock` uses ``time.perf_counter()`` there
  (``QueryPerformanceCounter``, system-wide, sub-microsecond).

The schedule itself, :class:`TickSchedule`, is plain arithmetic on clock
readings; the waiting is done by the runnable's one wait (commands, inputs and
the next deadline together), never by a sleep.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal

from puma._buffers.base import Buffer
from puma._runnable.commands import run_in_child_scope
from puma._runnable.runnable import Runnable

__all__ = ["TickSchedule", "TickingRunnable", "tick_clock", "tick_clock_name"]


ClockName = Literal["monotonic", "perf_counter"]


def _choose_clock() -> tuple[Callable[[], float], ClockName]:
    """The best system-wide monotonic clock of at least millisecond precision here."""
    if sys.platform == "win32" and time.get_clock_info("monotonic").resolution > 1e-3:
        return time.perf_counter, "perf_counter"
    return time.monotonic, "monotonic"


_clock, _clock_name = _choose_clock()


def tick_clock() -> float:
    """Now, in seconds, on the clock ticks are scheduled and stamped with.

    Monotonic, system-wide (comparable between processes), at least
    millisecond-precise; see the module notes for each platform.
    """
    return _clock()


def tick_clock_name() -> ClockName:
    """The name of the ``time`` clock behind :func:`tick_clock` (for ``time.get_clock_info``)."""
    return _clock_name


def _check_interval(interval: Any) -> float:
    if isinstance(interval, bool) or not isinstance(interval, int | float):
        raise TypeError(f"a tick interval must be a number of seconds, not {type(interval).__name__}")
    value = float(interval)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"a tick interval must be a positive number of seconds, got {interval!r}")
    return value


class TickSchedule:
    """When the next tick is due: a grid ``anchor + k * interval``, paused or running.

    Pure bookkeeping on clock readings passed in (``now``), so it is exact and
    testable without waiting.

    Args:
        interval: seconds between ticks, or ``None`` for no ticking until
            :meth:`set_interval` gives one.
        paused: start paused (no ticks until :meth:`resume`).
    """

    __slots__ = ("_anchor", "_interval", "_k", "_missed", "_next", "_running", "_version")

    def __init__(self, interval: float | None = None, paused: bool = False) -> None:
        self._interval = None if interval is None else _check_interval(interval)
        self._running = not paused
        self._anchor = 0.0
        self._k = 0
        self._next: float | None = None
        self._missed = 0
        self._version = 0

    @property
    def missed(self) -> int:
        """How many grid points were skipped because the runnable was late."""
        return self._missed

    @property
    def version(self) -> int:
        """Bumped on every change of schedule, so a waiter knows to recompute its timeout."""
        return self._version

    @property
    def interval(self) -> float | None:
        """Seconds between ticks (``None`` if none was given)."""
        return self._interval

    @property
    def running(self) -> bool:
        """True when ticks are not paused (they fire only if an interval is set too)."""
        return self._running

    @property
    def next_deadline(self) -> float | None:
        """The clock reading the next tick is due at; ``None`` when not ticking."""
        return self._next

    def _restart(self, now: float) -> None:
        if self._running and self._interval is not None:
            self._anchor = now
            self._k = 1
            self._next = now + self._interval
        else:
            self._next = None
        self._version += 1

    def start(self, now: float) -> None:
        """Begin the schedule (when the runnable starts): first tick one interval from ``now``.

        No-op if a command already set the schedule (it may run just before the loop starts).
        """
        if self._version == 0:
            self._restart(now)

    def resume(self, now: float) -> None:
        """Resume ticking: the first tick comes one interval after ``now``. No-op if running."""
        if self._interval is None:
            raise ValueError("cannot resume ticks: no tick interval is set (call set_tick_interval first)")
        if self._running and self._next is not None:
            return
        self._running = True
        self._restart(now)

    def pause(self) -> None:
        """Stop ticking until :meth:`resume`."""
        self._running = False
        self._next = None
        self._version += 1

    def set_interval(self, interval: float, now: float) -> None:
        """Change the interval; if running, the next tick comes one new interval after ``now``."""
        self._interval = _check_interval(interval)
        self._restart(now)

    def timeout(self, now: float) -> float | None:
        """Seconds from ``now`` until the next tick (0 if due); ``None`` when not ticking."""
        nxt = self._next
        if nxt is None:
            return None
        return max(nxt - now, 0.0)

    def due(self, now: float) -> bool:
        """True if a tick is due at ``now``."""
        nxt = self._next
        return nxt is not None and now >= nxt

    def take(self, now: float) -> float:
        """Consume the due tick; return its deadline (the latest grid point not after ``now``).

        Grid points missed in between are skipped (counted in :attr:`missed`);
        the next deadline is the first grid point after ``now``.
        """
        interval = self._interval
        assert interval is not None and self._next is not None
        anchor = self._anchor
        k = max(self._k, math.floor((now - anchor) / interval))
        while k > self._k and anchor + k * interval > now:  # floating-point edge
            k -= 1
        self._missed += k - self._k
        deadline = anchor + k * interval
        k += 1
        while anchor + k * interval <= now:
            self._missed += 1
            k += 1
        self._k = k
        self._next = anchor + k * interval
        return deadline


class TickingRunnable(Runnable):
    """A runnable whose loop may also call :meth:`on_tick` at a fixed interval.

    The base of puma's ready-made runnables.  Ticks are controlled from the
    parent (or from inside) with the commands :meth:`resume_ticks`,
    :meth:`pause_ticks` and :meth:`set_tick_interval`.

    Args:
        name: the runnable's name.
        outputs: the buffers it publishes to.
        tick_interval: seconds between ticks; ``None`` (default) for none
            until :meth:`set_tick_interval` is called.
        ticks_paused: start with ticks paused (until :meth:`resume_ticks`).
    """

    def __init__(
        self,
        name: str,
        outputs: Iterable[Buffer[Any]] = (),
        *,
        tick_interval: float | None = None,
        ticks_paused: bool = False,
    ) -> None:
        super().__init__(name, outputs)
        self._puma_ticks = TickSchedule(tick_interval, ticks_paused)
        self._puma_tick_deadline = 0.0

    def on_tick(self, timestamp: float) -> Any:
        """Called at each tick with the :func:`tick_clock` reading; override it.

        A value other than ``None`` it returns is published to every output.
        """
        return None

    @property
    def tick_interval(self) -> float | None:
        """Seconds between ticks (``None`` if none is set); the parent sees the initial setting."""
        return self._puma_schedule().interval

    @property
    def ticks_running(self) -> bool:
        """True unless ticks are paused; the parent sees the initial setting."""
        return self._puma_schedule().running

    @property
    def tick_deadline(self) -> float:
        """The grid point the tick being delivered was due at (inside :meth:`on_tick`).

        ``timestamp - tick_deadline`` is the tick's lateness.
        """
        return self._puma_tick_deadline

    @property
    def missed_ticks(self) -> int:
        """How many ticks were skipped so far because the runnable was busy past them."""
        return self._puma_schedule().missed

    @run_in_child_scope
    def resume_ticks(self) -> float:
        """Resume ticking; the first tick comes one interval later. Returns the clock reading.

        Raises ``ValueError`` if no interval is set.  Resuming running ticks
        changes nothing.
        """
        now = tick_clock()
        self._puma_live_schedule().resume(now)
        return now

    @run_in_child_scope
    def pause_ticks(self) -> float:
        """Pause ticking. Returns the clock reading: no tick is delivered after it until resumed."""
        self._puma_live_schedule().pause()
        return tick_clock()

    @run_in_child_scope
    def set_tick_interval(self, interval: float) -> float:
        """Tick every ``interval`` seconds from now on. Returns the clock reading it counts from.

        If ticks are running the next one comes one new interval after the
        call; if paused, the interval applies when they resume.
        """
        now = tick_clock()
        self._puma_live_schedule().set_interval(interval, now)
        return now

    def _puma_schedule(self) -> TickSchedule:
        """The schedule: in the child its own live one (made on first use), else the initial one."""
        live: TickSchedule | None = self.__dict__.get("_puma_live_ticks")
        return self._puma_ticks if live is None else live

    def _puma_live_schedule(self) -> TickSchedule:
        """In the child: the schedule the loop and the commands use, made on first use.

        A fresh object, so that a thread child never shares its live schedule
        with the parent's object, which keeps showing the initial settings (as
        it does for a process child).
        """
        live: TickSchedule | None = self.__dict__.get("_puma_live_ticks")
        if live is None:
            initial = self._puma_ticks
            live = TickSchedule(initial.interval, paused=not initial.running)
            self.__dict__["_puma_live_ticks"] = live
        return live

    def _puma_fire_tick(self, now: float) -> Any:
        """Deliver the due tick (the caller checked it is due); return what on_tick returned."""
        self._puma_tick_deadline = self._puma_live_schedule().take(now)
        return self.on_tick(now)
