"""Buffer benchmarks (issue #10): work sharing between subscribers, and fan-in from many publishers.

Run from the repository root::

    python bench/bench_buffers.py             # everything, 3 runs each
    python bench/bench_buffers.py --runs 5
    python bench/bench_buffers.py --only fan  # rows whose group contains "fan" (groups: sharing, fan-in)
    python bench/bench_buffers.py --quick     # smaller counts, a smoke test

Every row runs puma's public API (``puma.Runner``, ``env.buffer``, runnables;
the forkserver start method) and a baseline on the standard library (or a
peer, when installed: mpire, faster-fifo), alternately, and prints the median
and spread of each and the median of the per-run ratios puma / baseline.

* **Work sharing**: one producer publishes ints; N process subscribers share
  the buffer, each value costing its consumer about 1 ms of CPU (a fixed
  amount of work, calibrated once, not a wall-clock spin, so N consumers on
  fewer cores do not look faster than they are).  Baseline: an ``mp.Queue``
  with the same number of consumer processes.  Items/s from the moment every
  consumer is told to go until the last one has finished.
* **Fan-in**: M publisher processes into one buffer, single values
  (``publish``) or batches (``publish_many(100)`` against ``mp.Queue.put``
  of lists of 100).  Timed by the consumer from its first value to its last;
  every publisher is told to go at once, when all are running.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from typing import Any

from _util import Comparison, compare, print_table

import puma

now = time.perf_counter
CAPACITY = 1000  # values in flight for small items (as in bench_core)
SHARE_CAPACITY = 64  # work items in flight when sharing: a few per consumer
BATCH = 100


def calibrate(seconds: float = 0.001) -> int:
    """Loop iterations of :func:`work` that take about ``seconds`` of CPU here."""
    rounds = 10_000
    while True:
        start = time.thread_time()
        work(rounds)
        spent = time.thread_time() - start
        if spent > 0.05:
            return max(1, int(rounds * seconds / spent))
        rounds *= 2


def work(rounds: int) -> int:
    """A fixed amount of CPU work (what a consumer does per value)."""
    total = 0
    for i in range(rounds):
        total += i * i
    return total


# --- puma runnables (module level: forkserver and spawn children import them) -------------------
class Producer(puma.Runnable):
    """Publishes ``count`` ints, one by one or in lists of ``batch``, once told to go."""

    def __init__(self, out: puma.Buffer[int], count: int, batch: int, go: Any, name: str = "producer") -> None:
        super().__init__(name, outputs=[out])
        self._out = out
        self._count = count
        self._batch = batch
        self.go = go

    def execute(self) -> None:
        pub = self.publisher(self._out)
        self.send_status("ready", True)
        self.go.wait()
        if self._batch == 1:
            publish = pub.publish
            for i in range(self._count):
                publish(i)
        else:
            chunk = list(range(self._batch))
            publish_many = pub.publish_many
            for _ in range(self._count // self._batch):
                publish_many(chunk)
        pub.complete()


class Worker(puma.Runnable):
    """Receives until the stream ends, doing ``rounds`` of work per value; reports (values, first, last)."""

    def __init__(self, inp: puma.Buffer[int], rounds: int, go: Any, name: str, batch: int = 1) -> None:
        super().__init__(name)
        self._in = inp
        self._rounds = rounds
        self._batch = batch
        self.go = go

    def execute(self) -> None:
        sub = self._in.subscribe()
        self.send_status("ready", True)
        self.go.wait()
        rounds = self._rounds
        n = 0
        first = now()
        if self._batch == 1:
            for _ in sub:
                if rounds:
                    work(rounds)
                n += 1
        else:
            receive_many = sub.receive_many
            try:
                while True:
                    n += len(receive_many(self._batch))
            except puma.BufferCompleted:
                pass
        self.send_status("result", (n, first, now()))


def puma_run(env: puma.Environment, publishers: int, subscribers: int, total: int, batch: int, rounds: int) -> float:
    """Items/s through one buffer from ``publishers`` to ``subscribers`` processes."""
    go = env.context.Event()  # type: ignore[attr-defined]
    capacity = SHARE_CAPACITY if rounds else CAPACITY
    with puma.Runner(env) as runner:
        buffer = env.buffer(int, capacity, "bench")
        workers = [
            runner.start(Worker(buffer, rounds, go, f"worker-{k}", 1 if rounds else batch)) for k in range(subscribers)
        ]
        with buffer.hold_open():  # every publisher joins before any may complete
            producers = [
                runner.start(Producer(buffer, total // publishers, batch, go, f"producer-{k}"))
                for k in range(publishers)
            ]
        for runnable in [*workers, *producers]:
            runnable.wait_status("ready", timeout=120)
        start = now()
        go.set()
        runner.join()
    results = [w.status("result") for w in workers]
    count = sum(r[0] for r in results)
    assert count == total // publishers * publishers, (count, total)
    first = start if rounds else min(r[1] for r in results)
    return count / (max(r[2] for r in results) - first)


# --- baselines -------------------------------------------------------------------------------------
def _q_produce(q: Any, count: int, batch: int, consumers: int, ready: Any, go: Any) -> None:
    ready.put(True)
    go.wait()
    if batch == 1:
        put = q.put
        for i in range(count):
            put(i)
    else:
        chunk = list(range(batch))
        for _ in range(count // batch):
            q.put(chunk)
    for _ in range(consumers):
        q.put(None)


def _q_consume(q: Any, rounds: int, producers: int, ready: Any, go: Any, results: Any) -> None:
    ready.put(True)
    go.wait()
    get = q.get
    first = now()
    n = 0
    ends = 0
    while True:
        value = get()
        if value is None:
            ends += 1
            if ends == producers:
                break
            continue
        if type(value) is list:
            n += len(value)
        else:
            if rounds:
                work(rounds)
            n += 1
    results.put((n, first, now()))


def queue_run(
    ctx: Any, publishers: int, subscribers: int, total: int, batch: int, rounds: int, fifo: bool = False
) -> float:
    """The same with an ``mp.Queue`` (or a faster_fifo Queue): items/s."""
    if fifo:
        import faster_fifo  # type: ignore[import-not-found]

        q: Any = faster_fifo.Queue(max_size_bytes=8 << 20)
    else:
        q = ctx.Queue(maxsize=(SHARE_CAPACITY if rounds else CAPACITY // batch))
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    # With several consumers each producer's end marks go to whoever reads them: every consumer
    # stops after one mark per producer... so a producer writes one mark per consumer, and a
    # consumer stops after seeing `publishers` marks (subscribers * publishers marks in all).
    consumers = [
        ctx.Process(target=_q_consume, args=(q, rounds, publishers, ready, go, results)) for _ in range(subscribers)
    ]
    producers = [
        ctx.Process(target=_q_produce, args=(q, total // publishers, batch, subscribers, ready, go))
        for _ in range(publishers)
    ]
    for process in [*consumers, *producers]:
        process.start()
    for _ in range(subscribers + publishers):
        ready.get()
    start = now()
    go.set()
    out = [results.get() for _ in range(subscribers)]
    for process in [*consumers, *producers]:
        process.join()
    count = sum(r[0] for r in out)
    assert count == total // publishers * publishers, (count, total)
    first = start if rounds else min(r[1] for r in out)
    return count / (max(r[2] for r in out) - first)


def _mpire_task(rounds: int, _value: int) -> int:
    return work(rounds)


def mpire_run(subscribers: int, total: int, rounds: int) -> float:
    """mpire WorkerPool(n).map over the same work items: items/s (start-up excluded)."""
    from functools import partial

    from mpire import WorkerPool

    with WorkerPool(n_jobs=subscribers, start_method="forkserver") as pool:
        pool.map(partial(_mpire_task, 1), range(subscribers * 4))  # the workers are up
        start = now()
        pool.map(partial(_mpire_task, rounds), range(total), chunk_size=4)
        return total / (now() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per side (default 3)")
    parser.add_argument("--quick", action="store_true", help="a fifth of the counts")
    parser.add_argument("--only", action="append", default=[], help="only groups containing this (repeatable)")
    args = parser.parse_args(argv)
    runs = args.runs
    k = 5 if args.quick else 1

    def wanted(group: str) -> bool:
        return not args.only or any(o in group for o in args.only)

    env = puma.ProcessEnvironment("forkserver")
    ctx = env.context
    rows: list[Comparison] = []
    try:
        import faster_fifo  # type: ignore[import-not-found]  # noqa: F401 - optional
    except ImportError:
        has_fifo = False
        print("faster-fifo is not installed: no faster-fifo rows", file=sys.stderr)
    else:
        has_fifo = True
    try:
        import mpire  # noqa: F401 - optional
    except ImportError:
        has_mpire = False
        print("mpire is not installed: no mpire rows", file=sys.stderr)
    else:
        has_mpire = True

    if wanted("sharing"):
        rounds = calibrate()
        items = 2000 // k
        for n in (1, 2, 4):
            rows.append(
                compare(
                    f"work sharing: {n} process subscriber(s), ~1 ms CPU per value",
                    unit="items/s",
                    ours=lambda n=n: puma_run(env, 1, n, items, 1, rounds),  # type: ignore[misc]
                    theirs=lambda n=n: queue_run(ctx, 1, n, items, 1, rounds),  # type: ignore[misc]
                    baseline=f"mp.Queue, {n} consumer process(es)",
                    runs=runs,
                    warmup=n == 1,
                )
            )
        rows.append(
            compare(
                "work sharing: 2 process subscribers against 1 (scaling on 2 cores)",
                unit="items/s",
                ours=lambda: puma_run(env, 1, 2, items, 1, rounds),
                theirs=lambda: puma_run(env, 1, 1, items, 1, rounds),
                baseline="puma, 1 subscriber",
                runs=runs,
                target=(">=", 1.6),
            )
        )
        if has_mpire:
            rows.append(
                compare(
                    "work sharing: 2 process subscribers, ~1 ms CPU per value",
                    unit="items/s",
                    ours=lambda: puma_run(env, 1, 2, items, 1, rounds),
                    theirs=lambda: mpire_run(2, items, rounds),
                    baseline="mpire WorkerPool(2).map, chunks of 4",
                    runs=runs,
                )
            )
    if wanted("fan-in"):
        single = 100_000 // k
        batched = 1_000_000 // k
        for m in (1, 4, 16):
            rows.append(
                compare(
                    f"fan-in: {m} publisher(s), publish",
                    unit="items/s",
                    ours=lambda m=m: puma_run(env, m, 1, single, 1, 0),  # type: ignore[misc]
                    theirs=lambda m=m: queue_run(ctx, m, 1, single, 1, 0),  # type: ignore[misc]
                    baseline="mp.Queue put/get",
                    runs=runs,
                    warmup=m == 1,
                )
            )
        for m in (1, 4, 16):
            rows.append(
                compare(
                    f"fan-in: {m} publisher(s), publish_many({BATCH})",
                    unit="items/s",
                    ours=lambda m=m: puma_run(env, m, 1, batched, BATCH, 0),  # type: ignore[misc]
                    theirs=lambda m=m: queue_run(ctx, m, 1, batched, BATCH, 0),  # type: ignore[misc]
                    baseline=f"mp.Queue of lists of {BATCH}",
                    runs=runs,
                    target=(">=", 1.0) if m == 16 else None,
                )
            )
        if has_fifo:
            rows.append(
                compare(
                    f"fan-in: 16 publishers, publish_many({BATCH})",
                    unit="items/s",
                    ours=lambda: puma_run(env, 16, 1, batched, BATCH, 0),
                    theirs=lambda: queue_run(ctx, 16, 1, batched, BATCH, 0, fifo=True),
                    baseline=f"faster_fifo.Queue of lists of {BATCH}",
                    runs=runs,
                )
            )
    print()
    print(f"puma {puma.__version__}, CPython {sys.version.split()[0]}, {multiprocessing.cpu_count()} CPUs, runs={runs}")
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
