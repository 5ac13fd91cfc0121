"""Sealing: once an object has been constructed, its values go where its scopes say.

This is the first of the two moments at which decisions are taken (the other
is the launch: :mod:`puma._attributes.crossing`).  :func:`install_seal` wraps
a class's ``__init__`` so that the object is sealed when its outermost
``__init__`` returns; :func:`seal` then unpacks value sources (the parent's
factories are called now, the child's are held for the child) and moves a
``child_only`` value found in a parent object into the object's bookkeeping.
Only the declared names are touched: the object's other attributes are never
enumerated, which would slow its reads down.
"""

from __future__ import annotations

import copy
import functools
from typing import TYPE_CHECKING, Any

from puma._attributes.actions import CHILD, COPY, FACTORY, PARENT
from puma._attributes.bookkeeping import MISSING, get_state, own_state
from puma._attributes.tables import declared, plain_class, side_of
from puma._attributes.value_sources import Factory, PerScope, ScopeSpecific, ValueSource
from puma._attributes.views import fast_dict, hold_for_child, view_class
from puma._core.errors import NotPicklableError

if TYPE_CHECKING:
    from puma._attributes.scopes import ScopedAttribute

__all__ = ["install_seal", "seal"]


def install_seal(cls: type[Any]) -> None:
    """Make constructing ``cls`` seal the new object when its outermost ``__init__`` returns."""
    init = cls.__dict__.get("__init__")
    if init is None or getattr(init, "_puma_seals", False) or not callable(init):
        return

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:  # noqa: N807 - it is the class's __init__
        init(self, *args, **kwargs)
        if type(self).__init__ is __init__:
            seal(self)

    __init__._puma_seals = True  # type: ignore[attr-defined]
    type.__setattr__(cls, "__init__", __init__)


def seal(obj: object) -> None:
    """Put the values of ``obj`` where its scopes say, on the side it belongs to. Idempotent.

    Value sources are unpacked (the parent's factories are called now); a
    ``child_only`` value found in a parent object is held for the child.
    Only the object's declared names are touched: its other attributes are
    never enumerated, which would slow its reads down.
    """
    table = declared(type(obj))
    if not table:
        return
    if side_of(obj) == CHILD:
        _seal_child(obj, table)
    else:
        _seal_parent(obj, table)


def _seal_parent(obj: object, table: dict[str, ScopedAttribute[Any]]) -> None:
    state = get_state(obj)
    held = False
    for name, desc in table.items():
        try:
            value = object.__getattribute__(obj, name)
        except AttributeError:
            continue  # not set, or guarded
        if not desc._in_parent:  # an object that was not born as the parent view
            object.__delattr__(obj, name)
            hold_for_child(obj, desc, value)
            held = True
        elif isinstance(value, ValueSource):
            _unpack_in_parent(obj, desc, value)
        elif state is not None and name in state.child and state.sealed.get(name, MISSING) is not value:
            del state.child[name]  # re-assigned since it was sealed: the child gets a copy of the new value
            state.sealed.pop(name, None)
    if held:
        view = view_class(type(obj), PARENT)
        if type(obj) is not view:
            obj.__class__ = view
            fast_dict(obj)


def _seal_child(obj: object, table: dict[str, ScopedAttribute[Any]]) -> None:
    for name in table:
        try:
            value = object.__getattribute__(obj, name)
        except AttributeError:
            continue
        if isinstance(value, Factory):
            object.__setattr__(obj, name, value.make())
        elif isinstance(value, PerScope):
            object.__setattr__(obj, name, value.value)
        elif isinstance(value, ScopeSpecific):
            object.__setattr__(obj, name, value.child_factory())


def _unpack_in_parent(obj: object, desc: ScopedAttribute[Any], source: ValueSource[Any]) -> None:
    name = desc._name
    state = own_state(obj)
    state.child.pop(name, None)
    if isinstance(source, PerScope):
        value = source.value
        if desc._in_child:
            try:
                snapshot = copy.deepcopy(value)
            except Exception as exc:
                raise NotPicklableError(
                    f"{plain_class(type(obj)).__qualname__}.{name}: the value of puma.attributes.per_scope_value() "
                    f"cannot be copied for the child ({type(exc).__name__}: {exc}); use puma.attributes.factory() "
                    "or puma.attributes.scope_specific()"
                ) from exc
            state.child[name] = (COPY, snapshot)
    elif isinstance(source, Factory):
        value = source.make()
        if desc._in_child:
            state.child[name] = (FACTORY, source.make)
    elif isinstance(source, ScopeSpecific):
        if not desc._in_child:
            raise TypeError(
                f"{plain_class(type(obj)).__qualname__}.{name} is {desc._scope}: puma.attributes.scope_specific() "
                "gives a value to both parent and child; use puma.attributes.factory() or a plain value"
            )
        value = source.parent_value
        state.child[name] = (FACTORY, source.child_factory)
    else:
        raise TypeError(f"unknown value source {source!r}")
    object.__setattr__(obj, name, value)
    state.sealed[name] = value
