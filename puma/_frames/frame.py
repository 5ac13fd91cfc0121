"""A borrowed chunk of a frame pool: its array, who may write it, and how it changes hands.

No numpy at import: buffers check for frames, and a program that uses none never loads numpy.
"""

from __future__ import annotations

import multiprocessing.context
import struct
import weakref
from _thread import get_ident
from multiprocessing.context import get_spawning_popen as _spawning
from typing import TYPE_CHECKING, Any

from puma._frames.errors import FrameDropped, FrameOwnershipError
from puma._frames.registry import open_pools, pool_by_ref

if TYPE_CHECKING:
    from puma._frames.array import FrameArray
    from puma._frames.pool import FramePool

__all__ = [
    "Frame",
    "FrameDropped",
    "FrameOwnershipError",
    "dropped_arrivals",
    "fan_out",
    "published",
    "received_handle",
]

# A frame's states in this process.
PENDING = 0  # handed over to this process (or thread), not claimed yet: claimed on first use
LIVE = 1  # held: its array may be used (written, unless it is a read-only share)
RELEASED = 2  # given back to the pool
HANDED = 3  # handed over (published): its old holder may not use it
DROPPED = 4  # a live source's newer frame took its chunk before it was received

# What a frame gives its holder.
WRITABLE = 0  # one holder, may write
SHARE = 1  # one of several readers (fan-out): read-only

# Where get_spawning_popen() looks (a thread-local of multiprocessing), read directly on the
# hand-over path, in its per-thread dict (a getattr that finds no attribute there costs some
# 0.8 us); None on an implementation without it (get_spawning_popen is called then).
_mp_tls = getattr(multiprocessing.context, "_tls", None)

#: The threads (their idents) whose unpickling of a frame's handle just found it dropped: a
#: subscription that finds its thread here skips the value (see puma._frames.handover).
dropped_arrivals: list[int] = []

_STATE_WORDS = {
    RELEASED: "was released back to the pool",
    HANDED: "was handed over (published into a buffer): only its receiver may use it now",
    DROPPED: "was dropped: the pool is in drop-oldest mode and a newer frame took its chunk before it was received",
}


class Frame:
    """One chunk of a :class:`~puma.frames.FramePool`, held by this runnable.

    Use :attr:`array` (a writable numpy view of the chunk's memory, no copy),
    then either publish the frame into a buffer, which hands it over (only a
    small handle travels; the receiver gets the same memory, writable), or
    :meth:`release` it back to the pool.  A frame is a context manager: leaving
    the ``with`` block releases it unless it was handed over.  A frame dropped
    without either is released when it is collected, and the chunks a process
    held when it dies go back to the pool.

    After a release or a hand-over, :attr:`array` raises
    :class:`FrameOwnershipError`, and so does assigning into any view of it
    kept from before (``np.copyto`` and other non-ufunc writes raise numpy's
    read-only ``ValueError``).  Reading an old view is not checked: its
    memory belongs to the next holder.
    """

    __slots__ = ("__weakref__", "_array", "_gen", "_index", "_kind", "_pool", "_state", "_views")

    def __init__(self, pool: FramePool, index: int, gen: int, kind: int, state: int) -> None:
        self._pool = pool
        self._index = index
        self._gen = gen
        self._kind = kind
        self._state = state
        self._array: FrameArray | None = None
        self._views: list[weakref.ref[FrameArray]] = []

    # --- the public face ---------------------------------------------------------------
    @property
    def array(self) -> FrameArray:
        """The chunk's memory as a numpy array of the pool's shape and dtype (read-only for a fan-out share)."""
        array = self._array
        if array is not None:
            return array
        if self._state == PENDING:
            self._claim()
        if self._state != LIVE:
            raise (FrameDropped if self._state == DROPPED else FrameOwnershipError)(self._why())
        return self._map()

    @array.setter
    def array(self, value: Any) -> None:
        # ``frame.array += 1`` works in place, then assigns the same array back: allowed.
        if value is not self._array or value is None:
            raise AttributeError(
                f"frame {self._index} of pool {self._pool.name!r}: its array is the chunk's memory and cannot be "
                "replaced; write into it instead (frame.array[...] = values)"
            )

    @property
    def pool(self) -> FramePool:
        """The pool the chunk belongs to."""
        return self._pool

    @property
    def index(self) -> int:
        """Which chunk of the pool this is (0 to ``count - 1``)."""
        return self._index

    @property
    def readonly(self) -> bool:
        """True for a fan-out share: several readers hold the chunk, none may write it."""
        return self._kind == SHARE

    @property
    def held(self) -> bool:
        """True while this holder may use the frame (not released, handed over or dropped)."""
        if self._state == PENDING:
            self._claim()
        return self._state == LIVE

    @property
    def dropped(self) -> bool:
        """True if a drop-oldest pool gave this frame's chunk to a newer frame before it was received.

        Subscriptions never deliver such a frame (nor a value holding one), so
        this is False on every frame a buffer gives; it is True only on a
        handle that arrived some other way after its chunk was taken.
        """
        if self._state == PENDING:
            self._claim()
        return self._state == DROPPED

    def release(self) -> None:
        """Give the chunk back to the pool (a share: when the last reader releases it). Idempotent."""
        if self._state == PENDING:
            self._claim()
        if self._state == LIVE:
            self._pool._give_back(self._index, self._gen, self._kind)
            self._invalidate(RELEASED)

    def __enter__(self) -> Frame:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        words = {PENDING: "arriving", LIVE: "held", RELEASED: "released", HANDED: "handed over", DROPPED: "dropped"}
        share = ", read-only share" if self._kind == SHARE else ""
        return f"<Frame {self._index} of pool {self._pool.name!r}: {words[self._state]}{share}>"

    def __reduce__(self) -> Any:
        # Published into a process buffer: only this handle travels; the receiver's frame is new.
        pool = self._pool
        reduced = pool._reduced
        # The usual case: the pool's key and how to open it (the pool itself while a child starts).
        ref = reduced[1] if reduced is not None and _spawning() is None else pool._handle_ref() or pool
        if self._state == LIVE and self._kind == WRITABLE:
            gen = pool._hand_over(self._index, self._gen, WRITABLE)
            self._invalidate(HANDED)
            return (_received, (ref, self._index, gen, WRITABLE))
        frame = self._published()
        frame._state = HANDED
        return (_received, (ref, frame._index, frame._gen, frame._kind))

    def _handle(self, tag: int) -> bytes | None:
        """This frame handed over as a handle's bytes (see :func:`received_handle`); None to pickle it instead.

        What :meth:`__reduce__` does for a frame published alone into a
        process buffer, without pickle: its pool's key and how to open it,
        then the chunk's index, generation and kind.  None while a child
        process starts, or for a pool made for threads (pickling it says why).
        """
        pool = self._pool
        if pool._closed or (_spawning() if _mp_tls is None else _mp_tls.__dict__.get("spawning_popen")) is not None:
            return None
        reduced = pool._reduced
        ref = reduced[1] if reduced is not None else pool._handle_ref()
        if ref is None:
            return None
        prefix = _prefixes.get(ref)
        if prefix is None:
            prefix = _prefix(ref)
        if self._state == LIVE and self._kind == WRITABLE:
            gen = pool._hand_over(self._index, self._gen, WRITABLE, tag)
            self._invalidate(HANDED)
            return prefix + _HANDLE_TAIL.pack(self._index, gen, WRITABLE)
        frame = self._published(tag)
        frame._state = HANDED
        return prefix + _HANDLE_TAIL.pack(frame._index, frame._gen, frame._kind)

    def __del__(self) -> None:
        if self._state in (LIVE, PENDING):
            try:
                self.release()
            except Exception:  # noqa: BLE001, S110 - at collection (or interpreter exit) there is nobody to tell
                pass

    # --- used by puma itself -----------------------------------------------------------------
    def _why(self) -> str:
        what = f"frame {self._index} of pool {self._pool.name!r}"
        if self._state == LIVE and self._kind == SHARE:
            return f"{what} is a read-only share (fanned out to several readers): copy it to change it"
        return f"{what} {_STATE_WORDS.get(self._state, 'is not held here')}"

    def _map(self) -> FrameArray:
        """The chunk's array, made on first use (a frame only passed on never needs one)."""
        from puma._frames.array import FrameArray

        array = self._pool._view(self._index).view(FrameArray)
        array._puma_frame = self
        if self._kind == SHARE:
            array.flags.writeable = False
        self._array = array
        return array

    def _claim(self) -> None:
        """A frame handed to this holder: take it (or find it dropped)."""
        if self._pool._claim(self._index, self._gen, self._kind):
            self._state = LIVE
        else:
            self._state = DROPPED

    def _invalidate(self, state: int) -> None:
        """Stop this holder's use of the chunk: its array and every view of it become read-only."""
        self._state = state
        array = self._array
        if array is None:
            return  # never mapped: no view of it exists
        self._array = None
        array.flags.writeable = False
        for ref in self._views:
            view = ref()
            if view is not None:
                view.flags.writeable = False
        self._views.clear()

    def _published(self, tag: int | None = None) -> Frame:
        """Hand the frame over for publishing (into buffer ``tag``): the frame object the receiver gets, unclaimed."""
        if self._state == PENDING:
            return self  # passing through (fan-out shares, a frame not yet claimed): still in flight
        if self._state != LIVE:
            raise FrameOwnershipError(f"cannot publish: {self._why()}")
        gen = self._pool._hand_over(self._index, self._gen, self._kind, tag)
        self._invalidate(HANDED)
        return Frame(self._pool, self._index, gen, self._kind, PENDING)

    def _fan_out(self, count: int) -> list[Frame]:
        """``count`` read-only shares of this frame, each unclaimed (for a multicaster's outputs)."""
        if self._state == PENDING:
            self._claim()
        if self._state != LIVE:
            raise FrameOwnershipError(f"cannot publish: {self._why()}")
        gen = self._pool._fan_out(self._index, self._gen, self._kind, count)
        self._invalidate(HANDED)
        return [Frame(self._pool, self._index, gen, SHARE, PENDING) for _ in range(count)]


def _received(pool: Any, index: int, gen: int, kind: int) -> Frame:
    """A frame arriving in this process: claimed now, while its handle is unpickled."""
    if type(pool) is tuple:
        ref = open_pools.get(pool[0])
        found = None if ref is None else ref()
        pool = found if found is not None and not found._closed else pool_by_ref(*pool)
    if pool._claim(index, gen, kind):
        return Frame(pool, index, gen, kind, LIVE)
    dropped_arrivals.append(get_ident())  # the subscription unpickling it skips its value
    return Frame(pool, index, gen, kind, DROPPED)


# A frame's handle without pickle: the key's length, the key, how to open the pool (a pickle,
# loaded only by a process that does not have it open), then index, generation and kind.
_KEY_SIZE = struct.Struct("!H")
_HANDLE_TAIL = struct.Struct("!qqB")
_prefixes: dict[tuple[str, bytes], bytes] = {}  # each pool's part of its handles, made once


def _prefix(ref: tuple[str, bytes]) -> bytes:
    key = ref[0].encode()
    prefix = _KEY_SIZE.pack(len(key)) + key + ref[1]
    if len(_prefixes) >= 64:  # pools come and go: keep the recent ones
        _prefixes.clear()
    _prefixes[ref] = prefix
    return prefix


_by_prefix: dict[bytes, weakref.ref[FramePool]] = {}  # the pools open here, by their handles' prefix


def received_handle(body: Any) -> Frame:
    """The frame whose handle (made by :meth:`Frame._handle`) is ``body``: claimed here, or dropped meanwhile.

    On a hand-over's critical path (the reader's, from its wake-up to the
    value): a pool open here is found by the handle's prefix in one look-up.
    """
    tail = len(body) - _HANDLE_TAIL.size
    index, gen, kind = _HANDLE_TAIL.unpack_from(body, tail)
    prefix = bytes(body[:tail])
    ref = _by_prefix.get(prefix)
    pool = None if ref is None else ref()
    if pool is None or pool._closed:
        (size,) = _KEY_SIZE.unpack_from(prefix, 0)
        pool = pool_by_ref(prefix[2 : 2 + size].decode(), prefix[2 + size :])
        if len(_by_prefix) >= 64:  # pools come and go: keep the recent ones
            _by_prefix.clear()
        _by_prefix[prefix] = weakref.ref(pool)
    if pool._claim(index, gen, kind):
        return Frame(pool, index, gen, kind, LIVE)
    dropped_arrivals.append(get_ident())  # the subscription reading it skips its value
    return Frame(pool, index, gen, kind, DROPPED)


def published(value: Any) -> Any:
    """What a buffer in this process stores when ``value`` is published: a frame is handed over."""
    return value._published() if type(value) is Frame else value


def fan_out(values: list[Any], count: int) -> list[list[Any]]:
    """``values`` for each of ``count`` outputs: every frame becomes ``count`` read-only shares."""
    if count == 1 or not any(type(v) is Frame for v in values):
        return [values] * count
    columns: list[list[Any]] = [[] for _ in range(count)]
    for value in values:
        shares = value._fan_out(count) if type(value) is Frame else [value] * count
        for column, share in zip(columns, shares, strict=True):
            column.append(share)
    return columns
