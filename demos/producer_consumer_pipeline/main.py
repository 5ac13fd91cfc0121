"""Producer -> squarer -> sink, in threads or in processes: one line switches.

Run it::

    python demos/producer_consumer_pipeline/main.py                 # processes, the default start method
    python demos/producer_consumer_pipeline/main.py --env thread
    python demos/producer_consumer_pipeline/main.py --start-method spawn

Every way prints the same sum.  Add ``--fail-at N`` to make the squarer raise on
the value N: the error reaches this main program with the child's own traceback
and a note naming the runnable (the sink receives it through the buffer first,
so nothing hangs).  Give a large ``--count`` and press Ctrl-C: every stage
stops, and the demo says how many values the producer really produced.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback

import puma
import puma.logging

log = logging.getLogger("demo")

PROGRESS_EVERY = 1000  # values between two "produced" statuses of the producer


class Producer(puma.Runnable):
    """Publishes the numbers 0..count-1; reports how many it has published as status ``produced``."""

    def __init__(self, out: puma.Buffer[int], count: int) -> None:
        super().__init__("producer", outputs=[out])
        self._out, self._count = out, count

    def execute(self) -> None:
        produced = 0
        try:
            with self.publisher(self._out) as pub:
                for i in range(self._count):
                    if self.stop_requested:
                        break
                    pub.publish(i)  # blocks while the buffer is full (back-pressure); raises if asked to stop then
                    produced += 1
                    if produced % PROGRESS_EVERY == 0:
                        self.send_status("produced", produced)
        finally:  # however it ended (done, stopped, failed), the parent learns the real count
            self.send_status("produced", produced)
            if produced == self._count:
                log.info("produced %d values", produced)
            else:
                log.info("stopped after producing %d of %d values", produced, self._count)


class Squarer(puma.Runnable):
    """Squares every value it receives; raises ``ValueError`` on ``fail_at`` if given."""

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
        for value in self._in.subscribe():  # ends when the producer completes its output
            if value == self._fail_at:
                raise ValueError(f"cannot square {value}")
            pub.publish(value * value + self._offset)
        log.info("squared everything")


class Sink(puma.Runnable):
    """Sums what arrives; reports ``(count, total)`` as status ``result`` when it ends."""

    def __init__(self, inp: puma.Buffer[int]) -> None:
        super().__init__("sink")
        self._in = inp

    def execute(self) -> None:
        count = total = 0
        try:
            for value in self._in.subscribe():
                count += 1
                total += value
        finally:
            self.send_status("result", (count, total))
        log.info("received %d values, total %d", count, total)


def describe(env: puma.Environment) -> str:
    """Where the stages run, in words."""
    if isinstance(env, puma.ProcessEnvironment):
        return f"3 stages in processes ({env.start_method})"
    return "3 stages in threads"


def main(argv: list[str] | None = None) -> int:
    """Run the pipeline; return the process exit code (0 done, 1 a stage failed, 130 Ctrl-C)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=["thread", "process"], default="process", help="default: process")
    parser.add_argument(
        "--start-method", choices=["fork", "forkserver", "spawn"], default=None, help="for --env process"
    )
    parser.add_argument("--count", type=int, default=1000, help="how many values to produce (default 1000)")
    parser.add_argument("--fail-at", type=int, default=None, metavar="N", help="make the squarer raise on value N")
    args = parser.parse_args(argv)
    if args.env == "thread" and args.start_method is not None:
        parser.error("--start-method is for --env process")
    # one console stream for every stage, thread or process; %(runnable)s names the stage
    puma.logging.configure(logging.INFO, fmt="%(asctime)s %(runnable)-9s pid %(process)-6d %(name)s: %(message)s")

    env: puma.Environment = (
        puma.ThreadEnvironment() if args.env == "thread" else puma.ProcessEnvironment(args.start_method)
    )
    what = describe(env)
    print(f"{what}: producing {args.count} values, squaring them, summing them")
    started = time.perf_counter()
    raw, squared = env.buffer(int, 10, "raw"), env.buffer(int, 10, "squared")
    producer, squarer, sink = Producer(raw, args.count), Squarer(raw, squared, args.fail_at), Sink(squared)
    try:
        with puma.Runner(env) as runner:
            runner.start_all([producer, squarer, sink])  # returns once all three run
            answer = squarer.set_offset(0)
            print(f"sent the squarer the command set_offset(0) from the main program; it answered {answer}")
            print("running (Ctrl-C stops every stage)", flush=True)
            runner.join()  # re-raises any stage's error, with the child's traceback
    except KeyboardInterrupt:
        # The Runner has stopped every stage (and printed what each was doing) before this.
        produced = producer.status("produced", 0)
        received, _total = sink.status("result", (0, 0))
        print(
            f"{what}: stopped by Ctrl-C after {time.perf_counter() - started:.2f} s; "
            f"the producer had produced {produced} of {args.count} values, the sink had summed {received}"
        )
        return 130
    except Exception as error:  # noqa: BLE001 - any stage's error is shown whole, with its traceback
        print(f"{what}: a stage failed; its error, with the traceback from where it was raised:", file=sys.stderr)
        traceback.print_exception(error, file=sys.stderr)
        return 1
    count, total = sink.status("result")
    expected = sum(i * i for i in range(args.count))
    print(
        f"{what}: produced {count} values, squared them, summed them: {total} "
        f"({'as expected' if total == expected else f'expected {expected}!'}) in {time.perf_counter() - started:.2f} s"
    )
    return 0 if total == expected else 1


if __name__ == "__main__":
    sys.exit(main())
