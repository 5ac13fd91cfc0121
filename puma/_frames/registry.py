"""The frame pools open in this process, found without importing numpy (the Runner asks on every death)."""

from __future__ import annotations

import os
import pickle
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from puma._core.forking import refresh_in_children

if TYPE_CHECKING:
    from puma._frames.arena import Arena
    from puma._frames.pool import FramePool

__all__ = [
    "arenas",
    "buffer_tag",
    "free_frames_held_by",
    "free_frames_sent_to",
    "live_frame_pools",
    "open_pools",
    "pool_by_ref",
    "pools",
    "sending",
    "track",
]

#: Every pool open in this process, by key (the same key in every process that has it).
pools: weakref.WeakValueDictionary[str, FramePool] = weakref.WeakValueDictionary()

#: The dictionary under ``pools`` (weak references by key): empty when no pool is open here, a cheap
#: test for a thread buffer deciding whether to look for frames inside a value.
open_pools: dict[str, weakref.ref[FramePool]] = pools.data  # type: ignore[attr-defined]

#: Every process buffer's arena for large values open in this process, by the buffer's key.
arenas: weakref.WeakValueDictionary[str, Arena] = weakref.WeakValueDictionary()

#: This process's pid (kept here: a frame changes hands often and the pid is asked each time).
pid = os.getpid()


class _Sending(threading.local):
    tag = 0  # the buffer (its tag) a process buffer publisher is pickling a value for, in this thread


#: Set by a process buffer's publisher while it pickles a value: frames handed over then note it.
sending = _Sending()


def buffer_tag(key: str) -> int:
    """A buffer's tag in a pool's header: a 62-bit number from its key, the same in every process."""
    h = 0xCBF29CE484222325  # FNV-1a (no hashlib: a child process imports this module)
    for byte in key.encode():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return (h >> 2) or 1


def refresh_pid() -> None:
    """Set :data:`pid` to this process's (see :func:`track`)."""
    global pid
    pid = os.getpid()


def track(refresh: Callable[[], None]) -> None:
    """A pool or arena is used here: :data:`pid`, and what ``refresh`` resets, are kept right in forked children."""
    refresh_pid()
    refresh_in_children(refresh_pid)
    refresh_in_children(refresh)


def pool_by_ref(key: str, how: bytes) -> FramePool:
    """The pool a frame's handle names: the one open here (the usual case), else opened from ``how``."""
    found = pools.get(key)
    if found is not None and not found._closed:
        return found
    opener, args = pickle.loads(how)  # (the function that opens it, its arguments): loads the pool's module
    pool: FramePool = opener(*args)
    return pool


def live_frame_pools() -> list[FramePool]:
    """Frame pools open in this process (for leak checks)."""
    return [p for p in list(pools.values()) if not p._closed]


def free_frames_held_by(pid: int) -> int:
    """The process ``pid`` died: return its chunks to every shared pool open here, and free its large values."""
    if pid > 0:
        for arena in list(arenas.values()):
            arena.free_where(pid)
    return sum(pool._free_pid(pid) for pool in live_frame_pools() if pool.shared)


def free_frames_sent_to(key: str) -> int:
    """The buffer ``key`` was closed (no reader remains): return the frames handed into it and not received."""
    arena = arenas.get(key)
    if arena is not None:
        arena.free_where(-1)  # its large values in flight: blocks of its arena
    tag = buffer_tag(key)
    return sum(pool._reclaim_in_flight(tag) for pool in live_frame_pools() if pool.shared)
