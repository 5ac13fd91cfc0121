"""Scoped attributes: each attribute of a runnable declares how it crosses from parent to child.

The public names are in :mod:`puma.attributes`; docs/attributes.md has the
user's view.  The design, and where each part lives:

* Declarations are taken once, at class definition, and reads are plain
  attribute reads: a declaration registers with its class and leaves the
  class's namespace (:mod:`~puma._attributes.scopes`, what each scope does;
  :mod:`~puma._attributes.tables`, the per-class tables, in a weak dictionary).
* Where an attribute may not be used, the object is an instance of a *view*
  of its class, with a guard at each forbidden name; objects are born as the
  right view (:mod:`~puma._attributes.views`).
* Decisions are taken at two moments: when an object has been constructed
  (:mod:`~puma._attributes.sealing` unpacks the value sources of
  :mod:`~puma._attributes.value_sources`) and when a runnable is launched
  (:mod:`~puma._attributes.crossing` builds the child's objects; child
  factories run in the child just before ``execute()``).  What a child gets
  per attribute and environment is one of the actions of
  :mod:`~puma._attributes.actions`.
* An object's bookkeeping lives in the object itself
  (:mod:`~puma._attributes.bookkeeping`); class tables are in a weak
  dictionary and views hang off their class.  Nothing here keeps a runnable
  or a value alive.

This package re-exports what the rest of puma uses, so callers need not know
the modules.  Modules import only from lower ones (actions, value sources and
bookkeeping; tables; views; sealing; scopes; crossing), never from this one.
"""

from __future__ import annotations

from puma._attributes.bookkeeping import STATE_KEY, probe_children
from puma._attributes.crossing import enter_child, for_process, for_thread
from puma._attributes.scopes import (
    AttributeScopeError,
    ProcessAction,
    ScopedAttribute,
    ThreadAction,
    child_only,
    copied,
    manually_managed,
    parent_only,
    python_default,
    unmanaged,
)
from puma._attributes.sealing import install_seal, seal
from puma._attributes.tables import declared
from puma._attributes.value_sources import ValueSource, factory, per_scope_value, scope_specific

__all__ = [
    "STATE_KEY",
    "AttributeScopeError",
    "ProcessAction",
    "ScopedAttribute",
    "ThreadAction",
    "ValueSource",
    "child_only",
    "copied",
    "declared",
    "enter_child",
    "factory",
    "for_process",
    "for_thread",
    "install_seal",
    "manually_managed",
    "parent_only",
    "per_scope_value",
    "probe_children",
    "python_default",
    "scope_specific",
    "seal",
    "unmanaged",
]
