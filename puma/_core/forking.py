"""Per-process state that a forked child must refresh, refreshed only by the parts a process uses.

Every hook registered with :func:`os.register_at_fork` runs Python code in
each child the process forks, and in a forked child each object touched for
the first time is a page copied from the parent: a few hooks that each look
at their registry cost an idle child more than 0.1 MiB of private memory.
So a part of puma registers its refresh when it is first used in a process
(a buffer or pool made or opened there), not when its module is imported:
a child forked by a process that never used the part pays nothing for it.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["refresh_in_children"]

_registered: set[Callable[[], None]] = set()


def refresh_in_children(refresh: Callable[[], None]) -> None:
    """Run ``refresh`` in every child this process forks from now on (registered once).

    Called where the state ``refresh`` resets is first used; state that may
    be stale already (inherited, without the hook, from a parent that never
    used the part) is refreshed there too by the caller.  A child forked
    after the registration inherits it (and ``_registered``).
    """
    if refresh not in _registered:
        _registered.add(refresh)
        os.register_at_fork(after_in_child=refresh)
