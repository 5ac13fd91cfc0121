"""Value sources: how each scope gets its own value of a scoped attribute.

A value source is assigned to a scoped attribute (usually in ``__init__``)
and never read back: when the object has been constructed, sealing
(:mod:`puma._attributes.sealing`) replaces it by the parent's value and holds
what the child needs; the child's value is made when the runnable is launched
or, for factories, in the child just before ``execute()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Factory", "PerScope", "ScopeSpecific", "ValueSource", "factory", "per_scope_value", "scope_specific"]

T = TypeVar("T")


class ValueSource(Generic[T]):
    """How each scope gets its own value of a scoped attribute; made by
    :func:`per_scope_value`, :func:`factory` and :func:`scope_specific`.

    Assign one to a scoped attribute (usually in ``__init__``); the attribute
    then reads as the value of the current scope, never as the source itself.
    """

    __slots__ = ()

    def _describe(self) -> str:
        return type(self).__name__


class PerScope(ValueSource[T]):
    """Made by :func:`per_scope_value`: the same initial value in each scope."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def _describe(self) -> str:
        return "puma.attributes.per_scope_value(...)"


class Factory(ValueSource[T]):
    """Made by :func:`factory`: ``make()`` is called in each scope."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], T]) -> None:
        self.make = make

    def _describe(self) -> str:
        return "puma.attributes.factory(...)"


class ScopeSpecific(ValueSource[T]):
    """Made by :func:`scope_specific`: a value in the parent, a factory for the child."""

    __slots__ = ("child_factory", "parent_value")

    def __init__(self, parent_value: T, child_factory: Callable[[], T]) -> None:
        self.parent_value = parent_value
        self.child_factory = child_factory

    def _describe(self) -> str:
        return "puma.attributes.scope_specific(...)"


def per_scope_value(value: T) -> ValueSource[T]:
    """The same initial value in each scope, each scope with its own copy.

    The parent gets ``value``; the child gets a deep copy of ``value`` as it
    was when the runnable was constructed, whatever the parent did to it since.
    """
    return PerScope(value)


def factory(make: Callable[[], T]) -> ValueSource[T]:
    """A fresh value in each scope: ``make()`` is called in each scope that uses the attribute.

    In the child it is called in the child (thread or process) just before
    ``execute()``: the place to open a file, a socket or a device.  In the
    parent (if the attribute exists there) it is called when the object has
    been constructed.  For a process, ``make`` must pickle (a module-level
    function or a ``functools.partial`` of one).
    """
    if not callable(make):
        raise TypeError(f"puma.attributes.factory() takes a callable, not {type(make).__name__}")
    return Factory(make)


def scope_specific(parent_value: T, child_factory: Callable[[], T]) -> ValueSource[T]:
    """``parent_value`` in the parent; ``child_factory()``, called in the child, in the child.

    For things that do not pickle: the parent keeps its object, which is never
    sent; the child makes its own.
    """
    if not callable(child_factory):
        raise TypeError(
            f"puma.attributes.scope_specific() takes a callable child factory, not {type(child_factory).__name__}"
        )
    return ScopeSpecific(parent_value, child_factory)
