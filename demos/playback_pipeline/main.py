"""Playback pipeline: a recording played back at a fixed rate, processed, fanned out to two consumers.

    source (50 Hz ticks) -> smoother -> multicaster -> recorder
                                                    -> statistics (reports at 5 Hz)

The source is a :class:`puma.CommandDrivenRunnable`: it reads one frame of a
recording file per tick and obeys pause/resume/seek commands sent from this
main program.  The smoother, recorder and statistics are
:class:`puma.SingleBufferServicingRunnable` s; the fan-out is the environment's
multicaster.  Switching the whole pipeline between threads and processes is
the one line that makes ``env``.

Run it::

    python demos/playback_pipeline/main.py --env thread
    python demos/playback_pipeline/main.py --env process --start-method spawn
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import IO

import puma


@dataclass(frozen=True)
class Frame:
    """One sample of the recording as it travels the pipeline."""

    index: int
    value: float
    stamp: float  # puma.tick_clock() when the source played it
    lateness: float  # seconds after its tick's deadline


class PlaybackSource(puma.CommandDrivenRunnable):
    """Plays a recording (one ``index,value`` line per frame), one frame per tick."""

    def __init__(self, out: puma.Buffer[Frame], path: str, rate: float) -> None:
        super().__init__("source", outputs=[out], tick_interval=1.0 / rate)
        self._path = path
        self._file: IO[str] | None = None
        self._offsets: list[int] = []
        self._position = 0

    def on_start(self) -> None:
        self._file = open(self._path, encoding="ascii")  # noqa: SIM115 - opened in the child, closed in on_end
        offset = 0
        for line in self._file:  # where each frame starts, for seek()
            self._offsets.append(offset)
            offset += len(line)
        self._file.seek(0)

    def on_tick(self, timestamp: float) -> Frame | None:
        assert self._file is not None
        line = self._file.readline()
        if not line:
            self.finish()  # the end of the recording: outputs complete, consumers end
            return None
        index, value = line.split(",")
        self._position = int(index) + 1
        self.send_status("position", self._position)
        return Frame(int(index), float(value), timestamp, timestamp - self.tick_deadline)

    def on_end(self) -> None:
        if self._file is not None:
            self._file.close()
        self.send_status("missed", self.missed_ticks)

    @puma.run_in_child_scope
    def pause(self) -> int:
        """Stop playing; returns the position (the next frame to play)."""
        self.pause_ticks()
        return self._position

    @puma.run_in_child_scope
    def resume(self) -> int:
        """Play on from the position; the next frame comes one tick later."""
        self.resume_ticks()
        return self._position

    @puma.run_in_child_scope
    def seek(self, index: int) -> int:
        """Continue playing from frame ``index``; returns the position it left."""
        assert self._file is not None
        left = self._position
        self._file.seek(self._offsets[index])
        self._position = index
        return left

    @puma.run_in_child_scope
    def position(self) -> int:
        """The next frame to play."""
        return self._position


class Smoother(puma.SingleBufferServicingRunnable[Frame]):
    """Exponential moving average of the values."""

    def __init__(self, inp: puma.Buffer[Frame], out: puma.Buffer[Frame], alpha: float = 0.3) -> None:
        super().__init__("smoother", inp, outputs=[out])
        self._alpha = alpha
        self._average: float | None = None

    def on_value(self, frame: Frame) -> Frame:
        avg = frame.value if self._average is None else self._average + self._alpha * (frame.value - self._average)
        self._average = avg
        return Frame(frame.index, avg, frame.stamp, frame.lateness)


class Recorder(puma.SingleBufferServicingRunnable[Frame]):
    """Keeps the frame indices in the order they arrived."""

    def __init__(self, inp: puma.Buffer[Frame]) -> None:
        super().__init__("recorder", inp)
        self._indices: list[int] = []

    def on_value(self, frame: Frame) -> None:
        self._indices.append(frame.index)

    def on_complete(self, error: BaseException | None) -> None:
        self.send_status("recorded", self._indices)


class Statistics(puma.SingleBufferServicingRunnable[Frame]):
    """Running statistics, reported as a status on its own 5 Hz tick and at the end."""

    def __init__(self, inp: puma.Buffer[Frame]) -> None:
        super().__init__("statistics", inp, tick_interval=0.2)
        self._count = 0
        self._total = 0.0
        self._low = math.inf
        self._high = -math.inf
        self._stamps: list[float] = []
        self._lateness: list[float] = []

    def on_value(self, frame: Frame) -> None:
        self._count += 1
        self._total += frame.value
        self._low = min(self._low, frame.value)
        self._high = max(self._high, frame.value)
        self._stamps.append(frame.stamp)
        self._lateness.append(frame.lateness)

    def on_tick(self, timestamp: float) -> None:
        self.send_status("count", self._count)

    def on_complete(self, error: BaseException | None) -> None:
        gaps = sorted(b - a for a, b in zip(self._stamps, self._stamps[1:], strict=False))
        late = sorted(self._lateness)
        self.send_status(
            "summary",
            {
                "count": self._count,
                "mean": self._total / max(self._count, 1),
                "low": self._low,
                "high": self._high,
                "rate": 1.0 / statistics.median(gaps) if gaps else 0.0,
                "p50": late[len(late) // 2] if late else 0.0,
                "p99": late[min(len(late) - 1, int(0.99 * len(late)))] if late else 0.0,
            },
        )


def write_recording(path: str, frames: int) -> None:
    """A made-up recording: a slow sine with a little deterministic ripple."""
    with open(path, "w", encoding="ascii") as f:
        for i in range(frames):
            f.write(f"{i},{math.sin(i / 8.0) + 0.1 * math.sin(i * 1.7):.6f}\n")


def main(argv: list[str] | None = None) -> int:
    """Play the recording through the pipeline; return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", choices=["thread", "process"], default="process")
    parser.add_argument("--start-method", choices=["fork", "forkserver", "spawn"], default=None)
    parser.add_argument("--rate", type=float, default=50.0, help="frames per second (default 50)")
    parser.add_argument("--frames", type=int, default=100, help="frames in the recording (default 100)")
    args = parser.parse_args(argv)
    frames, rate = args.frames, args.rate
    pause_at, seek_at, seek_to = frames * 2 // 5, frames * 3 // 5, frames // 5

    env: puma.Environment = (
        puma.ThreadEnvironment() if args.env == "thread" else puma.ProcessEnvironment(args.start_method)
    )
    print(f"environment: {env}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "recording.csv")
        write_recording(path, frames)
        print(f"recording: {frames} frames, played at {rate:g} Hz")
        with puma.Runner(env) as runner:
            raw: puma.Buffer[Frame] = env.buffer(Frame, 16, "raw")
            smooth: puma.Buffer[Frame] = env.buffer(Frame, 16, "smooth")
            to_recorder: puma.Buffer[Frame] = env.buffer(Frame, 16, "to-recorder")
            to_statistics: puma.Buffer[Frame] = env.buffer(Frame, 16, "to-statistics")
            recorder = runner.start(Recorder(to_recorder))
            stats = runner.start(Statistics(to_statistics))
            runner.start(puma.Multicaster(smooth, [to_recorder, to_statistics]))
            runner.start(Smoother(raw, smooth))
            source = runner.start(PlaybackSource(raw, path, rate))

            source.wait_status("position", lambda p: p >= pause_at, timeout=60)
            paused = source.pause()
            time.sleep(0.3)  # the main program waits a while; nothing plays meanwhile
            still = source.position()
            print(f"paused at frame {paused}; after 0.3 s the source is still at frame {still}")
            source.resume()
            print(f"resumed at frame {still}")
            source.wait_status("position", lambda p: p >= seek_at, timeout=60)
            left = source.seek(seek_to)
            print(f"seek({seek_to}) at frame {left}: replaying from frame {seek_to}")
            runner.join()  # the source finishes at the end of the recording; the rest follow
    indices = recorder.status("recorded")
    summary = stats.status("summary")
    replay = next(i for i in range(1, len(indices)) if indices[i] != indices[i - 1] + 1)
    print(
        f"recorder kept {len(indices)} frames: {indices[0]}..{indices[replay - 1]}, "
        f"then {indices[replay]}..{indices[-1]}"
    )
    print(
        f"statistics saw {summary['count']} frames: mean {summary['mean']:.3f}, "
        f"min {summary['low']:.3f}, max {summary['high']:.3f}"
    )
    print(
        f"playback rate {summary['rate']:.1f} Hz; tick lateness p50 {summary['p50'] * 1e3:.2f} ms, "
        f"p99 {summary['p99'] * 1e3:.2f} ms; missed ticks {source.status('missed')}"
    )
    ok = paused == still and indices == [*range(left), *range(seek_to, frames)] and summary["count"] == len(indices)
    print(f"{'OK' if ok else 'UNEXPECTED'}: took {time.perf_counter() - started:.2f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
