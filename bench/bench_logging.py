"""Logging benchmark (issue #3): records/second through the central log listener.

Run from the repository root::

    python bench/bench_logging.py              # 5 runs of each row
    python bench/bench_logging.py --runs 7     # more runs
    python bench/bench_logging.py --quick      # fewer records, for a smoke test

Each row logs the same number of records into one ``logging.FileHandler`` in
the parent process, formatted as an application would (time, level, runnable,
pid, thread, logger, message); one more row uses a short format
(``%(runnable)s %(message)s``), where the handler costs little and the
transport's own cost shows:

* **puma**: 4 process runnables (fork, forkserver or spawn) each log
  ``count / 4`` INFO records; they travel to the parent through the listener
  and the parent's handler writes them.  Timed from the moment every child is
  running and told to go, to the moment the Runner has seen the last child end
  (so every record is in the file).  Process start-up is not counted.
* **QueueHandler baseline** (the stdlib's own cross-process set-up, the real
  peer): 4 bare ``multiprocessing.Process`` children, same start method, each
  with a ``logging.handlers.QueueHandler`` on its root logger putting onto one
  ``multiprocessing.Queue``; the parent runs a ``logging.handlers.QueueListener``
  on that queue with the same kind of handler.  Same count, same format (the
  children set ``%(runnable)s`` with the same filter), timed the same way: from
  "go" until every child has ended and the listener has written the last
  record (``listener.stop()`` drains the queue).
* **1-process baseline**: the same total count logged by one thread of one
  process, straight into the same kind of handler (what the handler alone
  can do; no transport).

The ratio is puma / baseline (higher is better); the target is the issue's
absolute figure, >= 50k records/s in total, checked on puma's median.
"""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import multiprocessing
import os
import sys
import tempfile
import time
from multiprocessing.connection import Connection

from _util import Comparison, compare, print_table

import puma
import puma.logging

SOURCES = 4
TARGET_RECORDS_PER_S = 50_000.0
FORMAT = "%(asctime)s %(levelname)s %(runnable)s[%(process)d/%(threadName)s] %(name)s: %(message)s"
SHORT_FORMAT = "%(runnable)s %(message)s"

now = time.perf_counter


class Chatty(puma.Runnable):
    """Waits for a word on ``go`` (a pipe's reading end), then logs ``count`` INFO records at full speed."""

    def __init__(self, name: str, count: int, go: Connection) -> None:
        super().__init__(name)
        self._count = count
        self._go = go

    def execute(self) -> None:
        log = logging.getLogger("bench.chatty")
        self.send_status("ready", True)
        self._go.recv_bytes()
        for i in range(self._count):
            log.info("record %d of %s", i, "chatty")


def _file_handler(path: str, fmt: str) -> logging.Handler:
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(logging.Formatter(fmt))
    handler.addFilter(puma.logging.RunnableFilter())
    return handler


def _install(handler: logging.Handler) -> None:
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def _count_lines(path: str) -> int:
    with open(path, "rb") as f:
        return sum(1 for _ in f)


def run_puma(method: str, total: int, directory: str, fmt: str = FORMAT) -> float:
    """Records/second from ``SOURCES`` processes through the listener into one file."""
    path = os.path.join(directory, f"puma-{method}.log")
    handler = _file_handler(path, fmt)
    _install(handler)
    env = puma.ProcessEnvironment(method)
    pipes = [env.context.Pipe(duplex=False) for _ in range(SOURCES)]
    per_source = total // SOURCES
    try:
        with puma.Runner(env) as runner:
            chatty = [runner.start(Chatty(f"chatty-{i}", per_source, r)) for i, (r, _w) in enumerate(pipes)]
            for runnable in chatty:
                runnable.wait_status("ready", timeout=60)
            start = now()
            for _r, w in pipes:
                w.send_bytes(b"go")
            runner.join()
            elapsed = now() - start
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        for r, w in pipes:
            r.close()
            w.close()
    written = _count_lines(path)
    if written != per_source * SOURCES:
        raise AssertionError(f"{written} records written, {per_source * SOURCES} expected")
    return per_source * SOURCES / elapsed


def _queue_child(name: str, count: int, records: multiprocessing.Queue, ready: Connection, go: Connection) -> None:
    """A bare child: a QueueHandler on its root logger, then ``count`` records at full speed."""
    handler = logging.handlers.QueueHandler(records)
    handler.addFilter(puma.logging.RunnableFilter(name))  # %(runnable)s, as puma's records carry it
    _install(handler)
    log = logging.getLogger("bench.chatty")
    ready.send_bytes(b"ready")
    go.recv_bytes()
    for i in range(count):
        log.info("record %d of %s", i, "chatty")


def run_queue_listener(method: str, total: int, directory: str, fmt: str = FORMAT) -> float:
    """Records/second from ``SOURCES`` bare processes: QueueHandler -> mp.Queue -> QueueListener -> file."""
    path = os.path.join(directory, f"queue-{method}.log")
    handler = _file_handler(path, fmt)
    ctx = multiprocessing.get_context(method)
    records = ctx.Queue()
    listener = logging.handlers.QueueListener(records, handler)
    per_source = total // SOURCES
    readies = [ctx.Pipe(duplex=False) for _ in range(SOURCES)]
    gos = [ctx.Pipe(duplex=False) for _ in range(SOURCES)]
    children = [
        ctx.Process(target=_queue_child, args=(f"chatty-{i}", per_source, records, readies[i][1], gos[i][0]))
        for i in range(SOURCES)
    ]
    try:
        listener.start()
        for child in children:
            child.start()
        for r, _w in readies:
            r.recv_bytes()
        start = now()
        for _r, w in gos:
            w.send_bytes(b"go")
        for child in children:
            child.join()
        listener.stop()  # writes what is still queued, then returns
        elapsed = now() - start
    finally:
        handler.close()
        records.close()
        for pair in (*readies, *gos):
            for conn in pair:
                conn.close()
    written = _count_lines(path)
    if written != per_source * SOURCES:
        raise AssertionError(f"{written} records written, {per_source * SOURCES} expected")
    return per_source * SOURCES / elapsed


def run_baseline(total: int, directory: str, fmt: str = FORMAT) -> float:
    """Records/second logged by one thread of this process into one file."""
    path = os.path.join(directory, "baseline.log")
    handler = _file_handler(path, fmt)
    _install(handler)
    log = logging.getLogger("bench.chatty")
    count = (total // SOURCES) * SOURCES
    try:
        start = now()
        for i in range(count):
            log.info("record %d of %s", i, "chatty")
        handler.flush()
        elapsed = now() - start
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    if _count_lines(path) != count:
        raise AssertionError("baseline lost records")
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per row (median reported; default 5)")
    parser.add_argument("--records", type=int, default=100_000, help="records per run, in total (default 100000)")
    parser.add_argument("--quick", action="store_true", help="10000 records, 3 runs")
    parser.add_argument(
        "--methods",
        default=",".join(m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()),
        help="comma-separated start methods (default: every one available)",
    )
    parser.add_argument("--no-short", action="store_true", help="leave out the short-format row")
    args = parser.parse_args()
    total = 10_000 if args.quick else args.records
    runs = 3 if args.quick else args.runs
    print(
        f"# {total} INFO records per run from {SOURCES} processes, one FileHandler, {runs} runs per row, "
        f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    methods = args.methods.split(",")
    cases = [(method, FORMAT, "") for method in methods]
    if not args.no_short:
        cases.append((methods[-1] if "forkserver" not in methods else "forkserver", SHORT_FORMAT, ", short format"))
    rows: list[Comparison] = []
    with tempfile.TemporaryDirectory(prefix="puma-bench-logging-") as directory:
        for method, fmt, label in cases:
            row = compare(
                f"{SOURCES} processes ({method}) -> listener -> file{label}",
                unit="records/s",
                ours=lambda m=method, f=fmt: run_puma(m, total, directory, f),  # type: ignore[misc]
                theirs=lambda f=fmt: run_baseline(total, directory, f),  # type: ignore[misc]
                baseline="1 process, same count",
                runs=runs,
                warmup=True,
            )
            met = row.ours.median >= TARGET_RECORDS_PER_S
            row.notes.append(
                f"target >= {TARGET_RECORDS_PER_S / 1000:.0f}k records/s in total: "
                + ("met" if met else "NOT met")
                + f" ({row.ours.median / 1000:.1f}k)"
            )
            rows.append(row)
            peer = compare(
                f"{SOURCES} processes ({method}) -> listener -> file{label}",
                unit="records/s",
                ours=lambda m=method, f=fmt: run_puma(m, total, directory, f),  # type: ignore[misc]
                theirs=lambda m=method, f=fmt: run_queue_listener(m, total, directory, f),  # type: ignore[misc]
                baseline=f"{SOURCES} processes, QueueHandler -> mp.Queue -> QueueListener",
                runs=runs,
                warmup=True,
            )
            rows.append(peer)
    print_table(rows)


if __name__ == "__main__":
    main()
