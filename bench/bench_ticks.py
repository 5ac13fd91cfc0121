"""Tick jitter (issue #5): how late puma's ticks are, next to a bare sleep-until-deadline loop.

Run from the repository root::

    python bench/bench_ticks.py              # 100 Hz and 1 kHz, thread and process, 5 runs each (~2 min)
    python bench/bench_ticks.py --runs 7
    python bench/bench_ticks.py --quick      # few ticks, for a smoke test
    python bench/bench_ticks.py --only process

For each rate and each place (a thread, a process), each run measures:

* puma: a :class:`puma.CommandDrivenRunnable` with ``tick_interval`` set, started
  by a Runner, recording in ``on_tick`` its lateness ``timestamp - tick_deadline``
  (the tick's stamp from :func:`puma.tick_clock` minus the grid point it was due
  at);
* bare: a plain loop in a ``threading.Thread`` (next to the puma thread, in the
  same process) or in a ``multiprocessing.Process``, doing
  ``time.sleep(deadline - now)`` against an absolute grid (and skipping missed
  grid points the same way), recording ``now - deadline``.

By default the two run *at the same time* (paired), on grids offset by half an
interval so they never wake together: the noise of a shared machine (other
jobs, other tests) then hits both sides alike, and the per-run ratio is
steady.  ``--alternate`` runs them one after the other instead.

Each run gives the p50 and p99 lateness of its ticks; the table shows the
median over the runs (and their spread) and the median of the per-run ratios
puma / bare.  Target: p99 no worse than 1.5x the bare loop.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from _util import Comparison, print_table, stat

import puma

clock = puma.tick_clock


def percentile(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[index]


# --- puma side (module level: spawn and forkserver children import it) ---------------------------
class TickProbe(puma.CommandDrivenRunnable):
    """Ticks at ``interval``; once told to begin, records ``count`` lateness samples (seconds), then ends."""

    def __init__(self, interval: float, count: int, begin: bool = True) -> None:
        super().__init__("tick-probe", tick_interval=interval)
        self._count = count
        self._recording = begin
        self._lateness: list[float] = []
        self._missed_before = 0

    def on_tick(self, timestamp: float) -> None:
        if not self._recording:
            self.send_status("grid", self.tick_deadline)
            return
        self._lateness.append(timestamp - self.tick_deadline)
        if len(self._lateness) >= self._count:
            self.finish()

    @puma.run_in_child_scope
    def begin(self) -> None:
        self._recording = True
        self._missed_before = self.missed_ticks

    def on_end(self) -> None:
        self.send_status("lateness", (self._lateness, self.missed_ticks - self._missed_before))


# --- bare side -------------------------------------------------------------------------------------
def bare_loop(interval: float, count: int, anchor: float | None = None) -> tuple[list[float], int]:
    """Sleep until each grid point ``anchor + k * interval``; skip the points already passed, as puma does."""
    lateness: list[float] = []
    missed = 0
    if anchor is None:
        anchor = clock()
    k = max(1, math.floor((clock() - anchor) / interval) + 1)
    while len(lateness) < count:
        deadline = anchor + k * interval
        remaining = deadline - clock()
        if remaining > 0:
            time.sleep(remaining)
        now = clock()
        lateness.append(now - deadline)
        k += 1
        while anchor + k * interval <= now:
            k += 1
            missed += 1
    return lateness, missed


def _bare_in_process(interval: float, count: int, conn: Connection) -> None:
    conn.send("ready")  # started and imported: its start-up disturbs nobody's measurement any more
    anchor: float | None = conn.recv()
    conn.send(bare_loop(interval, count, anchor))
    conn.close()


class Bare:
    """The bare loop in a thread or a process: :meth:`go` starts its ticks, :meth:`result` waits for them."""

    def __init__(self, where: str, interval: float, count: int, context: Any) -> None:
        self._interval = interval
        self._count = count
        self._out: list[tuple[list[float], int]] = []
        self._thread: threading.Thread | None = None
        self._process: Any = None
        if where != "thread":
            self._conn, child = context.Pipe(duplex=True)
            self._process = context.Process(target=_bare_in_process, args=(interval, count, child))
            self._process.start()
            child.close()
            assert self._conn.recv() == "ready"

    def go(self, anchor: float | None) -> None:
        if self._process is not None:
            self._conn.send(anchor)
            return
        self._thread = threading.Thread(target=lambda: self._out.append(bare_loop(self._interval, self._count, anchor)))
        self._thread.start()

    def result(self) -> tuple[list[float], int]:
        if self._process is None:
            assert self._thread is not None
            self._thread.join()
            return self._out[0]
        out: tuple[list[float], int] = self._conn.recv()
        self._process.join()
        return out


def run_alternate(env: puma.Environment, where: str, interval: float, count: int) -> dict[str, tuple[list[float], int]]:
    """puma, then the bare loop."""
    with puma.Runner(env) as runner:
        probe = runner.start(TickProbe(interval, count))
        runner.join()
    context = env.context if isinstance(env, puma.ProcessEnvironment) else None
    bare = Bare(where, interval, count, context)
    bare.go(None)
    return {"puma": probe.status("lateness"), "bare": bare.result()}


def run_paired(env: puma.Environment, where: str, interval: float, count: int) -> dict[str, tuple[list[float], int]]:
    """puma and the bare loop at the same time, on grids half an interval apart."""
    context = env.context if isinstance(env, puma.ProcessEnvironment) else None
    bare = Bare(where, interval, count, context)  # started first: its start-up is over before either records
    with puma.Runner(env) as runner:
        probe = runner.start(TickProbe(interval, count, begin=False))
        grid = probe.wait_status("grid", timeout=60)  # one of puma's grid points
        bare.go(grid + interval / 2)
        probe.begin()
        runner.join()
    return {"puma": probe.status("lateness"), "bare": bare.result()}


# --- the table -------------------------------------------------------------------------------------
def measure(where: str, rate: int, ticks: int, runs: int, start_method: str | None, paired: bool) -> list[Comparison]:
    interval = 1.0 / rate
    env: puma.Environment = puma.ThreadEnvironment() if where == "thread" else puma.ProcessEnvironment(start_method)
    sides: dict[str, dict[str, list[float]]] = {s: {"p50": [], "p99": [], "missed": []} for s in ("puma", "bare")}
    run = run_paired if paired else run_alternate
    run(env, where, interval, 10)  # warm-up: forkserver, imports
    for _ in range(runs):
        for side, (samples, missed) in run(env, where, interval, ticks).items():
            sides[side]["p50"].append(percentile(samples, 0.5) * 1e6)
            sides[side]["p99"].append(percentile(samples, 0.99) * 1e6)
            sides[side]["missed"].append(float(missed))
        print(".", end="", file=sys.stderr, flush=True)
    print(f" {where} {rate} Hz", file=sys.stderr, flush=True)
    rows = []
    label = where if not isinstance(env, puma.ProcessEnvironment) else f"process ({env.start_method})"
    for q, target in (("p50", None), ("p99", ("<=", 1.5))):
        ours, theirs = sides["puma"][q], sides["bare"][q]
        row = Comparison(
            f"{rate} Hz in a {label}: {q} lateness",
            "us",
            stat(ours),
            stat(theirs),
            baseline="time.sleep loop",
            target=target,
            ratios=stat([a / b for a, b in zip(ours, theirs, strict=True) if b > 0] or [0.0]),
        )
        if q == "p99":
            row.notes.append(
                f"ticks per run: {ticks}; missed ticks per run (median): puma "
                f"{statistics.median(sides['puma']['missed']):g}, bare {statistics.median(sides['bare']['missed']):g}"
            )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--ticks", type=int, default=0, help="ticks per run (default: 600 at 100 Hz, 3000 at 1 kHz)")
    parser.add_argument("--start-method", default=None, help="process start method (default: puma's)")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--only", default="", help="run only 'thread' or 'process'")
    parser.add_argument("--alternate", action="store_true", help="run puma and the bare loop one after the other")
    args = parser.parse_args(argv)
    runs = 2 if args.quick else args.runs
    table: list[Comparison] = []
    for where in ("thread", "process"):
        if args.only and args.only != where:
            continue
        for rate in (100, 1000):
            ticks = args.ticks or (600 if rate == 100 else 3000)
            if args.quick:
                ticks = rate // 4
            table.extend(measure(where, rate, ticks, runs, args.start_method, not args.alternate))
    name = puma._ready.ticking.tick_clock_name()
    print(f"tick clock: time.{name}: {time.get_clock_info(name)}")
    print("mode: " + ("alternate (one after the other)" if args.alternate else "paired (at the same time)"))
    print(f"{os.cpu_count()} CPUs; load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_table(table)


if __name__ == "__main__":
    multiprocessing.freeze_support()
    main()
