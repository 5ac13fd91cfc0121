"""Start-up benchmarks (issue #11): many process runnables at once, memory per child, one fork start.

Run from the repository root::

    python bench/bench_startup.py                 # every row, 5 runs each (about 10 minutes on 2 CPUs)
    python bench/bench_startup.py --runs 7        # more runs
    python bench/bench_startup.py --quick         # 8 children, 3 runs: a smoke test
    python bench/bench_startup.py --only spawn    # rows whose name contains "spawn" (repeatable)

Rows, per start method (fork, forkserver, spawn) and per main module (one that
imports nothing but what it needs, one that also imports numpy):

* **start_all**: puma starts ``--children`` (64) idle process runnables with
  ``Runner.start_all(...)`` and waits until all of them run; the baseline
  starts as many bare ``multiprocessing.Process`` children, each of which sends
  a "started" message on its own ``Pipe``, and waits for all 64 messages.  The
  figure is the wall time of that, in ms.
* **memory**: while all of them idle, the private memory of each child
  (``psutil.Process(pid).memory_full_info().uss``, the pages no other process
  shares), median over the children, in MiB.
* **spawn, bare main imports puma too**: the same spawn row with a bare main
  module that imports puma without using it, so both sides' children import
  the same modules: the difference left is puma's own start-up machinery.
* **start_blocking, fork, first in a new Runner**: one ``start_blocking`` of an
  idle runnable in a fresh Runner (its set-up included) against one bare fork
  start plus the same handshake.

How the two sides are kept alike: every sample runs in a fresh interpreter (a
"worker": this script with ``--worker``), so each side has its own main module
and its own fork server.  puma's worker's main module imports puma (and numpy
on the numpy rows); the bare worker's imports numpy on the numpy rows and
nothing else, as the same program written without puma would.  Spawn and
forkserver children re-import that main module (CPython does so for both), so
the children do the same imports as their parent's main module.  With
``preload=["numpy"]`` puma's fork server imports numpy once; the bare side's
counterpart is ``set_forkserver_preload(["__main__", "numpy"])``.  Each worker
first starts and stops one child (unrecorded: it starts the fork server), then
times the 64.  The two sides alternate (puma, bare, puma, ...), and the ratio
is the median of the per-pair ratios puma / bare.

Targets (issue #11): 64 idle runnables start in <= 2x the bare time; private
memory per child <= 1.5x bare; fork ``start_blocking`` in a new Runner <= 1.3x
a bare start plus handshake.
"""

from __future__ import annotations

import sys


def _flag(name: str, default: str = "") -> str:
    """The value after ``name`` on the command line (read before anything is imported: see below)."""
    argv = sys.argv
    return argv[argv.index(name) + 1] if name in argv[:-1] else default


# The main module's imports are what the rows are about: they run here, in the worker, and again
# in every spawn or forkserver child (which re-imports the main module, with the parent's argv).
_MAIN_IMPORTS = [m for m in _flag("--main-imports").split(",") if m]
if "numpy" in _MAIN_IMPORTS:
    import numpy  # noqa: F401 - imported for its cost, as a user's main module would
if "puma" in _MAIN_IMPORTS:
    import puma

    class Idle(puma.Runnable):
        """Does nothing until stopped."""

        def __init__(self, name: str = "idle") -> None:
            super().__init__(name)

        def execute(self) -> None:
            self.wait_for_stop()


import argparse  # noqa: E402 - after the main module's measured imports on purpose
import json  # noqa: E402
import multiprocessing  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from multiprocessing.connection import Connection  # noqa: E402
from multiprocessing.connection import wait as wait_for  # noqa: E402
from typing import Any  # noqa: E402

now = time.perf_counter
HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1024 * 1024


# --- the bare side -----------------------------------------------------------------------------
def _bare_child(conn: Connection) -> None:
    """A bare child: say it started, then idle until told to end."""
    conn.send_bytes(b"started")
    conn.recv_bytes()


def _bare_start_all(ctx: Any, count: int) -> tuple[float, list[Any], list[Connection]]:
    """Start ``count`` bare children and wait for every "started"; (ms, processes, parent ends)."""
    start = now()
    processes = []
    mine = []
    for _ in range(count):
        parent_end, child_end = ctx.Pipe()
        process = ctx.Process(target=_bare_child, args=(child_end,))
        process.start()
        child_end.close()
        processes.append(process)
        mine.append(parent_end)
    waiting = set(mine)
    while waiting:
        for conn in wait_for(list(waiting)):
            conn.recv_bytes()
            waiting.discard(conn)  # type: ignore[arg-type]
    return (now() - start) * 1e3, processes, mine


def _bare_stop(processes: list[Any], conns: list[Connection]) -> None:
    for conn in conns:
        conn.send_bytes(b"stop")
    for process in processes:
        process.join()
    for conn in conns:
        conn.close()


def _uss_mib(pids: list[int]) -> list[float]:
    import psutil

    return [psutil.Process(pid).memory_full_info().uss / MIB for pid in pids]


def worker_all(side: str, method: str, count: int, preload: list[str]) -> dict[str, Any]:
    """One sample: the time to start ``count`` idle children and each child's private memory."""
    if side == "bare":
        ctx = multiprocessing.get_context(method)
        if method == "forkserver" and preload:
            ctx.set_forkserver_preload(["__main__", *preload])
        first, processes, conns = _bare_start_all(ctx, 1)  # starts the fork server, if any
        _bare_stop(processes, conns)
        elapsed, processes, conns = _bare_start_all(ctx, count)
        uss = _uss_mib([p.pid for p in processes])
        _bare_stop(processes, conns)
        return {"ms": elapsed, "first_ms": first, "uss": uss}
    env = puma.ProcessEnvironment(method, preload=preload)
    with puma.Runner(env) as runner:  # starts the fork server, if any
        start = now()
        runner.start_blocking(Idle("warm-up"))
        first = (now() - start) * 1e3
    # Generous timeouts: 64 spawn children starting, or exiting, at once on 2 busy CPUs can take
    # longer than the defaults (10 s for a child to exit after it finished); the bare side waits
    # as long as it takes, so puma's side does too.
    with puma.Runner(env, start_timeout=600, stop_timeout=600) as runner:
        start = now()
        idle = runner.start_all([Idle(f"idle-{i}") for i in range(count)])
        elapsed = (now() - start) * 1e3
        pids = [runner.pid(r) for r in idle]
        uss = _uss_mib([p for p in pids if p is not None])
    return {"ms": elapsed, "first_ms": first, "uss": uss}


def worker_single(method: str, pairs: int) -> dict[str, Any]:
    """``pairs`` alternating samples: start_blocking in a new Runner, and a bare start + handshake."""
    env = puma.ProcessEnvironment(method)
    ctx = env.context
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(pairs + 2):  # the first two pairs warm up (imports, first-touch of pages)
        with puma.Runner(env) as runner:
            start = now()
            runner.start_blocking(Idle())
            a = (now() - start) * 1e3
        b, processes, conns = _bare_start_all(ctx, 1)
        _bare_stop(processes, conns)
        if i >= 2:
            ours.append(a)
            theirs.append(b)
    return {"puma": ours, "bare": theirs}


# --- the orchestrator ---------------------------------------------------------------------------
def _run_worker(args: list[str], tries: int = 2) -> dict[str, Any]:
    """One sample from a fresh interpreter; a failed worker is run once more, then the error is raised."""
    for attempt in range(tries):
        try:
            return _run_worker_once(args)
        except RuntimeError as exc:
            print(f"\n{exc}", file=sys.stderr)
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


def _run_worker_once(args: list[str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "bench_startup.py"), "--worker", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _row(name: str, unit: str, ours: list[float], theirs: list[float], baseline: str, target: tuple[str, float]) -> Any:
    from _util import Comparison, stat

    row = Comparison(name, unit, stat(ours), stat(theirs), baseline=baseline, target=target)
    row.ratios = stat([a / b for a, b in zip(ours, theirs, strict=True)])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="samples per side (default 5)")
    parser.add_argument("--children", type=int, default=64, help="children per start_all sample (default 64)")
    parser.add_argument("--quick", action="store_true", help="8 children, 3 runs")
    parser.add_argument("--only", action="append", default=[], help="only rows whose name contains this")
    parser.add_argument("--pairs", type=int, default=30, help="single fork starts per side per run (default 30)")
    parser.add_argument("--save", help="append each row's raw samples to this file (JSON lines)")
    # worker options (the orchestrator passes them)
    parser.add_argument("--worker", choices=["all", "single"])
    parser.add_argument("--side", choices=["puma", "bare"])
    parser.add_argument("--method", default="forkserver")
    parser.add_argument("--main-imports", default="")
    parser.add_argument("--preload", default="")
    args = parser.parse_args()
    if args.worker == "all":
        preload = [m for m in args.preload.split(",") if m]
        print(json.dumps(worker_all(args.side, args.method, args.children, preload)))
        return
    if args.worker == "single":
        print(json.dumps(worker_single(args.method, args.pairs)))
        return

    from _util import print_table

    runs = 3 if args.quick else args.runs
    count = 8 if args.quick else args.children
    methods = [m for m in ("fork", "forkserver", "spawn") if m in multiprocessing.get_all_start_methods()]
    # (method, main-module imports besides puma, puma's preload, the bare side's preload, and what
    # the bare side's main module imports on top: "puma" for the row that shows what importing puma
    # costs a spawn child, the bare program importing puma without using it)
    cases: list[tuple[str, str, str, str, str]] = []
    for method in methods:
        cases.append((method, "", "", "", ""))
        cases.append((method, "numpy", "", "", ""))
        if method == "forkserver":
            cases.append((method, "numpy", "numpy", "numpy", ""))
    if "spawn" in methods:
        cases.append(("spawn", "", "", "", "puma"))

    def wanted(name: str) -> bool:
        return not args.only or any(o in name for o in args.only)

    time_rows = []
    memory_rows = []
    first_starts: list[str] = []
    failed: list[str] = []
    for method, main_imports, preload, bare_preload, bare_extra in cases:
        label = f"{method}, main imports {main_imports or 'nothing else'}"
        if preload:
            label += f", preload={preload.split(',')}"
        if bare_extra:
            label += f", bare main imports {bare_extra} too"
        if not wanted(label):
            continue
        common = ["--method", method, "--children", str(count)]
        puma_imports = ",".join(["puma", main_imports] if main_imports else ["puma"])
        puma_args = ["all", "--side", "puma", *common, "--main-imports", puma_imports]
        if preload:
            puma_args += ["--preload", preload]
        bare_args = ["all", "--side", "bare", *common]
        bare_imports = ",".join(m for m in (main_imports, bare_extra) if m)
        if bare_imports:
            bare_args += ["--main-imports", bare_imports]
        if bare_preload:
            bare_args += ["--preload", bare_preload]
        ours: list[dict[str, Any]] = []
        theirs: list[dict[str, Any]] = []
        try:
            for _ in range(runs):
                ours.append(_run_worker(puma_args))
                theirs.append(_run_worker(bare_args))
                print(".", end="", file=sys.stderr, flush=True)
        except RuntimeError:
            failed.append(label)
            print(f" {label}: a worker failed twice; row left out", file=sys.stderr, flush=True)
            continue
        print(f" {label}", file=sys.stderr, flush=True)
        if args.save:
            with open(args.save, "a", encoding="utf-8") as f:
                f.write(json.dumps({"row": label, "puma": ours, "bare": theirs}) + "\n")
        bare_name = f"{count} x mp.Process + Pipe handshake"
        if bare_preload:
            bare_name += f", set_forkserver_preload({['__main__', *bare_preload.split(',')]})"
        time_rows.append(
            _row(
                f"start_all({count}), {label}",
                "ms",
                [s["ms"] for s in ours],
                [s["ms"] for s in theirs],
                bare_name,
                ("<=", 2.0),
            )
        )
        memory_rows.append(
            _row(
                f"USS per child, {label}",
                "MiB",
                [statistics.median(s["uss"]) for s in ours],
                [statistics.median(s["uss"]) for s in theirs],
                bare_name,
                ("<=", 1.5),
            )
        )
        first_starts.append(
            f"{label}: puma {statistics.median(s['first_ms'] for s in ours):.0f} ms, "
            f"bare {statistics.median(s['first_ms'] for s in theirs):.0f} ms"
        )
    single_rows = []
    if "fork" in methods and wanted("start_blocking, fork"):
        pairs = 10 if args.quick else args.pairs
        ours_single: list[float] = []
        theirs_single: list[float] = []
        ratios: list[float] = []
        for _ in range(runs):
            sample = _run_worker(["single", "--method", "fork", "--main-imports", "puma", "--pairs", str(pairs)])
            ours_single.append(statistics.median(sample["puma"]))
            theirs_single.append(statistics.median(sample["bare"]))
            ratios.append(statistics.median(a / b for a, b in zip(sample["puma"], sample["bare"], strict=True)))
            print(".", end="", file=sys.stderr, flush=True)
        print(" start_blocking, fork, first in a new Runner", file=sys.stderr, flush=True)
        row = _row(
            f"start_blocking, fork, first in a new Runner (median of {pairs} per run)",
            "ms",
            ours_single,
            theirs_single,
            "Process.start + Pipe handshake",
            ("<=", 1.3),
        )
        from _util import stat

        row.ratios = stat(ratios)  # each run's median of its per-pair ratios
        single_rows.append(row)

    import puma as _puma  # for its version only

    load = os.getloadavg()
    print()
    print(
        f"puma {_puma.__version__}, CPython {sys.version.split()[0]}, {os.cpu_count()} CPUs, runs={runs}, "
        f"children={count}, load average at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}"
    )
    print()
    print_table(time_rows + memory_rows + single_rows)
    for label in failed:
        print(f"\nLeft out (a worker failed twice, see stderr): {label}")
    if first_starts:
        print()
        print("First start in a fresh interpreter (the unrecorded warm-up: starts the fork server, if any), medians:")
        for line in first_starts:
            print(f"* {line}")


if __name__ == "__main__":
    main()
