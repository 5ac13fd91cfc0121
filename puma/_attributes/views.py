"""Views: where an attribute may not be used, the object is an instance of a view of its class.

A view is a subclass of its class, made once per class and side, holding a
guard (a data descriptor, :class:`_Guard`) at each forbidden name, which
raises :class:`~puma.attributes.AttributeScopeError` naming the attribute and
its scope.  Parent objects of a class with ``child_only`` attributes are born
as the parent view (its guards also take the values assigned in the parent,
to hand them to the child: :func:`hold_for_child`); child objects are
instances of the child view (guards for ``parent_only``).  Views have the
class's name, pickle as themselves and keep instance values inline (fast)
when unpickled.  Views hang off their plain class (under
:data:`~puma._attributes.tables.VIEWS_KEY`), so nothing keeps a class alive.

Objects are *born* as the right view (:func:`install_new` gives a class a
``__new__``), because changing an object's class later makes its reads slow.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from puma._attributes.actions import CHILD, COPY, FACTORY, PARENT
from puma._attributes.bookkeeping import get_state, own_state
from puma._attributes.tables import VIEW_OF_KEY, VIEWS_KEY, declared, plain_class
from puma._attributes.value_sources import Factory, PerScope, ScopeSpecific
from puma._core import current as _context

if TYPE_CHECKING:
    from puma._attributes.scopes import ScopedAttribute

__all__ = ["custom_method", "fast_dict", "hold_for_child", "install_new", "new_view_object", "view_class"]

_lock = threading.Lock()


class _Guard:
    """Stands at a name where the attribute may not be used, in a view."""

    __slots__ = ("_desc", "_side")

    def __init__(self, desc: ScopedAttribute[Any], side: str) -> None:
        self._desc = desc
        self._side = side

    def __get__(self, obj: object | None, owner: type[Any] | None = None) -> Any:
        if obj is None:
            return self._desc
        raise self._desc._forbidden(obj, self._side)

    def __set__(self, obj: object, value: Any) -> None:
        if self._side == PARENT:
            hold_for_child(obj, self._desc, value)  # child_only, assigned in the parent: the child's value
        # parent_only, assigned in the child: there is no such attribute here; the value is dropped

    def __delete__(self, obj: object) -> None:
        state = get_state(obj)
        if state is not None:
            state.child.pop(self._desc._name, None)


def hold_for_child(obj: object, desc: ScopedAttribute[Any], value: Any) -> None:
    """A value assigned to a ``child_only`` attribute in the parent: kept for the child."""
    state = own_state(obj)
    name = desc._name
    if isinstance(value, Factory):
        state.child[name] = (FACTORY, value.make)
    elif isinstance(value, PerScope):
        state.child[name] = (COPY, value.value)
    elif isinstance(value, ScopeSpecific):
        raise TypeError(
            f"{plain_class(type(obj)).__qualname__}.{name} is {desc._scope}: puma.attributes.scope_specific() "
            "gives a value to both parent and child; use puma.attributes.factory() or a plain value"
        )
    else:
        state.child[name] = (COPY, value)


def view_class(cls: type, side: str) -> type:
    """The class objects of ``cls`` have on ``side``: the plain class, or its view with guards.

    The parent side needs a view only for ``child_only`` attributes; the child
    side always has one (it also decides how child objects pickle).
    """
    base = plain_class(cls)
    table = declared(base)
    if side == PARENT and all(d._in_parent for d in table.values()):
        return base
    views = base.__dict__.get(VIEWS_KEY)
    view: type | None = None if views is None else views.get(side)
    if view is not None:
        return view
    with _lock:
        views = base.__dict__.get(VIEWS_KEY)
        if views is None:
            views = {}
            type.__setattr__(base, VIEWS_KEY, views)
        view = views.get(side)
        if view is None:
            namespace: dict[str, Any] = {
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "__doc__": base.__doc__,
                VIEW_OF_KEY: (base, side),
                "__reduce_ex__": _view_reduce_ex,
                "__setstate__": _view_setstate,
            }
            for name, desc in table.items():
                if not (desc._in_child if side == CHILD else desc._in_parent):
                    namespace[name] = _Guard(desc, side)
            view = type(base)(base.__name__, (base,), namespace)
            views[side] = view
    return view


def _view_reduce_ex(self: Any, protocol: int) -> tuple[Any, ...]:
    base, side = type(self).__dict__[VIEW_OF_KEY]
    state = self.__getstate__()
    return (new_view_object, (base, side), state if state is not None else {})


def _view_setstate(self: Any, state: Any) -> None:
    custom = custom_method(plain_class(type(self)), "__setstate__")
    if custom is not None:
        custom(self, state)
        return
    if isinstance(state, tuple):  # (dict, slots) from object.__getstate__
        state, slots = state
        for name, value in (slots or {}).items():
            object.__setattr__(self, name, value)
    for name, value in (state or {}).items():
        object.__setattr__(self, name, value)  # one by one: the values stay inline, reads stay fast


def custom_method(cls: type, method: str) -> Any:
    """``cls``'s own ``__getstate__``/``__setstate__`` if a class (not puma, not object) defines one."""
    for klass in cls.__mro__:
        if klass is object or VIEW_OF_KEY in klass.__dict__:
            continue
        found = klass.__dict__.get(method)
        if found is not None:
            module = getattr(found, "__module__", "") or ""
            return None if module.startswith("puma.") else found
    return None


def new_view_object(base: type, side: str) -> Any:
    """A new, empty object of ``base``'s view for ``side`` (unpickling, cloning)."""
    return _allocate(view_class(base, side))


def _allocate(cls: Any) -> Any:
    try:
        return object.__new__(cls)
    except TypeError:
        return cls.__new__(cls)


def install_new(owner: type[Any]) -> None:
    """Objects of ``owner`` are born as the right view (no retyping later, which would slow reads)."""
    if "__new__" in owner.__dict__:
        return
    for klass in owner.__mro__[1:-1]:
        found = klass.__dict__.get("__new__")
        if found is not None and not getattr(getattr(found, "__func__", found), "_puma_new", False):
            return  # a class upstream makes its objects itself: they are retyped when sealed

    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:  # noqa: N807 - it is the class's __new__
        return object.__new__(_birth_class(cls))

    __new__._puma_new = True  # type: ignore[attr-defined]
    type.__setattr__(owner, "__new__", staticmethod(__new__))


def _birth_class(cls: type) -> type:
    """Objects made inside a running child are the child's (runnables excepted: they are handles)."""
    if _context.current() is not None and not _is_runnable(cls):
        return view_class(cls, CHILD)
    return view_class(cls, PARENT)


def _is_runnable(cls: type) -> bool:
    """Runnables say so with a class flag (this layer sits below the runnable's)."""
    return bool(getattr(cls, "_puma_handle", False))


def fast_dict(obj: object) -> None:
    """Give ``obj`` a fresh instance dict: one that was made from inline values makes every read slow."""
    object.__setattr__(obj, "__dict__", dict(object.__getattribute__(obj, "__dict__")))
