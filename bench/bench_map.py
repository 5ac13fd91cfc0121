"""Batch map benchmarks (issue #13): puma.batch.map against multiprocessing.Pool.map and mpire.

Run from the repository root::

    python bench/bench_map.py            # every row, 5 runs each
    python bench/bench_map.py --runs 3
    python bench/bench_map.py --quick    # 3 runs, 100 maps in the loop row: a smoke test

Rows (every side starts its workers and stops them inside the timed part, with
2 workers and the fork start method, which is Pool's default here):

* **100k trivial tasks**: ``x + 1`` over ``range(100_000)``; puma with its
  per-item isolation on (every input marked, a death costs one input) against
  ``Pool.map`` with its default chunking (``len / (4 * processes)``), and
  against mpire's ``WorkerPool.map`` (skipped with a note if mpire is not
  installed).  Target: <= 1.5x Pool.map.
* **200 x 10 ms**: 200 inputs that each sleep 10 ms, against the ideal (total
  work / workers = 1.0 s).  Target: <= 1.08x ideal.  Pool.map's figure is a note.
* **100k, one worker SIGKILLed mid-chunk**: input 50,000 kills its worker
  (``poison_after=1``: the input is failed at the first death).  Reported: the
  results returned, the failures, the time, and how long the parent took to
  notice the death.  Targets: 99,999 results, exactly 1 failure, noticed within 1 s.
* **1000 maps in a loop**: descriptors (multiprocessing's shared heap arenas
  aside, which it keeps and reuses), threads, and process buffers alive (each
  owns named semaphores) before and after.  Target: no growth.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _util import Comparison, compare, print_table, stat

import puma
from puma import batch

WORKERS = 2
N = 100_000
KILL_AT = 50_000


def trivial(x: int) -> int:
    return x + 1


def ten_ms(x: int) -> int:
    time.sleep(0.01)
    return x


def kill_at(x: int) -> int:
    if x == KILL_AT:
        Path(os.environ["PUMA_BENCH_KILLED"]).write_text(repr(time.monotonic()))
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 1


def _env() -> puma.ProcessEnvironment:
    return puma.ProcessEnvironment("fork")


def _timed(work: object) -> float:
    began = time.perf_counter()
    work()  # type: ignore[operator]
    return time.perf_counter() - began


def puma_trivial() -> float:
    def work() -> None:
        out = batch.map(trivial, range(N), workers=WORKERS, environment=_env(), progress=False)
        assert len(out) == N and out[-1] == N

    return _timed(work)


def pool_map(fn: object, items: range) -> float:
    def work() -> None:
        with multiprocessing.get_context("fork").Pool(WORKERS) as pool:
            out = pool.map(fn, items)  # type: ignore[arg-type]
        assert len(out) == len(items)

    return _timed(work)


def mpire_map(fn: object, items: range) -> float:
    from mpire import WorkerPool

    def work() -> None:
        with WorkerPool(n_jobs=WORKERS, start_method="fork") as pool:
            out = pool.map(fn, items, progress_bar=False)
        assert len(out) == len(items)

    return _timed(work)


def row_trivial(runs: int) -> list[Comparison]:
    rows = [
        compare(
            "100k trivial tasks, isolation on",
            unit="s",
            ours=puma_trivial,
            theirs=lambda: pool_map(trivial, range(N)),
            baseline="multiprocessing.Pool.map (default chunks)",
            runs=runs,
            target=("<=", 1.5),
            warmup=True,
        )
    ]
    try:
        import mpire  # noqa: F401
    except ImportError:
        row = Comparison("100k trivial tasks, vs mpire", "s", stat([0.0]), baseline="mpire")
        row.notes.append("mpire is not installed (pip install mpire): row skipped")
        rows.append(row)
    else:
        row = compare(
            "100k trivial tasks, vs mpire",
            unit="s",
            ours=puma_trivial,
            theirs=lambda: mpire_map(trivial, range(N)),
            baseline="mpire WorkerPool.map",
            runs=max(2, runs // 2),
            warmup=True,
        )
        if row.ratio:
            row.notes.append(f"puma is {1 / row.ratio:.0f}x faster than mpire (issue: about 25x)")
        rows.append(row)
    return rows


def row_ten_ms(runs: int) -> Comparison:
    ideal = 200 * 0.01 / WORKERS

    def ours() -> float:
        return _timed(lambda: batch.map(ten_ms, range(200), workers=WORKERS, environment=_env(), progress=False))

    row = compare(
        "200 x 10 ms tasks",
        unit="s",
        ours=ours,
        theirs=lambda: ideal,
        baseline="ideal (work / workers)",
        runs=runs,
        target=("<=", 1.08),
        warmup=True,
    )
    pool = stat([pool_map(ten_ms, range(200)) for _ in range(max(1, runs // 2))])
    row.notes.append(f"multiprocessing.Pool.map: {pool.median:.3f} s = {pool.median / ideal:.2f}x ideal")
    return row


def row_sigkill(runs: int) -> Comparison:
    times: list[float] = []
    notes: list[str] = []
    ok = True
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            marker = os.path.join(folder, "killed")
            os.environ["PUMA_BENCH_KILLED"] = marker
            began = time.perf_counter()
            out = batch.map(kill_at, range(N), workers=WORKERS, environment=_env(), poison_after=1, progress=False)
            times.append(time.perf_counter() - began)
            failures = [r for r in out if isinstance(r, batch.Failure)]
            returned = len(out) - len(failures)
            killed = float(Path(marker).read_text())
        noticed = failures[0].error.noticed_at - killed if failures else float("nan")  # type: ignore[attr-defined]
        good = returned == N - 1 and len(failures) == 1 and failures[0].index == KILL_AT and noticed < 1.0
        ok = ok and good
        notes.append(
            f"returned {returned:,}, failures {len(failures)} (input {failures[0].index if failures else '-'},"
            f" {failures[0].signal if failures else '-'}), death noticed in {noticed * 1000:.1f} ms"
        )
    row = Comparison("100k, one worker SIGKILLed mid-chunk", "s", stat(times), baseline="")
    row.notes.extend(sorted(set(notes)))
    row.notes.append("targets 99,999 results, exactly 1 failure, noticed < 1 s: " + ("met" if ok else "NOT met"))
    return row


def _resources() -> tuple[int, int, int]:
    """Descriptors (shared heap arenas aside), threads, and process buffers alive (each owns semaphores)."""
    from puma._buffers.process import live_process_buffers

    fds = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("/dev/shm/pym-"):
                fds += 1
        except OSError:
            pass
    return fds, threading.active_count(), len(live_process_buffers())


def row_loop(count: int) -> Comparison:
    env = _env()
    for _ in range(3):
        batch.map(trivial, range(10), workers=WORKERS, environment=env, progress=False)
    gc.collect()
    before = _resources()
    began = time.perf_counter()
    for _ in range(count):
        batch.map(trivial, range(10), workers=WORKERS, environment=env, progress=False)
    elapsed = time.perf_counter() - began
    gc.collect()
    after = _resources()
    row = Comparison(f"{count} maps in a loop", "s", stat([elapsed]))
    row.notes.append(
        f"descriptors {before[0]} -> {after[0]}, threads {before[1]} -> {after[1]}, "
        f"process buffers alive (their semaphores) {before[2]} -> {after[2]}"
    )
    grew = any(a > b for a, b in zip(after, before, strict=True))
    row.notes.append("target no fd, thread or semaphore growth: " + ("NOT met" if grew else "met"))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only-loop", action="store_true", help="only the maps-in-a-loop row")
    args = parser.parse_args()
    runs = 3 if args.quick else args.runs
    rows = [] if args.only_loop else [*row_trivial(runs), row_ten_ms(runs), row_sigkill(min(runs, 3))]
    rows.append(row_loop(100 if args.quick else 1000))
    print_table(rows)


if __name__ == "__main__":
    main()
