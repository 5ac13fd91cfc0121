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
