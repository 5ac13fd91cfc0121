"""Runnables for the large-value tests (importable by spawn and forkserver children)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

import puma

BIG = 16 << 20  # bytes of one large value: far more than a pipe holds


def big(i: int, nbytes: int = BIG) -> np.ndarray[Any, Any]:
    """Large value ``i``: float64s, the first ``i``, the rest counting up from there."""
    array = np.arange(nbytes // 8, dtype=np.float64)
    array += i
    return array


def is_big(array: Any, i: int, nbytes: int = BIG) -> bool:
    """True if ``array`` is large value ``i`` (and writable)."""
    n = nbytes // 8
    step = max(n // 1024, 1)
    return bool(
        isinstance(array, np.ndarray)
        and array.shape == (n,)
        and array.flags.writeable
        and array[0] == i
        and array[-1] == i + n - 1
        and (np.diff(array[::step]) == step).all()
    )


class BigPublisher(puma.Runnable):
    """Publishes ``count`` large values, then (``try_one``) tries one more without waiting; reports; then ``more``."""

    def __init__(
        self, out: puma.Buffer[Any], count: int, more: int = 0, nbytes: int = BIG, *, try_one: bool = True
    ) -> None:
        super().__init__("big-publisher", outputs=[out])
        self._out, self._count, self._more, self._nbytes, self._try = out, count, more, nbytes, try_one

    def execute(self) -> None:
        self.send_status("pid", os.getpid())
        pub = self.publisher(self._out)
        for i in range(self._count):
            pub.publish(big(i, self._nbytes))
        extra = self._try and pub.try_publish(big(self._count, self._nbytes))
        self.send_status("published", (self._count, extra))
        for i in range(self._more):  # blocks while the buffer is full
            pub.publish(big(self._count + int(extra) + i, self._nbytes))
        self.send_status("done", True)


class BigHolder(puma.Runnable):
    """Receives ``count`` large values, checks and keeps them, reports, then waits to be stopped (or killed)."""

    def __init__(self, inp: puma.Buffer[Any], count: int, nbytes: int = BIG) -> None:
        super().__init__("big-holder")
        self._in, self._count, self._nbytes = inp, count, nbytes

    def execute(self) -> None:
        self.send_status("pid", os.getpid())
        sub = self._in.subscribe()
        kept = [sub.receive(timeout=30) for _ in range(self._count)]
        self.send_status("holding", [is_big(a, i, self._nbytes) for i, a in enumerate(kept)])
        self.wait_for_stop()
