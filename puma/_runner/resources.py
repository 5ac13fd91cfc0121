"""What a Runner holds on to while it runs, and gives back when it closes.

A buffer may be used by the runnables of several Runners (a pipeline split
across two): its operating-system resources are released when the last of
them closes.
"""

from __future__ import annotations

import threading
from typing import Any

from puma._buffers.base import Buffer
from puma._frames.memory import release_children_segments
from puma._runnable.runnable import Runnable
from puma._runner.records import buffers_held_by

__all__ = ["hold_buffers", "join_outputs", "leave", "let_go_of_buffers"]

_buffer_users: dict[int, int] = {}
_buffer_users_lock = threading.Lock()


def hold_buffers(held: dict[int, Buffer[Any]], runnable: Runnable) -> None:
    """Note the buffers ``runnable`` publishes to or holds (counted once per Runner)."""
    found = {id(out): out for out in runnable.outputs}
    for value in buffers_held_by(runnable):
        found.setdefault(id(value), value)
    with _buffer_users_lock:
        for key, buffer in found.items():
            if key not in held:
                held[key] = buffer
                _buffer_users[key] = _buffer_users.get(key, 0) + 1


def let_go_of_buffers(held: dict[int, Buffer[Any]]) -> None:
    """A Runner closed: release the buffers no other open Runner uses (and named segments its children left)."""
    released = []
    with _buffer_users_lock:
        for key, buffer in held.items():
            users = _buffer_users.get(key, 1) - 1
            if users <= 0:
                _buffer_users.pop(key, None)
                released.append(buffer)
            else:
                _buffer_users[key] = users
    for buffer in released:
        buffer.supervision.release()
    if not _buffer_users:  # no other open Runner here holds buffers: what its children named is nobody's now
        release_children_segments()  # named shared memory its children made and left (not on Linux)


def join_outputs(runnable: Runnable) -> list[Buffer[Any]]:
    """``runnable`` joins the streams of its outputs as a publisher; returns them.

    A stream that has ended refuses it: the streams it joined are left again
    and the refusal is raised.
    """
    joined: list[Buffer[Any]] = []
    try:
        for out in runnable.outputs:
            out.supervision.join()
            joined.append(out)
    except BaseException:
        leave(joined)
        raise
    return joined


def leave(joined: list[Buffer[Any]]) -> None:
    """Undo :func:`join_outputs` (a launch that failed)."""
    for out in joined:
        out.supervision.join(-1)
