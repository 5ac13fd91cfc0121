"""Runnables shared by the tests. Module level, so spawn and forkserver children can import them."""

from __future__ import annotations

import ctypes
import os
import signal
import threading
from typing import Any

import numpy as np

import puma


class Producer(puma.Runnable):
    """Publishes 0..count-1, then completes."""

    def __init__(self, out: puma.Buffer[int], count: int, name: str = "producer", batch: int = 0) -> None:
        super().__init__(name, outputs=[out])
        self._out = out
        self._count = count
        self._batch = batch

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            if self._batch:
                for start in range(0, self._count, self._batch):
                    pub.publish_many(range(start, min(start + self._batch, self._count)))
            else:
                for i in range(self._count):
                    pub.publish(i)


class EndlessProducer(puma.Runnable):
    """Publishes until stopped; reports its pid."""

    def __init__(self, out: puma.Buffer[Any], item: Any = 1) -> None:
        super().__init__("endless", outputs=[out])
        self._out = out
        self._item = item

    def execute(self) -> None:
        self.send_status("pid", os.getpid())
        pub = self.publisher(self._out)
        while not self.stop_requested:
            pub.publish(self._item)


class Squarer(puma.Runnable):
    """Receives ints, publishes their squares; optionally fails on one value."""

    def __init__(self, inp: puma.Buffer[int], out: puma.Buffer[int], fail_on: int | None = None) -> None:
        super().__init__("squarer", outputs=[out])
        self._in = inp
        self._out = out
        self._fail_on = fail_on

    def execute(self) -> None:
        pub = self.publisher(self._out)
        for value in self._in.subscribe():
            if value == self._fail_on:
                raise ValueError(f"cannot square {value}")
            pub.publish(value * value)


class Collector(puma.Runnable):
    """Receives everything; reports "subscribed", the values ("values") and any error it received ("error")."""

    def __init__(self, inp: puma.Buffer[Any], name: str = "collector", reraise: bool = True) -> None:
        super().__init__(name)
        self._in = inp
        self._reraise = reraise

    def execute(self) -> None:
        values: list[Any] = []
        try:
            subscription = self._in.subscribe()
            self.send_status("subscribed", True)
            for value in subscription:
                if not values:
                    self.send_status("first", value)
                values.append(value)
        except Exception as exc:
            import traceback

            self.send_status("error", (type(exc).__name__, str(exc), "".join(traceback.format_exception(exc))))
            if self._reraise:
                raise
        finally:
            self.send_status("values", values)


class WaitForCommands(puma.Runnable):
    """Runs commands until stopped."""

    def __init__(self, name: str = "worker") -> None:
        super().__init__(name)
        self.total = 0

    @puma.run_in_child_scope
    def add(self, amount: int) -> int:
        self.total += amount
        return self.total

    @puma.run_in_child_scope
    def fail(self, message: str) -> None:
        raise KeyError(message)

    @puma.run_in_child_scope
    def where(self) -> int:
        return os.getpid()

    @puma.run_in_child_scope
    def unpicklable_result(self) -> Any:
        return threading.Lock()

    def execute(self) -> None:
        self.send_status("pid", os.getpid())
        self.wait_for_stop()


class Dies(puma.Runnable):
    """Ends abnormally: 'kill' (SIGKILL itself), 'exit' (os._exit(3)), 'segv' (segfault)."""

    def __init__(self, how: str) -> None:
        super().__init__(f"dies-{how}")
        self._how = how

    def execute(self) -> None:
        if self._how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif self._how == "exit":
            os._exit(3)
        elif self._how == "segv":
            ctypes.string_at(0)
        self.wait_for_stop()


class Raises(puma.Runnable):
    """Raises the exception made by ``make`` in execute."""

    def __init__(self, error: BaseException, name: str = "raises") -> None:
        super().__init__(name)
        self._error = error

    def execute(self) -> None:
        raise self._error


class UnpicklableError(Exception):
    """Carries a lock, so it cannot be pickled."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class StrictInitError(Exception):
    """Its constructor cannot be re-run from ``args`` (two required arguments)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code


class RaisesUnpicklable(puma.Runnable):
    def __init__(self) -> None:
        super().__init__("raises-unpicklable")

    def execute(self) -> None:
        raise UnpicklableError("holds a lock")


class RaisesStrict(puma.Runnable):
    def __init__(self) -> None:
        super().__init__("raises-strict")

    def execute(self) -> None:
        raise StrictInitError(7, "bad detail")


class Stuck(puma.Runnable):
    """Ignores stop requests: blocks on an event only the test sets (threads) or nobody sets (processes)."""

    release = threading.Event()

    def __init__(self) -> None:
        super().__init__("stuck")

    def execute(self) -> None:
        self.send_status("pid", os.getpid())
        self.release.wait()


class ArrayProducer(puma.Runnable):
    """Publishes ``count`` arrays filled with their index."""

    def __init__(self, out: puma.Buffer[np.ndarray], count: int, shape: tuple[int, ...]) -> None:
        super().__init__("arrays", outputs=[out])
        self._out = out
        self._count = count
        self._shape = shape

    def execute(self) -> None:
        pub = self.publisher(self._out)
        for i in range(self._count):
            pub.publish(np.full(self._shape, i, dtype=np.float32))


class ArrayChecker(puma.Runnable):
    """Checks each array's content and that it is writable; reports (count, all_ok)."""

    def __init__(self, inp: puma.Buffer[np.ndarray]) -> None:
        super().__init__("checker")
        self._in = inp

    def execute(self) -> None:
        count, ok = 0, True
        for array in self._in.subscribe():
            ok = ok and bool((array == count).all())
            array += 1  # must be writable
            count += 1
        self.send_status("result", (count, ok))


class TakeOne(puma.Runnable):
    """Reads one value and returns, leaving the rest of the stream unread."""

    def __init__(self, inp: puma.Buffer[Any]) -> None:
        super().__init__("take-one")
        self._in = inp

    def execute(self) -> None:
        self.send_status("first", self._in.subscribe().receive(timeout=30))


class Poisoner(puma.Runnable):
    """Publishes a value of the wrong type."""

    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("poisoner", outputs=[out])
        self._out = out

    def execute(self) -> None:
        self.publisher(self._out).publish("not an int")  # type: ignore[arg-type]


class FillUp(puma.Runnable):
    """Fills its output with try_publish until full, reports how many fit, then tests timeouts."""

    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("fill-up", outputs=[out])
        self._out = out

    def execute(self) -> None:
        pub = self.publisher(self._out)
        accepted = 0
        while pub.try_publish(accepted):
            accepted += 1
        try:
            pub.publish(-1, timeout=0.05)
            timed_out = False
        except puma.BufferFull:
            timed_out = True
        pub.complete()
        closed = []
        for attempt in (lambda: pub.publish(0), lambda: pub.publish_many([0, 1]), lambda: pub.try_publish(0)):
            try:
                attempt()
                closed.append("no error")
            except puma.BufferClosedError as exc:
                closed.append(str(exc))
        self.send_status("result", (accepted, timed_out, closed))
        self.wait_for_stop()


class PublishToForeign(puma.Runnable):
    """Tries to publish to a buffer that is not one of its outputs."""

    def __init__(self, other: puma.Buffer[int]) -> None:
        super().__init__("foreign")
        self._other = other

    def execute(self) -> None:
        self.publisher(self._other)


class HoldsLock(puma.Runnable):
    """Has an attribute that cannot be pickled."""

    def __init__(self) -> None:
        super().__init__("holds-lock")
        self.config = {"device": Device()}

    def execute(self) -> None:
        pass


class Device:
    def __init__(self) -> None:
        self.handle = threading.Lock()


class Noop(puma.Runnable):
    def __init__(self, name: str = "noop") -> None:
        super().__init__(name)

    def execute(self) -> None:
        pass


class ReportsWhere(puma.Runnable):
    def __init__(self) -> None:
        super().__init__("where")

    def execute(self) -> None:
        self.send_status("pid", os.getpid())
        for i in range(5):
            self.send_status("progress", i)


class SubscribesTooEarly(puma.Runnable):
    """Subscribes in __init__ (in the parent) instead of in execute."""

    def __init__(self, inp: puma.Buffer[int]) -> None:
        super().__init__("too-early")
        self._subscription = inp.subscribe()

    def execute(self) -> None:
        self._subscription.receive(timeout=30)


class Blocks(puma.Runnable):
    """Has a command that blocks on a multiprocessing Event until the test sets it."""

    def __init__(self, gate: Any) -> None:
        super().__init__("blocks")
        self.gate = gate
        self.total = 0

    @puma.run_in_child_scope
    def block(self) -> bool:
        return bool(self.gate.wait(60))

    @puma.run_in_child_scope
    def add(self, amount: int) -> int:
        self.total += amount
        return self.total

    @puma.run_in_child_scope
    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def execute(self) -> None:
        self.wait_for_stop()


class FloodsStatuses(puma.Runnable):
    """Sends statuses as fast as it can until stopped."""

    def __init__(self) -> None:
        super().__init__("flood")

    def execute(self) -> None:
        i = 0
        while not self.stop_requested:
            self.send_status("count", i)
            i += 1


class DiesHoldingBufferLock(puma.Runnable):
    """Publishes 0, 1, 2, then SIGKILLs itself while holding a process-shared lock of its buffer.

    ``how``: "write" (inside a one-write value: the stream is intact), "write-long" (in the
    middle of a long value: part of it is in the pipe), "meta" (the counters' lock), "gap" and
    "meta-gap" (the lock taken, its pid not yet written down).
    """

    def __init__(self, out: puma.Buffer[int], how: str) -> None:
        super().__init__(f"dies-holding-{how}", outputs=[out])
        self._out = out
        self._how = how

    def execute(self) -> None:
        from puma._buffers import process as pb

        pub = self.publisher(self._out)
        for i in range(3):
            pub.publish(i)
        buffer: Any = self._out
        if self._how == "meta":
            buffer._meta_guard.__enter__()
        elif self._how == "meta-gap":
            buffer._meta.acquire()
        else:
            buffer._lock.acquire()
            if self._how == "write":
                buffer._shared[pb._WRITER] = os.getpid()
            elif self._how == "write-long":
                buffer._shared[pb._WRITER] = -os.getpid()
                os.write(buffer._writer.fileno(), pb._HEAD.pack(100_001, pb._ITEM) + b"\x80" * 1000)
        os.kill(os.getpid(), signal.SIGKILL)
