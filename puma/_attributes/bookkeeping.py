"""An object's bookkeeping: what is held for its child, kept in the object itself.

The bookkeeping lives in the object under :data:`STATE_KEY`, an instance
attribute whose name is not an identifier (so it never clashes with the
user's, and ``obj.<name>`` cannot reach it).  Nothing is kept in a table
keyed by ``id()``: an object's bookkeeping goes when the object goes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

__all__ = ["MISSING", "STATE_KEY", "State", "get_state", "own_state", "probe_children"]

STATE_KEY: Final = "puma:scopes"
"""The instance attribute holding an object's bookkeeping (never an identifier)."""

MISSING: Any = object()
"""No value (distinct from None, which is a value)."""


class State:
    """An object's bookkeeping, kept in the object under :data:`STATE_KEY`.

    Parent side: what is held for the child (``child``) and the values value
    sources produced (``sealed``, to notice a re-assignment).  Child side: the
    factories still to call (``pending``) and, on the runnable, every object
    of the child (``objects``).
    """

    __slots__ = ("child", "objects", "pending", "sealed")

    def __init__(self) -> None:
        self.child: dict[str, tuple[str, Any]] = {}  # name -> (actions.COPY, value) or (actions.FACTORY, make)
        self.sealed: dict[str, Any] = {}
        self.pending: dict[str, Callable[[], Any]] = {}
        self.objects: list[Any] = []

    def _probe_children(self) -> list[tuple[str, Any]]:
        out = [(f".{name} (its child factory)", make) for name, make in self.pending.items()]
        out += [(f".{name} (its child value)", value) for name, (_, value) in self.child.items()]
        return out


def probe_children(state: Any) -> list[tuple[str, Any]]:
    """For the pickling checker: the parts of an object's bookkeeping that cross, named by attribute."""
    return state._probe_children() if isinstance(state, State) else [(".<puma scopes>", state)]


def get_state(obj: object) -> State | None:
    """The bookkeeping of ``obj``; None if it has none."""
    try:
        state: State = object.__getattribute__(obj, STATE_KEY)
    except AttributeError:
        return None
    return state


def own_state(obj: object) -> State:
    """The bookkeeping of ``obj``, made (empty) if it has none yet."""
    state = get_state(obj)
    if state is None:
        state = State()
        object.__setattr__(obj, STATE_KEY, state)
    return state
