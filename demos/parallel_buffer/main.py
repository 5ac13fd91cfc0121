"""Parallel buffer: a getter fills shared chunks at a set rate, worker processes transform them into one region.

    python demos/parallel_buffer/main.py                      # worker processes (forkserver)
    python demos/parallel_buffer/main.py --env thread         # the same program in threads
    python demos/parallel_buffer/main.py --frames 200 --workers 3 --rate 100

The getter borrows a chunk of a frame pool (it waits while every chunk is in
use: the workers set the pace), fills it in place, and publishes it into one
buffer that the workers share: each frame goes to one worker, as a small
handle, and the worker reads and writes the same memory the getter filled.
Each worker writes its result row for that frame into a shared output region,
marks that part done and releases the chunk. The main program waits until
every part is done, checks the whole region against the expected results, and
prints a summary.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

import puma
from puma.frames import Frame, FramePool, SharedRegion


def expected_row(k: int, width: int) -> np.ndarray[Any, Any]:
    """What a worker computes for frame ``k``: the column means of the frame, doubled."""
    return 2.0 * (k + np.arange(width, dtype=np.float64))


class Getter(puma.Runnable):
    """Fills chunks at a set rate (frame k holds k + column index in every row) and publishes them."""

    def __init__(self, pool: FramePool, out: puma.Buffer[Frame], frames: int, rate: float) -> None:
        super().__init__("getter", outputs=[out])
        self._pool, self._out, self._frames, self._period = pool, out, frames, 1.0 / rate

    def execute(self) -> None:
        width = self._pool.shape[1]
        columns = np.arange(width, dtype=self._pool.dtype)
        with self.publisher(self._out) as pub:
            next_at = time.monotonic()
            for k in range(self._frames):
                frame = self._pool.borrow()  # waits (in the one wait) while every chunk is in use
                frame.array[...] = columns + k  # in place: the chunk's shared memory
                pub.publish(frame)  # hands it over: the getter may no longer touch it
                next_at += self._period
                self.wait_for_stop(max(0.0, next_at - time.monotonic()))  # the set rate; a stop ends it at once
                if self.stop_requested:
                    return


class Worker(puma.Runnable):
    """Transforms the frames it receives, in place, and writes one result row each into the region."""

    def __init__(self, name: str, inp: puma.Buffer[Frame], region: SharedRegion) -> None:
        super().__init__(name)
        self._in, self._region = inp, region

    def execute(self) -> None:
        done = 0
        for frame in self._in.subscribe():  # the workers share the buffer: each frame goes to one of them
            with frame:  # released back to the pool at the end
                array = frame.array
                k = int(array[0, 0])  # the getter's frame number
                array *= 2  # the transform, in place (the worker owns the chunk now)
                self._region.part(k)[0] = array.mean(axis=0)
                self._region.done(k)
            done += 1
        self.send_status("done", (os.getpid(), done))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", choices=("thread", "process"), default="process")
    parser.add_argument("--start-method", default="forkserver", choices=("fork", "forkserver", "spawn"))
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--chunks", type=int, default=8, help="chunks in the pool (frames in flight at once)")
    parser.add_argument("--rate", type=float, default=200.0, help="frames per second the getter produces")
    parser.add_argument("--shape", default="480x640")
    args = parser.parse_args()
    height, width = (int(n) for n in args.shape.split("x"))
    env: puma.Environment = (
        puma.ThreadEnvironment() if args.env == "thread" else puma.ProcessEnvironment(args.start_method)
    )
    where = "threads" if args.env == "thread" else f"processes ({args.start_method})"
    pool = env.frame_pool((height, width), np.float32, args.chunks, "chunks")
    region = env.shared_region((args.frames, width), np.float64, parts=args.frames, name="results")
    start = time.perf_counter()
    with puma.Runner(env) as runner:
        frames = env.buffer(Frame, args.chunks, "frames")
        runner.start(Getter(pool, frames, args.frames, args.rate))
        workers = [runner.start(Worker(f"worker-{i}", frames, region)) for i in range(args.workers)]
        results = region.wait(timeout=120)  # every part done
        runner.join()
    spent = time.perf_counter() - start
    expected = np.stack([expected_row(k, width) for k in range(args.frames)])
    if not np.allclose(results, expected):
        print("results do not match what the workers should have computed", file=sys.stderr)
        return 1
    counts = [w.status("done")[1] for w in workers]
    stats = pool.statistics()
    print(
        f"{args.frames} frames of {height}x{width} float32 through a pool of {args.chunks} chunks, "
        f"{args.workers} workers in {where}, {args.frames / spent:.0f} frames/s; frames per worker {counts}; "
        f"results match; chunks free {stats.free}/{stats.count}"
    )
    kind = "threads" if args.env == "thread" else "processes"
    print(f"Worker {kind} have all exited successfully")
    pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
