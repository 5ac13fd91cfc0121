"""A shared output region: one array that workers write disjoint parts of, read whole when every part is done.

The array lives in the same kind of memory as a frame pool's (anonymous on
Linux).  It is split along its first axis into ``parts`` (as
``numpy.array_split`` would); a worker writes its part in place and marks it
done.  Done flags are 64-bit slots before the array; each ``done`` also
writes a byte on a pipe, so :meth:`SharedRegion.wait` sleeps in the one wait
(stops and commands still reach a runnable waiting there) until the last
part is done.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import threading
import weakref
from typing import Any

import numpy as np

from puma._core import current as _context
from puma._core.errors import BufferEmpty, PumaError
from puma._core.waiting import Deadline, Waker
from puma._frames.memory import Memory, close_shared, open_shared

__all__ = ["SharedRegion"]

_regions: weakref.WeakValueDictionary[str, SharedRegion] = weakref.WeakValueDictionary()


class SharedRegion:
    """One numpy array that workers write disjoint parts of; its reader waits until every part is done.

    Made for an environment like a :class:`~puma.frames.FramePool`: shared
    memory in a process environment (it crosses into child processes as an
    attribute of a runnable), a plain array in a thread environment.

    >>> import numpy as np, puma
    >>> region = puma.frames.SharedRegion(puma.ThreadEnvironment(), (6, 2), np.int64, parts=3)
    >>> for k in range(3):
    ...     region.part(k)[:] = k
    ...     region.done(k)
    >>> region.wait(timeout=1)[:, 0].tolist()
    [0, 0, 1, 1, 2, 2]

    Args:
        env: the environment the runnables using it run in.
        shape: the whole array's shape.
        dtype: its dtype.
        parts: how many parts it is split into along its first axis.
        name: for messages.
    """

    _shape: tuple[int, ...]
    _dtype: np.dtype[Any]
    _parts: int
    _name: str

    def __init__(
        self, env: Any, shape: int | tuple[int, ...], dtype: Any = np.float64, parts: int = 1, name: str = "region"
    ) -> None:
        self._shape = (shape,) if isinstance(shape, int) else tuple(int(n) for n in shape)
        self._dtype = np.dtype(dtype)
        if self._dtype.hasobject:
            raise TypeError(f"shared region {name!r}: dtype {self._dtype} holds Python objects")
        if not self._shape or not 1 <= parts <= max(self._shape[0], 1):
            raise ValueError(f"shared region {name!r}: parts must be between 1 and the first dimension, got {parts}")
        self._parts = parts
        self._name = name
        self._key = f"{os.getpid()}-{os.urandom(6).hex()}"
        self._memory: Memory | None = None
        self._flags_bytes = -(-(8 * parts) // 64) * 64
        size = self._flags_bytes + max(int(np.prod(self._shape, dtype=np.int64)) * self._dtype.itemsize, 1)
        if getattr(env, "is_process", False):
            memory = Memory.create(name, size)
            r, w = os.pipe()
            self._origin: tuple[int, ...] = (os.getpid(), memory.fd, r, w)
            self._setup(memory, r, w)
        else:
            self._origin = ()
            self._setup(None, -1, -1, bytearray(size))
        _regions[self._key] = self

    def _setup(self, memory: Memory | None, r: int, w: int, local: bytearray | None = None) -> None:
        self._memory = memory
        area: Any = memory.map if memory is not None else local
        self._flags = memoryview(area)[: 8 * self._parts].cast("q")
        self._array = np.ndarray(self._shape, self._dtype, buffer=area, offset=self._flags_bytes)
        self._r, self._w = r, w
        self._lock = threading.Lock()
        self._waiters: list[Waker] = []
        self._reduced: Any = None
        if memory is not None:
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            weakref.finalize(self, close_shared, memory, r, w)

    # --- the public face -----------------------------------------------------------------------
    @property
    def array(self) -> np.ndarray[Any, Any]:
        """The whole array (writable; read it whole once :meth:`wait` returned)."""
        return self._array

    @property
    def parts(self) -> int:
        """How many parts the array is split into."""
        return self._parts

    def bounds(self, k: int) -> tuple[int, int]:
        """The rows ``[start, stop)`` of part ``k`` along the first axis."""
        if not 0 <= k < self._parts:
            raise IndexError(f"shared region {self._name!r} has parts 0 to {self._parts - 1}, not {k}")
        rows, parts = self._shape[0], self._parts
        small, extra = divmod(rows, parts)
        start = k * small + min(k, extra)
        return start, start + small + (1 if k < extra else 0)

    def part(self, k: int) -> np.ndarray[Any, Any]:
        """Part ``k`` of the array: a writable view, no copy."""
        start, stop = self.bounds(k)
        return self._array[start:stop]

    def done(self, k: int) -> None:
        """Part ``k`` is written (idempotent): its reader wakes when it was the last."""
        self.bounds(k)
        if self._flags[k]:
            return
        self._flags[k] = 1
        if self._memory is not None:
            try:
                os.write(self._w, b"\1")
            except BlockingIOError:
                pass  # the pipe is full of wake-ups already
        else:
            with self._lock:
                waiters, self._waiters = self._waiters, []
            for waker in waiters:
                waker.wake()

    @property
    def completed(self) -> int:
        """How many parts are done."""
        return sum(self._flags.tolist())

    def wait(self, timeout: float | None = None) -> np.ndarray[Any, Any]:
        """Wait until every part is done (in the one wait: a stop or a command reaches it); the whole array.

        Raises:
            BufferEmpty: not every part was done within ``timeout`` seconds (a ``TimeoutError``).
        """
        ctx = _context.waiting_context()
        waker = ctx.waker

        def ready() -> bool:
            if self._memory is not None:
                try:
                    while os.read(self._r, 4096):
                        pass
                except BlockingIOError:
                    pass
            elif waker not in self._waiters:
                with self._lock:
                    self._waiters.append(waker)
            return self.completed == self._parts

        fds = (self._r,) if self._memory is not None else ()
        if not ctx.wait(fds, Deadline(timeout).remaining(), ready, f"every part of shared region {self._name!r}"):
            raise BufferEmpty(
                f"shared region {self._name!r}: {self.completed} of {self._parts} parts were done within {timeout} s"
            )
        return self._array

    def reset(self) -> None:
        """Mark every part not done (for the next round)."""
        for k in range(self._parts):
            self._flags[k] = 0

    def __repr__(self) -> str:
        return f"<SharedRegion {self._name!r}: {self._shape} {self._dtype}, {self.completed}/{self._parts} parts done>"

    def __reduce__(self) -> Any:
        memory = self._memory
        if memory is None:
            raise PumaError(
                f"shared region {self._name!r} was made for threads: make it with the ProcessEnvironment "
                "its runnables run in to use it from a child process"
            )
        spec = (self._key, self._name, self._shape, self._dtype.str, self._parts, memory.size, memory.name)
        if multiprocessing.context.get_spawning_popen() is not None:
            from multiprocessing.reduction import DupFd

            return (_attach, (spec, (DupFd(memory.fd), DupFd(self._r), DupFd(self._w)), self._origin))
        if self._reduced is None:
            self._reduced = (_by_key, (self._key, pickle.dumps((spec, None, self._origin))))
        return self._reduced


def _by_key(key: str, how: bytes) -> SharedRegion:
    found = _regions.get(key)
    return found if found is not None else _attach(*pickle.loads(how))


def _attach(spec: tuple[Any, ...], fds: Any, origin: tuple[int, ...]) -> SharedRegion:
    key, name, shape, dtype, parts, size, segment = spec
    found = _regions.get(key)
    if found is not None:
        for fd in (d.detach() for d in fds or ()):
            os.close(fd)
        return found
    memory, r, w = open_shared(f"shared region {name!r}", fds, origin, segment, size)
    region = SharedRegion.__new__(SharedRegion)
    region._key, region._name, region._shape, region._dtype = key, name, tuple(shape), np.dtype(dtype)
    region._parts, region._origin = parts, tuple(origin)
    region._flags_bytes = -(-(8 * parts) // 64) * 64
    region._setup(memory, r, w)
    _regions[key] = region
    return region
