"""A lock across threads and processes that the kernel lets go of when its holder dies (no numpy here)."""

from __future__ import annotations

import fcntl
import threading

__all__ = ["_FileLock"]


class _FileLock:
    """The pool's lock: a thread lock, then a record lock on the memory file (freed by the kernel at death).

    Reentrant: a frame collected while its thread holds the lock (the cyclic
    collector runs at any allocation) releases its chunk under the same lock.
    """

    __slots__ = ("_depth", "_fd", "_local")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._local = threading.RLock()
        self._depth = 0

    def __enter__(self) -> None:
        self._local.acquire()
        if self._depth == 0:
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX, 1)
            except BaseException:
                self._local.release()
                raise
        self._depth += 1

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth == 0:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, 1)
        self._local.release()
