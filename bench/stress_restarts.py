"""Restart stress (issue #12): a pipeline whose middle stage is killed again and again; a soak of restarts.

Run from the repository root::

    python bench/stress_restarts.py                          # 1M items, a SIGKILL every 2 s, then 1000 restarts
    python bench/stress_restarts.py --items 200000 --soak 200   # smaller
    python bench/stress_restarts.py --at-least-once          # the value in flight is given again
    python bench/stress_restarts.py --fault raise            # the middle raises instead of being killed

**Stress**: source -> middle -> the main program, all processes (fork, or
``--method``), under ``RestartPolicy("one_for_one")``.  The source publishes
0..N-1; the middle forwards in batches, computing ``--spin-us`` per item
(20 us: 1M items take about 20 s, so that faults land mid-stream); every ``--interval`` seconds (with
+-25 % jitter) the middle is killed (``SIGKILL``), or, with ``--fault
raise``, told to raise at its next batch.  At the end every item must be
either delivered once, in order, or listed as a dead letter; at-least-once
mode allows duplicates of the redelivered items only.  The script prints
what was delivered, duplicated, out of order, dead-lettered and lost.

**Soak**: ``--soak`` restarts of a stage that raises at every value, then
the same with ``SIGKILL``; the process's descriptors and threads are counted
after a warm-up and at the end (neither may grow), and no journal of this
process may be left in ``/dev/shm`` (its total entry count is shown too, but
other programs on the machine change it).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import signal
import threading
import time
from pathlib import Path

import puma

BATCH = 256


class Source(puma.Runnable):
    def __init__(self, out: puma.Buffer[int], count: int) -> None:
        super().__init__("source", outputs=[out])
        self._out = out
        self._count = count

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for start in range(0, self._count, BATCH):
                pub.publish_many(range(start, min(start + BATCH, self._count)))


class Middle(puma.Runnable):
    """Forwards batches; raises at its next batch when the flag file appears (``--fault raise``)."""

    def __init__(self, inp: puma.Buffer[int], out: puma.Buffer[int], flag: str, spin: float) -> None:
        super().__init__("middle", outputs=[out])
        self._in = inp
        self._out = out
        self._flag = flag
        self._spin = spin  # seconds of busy work per value (a stage that computes)

    def execute(self) -> None:
        sub = self._in.subscribe()
        flag = Path(self._flag) if self._flag else None
        with self.publisher(self._out) as pub:
            while True:
                try:
                    values = sub.receive_many(BATCH)
                except puma.BufferCompleted:
                    return
                if flag is not None and flag.exists():
                    flag.unlink()
                    raise RuntimeError("told to fail")
                if self._spin:
                    until = time.perf_counter() + self._spin * len(values)
                    while time.perf_counter() < until:
                        pass
                pub.publish_many(values)


def stress(args: argparse.Namespace) -> bool:
    env = puma.ProcessEnvironment(args.method)
    policy = puma.RestartPolicy(
        "one_for_one", max_restarts=1_000_000, period=1.0, backoff=(0.0, 0.0), redeliver=args.at_least_once
    )
    flag = f"/tmp/puma-stress-{os.getpid()}.flag" if args.fault == "raise" else ""
    done = threading.Event()
    kills = 0

    def killer(runner: puma.Runner, middle: puma.Runnable) -> None:
        nonlocal kills
        while not done.wait(args.interval * random.uniform(0.75, 1.25)):
            if args.fault == "raise":
                Path(flag).touch()
            else:
                pid = runner.pid(middle)
                if pid is not None:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
            kills += 1

    start = time.perf_counter()
    received: list[int] = []
    with puma.Runner(env, on_failure=policy) as runner:
        a = env.buffer(int, 4096, "a")
        b = env.buffer(int, 4096, "b")
        middle = runner.start(Middle(a, b, flag, args.spin_us / 1e6))
        runner.start(Source(a, args.items))
        thread = threading.Thread(target=killer, args=(runner, middle), daemon=True)
        thread.start()
        sub = b.subscribe()
        while True:
            try:
                received.extend(sub.receive_many(4096))
            except puma.BufferCompleted:
                break
        done.set()
        thread.join()
    elapsed = time.perf_counter() - start
    if flag:
        Path(flag).unlink(missing_ok=True)
    stats = policy.statistics()
    dead = [d.value for d in stats.dead_letters]
    seen: set[int] = set()
    duplicates = 0
    disorder = 0
    last = -1
    for value in received:
        if value in seen:
            duplicates += 1
        else:
            seen.add(value)
            if value < last:
                disorder += 1
            last = max(last, value)
    missing = set(range(args.items)) - seen
    lost = missing - set(dead)
    print(
        f"stress: {args.items} items, {args.method}, fault {args.fault}, every ~{args.interval} s, "
        f"{'at-least-once' if args.at_least_once else 'dead letters'}: {elapsed:.1f} s, {kills} faults, "
        f"{stats.restarts} restarts"
    )
    print(
        f"  delivered {len(seen)}, duplicated {duplicates} (redelivered {stats.redelivered}), "
        f"out of order {disorder}, dead letters {len(dead)}, lost {len(lost)}"
    )
    ok = disorder == 0 and (duplicates <= stats.redelivered if args.at_least_once else duplicates == 0) and not lost
    print("  " + ("OK: every item delivered once in order or dead-lettered" if ok else "FAILED"))
    return ok


class Flaky(puma.Runnable):
    def __init__(self, inp: puma.Buffer[int], out: puma.Buffer[int], fault: str) -> None:
        super().__init__("flaky", outputs=[out])
        self._in = inp
        self._out = out
        self._fault = fault

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for value in self._in.subscribe():
                if value >= 0:
                    if self._fault == "raise":
                        raise RuntimeError(f"fails at {value}")
                    os.kill(os.getpid(), signal.SIGKILL)
                pub.publish(value)


def _resources() -> tuple[int, int, frozenset[str]]:
    shm = frozenset(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else frozenset()
    return len(os.listdir("/proc/self/fd")), threading.active_count(), shm


def soak(restarts: int, fault: str, method: str) -> bool:
    """``restarts`` restarts of a stage failing at every value; resources after a warm-up vs at the end."""
    env = puma.ProcessEnvironment(method)
    warm = min(20, restarts // 5)
    policy = puma.RestartPolicy("one_for_one", max_restarts=restarts + warm + 10, period=1e6, backoff=(0.0, 0.0))
    start = time.perf_counter()
    runner = puma.Runner(env, on_failure=policy)
    try:
        a = env.buffer(int, 8, "a")
        b = env.buffer(int, 8, "b")
        runner.start(Flaky(a, b, fault))
        runner.start(FeedAll(a))
        sub = b.subscribe()
        before = None
        for k in range(1, restarts + warm + 1):
            policy.wait_crashes(k, timeout=60)
            if k == warm:
                before = _resources()
        after = _resources()
        del sub
    finally:
        try:
            runner.close()
        except (RuntimeError, puma.ChildDiedError):
            pass  # the stage failing once more while everything stops: reported, as it should be
    elapsed = time.perf_counter() - start
    assert before is not None
    grew = [name for name, x, y in zip(("fds", "threads"), before[:2], after[:2], strict=True) if y > x]
    # Restarts make no semaphore or shared memory (the buffers are made once); what they make in
    # /dev/shm is the readers' journals, named after this process.  Other entries may come and go
    # there meanwhile (other programs on the machine): shown, not judged.
    ours = [name for name in after[2] if name.startswith(f"puma-journal-{os.getpid()}-")]
    if ours:
        grew.append(f"journals left: {ours}")
    print(
        f"soak: {restarts} restarts ({fault}, {method}) in {elapsed:.1f} s; fds {before[0]}->{after[0]}, "
        f"threads {before[1]}->{after[1]}, /dev/shm {len(before[2])}->{len(after[2])} entries (any program's): "
        + (f"GREW: {grew}" if grew else "OK")
    )
    return not grew


class FeedAll(puma.Runnable):
    """Publishes 0, 1, 2, ... until stopped."""

    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("feed", outputs=[out])
        self._out = out

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            value = 0
            while True:
                pub.publish(value)
                value += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between faults")
    parser.add_argument("--method", default="fork")
    parser.add_argument("--spin-us", type=float, default=20.0, help="busy work per item in the middle (microseconds)")
    parser.add_argument("--fault", choices=("sigkill", "raise"), default="sigkill")
    parser.add_argument("--at-least-once", action="store_true")
    parser.add_argument("--soak", type=int, default=1000, help="restarts in each soak (0: none)")
    args = parser.parse_args()
    logging.getLogger("puma.supervision").setLevel(logging.CRITICAL)
    ok = True
    if args.items:
        ok = stress(args) and ok
    if args.soak:
        ok = soak(args.soak, "raise", args.method) and ok
        ok = soak(args.soak, "sigkill", args.method) and ok
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
