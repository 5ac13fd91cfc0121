"""Producer -> processor -> consumer, in threads or in processes: one line switches.

Run it::

    python demos/producer_consumer_pipeline/main.py --env thread
    python demos/producer_consumer_pipeline/main.py --env process --start-method spawn

Both print the same results.  Add ``--fail-at N`` to see an error raised in
the processor reach the main program with the child's traceback, after the
consumer has received it through the buffer.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import puma
import puma.logging

log = logging.getLogger("demo")


class Producer(puma.Runnable):
    """Publishes the numbers 0..count-1."""

    def __init__(self, out: puma.Buffer[int], count: int) -> None:
        super().__init__("producer", outputs=[out])
        self._out, self._count = out, count

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for i in range(self._count):
                if self.stop_requested:
                    break
                pub.publish(i)  # blocks while the buffer is full: back-pressure
        log.info("produced %d values", self._count)


class Squarer(puma.Runnable):
    """Squares every value it receives; fails on ``fail_at`` if given."""

    def __init__(self, inp: puma.Buffer[int], out: puma.Buffer[int], fail_at: int | None) -> None:
        super().__init__("squarer", outputs=[out])
        self._in, self._out, self._fail_at = inp, out, fail_at
        self._offset = 0

    @puma.run_in_child_scope
    def set_offset(self, offset: int) -> int:
        """A command: called in the main program, runs in the squarer between two values."""
        self._offset = offset
        return offset

    def execute(self) -> None:
        pub = self.publisher(self._out)
        for value in self._in.subscribe():
            if value == self._fail_at:
                raise ValueError(f"cannot square {value}")
            pub.publish(value * value + self._offset)
        log.info("squared everything")


class Sink(puma.Runnable):
    """Sums what arrives and reports progress and the result as statuses."""

    def __init__(self, inp: puma.Buffer[int]) -> None:
        super().__init__("sink")
        self._in = inp

    def execute(self) -> None:
        count = total = 0
        for value in self._in.subscribe():
            count += 1
            total += value
            if count % 250 == 0:
                self.send_status("progress", count)
        self.send_status("result", (count, total))
        log.info("received %d values, total %d", count, total)


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=["thread", "process"], default="process")
    parser.add_argument("--start-method", choices=["fork", "forkserver", "spawn"], default=None)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--fail-at", type=int, default=None)
    args = parser.parse_args(argv)
    # one console stream for every stage, thread or process; %(runnable)s names the stage
    puma.logging.configure(logging.INFO, fmt="%(asctime)s %(runnable)-9s pid %(process)-6d %(name)s: %(message)s")

    env: puma.Environment = (
        puma.ThreadEnvironment() if args.env == "thread" else puma.ProcessEnvironment(args.start_method)
    )
    print(f"environment: {env}")
    started = time.perf_counter()
    try:
        with puma.Runner(env) as runner:
            raw, squared = env.buffer(int, 10, "raw"), env.buffer(int, 10, "squared")
            runner.start(Producer(raw, args.count))
            squarer = runner.start_blocking(Squarer(raw, squared, args.fail_at))
            sink = runner.start(Sink(squared))
            print(f"command set_offset(0) returned {squarer.set_offset(0)}")
            runner.join()  # re-raises any child's error, with the child's traceback
    except ValueError as error:
        print(f"the pipeline failed as asked: {error!r}")
        for note in getattr(error, "__notes__", []):
            print(f"  note: {note}")
        return 1
    count, total = sink.status("result")
    print(f"received {count} values, sum of squares {total} (expected {sum(i * i for i in range(args.count))})")
    print(f"took {time.perf_counter() - started:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
