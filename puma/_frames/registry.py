"""The frame pools open in this process, found without importing numpy (the Runner asks on every death)."""

from __future__ import annotations

import os
import pickle
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from puma._frames.pool import FramePool

__all__ = ["free_frames_held_by", "live_frame_pools", "pool_by_ref", "pools"]

#: Every pool open in this process, by key (the same key in every process that has it).
pools: weakref.WeakValueDictionary[str, FramePool] = weakref.WeakValueDictionary()

#: This process's pid (kept here: a frame changes hands often and the pid is asked each time).
pid = os.getpid()


def _forked() -> None:
    global pid
    pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


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
    """The process ``pid`` died: return its chunks to every shared pool open here; how many returned."""
    return sum(pool._free_pid(pid) for pool in live_frame_pools() if pool.shared)
