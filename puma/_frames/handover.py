"""Frames inside other values, and frames that were dropped before they arrived.

No numpy at import (buffers use this module).

* **Frames inside a value.**  A process buffer pickles what it carries, so a
  frame anywhere inside a value (a tuple, a list, a dict, an object's
  attribute) is handed over by its ``__reduce__``.  A thread buffer passes
  values as they are; to hand over the frames inside one the same way it
  looks for them with a pickler that stops at frames (:func:`find`): only
  for a value that is not a frame nor a plain scalar, only while a frame
  pool is open in this process, and only in a buffer whose item type could
  hold one.  When it finds frames the reader gets what a process buffer
  would give it: a copy of the value rebuilt from that pickle (large arrays
  in it shared, not copied), holding the received frames
  (:func:`hand_over`).  A value that cannot be pickled (which no process
  buffer can carry either) is passed as it is.
* **Dropped frames are never delivered.**  A drop-oldest pool gives the
  chunk of a frame in flight to a newer frame.  A thread buffer's reader
  claims the frames of what it takes (:func:`arrive`) and skips the value if
  one was dropped; in a process buffer the frame's unpickling notes its
  thread in :data:`~puma._frames.frame.dropped_arrivals`, which a
  subscription looks at (an empty list: one truth test) after each
  unpickling, skipping the value (:func:`carries_dropped`).  The other
  frames of a skipped value are released.
"""

from __future__ import annotations

import io
import pickle
from _thread import get_ident
from typing import Any

from puma._frames.frame import DROPPED, PENDING, Frame, FrameOwnershipError, dropped_arrivals

__all__ = [
    "PLAIN",
    "SKIP",
    "Carrier",
    "arrive",
    "carries_dropped",
    "find",
    "hand_over",
    "may_hold_frames",
    "without_dropped",
]

#: Types whose values never hold a frame: a thread buffer does not look inside them.
PLAIN = frozenset({int, float, str, bytes, bool, type(None), complex, bytearray, range})

#: What a reader's arrival gives for a value that carried a dropped frame: skipped.
SKIP: Any = object()


def may_hold_frames(check: type | tuple[type, ...] | None) -> bool:
    """True if a buffer checking values against ``check`` (None: anything) may be given values holding frames."""
    if check is None:
        return True
    kinds = check if isinstance(check, tuple) else (check,)
    return any(kind not in PLAIN and kind is not Frame for kind in kinds)


class Carrier:
    """A value holding frames, as a thread buffer keeps it: the reader's copy and its frames (unclaimed)."""

    __slots__ = ("frames", "value")

    def __init__(self, value: Any, frames: list[Frame]) -> None:
        self.value = value
        self.frames = frames


def _slot(index: int) -> Any:  # named in the pickles of _Finder; _Loader maps it to the frames handed over
    raise FrameOwnershipError("a frame's place in a value rebuilt by a thread buffer was unpickled elsewhere")


class _Finder(pickle.Pickler):
    """Pickles a value, noting each frame in it (once) and putting a placeholder in its place."""

    def __init__(self, sink: io.BytesIO, buffers: list[pickle.PickleBuffer]) -> None:
        super().__init__(sink, 5, buffer_callback=buffers.append)  # large arrays out of band: not copied
        self.frames: list[Frame] = []

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is Frame:
            self.frames.append(obj)
            return (_slot, (len(self.frames) - 1,))
        return NotImplemented


class _Loader(pickle.Unpickler):
    def __init__(self, data: bytes, frames: list[Frame], buffers: list[pickle.PickleBuffer]) -> None:
        super().__init__(io.BytesIO(data), buffers=buffers)
        self._frames = frames

    def find_class(self, module: str, name: str) -> Any:
        if module == __name__ and name == "_slot":
            return self._frames.__getitem__
        return super().find_class(module, name)


def _only_plain(value: Any, depth: int) -> bool:
    """True if ``value`` is plain scalars in tuples, lists, sets and dicts (a few levels deep): no frame inside."""
    kind = type(value)
    if kind in PLAIN:
        return True
    if depth > 3:
        return False
    if kind is dict:
        return _only_plain(tuple(value), depth + 1) and _only_plain(tuple(value.values()), depth + 1)
    if kind is tuple or kind is list or kind is set or kind is frozenset:
        return all(type(item) in PLAIN or _only_plain(item, depth + 1) for item in value)
    return False


def find(value: Any) -> tuple[list[Frame], bytes, list[pickle.PickleBuffer]] | None:
    """The frames inside ``value`` (a frame itself is not looked in), with its pickle.

    None if there are none, or if it cannot be pickled.
    """
    kind = type(value)
    if kind is tuple or kind is list:  # the usual cases, found without a pickle
        for item in value:
            if type(item) not in PLAIN:
                break
        else:
            return None
    elif kind is dict:
        for item in value.values():
            if type(item) not in PLAIN:
                break
        else:
            for item in value:
                if type(item) not in PLAIN:
                    break
            else:
                return None
    elif kind is Frame or kind in PLAIN:
        return None
    if _only_plain(value, 0):
        return None
    sink = io.BytesIO()
    buffers: list[pickle.PickleBuffer] = []
    finder = _Finder(sink, buffers)
    try:
        finder.dump(value)
    except Exception:  # noqa: BLE001 - not picklable: no process buffer could carry it; passed as it is
        return None
    if not finder.frames:
        return None
    return finder.frames, sink.getvalue(), buffers


def hand_over(found: tuple[list[Frame], bytes, list[pickle.PickleBuffer]]) -> Carrier:
    """Hand over the frames :func:`find` found: the value's copy holding the receiver's frames."""
    frames, data, buffers = found
    for frame in frames:
        if not (frame._state == PENDING or frame.held):
            raise FrameOwnershipError(f"cannot publish: {frame._why()}")
    received = [frame._published() for frame in frames]
    return Carrier(_Loader(data, received, buffers).load(), received)


def arrive(item: Any) -> Any:
    """A thread buffer's frame or :class:`Carrier`, taken by a reader: claimed, or SKIP if a frame was dropped."""
    frames = [item] if type(item) is Frame else item.frames
    dropped = False
    for frame in frames:
        if frame._state == PENDING:
            frame._claim()
        dropped = dropped or frame._state == DROPPED
    if dropped:
        for frame in frames:
            frame.release()
        return SKIP
    return item if type(item) is Frame else item.value


def _frames_in(value: Any) -> list[Frame]:
    if type(value) is Frame:
        return [value]
    if type(value) in PLAIN:
        return []
    finder = _Finder(io.BytesIO(), [])
    try:
        finder.dump(value)
    except Exception:  # noqa: BLE001 - it was unpickled just now; if it cannot be pickled again, its frames are unknown
        return []
    return finder.frames


def _skips(value: Any) -> bool:
    """True if ``value`` holds a dropped frame; then its other frames are released."""
    frames = _frames_in(value)
    if not any(frame._state == DROPPED for frame in frames):
        return False
    for frame in frames:
        frame.release()
    return True


def carries_dropped(value: Any) -> bool:
    """After an unpickling (in this thread) while :data:`dropped_arrivals` was not empty: skip ``value``?

    True if the unpickling met a dropped frame here and ``value`` holds it.
    """
    me = get_ident()
    if me not in dropped_arrivals:
        return False
    while me in dropped_arrivals:
        try:
            dropped_arrivals.remove(me)  # one at a time: other threads append meanwhile
        except ValueError:
            break
    return _skips(value)


def without_dropped(values: list[Any], keep_places: bool = False) -> list[Any]:
    """A batch unpickled here while :data:`dropped_arrivals` was not empty, less what holds a dropped frame.

    ``keep_places``: each such value is replaced by :data:`SKIP` instead, so
    the others keep their places in the batch (a restartable reader's journal
    counts a batch's values by place).  ``values`` itself is returned when
    nothing was dropped.
    """
    me = get_ident()
    if me not in dropped_arrivals:
        return values
    while me in dropped_arrivals:
        try:
            dropped_arrivals.remove(me)
        except ValueError:
            break
    if keep_places:
        return [SKIP if _skips(value) else value for value in values]
    return [value for value in values if not _skips(value)]
