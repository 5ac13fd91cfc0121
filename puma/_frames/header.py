"""A frame pool's header: who holds each chunk, in 64-bit slots at the start of the shared memory; its lock."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from puma._frames.filelock import _FileLock

__all__ = [
    "FREE",
    "GEN",
    "HEAD",
    "H_BORROWS",
    "H_COUNT",
    "H_DROPS",
    "H_RETURNED",
    "H_SEQ",
    "IN_FLIGHT",
    "MAX_SHARES",
    "MOST_CHUNKS",
    "OWNER",
    "READERS",
    "SEQ",
    "SHARED",
    "SHARES",
    "TAG",
    "FramePoolStatistics",
    "W",
    "_FileLock",
]

# --- the header ---------------------------------------------------------------------------
H_COUNT = 0
H_DROPS = 1  # frames a drop-oldest pool dropped
H_SEQ = 2  # hand-overs so far (orders frames in flight, oldest first)
H_BORROWS = 3  # borrows so far
H_RETURNED = 4  # chunks returned because their holder died
HEAD = 8
MAX_SHARES = 8  # most fan-out readers of one chunk
W = 5 + MAX_SHARES  # slots per chunk
# OWNER, GEN, SEQ (hand-over order), READERS (fan-out readers), TAG (the buffer it was handed into), SHARES...
OWNER, GEN, SEQ, READERS, TAG, SHARES = 0, 1, 2, 3, 4, 5
FREE = 0
IN_FLIGHT = -1  # OWNER: handed over, not received yet
SHARED = -2  # OWNER: fan-out readers hold it (their pids in the share slots; -1: not received yet)
MOST_CHUNKS = 16384


@dataclass(frozen=True)
class FramePoolStatistics:
    """A snapshot of a frame pool (the same figures in every process that has it).

    Attributes:
        name: the pool's name.
        count: chunks in the pool.
        free: chunks nobody holds.
        borrowed: chunks held by a borrower or a receiver (writable).
        in_flight: chunks handed over into a buffer and not received yet.
        shared: chunks held read-only by fan-out readers.
        drops: frames a drop-oldest pool dropped so far.
        borrows: borrows so far.
        returned: chunks returned because the process holding them died.
    """

    name: str
    count: int
    free: int
    borrowed: int
    in_flight: int
    shared: int
    drops: int
    borrows: int
    returned: int


def _layout(shape: tuple[int, ...], dtype: np.dtype[Any], count: int) -> tuple[int, int, int]:
    """(header bytes, chunk stride, total bytes): chunks page-aligned when they are a page or more."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    align = 4096 if nbytes >= 4096 else 64
    stride = max(align, -(-nbytes // align) * align)
    header = -(-(8 * (HEAD + W * count)) // 4096) * 4096
    return header, stride, header + stride * count
