"""Shared-memory numpy frames: fixed-shape chunks handed between runnables without copies.

A :class:`FramePool` holds ``count`` numpy chunks of one shape and dtype.  A
producer borrows a :class:`Frame`, fills ``frame.array`` in place and
publishes the frame into an ordinary buffer: only a small handle travels,
and the consumer gets the same memory, writable, and releases it back to the
pool.  In a ProcessEnvironment the chunks are shared memory (on Linux an
anonymous ``memfd``: nothing in ``/dev/shm``, nothing left behind by a killed
process); in a ThreadEnvironment they are plain arrays, with the same API.
A :class:`SharedRegion` is one array that workers write disjoint parts of.
See docs/frames.md.
"""

from __future__ import annotations

from puma._core.naming import present_as as _present_as
from puma._frames.errors import FrameDropped, FrameOwnershipError
from puma._frames.frame import Frame
from puma._frames.header import FramePoolStatistics
from puma._frames.memory import SharedMemoryTooSmall
from puma._frames.pool import FramePool
from puma._frames.region import SharedRegion

__all__ = [
    "Frame",
    "FrameDropped",
    "FrameOwnershipError",
    "FramePool",
    "FramePoolStatistics",
    "SharedMemoryTooSmall",
    "SharedRegion",
]

_present_as("puma.frames", globals(), __all__)
