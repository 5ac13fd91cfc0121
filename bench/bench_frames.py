"""Shared-memory frame benchmarks (issue #14): large arrays between processes, in place.

Run from the repository root::

    python bench/bench_frames.py              # every row, 3 runs each
    python bench/bench_frames.py --runs 5
    python bench/bench_frames.py --only kill  # rows whose name contains "kill"
    python bench/bench_frames.py --quick      # smaller counts, a smoke test

Rows (forkserver; the same work on both sides of each row):

* **16 MiB frames, producer -> consumer**: a producer process fills each frame
  with ``np.copyto`` from a warm source array and publishes it; the main
  program receives and releases it.  Against ``mp.Queue`` (the producer fills
  one reused array and puts it) and against the limit: ``np.copyto`` of the
  same array into warm shared memory, in one process, nothing handed over.
  Bytes/s from the first frame received to the last.
* **16 MiB arrays through an ordinary process buffer**: the same arrays
  published as plain values (no frame pool): above 64 KiB a process buffer
  copies them into its shared memory once and the reader uses that memory.
  Against ``mp.Queue``.
* **1 MiB frames/s**: the same, 1 MiB frames, against ``mp.Queue``.
* **hand-over latency**: one frame goes back and forth between two processes
  through two buffers (borrowed once, handed over each way), against a bare
  ``multiprocessing.Pipe`` ping-pong of 8 bytes (``send_bytes``); microseconds
  per round trip.  Both sides are two child processes started by the fork
  server one after the other (the echoing one first) while the main process
  waits: puma's two runnables, and two bare ``Process`` children.
* **hand-over latency, both processes on one CPU**: the same, with the two
  processes of each side pinned to CPU 0 (``os.sched_setaffinity``): a round
  trip is then the CPU time of the two hops, without the wake-up of an idle
  CPU that an idle 2-vCPU machine adds to every hop (and that a bare ``Pipe``,
  whose writer blocks in its read at once, is spared more often: its round
  trip swings between about 17 and 60 us from one run to the next here).
* **hand-over latency, each process on a CPU of its own**: the same, the
  two processes of each side pinned to CPUs 0 and 1: every hop wakes the
  other CPU, on both sides.  The unpinned row above lands on either
  placement, and not always on the same one for both sides: these two rows
  compare like with like.  Under the unpinned row a note says, for each
  side, in how many runs its pair ended on two CPUs (each process's last CPU,
  read from ``/proc``): the ratio compares like with like only when both
  sides ran alike.
* **an int through the same buffers**: the round trip above with an int
  instead of a frame, for reference: what the two process buffers cost
  themselves.
* **kill cycles**: a Runner starts a process that borrows two frames of a
  pool, is killed with SIGKILL, and the Runner returns the frames; the
  ``/dev/shm`` entries named by puma, the descriptors and the RSS of the
  main process are compared before and after (fork, to keep it short).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import statistics
import sys
import time
from typing import Any

import numpy as np
import psutil
from _util import Comparison, compare, print_table, stat

import puma

now = time.perf_counter
MiB = 1 << 20


class Filler(puma.Runnable):
    """Fills ``count`` frames from a warm source and publishes each."""

    def __init__(self, pool: puma.frames.FramePool, out: puma.Buffer[Any], count: int) -> None:
        super().__init__("filler", outputs=[out])
        self._pool, self._out, self._count = pool, out, count

    def execute(self) -> None:
        source = np.ones(self._pool.shape, self._pool.dtype)
        with self.publisher(self._out) as pub:
            for _ in range(self._count):
                frame = self._pool.borrow()
                np.copyto(frame.array, source)
                pub.publish(frame)


def puma_stream(nbytes: int, count: int) -> float:
    """Bytes/s of ``count`` frames of ``nbytes`` from a producer process to the main program."""
    env = puma.ProcessEnvironment("forkserver")
    pool = env.frame_pool((nbytes,), np.uint8, 4, "bench")
    with puma.Runner(env) as runner:
        raw = env.buffer(object, 4, "raw")
        runner.start(Filler(pool, raw, count + 1))
        sub = raw.subscribe()
        sub.receive().release()  # the first one: the producer is running
        start = now()
        for frame in sub:
            frame.release()
        spent = now() - start
        runner.join()
    pool.close()
    return nbytes * count / spent


def _queue_producer(queue: Any, nbytes: int, count: int) -> None:
    source = np.ones(nbytes, np.uint8)
    buf = np.empty(nbytes, np.uint8)
    for _ in range(count):
        np.copyto(buf, source)
        queue.put(buf)
    queue.put(None)


def queue_stream(nbytes: int, count: int) -> float:
    """The same through ``mp.Queue``."""
    ctx = multiprocessing.get_context("forkserver")
    queue = ctx.Queue(4)
    proc = ctx.Process(target=_queue_producer, args=(queue, nbytes, count + 1))
    proc.start()
    queue.get()
    start = now()
    got = 0
    while queue.get() is not None:
        got += 1
    spent = now() - start
    proc.join()
    queue.close()
    queue.join_thread()
    return nbytes * got / spent


def memcpy_limit(nbytes: int, count: int) -> float:
    """Bytes/s of ``np.copyto`` into warm shared memory: the limit of a producer writing in place."""
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(create=True, size=nbytes * 4)
    try:
        slots = [np.ndarray((nbytes,), np.uint8, buffer=shm.buf, offset=i * nbytes) for i in range(4)]
        source = np.ones(nbytes, np.uint8)
        for slot in slots:
            slot[:] = 0  # warm
        start = now()
        for i in range(count):
            np.copyto(slots[i % 4], source)
        spent = now() - start
        del slots
    finally:
        shm.close()
        shm.unlink()
    return nbytes * count / spent


class ArrayPublisher(puma.Runnable):
    """Fills one array from a warm source and publishes it ``count`` times (a plain value: copied)."""

    def __init__(self, out: puma.Buffer[Any], nbytes: int, count: int) -> None:
        super().__init__("arrays", outputs=[out])
        self._out, self._nbytes, self._count = out, nbytes, count

    def execute(self) -> None:
        source = np.ones(self._nbytes, np.uint8)
        buf = np.empty(self._nbytes, np.uint8)
        with self.publisher(self._out) as pub:
            for _ in range(self._count):
                np.copyto(buf, source)
                pub.publish(buf)


def puma_arrays(nbytes: int, count: int) -> float:
    """Bytes/s of ``count`` plain arrays of ``nbytes`` through an ordinary process buffer (no frame pool)."""
    env = puma.ProcessEnvironment("forkserver")
    with puma.Runner(env) as runner:
        arrays = env.buffer(np.ndarray, 4, "arrays")
        runner.start(ArrayPublisher(arrays, nbytes, count + 1))
        sub = arrays.subscribe()
        sub.receive()  # the first one: the producer is running
        start = now()
        got = 0
        for _ in sub:
            got += 1
        spent = now() - start
        runner.join()
    return nbytes * got / spent


def _cpu_of(pid: int | str = "self") -> int:
    """The CPU the process ``pid`` last ran on (Linux: /proc/PID/stat field 39); -1 where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[36])
    except (OSError, ValueError, IndexError):
        return -1


#: How many CPUs each side's pair ran on at the end of each hand-over sample (see _placement_note).
PLACED: dict[str, list[int]] = {"puma": [], "pipe": []}


def _placed(side: str, *cpus: int) -> None:
    if -1 not in cpus:
        PLACED[side].append(len(set(cpus)))


def _placement_note(row: Any = None) -> str:
    """Where the pairs of the samples just taken ran, in words (and the ratio of the runs alike); forget them."""
    words = []
    for side, label in (("puma", "puma's pair"), ("pipe", "the Pipe's pair")):
        counts = PLACED[side]
        if counts:
            words.append(f"{label} on two CPUs in {sum(c == 2 for c in counts)} of {len(counts)} runs")
    alike = []
    if (
        row is not None
        and row.theirs is not None
        and len(PLACED["puma"]) == len(PLACED["pipe"]) == len(row.ours.samples)
    ):
        pairs = zip(row.ours.samples, row.theirs.samples, PLACED["puma"], PLACED["pipe"], strict=True)
        alike = [a / b for a, b, p, q in pairs if p == q and b > 0]
    if alike:
        words.append(f"ratio of the {len(alike)} runs whose pairs ran alike: {statistics.median(alike):.2f}x (median)")
    PLACED["puma"].clear()
    PLACED["pipe"].clear()
    return "placement at the end of each run: " + "; ".join(words) if words else ""


def _pin(cpu: int | None) -> None:
    """Run this process on CPU ``cpu`` only (None: wherever the scheduler likes)."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


class Echo(puma.Runnable):
    """Hands every frame it receives back."""

    def __init__(self, inp: puma.Buffer[Any], out: puma.Buffer[Any], cpu: int | None = None) -> None:
        super().__init__("echo", outputs=[out])
        self._in, self._out, self._cpu = inp, out, cpu

    def execute(self) -> None:
        _pin(self._cpu)
        with self.publisher(self._out) as pub:
            for frame in self._in.subscribe():
                pub.publish(frame)
        self.send_status("cpu", _cpu_of())


class Pinger(puma.Runnable):
    """Sends one frame back and forth ``rounds`` times; reports microseconds per round trip."""

    def __init__(
        self,
        pool: puma.frames.FramePool,
        out: puma.Buffer[Any],
        back: puma.Buffer[Any],
        rounds: int,
        cpu: int | None = None,
    ) -> None:
        super().__init__("pinger", outputs=[out])
        self._pool, self._out, self._back, self._rounds, self._cpu = pool, out, back, rounds, cpu

    def execute(self) -> None:
        _pin(self._cpu)
        sub = self._back.subscribe()
        with self.publisher(self._out) as pub:
            frame = self._pool.borrow()
            for i in range(self._rounds + 50):
                if i == 50:
                    start = now()
                pub.publish(frame)
                frame = sub.receive()
            spent = now() - start
            cpu = _cpu_of()
            frame.release()
        self.send_status("us", spent / self._rounds * 1e6)
        self.send_status("cpu", cpu)


Cpus = tuple[int, int] | None  # (the pinger's CPU, the echo's CPU); None: wherever the scheduler likes


def puma_handover(rounds: int, cpus: Cpus = None) -> float:
    env = puma.ProcessEnvironment("forkserver")
    pool = env.frame_pool((MiB,), np.uint8, 2, "ping")
    mine, theirs = cpus or (None, None)
    with puma.Runner(env) as runner:
        out, back = env.buffer(object, 2, "out"), env.buffer(object, 2, "back")
        echo = runner.start(Echo(out, back, theirs))
        pinger = runner.start(Pinger(pool, out, back, rounds, mine))
        runner.join()
        us: float = pinger.status("us")
        _placed("puma", pinger.status("cpu"), echo.status("cpu"))
    pool.close()
    return us


class IntPinger(puma.Runnable):
    """The same round trip with an int instead of a frame: what the buffers themselves cost."""

    def __init__(self, out: puma.Buffer[Any], back: puma.Buffer[Any], rounds: int, cpu: int | None = None) -> None:
        super().__init__("int-pinger", outputs=[out])
        self._out, self._back, self._rounds, self._cpu = out, back, rounds, cpu

    def execute(self) -> None:
        _pin(self._cpu)
        sub = self._back.subscribe()
        with self.publisher(self._out) as pub:
            value = 1
            for i in range(self._rounds + 50):
                if i == 50:
                    start = now()
                pub.publish(value)
                value = sub.receive()
            spent = now() - start
        self.send_status("us", spent / self._rounds * 1e6)


def puma_int_pingpong(rounds: int, cpus: Cpus = None) -> float:
    env = puma.ProcessEnvironment("forkserver")
    mine, theirs = cpus or (None, None)
    with puma.Runner(env) as runner:
        out, back = env.buffer(object, 2, "out"), env.buffer(object, 2, "back")
        runner.start(Echo(out, back, theirs))
        pinger = runner.start(IntPinger(out, back, rounds, mine))
        runner.join()
        us: float = pinger.status("us")
    return us


def _pong(conn: Any, cpu: int | None = None) -> None:
    """Sends back every message; on the empty one, the CPU it last ran on, and ends."""
    _pin(cpu)
    while True:
        data = conn.recv_bytes()
        if not data:
            conn.send_bytes(str(_cpu_of()).encode())
            return
        conn.send_bytes(data)


def _ping(conn: Any, report: Any, rounds: int, cpu: int | None = None) -> None:
    """The timed side of the bare ping-pong: reports (us per round trip, its CPU, its peer's CPU)."""
    _pin(cpu)
    message = b"12345678"
    for _ in range(50):
        conn.send_bytes(message)
        conn.recv_bytes()
    start = now()
    for _ in range(rounds):
        conn.send_bytes(message)
        conn.recv_bytes()
    spent = now() - start
    mine = _cpu_of()
    conn.send_bytes(b"")
    report.send((spent / rounds * 1e6, mine, int(conn.recv_bytes())))


def pipe_pingpong(rounds: int, cpus: Cpus = None) -> float:
    """Microseconds per round trip of 8 bytes between two child processes, as puma's two runnables are.

    Both are started by the fork server, the echoing one first, while this
    process waits, as a Runner does; with ``cpus``, they run on those CPUs.
    """
    ctx = multiprocessing.get_context("forkserver")
    here, there = ctx.Pipe()
    results, report = ctx.Pipe(duplex=False)
    mine, theirs = cpus or (None, None)
    pong = ctx.Process(target=_pong, args=(there, theirs))
    pong.start()
    ping = ctx.Process(target=_ping, args=(here, report, rounds, mine))
    ping.start()
    us, cpu, peer = results.recv()
    ping.join()
    pong.join()
    for conn in (here, there, results, report):
        conn.close()
    _placed("pipe", cpu, peer)
    return float(us)


class Holder(puma.Runnable):
    def __init__(self, pool: puma.frames.FramePool) -> None:
        super().__init__("holder")
        self._pool = pool

    def execute(self) -> None:
        frames = [self._pool.borrow(), self._pool.borrow()]
        self.send_status("pid", os.getpid())
        self.wait_for_stop()
        del frames


def _puma_shm() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if re.match(r"puma-\d+-[0-9a-f]{12}$", name)}


def kill_cycles(cycles: int) -> tuple[Comparison, list[str]]:
    """``cycles`` SIGKILLs of a frame holder: what is left after, against before."""
    env = puma.ProcessEnvironment("fork")
    pool = env.frame_pool((MiB,), np.uint8, 2, "kill")
    me = psutil.Process()

    def cycle() -> None:
        try:
            with puma.Runner(env) as runner:
                holder = runner.start(Holder(pool))
                os.kill(holder.wait_status("pid", timeout=30), signal.SIGKILL)
                runner.join()
        except puma.ChildDiedError:
            pass

    for _ in range(5):
        cycle()  # what lives as long as the program
    shm, fds, rss = _puma_shm(), me.num_fds(), me.memory_info().rss
    start = now()
    for _ in range(cycles):
        cycle()
    spent = now() - start
    stats = pool.statistics()
    notes = [
        f"/dev/shm puma entries: {len(shm)} -> {len(_puma_shm())}",
        f"descriptors: {fds} -> {me.num_fds()}",
        f"RSS: {rss / MiB:.1f} -> {me.memory_info().rss / MiB:.1f} MiB",
        f"frames free after: {stats.free}/{stats.count}, returned after deaths: {stats.returned}",
    ]
    pool.close()
    row = Comparison(f"kill cycles ({cycles}, SIGKILL of a frame holder)", "cycles/s", stat([cycles / spent]))
    row.notes = notes
    return row, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", default="")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--kill-cycles", type=int, default=1000)
    args = parser.parse_args()
    big = 40 if not args.quick else 8
    small = 3000 if not args.quick else 300
    rounds = 2000 if not args.quick else 200
    cycles = args.kill_cycles if not args.quick else 50
    rows: list[Comparison] = []

    def wanted(name: str) -> bool:
        return args.only in name

    name = "16 MiB frames, producer -> consumer"
    if wanted(name):
        rows.append(
            compare(
                name + ", vs mp.Queue",
                unit="B/s",
                ours=lambda: puma_stream(16 * MiB, big),
                theirs=lambda: queue_stream(16 * MiB, big),
                baseline="mp.Queue",
                runs=args.runs,
                target=(">=", 25),
                warmup=True,
            )
        )
        rows.append(
            compare(
                name + ", vs np.copyto into warm shm",
                unit="B/s",
                ours=lambda: puma_stream(16 * MiB, big),
                theirs=lambda: memcpy_limit(16 * MiB, big),
                baseline="np.copyto (the limit)",
                runs=args.runs,
                target=(">=", 0.7),
            )
        )
    name = "16 MiB arrays through an ordinary process buffer"
    if wanted(name):
        rows.append(
            compare(
                name + ", vs mp.Queue",
                unit="B/s",
                ours=lambda: puma_arrays(16 * MiB, big),
                theirs=lambda: queue_stream(16 * MiB, big),
                baseline="mp.Queue",
                runs=args.runs,
                warmup=True,
            )
        )
    name = "1 MiB frames"
    if wanted(name):
        row = compare(
            name + " (frames/s = B/s / 1 MiB)",
            unit="B/s",
            ours=lambda: puma_stream(MiB, small),
            theirs=lambda: queue_stream(MiB, small),
            baseline="mp.Queue",
            runs=args.runs,
        )
        row.notes.append(f"frames/s: {row.ours.median / MiB:.0f} (target >= 10000)")
        rows.append(row)
    placements: list[tuple[str, Cpus, str]] = [
        ("", None, ""),
        (", both processes on one CPU", (0, 0), ", on one CPU too"),
    ]
    if len(os.sched_getaffinity(0)) >= 2:
        placements.append((", each process on a CPU of its own", (0, 1), ", one process per CPU too"))
    for suffix, cpus, baseline_suffix in placements:
        name = "hand-over latency, round trip" + suffix
        if wanted(name):
            row = compare(
                name,
                unit="us",
                ours=lambda cpus=cpus: puma_handover(rounds, cpus),
                theirs=lambda cpus=cpus: pipe_pingpong(rounds, cpus),
                baseline="Pipe ping-pong (send_bytes)" + baseline_suffix,
                runs=args.runs,
                target=("<=", 2),
            )
            note = _placement_note(row)
            if cpus is None and note:
                row.notes.append(note)
            rows.append(row)
    name = "an int through the same two buffers, round trip"
    if wanted(name):
        rows.append(
            compare(
                name + " (for reference)",
                unit="us",
                ours=lambda: puma_int_pingpong(rounds),
                theirs=lambda: pipe_pingpong(rounds),
                baseline="Pipe ping-pong (send_bytes)",
                runs=args.runs,
            )
        )
        _placement_note()  # (only the frame rows report where their pairs ran)
    if wanted("kill cycles"):
        row, _ = kill_cycles(cycles)
        print(f". {row.name}", file=sys.stderr)
        rows.append(row)
    print_table(rows)


if __name__ == "__main__":
    main()
