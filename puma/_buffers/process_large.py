"""Large out-of-band buffers of a process buffer's values, through its shared-memory arena.

A value whose pickle has an out-of-band buffer (a numpy array's memory) of
:data:`~puma._frames.arena.THRESHOLD` bytes or more is written as a
:data:`SHARED` frame: each large buffer is copied into a block of the
buffer's arena (:mod:`puma._frames.arena`) and only its handle travels;
the small ones travel inside the frame.  The frame's body after its kind
byte::

    count (4 bytes), then for each buffer: size (8), block (8, -1: inline), generation (8)
    the inner kind (1 byte: ITEM or BATCH), the pickle's size (8), the pickle
    the inline buffers, one after the other

The reader claims the blocks as soon as it reads the frame (under the read
lock), so a reader killed holding them gives them back through the Runner,
and gets each large buffer as a writable view of the block itself.  A
restartable reader's journal copies the frame like any other; when that
reader dies, the Runner adopts the blocks its journal names before it frees
what the dead process held, copies the values out of them for the next
incarnation (or the dead letters), then frees them
(:func:`puma._buffers.journal.keep_blocks`).
"""

from __future__ import annotations

import pickle
import struct
from typing import Any

from puma._frames.arena import THRESHOLD, Arena

__all__ = ["SHARED", "blocks", "claim", "inner_kind_at", "load", "pack", "wants_arena"]

#: Kind byte of a frame whose large buffers are in the buffer's arena.
SHARED = 4

_COUNT = struct.Struct("!I")
_ENTRY = struct.Struct("!Qqq")
_TAIL = struct.Struct("!BQ")


def wants_arena(raws: list[memoryview]) -> bool:
    """True if one of a value's out-of-band buffers is large enough for the arena."""
    return any(raw.nbytes >= THRESHOLD for raw in raws)


def pack(
    arena: Arena, raws: list[memoryview], kind: int, data: bytes
) -> tuple[list[Any], list[tuple[int, int]]] | None:
    """The body of a :data:`SHARED` frame (its parts), and the blocks taken; None if the arena has no room."""
    refs: list[tuple[int, int]] = []
    entries: list[bytes] = [_COUNT.pack(len(raws))]
    inline: list[memoryview] = []
    for raw in raws:
        if raw.nbytes >= THRESHOLD:
            ref = arena.put(raw)
            if ref is None:
                arena.abandon(refs)
                return None
            refs.append(ref)
            entries.append(_ENTRY.pack(raw.nbytes, *ref))
        else:
            entries.append(_ENTRY.pack(raw.nbytes, -1, 0))
            inline.append(raw)
    entries.append(_TAIL.pack(kind, len(data)))
    return [b"".join(entries), data, *inline], refs


def _entries(body: memoryview) -> tuple[list[tuple[int, int, int]], int]:
    (count,) = _COUNT.unpack_from(body, 0)
    entries = [_ENTRY.unpack_from(body, 4 + 24 * i) for i in range(count)]
    return entries, 4 + 24 * count


def inner_kind_at(body: memoryview) -> int:
    """Where a :data:`SHARED` frame's body holds its inner kind (ITEM or BATCH)."""
    count: int = _COUNT.unpack_from(body, 0)[0]
    return 4 + 24 * count


def claim(arena: Arena, body: memoryview) -> None:
    """A :data:`SHARED` frame was read from the pipe: its blocks are this process's now."""
    for _, block, gen in _entries(body)[0]:
        if block >= 0:
            arena.claim(block, gen)


def blocks(body: memoryview) -> list[tuple[int, int]]:
    """The blocks (block, generation) a :data:`SHARED` frame's body names."""
    return [(block, gen) for _, block, gen in _entries(body)[0] if block >= 0]


def load(arena: Arena, body: memoryview, copy: bool = False) -> tuple[int, Any]:
    """The inner kind and the payload of a :data:`SHARED` frame.

    Its large buffers are views of their blocks, freed with the value; with
    ``copy``, copies of blocks this process holds (a dead reader's, adopted
    to recover its journal: see :meth:`Arena.adopt`), which stay held.
    """
    entries, at = _entries(body)
    kind, size = _TAIL.unpack_from(body, at)
    at += _TAIL.size
    pickled = body[at : at + size]
    at += size
    buffers: list[Any] = []
    for n, block, gen in entries:
        if block >= 0:
            buffers.append(arena.copy(block, gen, n) if copy else arena.view(block, gen, n))
        else:
            buffers.append(bytearray(body[at : at + n]))
            at += n
    return kind, pickle.loads(pickled, buffers=buffers)
