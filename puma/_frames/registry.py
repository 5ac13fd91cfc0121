"""The frame pools open in this process, found without importing numpy (the Runner asks on every death)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from puma._frames.pool import FramePool

__all__ = ["free_frames_held_by", "live_frame_pools", "pools"]

#: Every pool open in this process, by key (the same key in every process that has it).
pools: weakref.WeakValueDictionary[str, FramePool] = weakref.WeakValueDictionary()


def live_frame_pools() -> list[FramePool]:
    """Frame pools open in this process (for leak checks)."""
    return [p for p in list(pools.values()) if not p._closed]


def free_frames_held_by(pid: int) -> int:
    """The process ``pid`` died: return its chunks to every shared pool open here; how many returned."""
    return sum(pool._free_pid(pid) for pool in live_frame_pools() if pool.shared)
