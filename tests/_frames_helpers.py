"""Runnables for the frame tests (importable by spawn and forkserver children)."""

from __future__ import annotations

import os
from typing import Any

import puma
from puma.frames import FrameOwnershipError, FramePool


class FrameProducer(puma.Runnable):
    """Borrows ``count`` frames, fills frame i with i, publishes each; checks the old holder is refused."""

    def __init__(self, pool: FramePool, out: puma.Buffer[Any], count: int, name: str = "frame-producer") -> None:
        super().__init__(name, outputs=[out])
        self._pool, self._out, self._count = pool, out, count

    def execute(self) -> None:
        self.send_status("pid", os.getpid())
        refused = 0
        with self.publisher(self._out) as pub:
            for i in range(self._count):
                frame = self._pool.borrow(timeout=30)
                frame.array[...] = i
                kept = frame.array
                row = kept[:1]  # a view taken before the hand-over
                pub.publish(frame)
                for attempt in (lambda: kept.__setitem__(0, -1), lambda: row.__setitem__(0, -1), lambda: frame.array):
                    try:
                        attempt()
                    except FrameOwnershipError:
                        refused += 1
        self.send_status("refused", refused)


class MixedFrameProducer(puma.Runnable):
    """Publishes ``count`` frames, frame i filled with i: the even ones alone, the odd ones inside a tuple."""

    def __init__(self, pool: FramePool, out: puma.Buffer[Any], count: int) -> None:
        super().__init__("mixed-producer", outputs=[out])
        self._pool, self._out, self._count = pool, out, count

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for i in range(self._count):
                frame = self._pool.borrow(timeout=30)
                frame.array[...] = i
                pub.publish(frame if i % 2 == 0 else (frame, "inside"))


class FrameConsumer(puma.Runnable):
    """Receives frames: checks each in place, writes the writable ones, reports totals."""

    def __init__(self, inp: puma.Buffer[Any], name: str = "frame-consumer", hold: bool = False) -> None:
        super().__init__(name)
        self._in = inp
        self._hold = hold

    def execute(self) -> None:
        self.send_status("pid", os.getpid())
        total = received = dropped = readonly = refused = 0
        kept = []
        for frame in self._in.subscribe():
            if frame.dropped:
                dropped += 1
                continue
            received += 1
            array = frame.array
            total += int(array.flat[0])
            if frame.readonly:
                readonly += 1
                try:
                    array[...] = 0
                except FrameOwnershipError:
                    refused += 1
            else:
                array += 1  # writable, in place
                assert int(array.flat[-1]) == int(array.flat[0])
            if self._hold:
                kept.append(frame)
                self.send_status("holding", len(kept))
            else:
                frame.release()
        self.send_status("result", (received, total, dropped, readonly, refused))
        if self._hold:
            self.wait_for_stop()


class FrameHolder(puma.Runnable):
    """Borrows ``count`` frames and keeps them until stopped (or killed)."""

    def __init__(self, pool: FramePool, count: int) -> None:
        super().__init__("frame-holder")
        self._pool, self._count = pool, count

    def execute(self) -> None:
        frames = [self._pool.borrow(timeout=30) for _ in range(self._count)]
        self.send_status("held", (os.getpid(), len(frames)))
        self.wait_for_stop()


class WaitingBorrower(puma.Runnable):
    """Borrows from an empty pool: waits there until stopped (the stop must reach it)."""

    def __init__(self, pool: FramePool) -> None:
        super().__init__("waiting-borrower")
        self._pool = pool

    def execute(self) -> None:
        self.send_status("waiting", True)
        frame = self._pool.borrow()
        self.send_status("got", frame.index)
        frame.release()


class ReleasesSoon(puma.Runnable):
    """Borrows one frame, reports it, releases it a moment later, then waits to be stopped."""

    def __init__(self, pool: FramePool) -> None:
        super().__init__("releases-soon")
        self._pool = pool

    def execute(self) -> None:
        frame = self._pool.borrow(timeout=30)
        self.send_status("held", frame.index)
        self.wait_for_stop(0.2)
        frame.release()
        self.wait_for_stop()


class RegionWriter(puma.Runnable):
    """Writes its parts of a shared region (part k filled with k) and marks each done."""

    def __init__(self, name: str, region: puma.frames.SharedRegion, parts: list[int]) -> None:
        super().__init__(name)
        self._region, self._parts = region, parts

    def execute(self) -> None:
        for k in self._parts:
            self._region.part(k)[...] = k
            self._region.done(k)


class PoolMaker(puma.Runnable):
    """Makes a frame pool in its own process, reports its segment's name and waits (to be killed)."""

    def __init__(self, env: Any) -> None:
        super().__init__("pool-maker")
        self._env = env

    def execute(self) -> None:
        pool = FramePool(self._env, 4096, "uint8", 2, "child-made")
        memory = pool._shared_memory
        self.send_status("made", (os.getpid(), memory.name if memory is not None else None))
        self.wait_for_stop()


def frames_of(value: Any) -> list[Any]:
    """The frames in a value ``ValueProducer`` made (a frame, or one in a tuple, a list or a dict)."""
    if isinstance(value, puma.frames.Frame):
        return [value]
    if isinstance(value, tuple):
        return [value[0]]
    if isinstance(value, list):
        return list(value)
    return [value["frame"]]


class ValueProducer(puma.Runnable):
    """Publishes ``count`` values holding frames filled with i: alone, ``(frame, {"t": i})``, a list of two, a dict.

    Counts the writes its old frames refused after each hand-over (status ``refused``).
    With ``batch`` > 0 they go ``batch`` at a time through ``publish_many``.
    """

    def __init__(self, pool: FramePool, out: puma.Buffer[Any], count: int, shape: str, batch: int = 0) -> None:
        super().__init__(f"{shape}-producer", outputs=[out])
        self._pool, self._out, self._count, self._shape, self._batch = pool, out, count, shape, batch

    def _value(self, i: int) -> tuple[Any, list[Any]]:
        frames = [self._pool.borrow(timeout=30) for _ in range(2 if self._shape == "list" else 1)]
        for frame in frames:
            frame.array[...] = i
        value: Any = {
            "alone": lambda: frames[0],
            "tuple": lambda: (frames[0], {"t": i}),
            "list": lambda: list(frames),
            "dict": lambda: {"frame": frames[0], "t": i},
        }[self._shape]()
        return value, frames

    def execute(self) -> None:
        refused = 0
        handed: list[Any] = []
        with self.publisher(self._out) as pub:
            batch = []
            for i in range(self._count):
                value, frames = self._value(i)
                handed.extend(frames)
                if not self._batch:
                    pub.publish(value)
                    continue
                batch.append(value)
                if len(batch) == self._batch:
                    pub.publish_many(batch)
                    batch = []
            if batch:
                pub.publish_many(batch)
            for frame in handed:
                try:
                    frame.array[...] = -1
                except FrameOwnershipError:
                    refused += 1
        self.send_status("refused", refused)


class Holder:
    """An object holding frames in its attributes (a frame inside a value that is not a container)."""

    def __init__(self, frame: Any, nested: Any) -> None:
        self.frame = frame
        self.nested = nested
