"""Ticking (issue #5): the schedule's arithmetic, the clock, and ticks in threads and processes.

No test here asserts wall-clock speed: ticks are checked for order, for lying
on their grid, for never being early, and for pause/resume/interval changes
and skipping, with the timing left to the machine.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

import puma
from puma._ready.ticking import TickSchedule, tick_clock_name

pytestmark = pytest.mark.timeout(60)

EPS = 1e-9


# --- runnables (module level, so spawn and forkserver children can import them) -------------------
class Ticker(puma.CommandDrivenRunnable):
    """Keeps (timestamp, deadline) of every tick; reports the count; optionally slow on one tick."""

    def __init__(
        self, interval: float | None, paused: bool = False, slow_tick: int = -1, slow_for: float = 0.0
    ) -> None:
        super().__init__("ticker", tick_interval=interval, ticks_paused=paused)
        self._ticks: list[tuple[float, float]] = []
        self._slow_tick = slow_tick
        self._slow_for = slow_for

    def on_tick(self, timestamp: float) -> None:
        self._ticks.append((timestamp, self.tick_deadline))
        if len(self._ticks) == self._slow_tick:
            time.sleep(self._slow_for)  # the user's work overruns several intervals, once
        self.send_status("count", len(self._ticks))

    @puma.run_in_child_scope
    def ticks(self) -> list[tuple[float, float]]:
        return list(self._ticks)

    @puma.run_in_child_scope
    def missed(self) -> int:
        return self.missed_ticks

    @puma.run_in_child_scope
    def now(self) -> float:
        return puma.tick_clock()


class FailingSource(puma.CommandDrivenRunnable):
    """Publishes its tick count; fails on the third tick."""

    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("failing-source", outputs=[out], tick_interval=0.005)
        self._n = 0

    def on_tick(self, timestamp: float) -> int:
        self._n += 1
        if self._n == 3:
            raise RuntimeError("tick 3 failed")
        return self._n


class Sink(puma.SingleBufferServicingRunnable[int]):
    """Keeps the values; reports when ready, then the values and how the input ended."""

    def __init__(self, inp: puma.Buffer[int]) -> None:
        super().__init__("sink", inp)
        self._values: list[int] = []

    def on_start(self) -> None:
        self.send_status("ready", True)

    def on_value(self, value: int) -> None:
        self._values.append(value)

    def on_complete(self, error: BaseException | None) -> None:
        self.send_status("result", (self._values, None if error is None else type(error).__name__))


def on_grid(deadline: float, anchor: float, interval: float) -> int:
    """The index k of ``deadline`` on the grid ``anchor + k * interval`` (asserting it lies on it)."""
    k = round((deadline - anchor) / interval)
    assert math.isclose(deadline, anchor + k * interval, rel_tol=0, abs_tol=1e-6), (deadline, anchor, interval)
    return k


# --- the schedule, without waiting -----------------------------------------------------------------
def test_first_tick_is_one_interval_after_start_and_deadlines_lie_on_the_grid() -> None:
    s = TickSchedule(0.01)
    s.start(100.0)
    assert s.timeout(100.0) == pytest.approx(0.01)
    assert not s.due(100.009)
    assert s.due(100.01)
    assert s.take(100.0103) == pytest.approx(100.01)
    assert s.next_deadline == pytest.approx(100.02)
    assert s.take(100.0201) == pytest.approx(100.02)
    assert s.missed == 0


def test_no_drift_after_a_million_ticks() -> None:
    s = TickSchedule(0.001)
    s.start(0.0)
    late = 0.0004
    k = 0
    for k in range(1, 1_000_001):
        deadline = s.take(k * 0.001 + late)
        if k % 100_000 == 0:
            assert deadline == pytest.approx(k * 0.001, abs=1e-9)
    assert s.next_deadline == pytest.approx((k + 1) * 0.001, abs=1e-9)
    assert s.missed == 0


def test_missed_ticks_are_skipped_not_bunched() -> None:
    s = TickSchedule(0.01)
    s.start(0.0)
    assert s.take(0.0101) == pytest.approx(0.01)
    # the runnable is busy until 0.0452: grid points 0.02, 0.03, 0.04 have passed
    assert s.due(0.0452)
    assert s.take(0.0452) == pytest.approx(0.04)  # one late tick, for the latest passed point
    assert s.missed == 2
    assert not s.due(0.0453)  # no bunch: the next is back on the grid
    assert s.next_deadline == pytest.approx(0.05)


def test_pause_resume_and_interval_change() -> None:
    s = TickSchedule(0.01)
    s.start(0.0)
    s.pause()
    assert s.timeout(5.0) is None and not s.due(5.0)
    v = s.version
    s.resume(7.0)
    assert s.version != v
    assert s.next_deadline == pytest.approx(7.01)  # one interval after resume
    s.resume(7.005)  # already running: nothing changes
    assert s.next_deadline == pytest.approx(7.01)
    s.set_interval(0.5, 7.2)
    assert s.next_deadline == pytest.approx(7.7)  # one new interval after the change
    s.pause()
    s.set_interval(0.25, 8.0)  # paused: applies on resume
    assert s.next_deadline is None
    s.resume(9.0)
    assert s.next_deadline == pytest.approx(9.25)


def test_no_interval_means_no_ticks_until_one_is_set() -> None:
    s = TickSchedule(None)
    s.start(0.0)
    assert s.timeout(1.0) is None
    with pytest.raises(ValueError, match="no tick interval"):
        s.resume(1.0)
    s.set_interval(0.1, 2.0)
    assert s.next_deadline == pytest.approx(2.1)


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, True, "1"])
def test_bad_intervals_are_refused(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        TickSchedule(bad)
    with pytest.raises((ValueError, TypeError)):
        puma.CommandDrivenRunnable("x", tick_interval=bad)


# --- the clock ---------------------------------------------------------------------------------------
def test_the_tick_clock_is_monotonic_and_precise() -> None:
    info = time.get_clock_info(tick_clock_name())
    assert info.monotonic and not info.adjustable
    assert info.resolution <= 1e-3
    readings = [puma.tick_clock() for _ in range(1000)]
    assert readings == sorted(readings)


def test_the_tick_clock_is_the_same_in_every_process(process_env: puma.ProcessEnvironment) -> None:
    """A child's reading falls between two readings of the parent taken around it."""
    with puma.Runner(process_env) as runner:
        ticker = runner.start(Ticker(None))
        for _ in range(20):
            before = puma.tick_clock()
            theirs = ticker.now()
            after = puma.tick_clock()
            assert before <= theirs <= after
        runner.stop()


# --- ticks in a running runnable ---------------------------------------------------------------------
def test_ticks_come_in_order_on_their_grid_and_never_early(env: puma.Environment) -> None:
    interval = 0.01
    with puma.Runner(env) as runner:
        ticker = runner.start(Ticker(interval))
        ticker.wait_status("count", lambda n: n >= 10, timeout=30)
        ticks = ticker.ticks()
        runner.stop()
    anchor = ticks[0][1]
    ks = [on_grid(deadline, anchor, interval) for _, deadline in ticks]
    assert ks == sorted(set(ks))  # strictly increasing: no tick twice, none out of order
    assert all(stamp >= deadline for stamp, deadline in ticks)  # never early
    stamps = [stamp for stamp, _ in ticks]
    assert stamps == sorted(stamps)


def test_pause_stops_ticks_and_resume_restarts_them_one_interval_later(env: puma.Environment) -> None:
    interval = 0.01
    with puma.Runner(env) as runner:
        ticker = runner.start(Ticker(interval))
        ticker.wait_status("count", lambda n: n >= 3, timeout=30)
        paused_at = ticker.pause_ticks()
        count = len(ticker.ticks())
        with pytest.raises(TimeoutError):  # ten intervals pass without a tick
            ticker.wait_status("count", lambda n: n > count, timeout=10 * interval)
        resumed_at = ticker.resume_ticks()
        ticker.wait_status("count", lambda n: n >= count + 3, timeout=30)
        ticks = ticker.ticks()
        runner.stop()
    assert len([t for t in ticks if t[0] <= paused_at]) == count
    assert not [t for t in ticks if paused_at < t[0] < resumed_at]
    after = [t for t in ticks if t[0] >= resumed_at]
    assert len(after) >= 3
    ks = [on_grid(deadline, resumed_at, interval) for _, deadline in after]
    assert ks[0] >= 1 and ks == sorted(set(ks))
    assert after[0][0] >= resumed_at + interval - EPS


def test_an_interval_change_takes_effect_from_the_call(env: puma.Environment) -> None:
    slow, fast = 0.05, 0.005
    with puma.Runner(env) as runner:
        ticker = runner.start(Ticker(slow))
        ticker.wait_status("count", lambda n: n >= 2, timeout=30)
        changed_at = ticker.set_tick_interval(fast)
        count = len(ticker.ticks())
        ticker.wait_status("count", lambda n: n >= count + 10, timeout=30)
        ticks = ticker.ticks()
        assert ticker.tick_interval == slow  # the parent's copy keeps the initial setting
        runner.stop()
    before = [t for t in ticks if t[0] < changed_at]
    after = [t for t in ticks if t[0] >= changed_at]
    assert len(after) >= 10
    anchor = before[0][1] - slow
    assert all(on_grid(d, anchor, slow) >= 1 for _, d in before)
    ks = [on_grid(d, changed_at, fast) for _, d in after]
    assert ks[0] >= 1 and ks == sorted(set(ks))
    assert after[0][0] >= changed_at + fast - EPS


def test_a_slow_tick_makes_the_missed_ones_skipped_not_bunched(env: puma.Environment) -> None:
    interval = 0.02
    with puma.Runner(env) as runner:
        ticker = runner.start(Ticker(interval, slow_tick=3, slow_for=3.5 * interval))
        ticker.wait_status("count", lambda n: n >= 6, timeout=30)
        ticks = ticker.ticks()
        missed = ticker.missed()
        runner.stop()
    anchor = ticks[0][1] - interval
    ks = [on_grid(d, anchor, interval) for _, d in ticks]
    assert ks == sorted(set(ks))
    slow = ks[2]
    # the slow tick overran 3.5 intervals: the next tick is the latest passed grid point, delivered once
    assert ks[3] - slow >= 3
    assert missed >= 2
    assert ticks[3][0] >= ticks[2][0] + 3.5 * interval - EPS


def test_starting_paused_and_commands_with_bad_arguments(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        ticker = runner.start(Ticker(None))
        with pytest.raises(ValueError, match="no tick interval"):
            ticker.resume_ticks()
        with pytest.raises(ValueError, match="positive"):
            ticker.set_tick_interval(-1.0)
        started = ticker.set_tick_interval(0.005)  # the runnable carries on and now ticks
        ticker.wait_status("count", lambda n: n >= 2, timeout=30)
        ticks = ticker.ticks()
        runner.stop()
    assert ticks[0][1] == pytest.approx(started + 0.005, abs=1e-6)


def test_an_error_in_on_tick_is_passed_downstream(env: puma.Environment) -> None:
    with pytest.raises(RuntimeError, match="tick 3 failed"):
        with puma.Runner(env) as runner:
            out = env.buffer(int, 4, "ticks")
            sink = runner.start(Sink(out))
            sink.wait_status("ready", timeout=30)
            runner.start(FailingSource(out))
            runner.join()
    assert sink.status("result") == ([1, 2], "RuntimeError")
