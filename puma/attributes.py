"""Scoped attributes: each attribute of a runnable says how it crosses from the parent to the child.

In plain Python an attribute that a thread child mutates is the parent's own
object, while a process child gets a copy, so a program tested in threads can
break silently in processes.  A scoped attribute is declared once, at class
level, and says what the child gets; the Runner applies it identically in
threads and in processes (fork, forkserver, spawn)::

    import functools

    import puma
    from puma.attributes import child_only, copied, factory, parent_only

    class Camera(puma.Runnable):
        settings = copied[dict[str, float]]()  # the child gets its own deep copy
        device = child_only[Device]()  # exists only in the child
        window = parent_only[Window]()  # stays in the parent, never sent

        def __init__(self, window: Window) -> None:
            super().__init__("camera")
            self.settings = {"exposure": 1.0}
            self.device = factory(functools.partial(open_device, "cam0"))  # opened in the child
            self.window = window

Reading a scoped attribute costs what reading a plain attribute costs.
Reading one on the side where it does not exist raises
:class:`AttributeScopeError`, naming the attribute and its scope.

The scopes are :class:`copied`, :class:`child_only`, :class:`parent_only`,
:class:`unmanaged` (alias :data:`python_default`) and
:class:`manually_managed` (with :class:`ThreadAction` and
:class:`ProcessAction`); the value sources :func:`per_scope_value`,
:func:`factory` and :func:`scope_specific` give each side its own value.
docs/attributes.md has the guide.
"""

from __future__ import annotations

from puma._attributes import (
    AttributeScopeError,
    ProcessAction,
    ScopedAttribute,
    ThreadAction,
    ValueSource,
    child_only,
    copied,
    factory,
    manually_managed,
    parent_only,
    per_scope_value,
    python_default,
    scope_specific,
    unmanaged,
)
from puma._core.naming import present_as as _present_as

__all__ = [
    "AttributeScopeError",
    "ProcessAction",
    "ScopedAttribute",
    "ThreadAction",
    "ValueSource",
    "child_only",
    "copied",
    "factory",
    "manually_managed",
    "parent_only",
    "per_scope_value",
    "python_default",
    "scope_specific",
    "unmanaged",
]

_present_as(__name__, globals(), __all__)
