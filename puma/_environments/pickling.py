"""Checking that a runnable can cross into a child process, naming what cannot.

A runnable sent to a process must pickle, whatever the start method (with
fork it is not pickled, but checking anyway keeps fork, forkserver and spawn
behaving the same).  Objects that multiprocessing itself passes to children
(buffers, locks, queues, pipes, shared ctypes) are not probed here: they
pickle only while a child is being spawned.
"""

from __future__ import annotations

import io
import pickle
from multiprocessing import connection, queues, synchronize
from typing import Any

from puma import _attributes
from puma._buffers.base import Buffer, Subscription
from puma._core.errors import NotPicklableError

__all__ = ["Sealed", "check_picklable"]

_SPAWN_ONLY = (
    synchronize.SemLock,
    synchronize.Condition,
    synchronize.Event,
    synchronize.Barrier,
    connection.Connection,
    queues.Queue,
)


class _Probe(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, Buffer) and obj._crossable():
            return "buffer"
        if isinstance(obj, _SPAWN_ONLY):
            return "spawn-only"
        return None


def _probe(obj: Any) -> None:
    _Probe(io.BytesIO(), protocol=pickle.HIGHEST_PROTOCOL).dump(obj)


def _children(obj: Any) -> list[tuple[str, Any]]:
    if isinstance(obj, Buffer | Subscription):
        return []  # they explain themselves
    if isinstance(obj, dict):
        return [(f"[{key!r}]", value) for key, value in obj.items()]
    if isinstance(obj, list | tuple | set | frozenset):
        return [(f"[{i}]", value) for i, value in enumerate(obj)]
    state: Any = None
    try:
        state = obj.__getstate__()
    except Exception:  # noqa: BLE001 - fall back to the instance dict
        state = getattr(obj, "__dict__", None)
    if isinstance(state, tuple) and len(state) == 2:  # (dict, slots dict)
        merged: dict[str, Any] = {}
        for part in state:
            if isinstance(part, dict):
                merged.update(part)
        state = merged
    if isinstance(state, dict):
        out: list[tuple[str, Any]] = []
        for key, value in state.items():
            if key == _attributes.STATE_KEY:  # a scoped object's bookkeeping: named after its attributes
                out.extend(_attributes.probe_children(value))
            else:
                out.append((_PUBLIC_NAMES.get(key, f".{key}"), value))
        return out
    return []


#: puma's own attributes of a runnable, named in messages as the user knows them.
_PUBLIC_NAMES = {"_puma_outputs": ".outputs", "_puma_name": ".name"}


def _locate(obj: Any, path: str, seen: set[int], depth: int) -> tuple[str, Any, BaseException] | None:
    """The deepest attribute path under ``obj`` that will not pickle, if any."""
    try:
        _probe(obj)
        return None
    except Exception as exc:  # noqa: BLE001 - any failure is what we are looking for
        failure: BaseException = exc
    if id(obj) in seen or depth > 8:
        return (path, obj, failure)
    seen.add(id(obj))
    for suffix, child in _children(obj):
        found = _locate(child, path + suffix, seen, depth + 1)
        if found is not None:
            return found
    return (path, obj, failure)


def check_picklable(obj: Any, name: str) -> None:
    """Raise :class:`NotPicklableError` naming the attribute of ``obj`` that will not pickle."""
    try:
        _probe(obj)
        return
    except Exception as exc:  # noqa: BLE001
        first: BaseException = exc
    found = _locate(obj, name, set(), 0)
    path, culprit, cause = found if found is not None else (name, obj, first)
    reason = str(cause) if isinstance(cause, NotPicklableError) else f"{type(cause).__name__}: {cause}"
    message = (
        f"runnable {name!r} cannot be sent to a process: attribute {path} "
        f"({type(culprit).__qualname__}) cannot be pickled ({reason}). Create it inside execute(), "
        "keep the runnable in a ThreadEnvironment, or give the attribute a scope that does not cross "
        "(puma.attributes.parent_only, or a child factory: see docs/attributes.md)."
    )
    raise NotPicklableError(message) from cause


class Sealed:
    """A runnable on its way to a spawn or forkserver child, opened there under puma's control.

    multiprocessing unpickles a process's arguments before any of puma's code
    runs in the child, so a runnable that cannot be rebuilt there (its class
    lives in a notebook or in a module the child cannot import, or its
    ``__setstate__`` raises) would kill the child with nothing but a traceback
    on stderr.  Sealed, it is pickled inside the parent's pickling of the
    process (so buffers, locks and pipes in it cross as usual) and travels as
    bytes; the child unpickles those bytes itself, in :meth:`open`, and reports
    a failure as the runnable's error.
    """

    __slots__ = ("_data", "_obj")

    def __init__(self, obj: Any) -> None:
        self._obj = obj
        self._data: bytes | None = None

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        from multiprocessing.reduction import ForkingPickler

        return (_sealed, (bytes(ForkingPickler.dumps(self._obj)),))

    def open(self) -> Any:
        """The object (unpickled here, the first time)."""
        if self._data is not None:
            self._obj = pickle.loads(self._data)
            self._data = None
        return self._obj


def _sealed(data: bytes) -> Sealed:
    sealed = Sealed(None)
    sealed._data = data
    return sealed
