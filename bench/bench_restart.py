"""Restart benchmarks (issue #12): from a SIGKILL to the restarted runnable consuming again.

Run from the repository root::

    python bench/bench_restart.py              # fork, forkserver, spawn; 7 kills each
    python bench/bench_restart.py --runs 3     # fewer
    python bench/bench_restart.py --only fork  # rows whose name contains "fork"
    python bench/bench_restart.py --only journal --runs 5  # the journal's cost on a read

Rows, per start method:

* **SIGKILL -> consuming again**: a middle stage forwards values from buffer
  ``a`` to buffer ``b`` under ``RestartPolicy("one_for_one")``.  The main
  program kills it (``SIGKILL``), publishes the next value into ``a`` at once,
  and times until that value comes back through ``b``: the death seen, a new
  incarnation prepared, launched and subscribed again, the value received,
  forwarded and read.  The baseline is the same by hand with
  ``multiprocessing``: wait on the dead child's sentinel, start a new
  ``Process`` reading from a ``Pipe``, send the value, read the answer.
* **SIGKILL -> detected**: from the kill to the policy's record of the crash
  (``Crash.at``); the baseline, to the dead child's sentinel being ready.
* **journal on / off** (``--only journal``): the hot-path cost of the read
  journal a restartable reader keeps (:mod:`puma._buffers.journal`).  The
  main program reads ``JOURNAL_ITEMS`` values a forked publisher writes into
  a process buffer, with ``receive()`` (the path a followed reader takes),
  once with a journal and once without; items/s, the ratio is on / off.
  Values: small ints one by one (the publisher sets the pace), small ints
  in batches of 64 (the reader does), and 1 MiB NumPy arrays (out of band:
  the journal copies each array's bytes once more).

Targets (issue #12): consuming again < 200 ms with fork, < 400 ms with
forkserver; detection < 100 ms.  They are absolute, printed after the table;
the table's ratio is puma / bare multiprocessing.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from typing import Any

from _util import Comparison, compare, print_table

import puma

TARGETS = {"fork": 0.200, "forkserver": 0.400}
DETECTION_TARGET = 0.100


class Forward(puma.Runnable):
    """Publishes every value it receives."""

    def __init__(self, inp: puma.Buffer[int], out: puma.Buffer[int]) -> None:
        super().__init__("forward", outputs=[out])
        self._in = inp
        self._out = out

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for value in self._in.subscribe():
                pub.publish(value)


class Feed(puma.CommandDrivenRunnable):
    """Publishes what its ``send`` command is given (the main program's way into a buffer)."""

    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("feed", outputs=[out])
        self._out = out

    @puma.run_in_child_scope
    def send(self, value: int) -> None:
        self.publisher(self._out).publish(value)


def puma_kills(method: str, kills: int) -> tuple[list[float], list[float]]:
    """``kills`` SIGKILLs of a forwarding stage; (consuming-again times, detection times) in seconds."""
    env = puma.ProcessEnvironment(method)
    policy = puma.RestartPolicy("one_for_one", max_restarts=kills + 1, period=1e6, backoff=(0.0, 0.0))
    again: list[float] = []
    detected: list[float] = []
    with puma.Runner(env, on_failure=policy) as runner:
        a = env.buffer(int, 16, "a")
        b = env.buffer(int, 16, "b")
        forward = runner.start_blocking(Forward(a, b))
        feed = runner.start_blocking(Feed(a), puma.ThreadEnvironment())
        reader = b.subscribe()
        feed.send(0)
        assert reader.receive(timeout=60) == 0
        for k in range(1, kills + 1):
            pid = runner.pid(forward)
            assert pid is not None
            start_wall = time.time()
            start = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            feed.send(k)
            assert reader.receive(timeout=60) == k
            again.append(time.perf_counter() - start)
            crash = policy.wait_crashes(k, timeout=60).crashes[-1]
            detected.append(crash.at - start_wall)
        runner.stop(feed)
    return again, detected


def _bare_child(conn: Any) -> None:
    while True:
        value = conn.recv()
        conn.send(value)


def bare_kills(method: str, kills: int) -> tuple[list[float], list[float]]:
    """The same by hand: wait for the sentinel, start a new process, send, read back."""
    ctx: Any = multiprocessing.get_context(method)
    again: list[float] = []
    detected: list[float] = []
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_bare_child, args=(child,), daemon=True)
    proc.start()
    parent.send(0)
    assert parent.recv() == 0
    for k in range(1, kills + 1):
        start = time.perf_counter()
        os.kill(proc.pid, signal.SIGKILL)
        multiprocessing.connection.wait([proc.sentinel])
        detected.append(time.perf_counter() - start)
        proc.join()
        proc.close()
        parent.close()
        child.close()
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_bare_child, args=(child,), daemon=True)
        proc.start()
        parent.send(k)
        assert parent.recv() == k
        again.append(time.perf_counter() - start)
    proc.kill()
    proc.join()
    parent.close()
    child.close()
    return again, detected


JOURNAL_ITEMS = {"int": 100_000, "int, batches of 64": 400_000, "1 MiB array": 400}


class Publish(puma.Runnable):
    """Publishes ``count`` values of ``kind`` (see :data:`JOURNAL_ITEMS`)."""

    def __init__(self, out: puma.Buffer[object], kind: str, count: int) -> None:
        super().__init__("publish", outputs=[out])
        self._out = out
        self._kind = kind
        self._count = count

    def execute(self) -> None:
        import numpy as np

        array = np.ones(1 << 17, dtype=np.float64)  # 1 MiB
        with self.publisher(self._out) as pub:
            if self._kind.startswith("int, batches"):
                pub.publish(0)
                for start in range(0, self._count, 64):
                    pub.publish_many(range(start, min(start + 64, self._count)))
                return
            for index in range(self._count + 1):
                pub.publish(index if self._kind == "int" else array)


def read_rate(kind: str, journal_on: bool) -> float:
    """Items/s the main program reads from a process buffer, with a journal or without."""
    from puma._buffers.journal import Journal, journal_dir
    from puma._core.errors import BufferCompleted

    count = JOURNAL_ITEMS[kind]
    env = puma.ProcessEnvironment("fork")
    with puma.Runner(env) as runner:
        buffer = env.buffer(object, 64, "values")
        runner.start(Publish(buffer, kind, count))
        subscription: Any = buffer.subscribe()
        journal = Journal(os.path.join(journal_dir(), f"puma-bench-journal-{os.getpid()}")) if journal_on else None
        subscription._journal = journal
        receive = subscription.receive
        receive(timeout=60)  # the publisher runs: time from here
        start = time.perf_counter()
        n = 0
        try:
            while True:
                if journal is not None:
                    journal.done()  # what a followed reader does before each receive
                receive()
                n += 1
        except BufferCompleted:
            pass
        elapsed = time.perf_counter() - start
        subscription._journal = None
        if journal is not None:
            journal.close()
        runner.join()
    assert n == count, n
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="kills per start method")
    parser.add_argument("--only", action="append", default=[], help="rows whose name contains this")
    args = parser.parse_args()
    logging.getLogger("puma.supervision").setLevel(logging.ERROR)  # one warning per kill otherwise
    rows: list[Comparison] = []
    absolute: list[str] = []
    for method in ("fork", "forkserver", "spawn"):
        if method not in multiprocessing.get_all_start_methods():
            continue
        if args.only and not any(o in method for o in args.only):
            continue
        ours = puma_kills(method, args.runs)
        theirs = bare_kills(method, args.runs)
        mine = iter(ours[0])
        bare = iter(theirs[0])
        rows.append(
            compare(
                f"SIGKILL -> consuming again, {method}",
                unit="ms",
                ours=lambda it=mine: next(it) * 1000,  # type: ignore[misc]
                theirs=lambda it=bare: next(it) * 1000,  # type: ignore[misc]
                baseline="multiprocessing by hand",
                runs=args.runs,
            )
        )
        mine_d = iter(ours[1])
        bare_d = iter(theirs[1])
        rows.append(
            compare(
                f"SIGKILL -> detected, {method}",
                unit="ms",
                ours=lambda it=mine_d: next(it) * 1000,  # type: ignore[misc]
                theirs=lambda it=bare_d: next(it) * 1000,  # type: ignore[misc]
                baseline="sentinel ready",
                runs=args.runs,
            )
        )
        median_again = sorted(ours[0])[len(ours[0]) // 2]
        median_detect = sorted(ours[1])[len(ours[1]) // 2]
        if method in TARGETS:
            verdict = "met" if median_again < TARGETS[method] else "NOT met"
            absolute.append(
                f"{method}: consuming again {median_again * 1000:.1f} ms (target < {TARGETS[method] * 1000:.0f} ms: "
                f"{verdict})"
            )
        else:
            absolute.append(f"{method}: consuming again {median_again * 1000:.1f} ms (no target)")
        verdict = "met" if median_detect < DETECTION_TARGET else "NOT met"
        absolute.append(f"{method}: detected {median_detect * 1000:.1f} ms (target < 100 ms: {verdict})")
    for kind in JOURNAL_ITEMS:
        if args.only and not any(o in f"journal {kind}" for o in args.only):
            continue
        rows.append(
            compare(
                f"read with the journal on / off, {kind}",
                unit="items/s",
                ours=lambda k=kind: read_rate(k, True),  # type: ignore[misc]
                theirs=lambda k=kind: read_rate(k, False),  # type: ignore[misc]
                baseline="journal off",
                runs=args.runs,
                warmup=True,
            )
        )
    print_table(rows)
    print()
    print("\n".join(absolute))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
