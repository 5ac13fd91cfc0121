"""Pipeline stages that fail on purpose, for the restart tests (importable by spawn and forkserver children).

A stage faults once, at one value, on its first incarnation only: the fault
leaves a marker file behind before it strikes, and an incarnation that finds
the marker runs cleanly.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import puma
from puma.attributes import child_only, factory

#: Released by a test to let a hung thread stage end (a thread cannot be killed).
THREAD_HANG_RELEASE = threading.Event()

FAULTS = ("raise", "sigkill", "sigsegv", "os_exit", "hang")


def strike(fault: str, marker: str, where: str, runnable: puma.Runnable) -> None:
    """Fault now, once per marker (the next incarnation finds the marker and goes on).

    A hang says so first (status ``"hung"``), then blocks in its own code.
    """
    path = Path(marker)
    if path.exists():
        return
    path.write_text(where)
    if fault == "raise":
        raise ValueError(f"{where} failed on purpose")
    if fault == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "sigsegv":
        os.kill(os.getpid(), signal.SIGSEGV)
    if fault == "os_exit":
        os._exit(3)
    if fault == "hang":
        runnable.send_status("hung", True)
        if threading.current_thread() is threading.main_thread():
            threading.Event().wait()  # a process: ended from outside
        THREAD_HANG_RELEASE.wait()
        return
    if fault in ("always", "every"):  # every incarnation fails (at its value, or at any after it)
        path.unlink()
        raise ValueError(f"{where} always fails")
    raise AssertionError(fault)


class Source(puma.Runnable):
    """Publishes 0..count-1."""

    def __init__(self, out: puma.Buffer[int], count: int, fault: str = "", marker: str = "", at: int = -1) -> None:
        super().__init__("source", outputs=[out])
        self._out = out
        self._count = count
        self._fault = fault
        self._marker = marker
        self._at = at

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for value in range(self._count):
                if self._fault and (value == self._at or (self._fault == "every" and value > self._at)):
                    strike(self._fault, self._marker, "source", self)
                pub.publish(value)


class Middle(puma.Runnable):
    """Publishes each value it receives times ten."""

    def __init__(
        self, inp: puma.Buffer[int], out: puma.Buffer[int], fault: str = "", marker: str = "", at: int = -1
    ) -> None:
        super().__init__("middle", outputs=[out])
        self._in = inp
        self._out = out
        self._fault = fault
        self._marker = marker
        self._at = at

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for value in self._in.subscribe():
                if self._fault and (value == self._at or (self._fault == "every" and value > self._at)):
                    strike(self._fault, self._marker, "middle", self)
                pub.publish(value * 10)


class Sink(puma.Runnable):
    """Reads everything; reports the last value and how many it saw (this incarnation); faults at value ``at``."""

    def __init__(self, inp: puma.Buffer[int], fault: str = "", marker: str = "", at: int = -1) -> None:
        super().__init__("sink")
        self._in = inp
        self._fault = fault
        self._marker = marker
        self._at = at

    def execute(self) -> None:
        seen = 0
        for value in self._in.subscribe():
            if self._fault and (seen == self._at or (self._fault == "every" and seen > self._at)):
                strike(self._fault, self._marker, "sink", self)
            seen += 1
            self.send_status("last", value)
        self.send_status("seen", seen)


class Counter(puma.Runnable):
    """Reports how many times its own attribute was incremented (a fresh object starts from 0), then ends."""

    def __init__(self) -> None:
        super().__init__("counter")
        self.calls = 0

    def execute(self) -> None:
        self.calls += 1
        self.send_status("calls", self.calls)
        self.send_status("pid", os.getpid())


class Opens(puma.Runnable):
    """Appends to a list its child makes (a scoped attribute): each incarnation must get a new one."""

    opened = child_only[list[int]]()

    def __init__(self) -> None:
        super().__init__("opens")
        self.opened = factory(list)

    def execute(self) -> None:
        self.opened.append(1)
        self.send_status("opened", len(self.opened))


# --- values of every kind a process buffer carries, for the journal tests ------------------------

#: Value kinds: small (inline), a big bytes value (a large frame), NumPy arrays small and big
#: (out of band; the big one in the buffer's shared-memory arena, only its handle in the pipe), a
#: batch of arrays.  Not in the list: "split-array", a list of arrays each under the arena's
#: threshold, a big value whose raw buffers travel in the pipe (read straight into the arrays).
VALUE_KINDS = ("inline", "big-bytes", "small-array", "big-array", "batch")
BIG = 3 << 20  # bytes of a big value: more than the journal maps to begin with and than a read takes
_PIECE = 32 << 10  # bytes of each array of a "split-array" value (under the arena's threshold)


def make_value(kind: str, index: int) -> object:
    """Value number ``index`` of ``kind`` (its content tells its index)."""
    import numpy as np

    if kind == "inline":
        return index
    if kind == "big-bytes":
        return index.to_bytes(4, "big") * (BIG // 4)
    if kind == "small-array":
        return np.full(16, index, dtype=np.int64)
    if kind == "big-array":
        return np.full(BIG // 8, index, dtype=np.int64)
    if kind == "split-array":
        return [np.full(_PIECE // 8, index, dtype=np.int64) for _ in range(BIG // _PIECE)]
    raise AssertionError(kind)


def index_of(value: object) -> int:
    """The index ``value`` was made with (checking its content is whole)."""
    import numpy as np

    if isinstance(value, int):
        return value
    if isinstance(value, list):
        indices = {index_of(piece) for piece in value}
        assert len(indices) == 1 and len(value) == BIG // _PIECE, "a split array arrived damaged"
        return indices.pop()
    if isinstance(value, bytes):
        first = int.from_bytes(value[:4], "big")
        assert value == first.to_bytes(4, "big") * (len(value) // 4), "a big bytes value arrived damaged"
        return first
    assert isinstance(value, np.ndarray)
    assert (value == value[0]).all(), "an array arrived damaged"
    return int(value[0])


class Values(puma.Runnable):
    """Publishes ``count`` values of ``kind`` (a batch kind: in batches of three small arrays)."""

    def __init__(self, out: puma.Buffer[object], kind: str, count: int) -> None:
        super().__init__("values", outputs=[out])
        self._out = out
        self._kind = kind
        self._count = count

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            if self._kind == "batch":
                for start in range(0, self._count, 3):
                    stop = min(start + 3, self._count)
                    pub.publish_many([make_value("small-array", i) for i in range(start, stop)])
                return
            for index in range(self._count):
                pub.publish(make_value(self._kind, index))


class Indices(puma.Runnable):
    """Publishes the index of each value it receives; its first incarnation dies on purpose.

    ``how``: ``"holding"`` (SIGKILL while it holds the value at ``at``: the
    value in flight), ``"holding-many"`` (the same, receiving with
    ``receive_many(3)``: the values of that call are in flight), ``"mid-frame"`` (SIGKILL in the middle of reading the
    frame after the value at ``at``, holding the read lock, what it read kept
    by its journal), ``"mid-read"`` (SIGKILL while a read of the pipe is under
    way, before its journal knows what the read took: unrecoverable).
    """

    def __init__(self, inp: puma.Buffer[object], out: puma.Buffer[int], how: str, marker: str, at: int) -> None:
        super().__init__("indices", outputs=[out])
        self._in = inp
        self._out = out
        self._how = how
        self._marker = marker
        self._at = at

    def _arm(self, subscription: object) -> None:
        """Make the next read of the pipe past a frame's start kill this process (first incarnation only)."""

        def die(*args: object, **kwargs: object) -> bool:
            Path(self._marker).write_text("indices")
            os.kill(os.getpid(), signal.SIGKILL)
            raise AssertionError("not reached")

        if self._how == "mid-frame":
            subscription._read_into = die  # type: ignore[attr-defined]
        else:
            journal = subscription._journal  # type: ignore[attr-defined]
            assert journal is not None, "a restartable reader keeps a journal"
            reading = journal.reading

            def reading_then_die() -> None:
                reading()
                die()

            journal.reading = reading_then_die

    def execute(self) -> None:
        first = not Path(self._marker).exists()
        with self.publisher(self._out) as pub:
            subscription = self._in.subscribe()
            if self._how == "holding-many":  # receive_many: the whole batch it holds is in flight
                while True:
                    try:
                        indices = [index_of(v) for v in subscription.receive_many(3)]
                    except puma.BufferCompleted:
                        return
                    if first and self._at in indices:
                        Path(self._marker).write_text("indices")
                        os.kill(os.getpid(), signal.SIGKILL)
                    pub.publish_many(indices)
            for value in subscription:
                index = index_of(value)
                if first and index == self._at:
                    if self._how == "holding":
                        Path(self._marker).write_text("indices")
                        os.kill(os.getpid(), signal.SIGKILL)
                    self._arm(subscription)
                pub.publish(index)
