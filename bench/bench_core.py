"""Core runtime benchmarks (issue #2): puma against the standard library, side by side.

Run from the repository root::

    python bench/bench_core.py               # everything, 5 runs each (a few minutes)
    python bench/bench_core.py --runs 7      # more runs
    python bench/bench_core.py --quick       # smaller counts, for a smoke test
    python bench/bench_core.py --only start  # rows whose group name contains "start"

Groups: thread (buffers), process (buffers; faster-fifo rows if it is installed), arrays, command,
start, mpire.

Batched rows compare like with like: ``publish_many``/``receive_many`` of 100 against queues
carrying lists of 100 (``mp.Queue``, ``queue.Queue``, ``faster_fifo.Queue``) and against
faster-fifo's own ``put_many``/``get_many``.  The mpire start row does the same on both sides: a
start, one task there and back (a command on puma's side, a one-item ``map`` on mpire's) and a
stop.  The start rows here have a main module that imports puma and nothing heavy; see
``bench/bench_startup.py`` for a main module importing numpy, ``preload``, and 64 children at once.

Every row runs puma's public API (``puma.Runner``, ``env.buffer``, runnables;
producers publish from inside a running runnable) and a baseline built on the
standard library, alternately, and prints the median and spread (min-max) of
each and the median of the per-run ratios puma / baseline.  Throughput is
timed by the consumer, from its first value to its last, so start-up is not
counted; latencies are the mean of many round trips per run; start times are
one start per run.  The table is Markdown, ready for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import multiprocessing
import queue
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from _util import Comparison, compare, print_table

import puma

ARRAY_BYTES = 1 << 20
CAPACITY = 1000  # items in flight, for every bounded buffer or queue of small items
# Nothing heavy is imported at the top: forkserver and spawn children re-import this script
# (CPython does so for every child), and the start-up rows should time puma, not numpy.
BATCH = 100
ARRAY_CAPACITY = 8

now = time.perf_counter


# --- puma runnables (module level: spawn and forkserver children import them) ------------------
class Producer(puma.Runnable):
    """Publishes ``count`` copies of ``item`` one by one, or in lists of ``batch``."""

    def __init__(self, out: puma.Buffer[Any], count: int, batch: int = 1, item: Any = 1) -> None:
        super().__init__("producer", outputs=[out])
        self._out = out
        self._count = count
        self._batch = batch
        self._item = item

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            item = self._item
            if self._batch == 1:
                publish = pub.publish
                for _ in range(self._count):
                    publish(item)
            else:
                chunk = [item] * self._batch
                publish_many = pub.publish_many
                for _ in range(self._count // self._batch):
                    publish_many(chunk)


class Consumer(puma.Runnable):
    """Receives everything; reports ``(values, first, last)`` times as the status "result"."""

    def __init__(self, inp: puma.Buffer[Any], batch: int = 1) -> None:
        super().__init__("consumer")
        self._in = inp
        self._batch = batch

    def execute(self) -> None:
        sub = self._in.subscribe()
        if self._batch == 1:
            sub.receive()
            first = now()
            n = 1
            for _ in sub:
                n += 1
        else:
            receive_many = sub.receive_many
            batch = self._batch
            n = len(receive_many(batch))
            first = now()
            try:
                while True:
                    n += len(receive_many(batch))
            except puma.BufferCompleted:
                pass
        self.send_status("result", (n, first, now()))


class Echo(puma.Runnable):
    """Answers commands until stopped."""

    def __init__(self) -> None:
        super().__init__("echo")

    @puma.run_in_child_scope
    def ping(self, value: int) -> int:
        return value

    def execute(self) -> None:
        self.wait_for_stop()


class Idle(puma.Runnable):
    """Does nothing until stopped."""

    def __init__(self) -> None:
        super().__init__("idle")

    def execute(self) -> None:
        self.wait_for_stop()


def _item_bytes(item: Any) -> float:
    """Bytes of an array item (rates become bytes/s), else 1 (rates stay items/s)."""
    nbytes = getattr(item, "nbytes", None)
    return float(nbytes) if nbytes is not None else 1.0


def _rate(result: tuple[int, float, float], scale: float = 1.0) -> float:
    n, first, last = result
    return (n - 1) * scale / max(last - first, 1e-9)


def puma_stream(env: puma.Environment, count: int, batch: int, item: Any = 1, capacity: int = CAPACITY) -> float:
    """Values (or bytes, for arrays) per second through one puma buffer, producer to consumer."""
    with puma.Runner(env) as runner:
        buffer: puma.Buffer[Any] = env.buffer(type(item), capacity, "bench")
        consumer = runner.start(Consumer(buffer, batch))
        runner.start(Producer(buffer, count, batch, item))
        runner.join()
    return _rate(consumer.status("result"), _item_bytes(item))


# --- standard-library baselines -----------------------------------------------------------------
def _q_produce(q: Any, count: int, batch: int, item: Any) -> None:
    if batch == 1:
        put = q.put
        for _ in range(count):
            put(item)
    else:
        chunk = [item] * batch
        for _ in range(count // batch):
            q.put(chunk)
    q.put(None)


def _q_consume(q: Any, batch: int, report: Callable[[tuple[int, float, float]], None]) -> None:
    get = q.get
    get()
    first = now()
    n = 1 if batch == 1 else batch
    while True:
        value = get()
        if value is None:
            break
        n += 1 if batch == 1 else len(value)
    report((n, first, now()))


def _q_consume_to_pipe(q: Any, batch: int, conn: Connection) -> None:
    _q_consume(q, batch, conn.send)


def queue_stream(count: int, batch: int, capacity: int = CAPACITY) -> float:
    """queue.Queue between two threads: items/s (``batch`` > 1 puts lists)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=capacity)
    out: list[tuple[int, float, float]] = []
    consumer = threading.Thread(target=_q_consume, args=(q, batch, out.append))
    producer = threading.Thread(target=_q_produce, args=(q, count, batch, 1))
    consumer.start()
    producer.start()
    producer.join()
    consumer.join()
    return _rate(out[0])


def mp_queue_stream(ctx: Any, count: int, batch: int, item: Any = 1, capacity: int = CAPACITY) -> float:
    """multiprocessing.Queue between two processes (``batch`` > 1 puts lists)."""
    q = ctx.Queue(maxsize=capacity)
    receiver, sender = ctx.Pipe(duplex=False)
    consumer = ctx.Process(target=_q_consume_to_pipe, args=(q, batch, sender))
    producer = ctx.Process(target=_q_produce, args=(q, count, batch, item))
    consumer.start()
    producer.start()
    result = receiver.recv()
    producer.join()
    consumer.join()
    q.close()
    receiver.close()
    sender.close()
    return _rate(result, _item_bytes(item))


def _ff_produce(q: Any, count: int, batch: int, mode: str) -> None:
    timeout = 1e9  # block as long as it takes (faster-fifo's default is 10 s)
    if batch == 1:
        put = q.put
        for _ in range(count):
            put(1, timeout=timeout)
    elif mode == "many":
        chunk = [1] * batch
        put_many = q.put_many
        for _ in range(count // batch):
            put_many(chunk, timeout=timeout)
    else:
        chunk = [1] * batch
        for _ in range(count // batch):
            q.put(chunk, timeout=timeout)
    q.put(None, timeout=timeout)


def _ff_consume(q: Any, batch: int, mode: str, conn: Connection) -> None:
    timeout = 1e9
    if mode == "many":  # ints, taken up to ``batch`` at a time; the end marker comes last
        get_many = q.get_many
        values = get_many(timeout=timeout, max_messages_to_get=batch)
        first = now()
        n = len(values)
        while values[-1] is not None:
            values = get_many(timeout=timeout, max_messages_to_get=batch)
            n += len(values)
        n -= 1  # the end marker
    else:
        get = q.get
        get(timeout=timeout)
        first = now()
        n = 1 if batch == 1 else batch
        while True:
            value = get(timeout=timeout)
            if value is None:
                break
            n += 1 if batch == 1 else len(value)
    conn.send((n, first, now()))


def faster_fifo_stream(ctx: Any, count: int, batch: int, mode: str = "items", capacity: int = CAPACITY) -> float:
    """faster_fifo.Queue between two processes: single puts, ``put_many``/``get_many`` ("many") or lists."""
    import faster_fifo

    q = faster_fifo.Queue(max_size_bytes=1 << 22, maxsize=capacity)
    receiver, sender = ctx.Pipe(duplex=False)
    consumer = ctx.Process(target=_ff_consume, args=(q, batch, mode, sender))
    producer = ctx.Process(target=_ff_produce, args=(q, count, batch, mode))
    consumer.start()
    producer.start()
    result = receiver.recv()
    producer.join()
    consumer.join()
    receiver.close()
    sender.close()
    return _rate(result)


def _have(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        print(f"{module} is not installed: no {module} rows", file=sys.stderr)
        return False
    return True


# --- command round trips ------------------------------------------------------------------------
def puma_command(env: puma.Environment, rounds: int) -> float:
    """Mean microseconds of a blocking command call on a running runnable."""
    with puma.Runner(env) as runner:
        echo = runner.start_blocking(Echo())
        for i in range(20):
            echo.ping(i)
        start = now()
        for i in range(rounds):
            echo.ping(i)
        elapsed = now() - start
    return elapsed / rounds * 1e6


def _pong(conn: Connection) -> None:
    while True:
        value = conn.recv()
        if value is None:
            return
        conn.send(value)


def pipe_ping_pong(ctx: Any, rounds: int) -> float:
    """Mean microseconds of a round trip over a raw multiprocessing.Pipe."""
    mine, theirs = ctx.Pipe()
    process = ctx.Process(target=_pong, args=(theirs,))
    process.start()
    theirs.close()
    for i in range(20):
        mine.send(i)
        mine.recv()
    start = now()
    for i in range(rounds):
        mine.send(i)
        mine.recv()
    elapsed = now() - start
    mine.send(None)
    process.join()
    mine.close()
    return elapsed / rounds * 1e6


def _thread_pong(requests: queue.Queue[int | None], replies: queue.Queue[int]) -> None:
    while True:
        value = requests.get()
        if value is None:
            return
        replies.put(value)


def thread_ping_pong(rounds: int) -> float:
    """Mean microseconds of a round trip to another thread over two queue.Queues."""
    requests: queue.Queue[int | None] = queue.Queue()
    replies: queue.Queue[int] = queue.Queue()
    thread = threading.Thread(target=_thread_pong, args=(requests, replies))
    thread.start()
    for i in range(20):
        requests.put(i)
        replies.get()
    start = now()
    for i in range(rounds):
        requests.put(i)
        replies.get()
    elapsed = now() - start
    requests.put(None)
    thread.join()
    return elapsed / rounds * 1e6


# --- start-up -----------------------------------------------------------------------------------
def puma_start(env: puma.Environment) -> float:
    """Milliseconds of ``runner.start_blocking`` of an idle process runnable (fresh Runner)."""
    with puma.Runner(env) as runner:
        start = now()
        runner.start_blocking(Idle())
        elapsed = now() - start
    return elapsed * 1e3


class LiveRunnerStarts:
    """Milliseconds of ``start_blocking`` of one more idle runnable in a Runner already running.

    Each call starts one more (they stay idle until :meth:`close`), so what is
    timed is the start alone, not the Runner's own set-up (its supervisor and
    log listener threads, started with its first runnable).
    """

    def __init__(self, env: puma.Environment) -> None:
        self._runner = puma.Runner(env)
        self._runner.start_blocking(Idle())

    def __call__(self) -> float:
        start = now()
        self._runner.start_blocking(Idle())
        return (now() - start) * 1e3

    def close(self) -> None:
        self._runner.close()


def _handshake(conn: Connection) -> None:
    conn.send("running")
    conn.recv()


def bare_start(ctx: Any) -> float:
    """Milliseconds of a bare Process start plus a handshake over a Pipe."""
    start = now()
    mine, theirs = ctx.Pipe()
    process = ctx.Process(target=_handshake, args=(theirs,))
    process.start()
    mine.recv()
    elapsed = now() - start
    mine.send(None)
    process.join()
    theirs.close()
    mine.close()
    return elapsed * 1e3


def _noop(value: int) -> int:
    return value


def puma_start_task_stop(env: puma.Environment) -> float:
    """Milliseconds for a fresh Runner to start a process runnable, answer one command and stop."""
    start = now()
    with puma.Runner(env) as runner:
        echo = runner.start_blocking(Echo())
        echo.ping(0)
    return (now() - start) * 1e3


def mpire_start(method: str) -> float:
    """Milliseconds for an mpire WorkerPool(1) to start, return one trivial task and stop."""
    from mpire.pool import WorkerPool

    start = now()
    with WorkerPool(n_jobs=1, start_method=method) as pool:
        pool.map(_noop, [0], progress_bar=False)
    return (now() - start) * 1e3


def mpire_map(count: int) -> float:
    """Items/s of mpire WorkerPool(1).map of small ints in chunks of BATCH (a round trip each)."""
    from mpire.pool import WorkerPool

    with WorkerPool(n_jobs=1, start_method="fork") as pool:
        pool.map(_noop, range(BATCH), chunk_size=BATCH, progress_bar=False)
        start = now()
        pool.map(_noop, range(count), chunk_size=BATCH, progress_bar=False)
        elapsed = now() - start
    return count / elapsed


# --- the table ----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per side (default 5; start-up uses at least 9)")
    parser.add_argument("--quick", action="store_true", help="a fifth of the counts")
    parser.add_argument("--only", action="append", default=[], help="only groups containing this (repeatable)")
    args = parser.parse_args(argv)
    runs = args.runs
    k = 5 if args.quick else 1

    def wanted(group: str) -> bool:
        return not args.only or any(o in group for o in args.only)

    tenv = puma.ThreadEnvironment()
    penv = puma.ProcessEnvironment()  # forkserver on Linux
    pctx = penv.context
    rows: list[Comparison] = []
    import numpy as np

    array = np.ones(ARRAY_BYTES // 8)

    if wanted("thread"):
        n = 200_000 // k
        rows.append(
            compare(
                "thread buffer: publish/receive",
                unit="items/s",
                ours=lambda: puma_stream(tenv, n, 1),
                theirs=lambda: queue_stream(n, 1),
                baseline="queue.Queue put/get",
                runs=runs,
                target=(">=", 0.8),
            )
        )
        nb = 2_000_000 // k
        rows.append(
            compare(
                f"thread buffer: publish_many/receive_many ({BATCH})",
                unit="items/s",
                ours=lambda: puma_stream(tenv, nb, BATCH),
                theirs=lambda: queue_stream(nb, BATCH, CAPACITY // BATCH),
                baseline=f"queue.Queue of lists of {BATCH}",
                runs=runs,
            )
        )
    if wanted("process"):
        n = 100_000 // k
        rows.append(
            compare(
                "process buffer: publish/receive",
                unit="items/s",
                ours=lambda: puma_stream(penv, n, 1),
                theirs=lambda: mp_queue_stream(pctx, n, 1),
                baseline="mp.Queue put/get",
                runs=runs,
                target=(">=", 1.0),
                warmup=True,
            )
        )
        nb = 2_000_000 // k
        rows.append(
            compare(
                f"process buffer: publish_many/receive_many ({BATCH})",
                unit="items/s",
                ours=lambda: puma_stream(penv, nb, BATCH),
                theirs=lambda: mp_queue_stream(pctx, nb, BATCH, capacity=CAPACITY // BATCH),
                baseline=f"mp.Queue of lists of {BATCH}",
                runs=runs,
            )
        )
        if _have("faster_fifo"):
            rows.append(
                compare(
                    "process buffer: publish/receive",
                    unit="items/s",
                    ours=lambda: puma_stream(penv, n, 1),
                    theirs=lambda: faster_fifo_stream(pctx, n, 1),
                    baseline="faster_fifo.Queue put/get",
                    runs=runs,
                    warmup=True,
                )
            )
            rows.append(
                compare(
                    f"process buffer: publish_many/receive_many ({BATCH})",
                    unit="items/s",
                    ours=lambda: puma_stream(penv, nb, BATCH),
                    theirs=lambda: faster_fifo_stream(pctx, nb, BATCH, "many"),
                    baseline=f"faster_fifo put_many/get_many ({BATCH})",
                    runs=runs,
                )
            )
            rows.append(
                compare(
                    f"process buffer: publish_many/receive_many ({BATCH})",
                    unit="items/s",
                    ours=lambda: puma_stream(penv, nb, BATCH),
                    theirs=lambda: faster_fifo_stream(pctx, nb, BATCH, "lists", CAPACITY // BATCH),
                    baseline=f"faster_fifo.Queue of lists of {BATCH}",
                    runs=runs,
                )
            )
    if wanted("arrays"):
        na = 400 // k
        rows.append(
            compare(
                "process buffer: 1 MiB numpy arrays",
                unit="MB/s",
                ours=lambda: puma_stream(penv, na, 1, array, ARRAY_CAPACITY) / 1e6,
                theirs=lambda: mp_queue_stream(pctx, na, 1, array, ARRAY_CAPACITY) / 1e6,
                baseline="mp.Queue put/get",
                runs=runs,
                warmup=True,
            )
        )
    if wanted("command"):
        rounds = 2000 // k
        rows.append(
            compare(
                "command round trip, process runnable",
                unit="us",
                ours=lambda: puma_command(penv, rounds),
                theirs=lambda: pipe_ping_pong(pctx, rounds),
                baseline="mp.Pipe ping-pong",
                runs=runs,
                target=("<=", 2.0),
                warmup=True,
            )
        )
        rows.append(
            compare(
                "command round trip, thread runnable",
                unit="us",
                ours=lambda: puma_command(tenv, rounds * 2),
                theirs=lambda: thread_ping_pong(rounds * 2),
                baseline="queue.Queue ping-pong",
                runs=runs,
            )
        )
    if wanted("start"):
        for method in ("fork", "forkserver", "spawn"):
            env = puma.ProcessEnvironment(method)
            ctx = env.context
            live = LiveRunnerStarts(env)
            try:
                rows.append(
                    compare(
                        f"start_blocking, {method}, in a running Runner",
                        unit="ms",
                        ours=live,
                        theirs=lambda ctx=ctx: bare_start(ctx),  # type: ignore[misc]
                        baseline="Process.start + Pipe handshake",
                        runs=max(runs, 9),
                        target=("<=", 1.5),
                        warmup=True,
                    )
                )
            finally:
                live.close()
            rows.append(
                compare(
                    f"start_blocking, {method}, first in a new Runner",
                    unit="ms",
                    ours=lambda env=env: puma_start(env),  # type: ignore[misc]
                    theirs=lambda ctx=ctx: bare_start(ctx),  # type: ignore[misc]
                    baseline="Process.start + Pipe handshake",
                    runs=max(runs, 9),
                    target=("<=", 1.3 if method == "fork" else 1.5),  # issue #11 tightened fork to 1.3x
                )
            )
    if wanted("mpire"):
        try:
            import mpire  # noqa: F401 - optional
        except ImportError:
            print("mpire is not installed: no mpire rows", file=sys.stderr)
        else:
            nb = 2_000_000 // k
            rows.append(
                compare(
                    f"process buffer: publish_many/receive_many ({BATCH})",
                    unit="items/s",
                    ours=lambda: puma_stream(penv, nb, BATCH),
                    theirs=lambda: mpire_map(nb // 4),
                    baseline=f"mpire WorkerPool(1).map, chunks of {BATCH} (there and back)",
                    runs=runs,
                )
            )
            for method in ("fork", "forkserver"):
                menv = puma.ProcessEnvironment(method)
                rows.append(
                    compare(
                        f"Runner + start_blocking + 1 command + stop, {method}",
                        unit="ms",
                        ours=lambda menv=menv: puma_start_task_stop(menv),  # type: ignore[misc]
                        theirs=lambda method=method: mpire_start(method),  # type: ignore[misc]
                        baseline="mpire WorkerPool(1) start + 1 task (map) + stop",
                        runs=max(runs, 9),
                        warmup=True,
                    )
                )
    print()
    print(f"puma {puma.__version__}, CPython {sys.version.split()[0]}, {multiprocessing.cpu_count()} CPUs, runs={runs}")
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
