"""Tick jitter (issue #5): how late puma's ticks are, next to a bare sleep-until-deadline loop.

Run from the repository root::

    python bench/bench_ticks.py              # 100 Hz and 1 kHz, thread and process, 5 runs each (~2 min)
    python bench/bench_ticks.py --runs 7
    python bench/bench_ticks.py --quick      # few ticks, for a smoke test
    python bench/bench_ticks.py --only process

For each rate and each place (a thread, a process) it runs, alternately:

* puma: a :class:`puma.CommandDrivenRunnable` with ``tick_interval`` set, started
  by a Runner, recording in ``on_tick`` its lateness ``timestamp - tick_deadline``
  (the tick's stamp from :func:`puma.tick_clock` minus the grid point it was due
  at);
* bare: a plain loop in a ``threading.Thread`` or a ``multiprocessing.Process``
  doing ``time.sleep(deadline - now)`` against the same absolute grid (and
  skipping missed grid points the same way), recording ``now - deadline``.

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
from collections.abc import Callable
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
    """Ticks ``count`` times at ``interval``, then reports its lateness samples (seconds)."""

    def __init__(self, interval: float, count: int) -> None:
        super().__init__("tick-probe", tick_interval=interval)
        self._count = count
        self._lateness: list[float] = []

    def on_tick(self, timestamp: float) -> None:
        self._lateness.append(timestamp - self.tick_deadline)
        if len(self._lateness) >= self._count:
            self.finish()

    def on_end(self) -> None:
        self.send_status("lateness", (self._lateness, self.missed_ticks))


def run_puma(env: puma.Environment, interval: float, count: int) -> tuple[list[float], int]:
    with puma.Runner(env) as runner:
        probe = runner.start(TickProbe(interval, count))
        runner.join()
    lateness, missed = probe.status("lateness")
    return lateness, missed


# --- bare side -------------------------------------------------------------------------------------
def bare_loop(interval: float, count: int) -> tuple[list[float], int]:
    """Sleep until each grid point; skip the grid points already passed, as puma does."""
    lateness: list[float] = []
    missed = 0
    anchor = clock()
    k = 1
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
    conn.send(bare_loop(interval, count))
    conn.close()


def run_bare(where: str, interval: float, count: int, context: Any) -> tuple[list[float], int]:
    if where == "thread":
        result: list[tuple[list[float], int]] = []
        thread = threading.Thread(target=lambda: result.append(bare_loop(interval, count)))
        thread.start()
        thread.join()
        return result[0]
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(target=_bare_in_process, args=(interval, count, writer))
    process.start()
    writer.close()
    out: tuple[list[float], int] = reader.recv()
    process.join()
    return out


# --- the table -------------------------------------------------------------------------------------
def measure(where: str, rate: int, ticks: int, runs: int, start_method: str | None) -> list[Comparison]:
    interval = 1.0 / rate
    count = ticks
    env: puma.Environment = puma.ThreadEnvironment() if where == "thread" else puma.ProcessEnvironment(start_method)
    context = env.context if isinstance(env, puma.ProcessEnvironment) else None
    sides: dict[str, dict[str, list[float]]] = {s: {"p50": [], "p99": [], "missed": []} for s in ("puma", "bare")}
    run_puma(env, interval, 10)  # warm-up: forkserver, imports
    for _ in range(runs):
        for side, run in (
            ("puma", lambda: run_puma(env, interval, count)),
            ("bare", lambda: run_bare(where, interval, count, context)),
        ):
            samples, missed = run()
            sides[side]["p50"].append(percentile(samples, 0.5) * 1e6)
            sides[side]["p99"].append(percentile(samples, 0.99) * 1e6)
            sides[side]["missed"].append(float(missed))
        print(".", end="", file=sys.stderr, flush=True)
    print(f" {where} {rate} Hz", file=sys.stderr, flush=True)
    rows = []
    label = f"{where}" if where == "thread" else f"process ({env.start_method})"  # type: ignore[attr-defined]
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
                f"ticks per run: {count}; missed ticks per run (median): puma "
                f"{statistics.median(sides['puma']['missed']):g}, bare {statistics.median(sides['bare']['missed']):g}"
            )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per side (default 5)")
    parser.add_argument("--ticks", type=int, default=0, help="ticks per run (default: 300 at 100 Hz, 2000 at 1 kHz)")
    parser.add_argument("--start-method", default=None, help="process start method (default: puma's)")
    parser.add_argument("--quick", action="store_true", help="short runs, for a smoke test")
    parser.add_argument("--only", default="", help="run only 'thread' or 'process'")
    args = parser.parse_args(argv)
    runs = 2 if args.quick else args.runs
    rows: list[Callable[[], list[Comparison]]] = []
    for where in ("thread", "process"):
        if args.only and args.only != where:
            continue
        for rate in (100, 1000):
            ticks = args.ticks or (300 if rate == 100 else 2000)
            if args.quick:
                ticks = rate // 4
            rows.append(
                lambda where=where, rate=rate, ticks=ticks: measure(where, rate, ticks, runs, args.start_method)
            )
    table: list[Comparison] = []
    for make in rows:
        table.extend(make())
    name = puma._ticking.tick_clock_name()
    print(f"tick clock: time.{name}: {time.get_clock_info(name)}")
    print(f"{os.cpu_count()} CPUs; load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print_table(table)


if __name__ == "__main__":
    multiprocessing.freeze_support()
    main()
