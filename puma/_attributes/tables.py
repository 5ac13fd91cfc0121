"""Per-class tables: which scoped attributes a class has, and whether a class is a view.

A declaration registers with the class that declares it (in the class's own
``__dict__``, under :data:`DECLARED_KEY`) and leaves the class's namespace.
:func:`declared` merges a class's own declarations with its bases' once and
keeps the result in a weak dictionary, so a class that goes away takes its
table with it.  A view (:mod:`puma._attributes.views`) says what it is a view
of under :data:`VIEW_OF_KEY`; views share their plain class's table.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any, Final

from puma._attributes.actions import PARENT

if TYPE_CHECKING:
    from puma._attributes.scopes import ScopedAttribute

__all__ = ["DECLARED_KEY", "VIEWS_KEY", "VIEW_OF_KEY", "declared", "plain_class", "side_of"]

DECLARED_KEY: Final = "__puma_scoped__"
"""In a class's own ``__dict__``: the scoped attributes it declares, by name."""
VIEW_OF_KEY: Final = "__puma_view_of__"
"""In a view's own ``__dict__``: (the plain class, its side)."""
VIEWS_KEY: Final = "__puma_views__"
"""In a plain class's own ``__dict__``: its views, by side."""

_tables: weakref.WeakKeyDictionary[type, dict[str, ScopedAttribute[Any]]] = weakref.WeakKeyDictionary()
_NO_TABLE: dict[str, ScopedAttribute[Any]] = {}


def declared(cls: type) -> dict[str, ScopedAttribute[Any]]:
    """The scoped attributes of ``cls`` (declared by it or its bases), by name; empty for a plain class."""
    try:
        return _tables[cls]
    except KeyError:
        pass
    except TypeError:  # not weakly referenceable: not one of ours
        return _NO_TABLE
    table: dict[str, ScopedAttribute[Any]] = {}
    for klass in reversed(cls.__mro__):
        own = vars(klass)
        mine = own.get(DECLARED_KEY)
        if VIEW_OF_KEY not in own:
            for name in [n for n in table if n in own]:
                del table[name]  # a subclass put something else at the name
        if mine:
            table.update(mine)
    try:
        _tables[cls] = table
    except TypeError:
        pass
    return table


def plain_class(cls: type) -> type:
    """The user's class behind ``cls`` (``cls`` itself unless it is a view)."""
    view_of = cls.__dict__.get(VIEW_OF_KEY)
    return cls if view_of is None else view_of[0]


def side_of(obj: object) -> str:
    """The side ``obj`` belongs to: the side of its view, else the parent."""
    view_of = type(obj).__dict__.get(VIEW_OF_KEY)
    return PARENT if view_of is None else str(view_of[1])
