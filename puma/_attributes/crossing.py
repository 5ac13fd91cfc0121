"""Crossing: what a child gets when a runnable is launched, built once per launch.

This is the second of the two moments at which decisions are taken (the first
is sealing, :mod:`puma._attributes.sealing`).  A thread child runs on a
*clone* (:func:`for_thread`), a process child on a clone that is then pickled
or forked (:func:`for_process`).  Child factories run in the child just
before ``execute()`` (:func:`enter_child`).

Objects reached from a runnable through scoped objects and the builtin
containers (list, tuple, dict, set, frozenset) are handled recursively, once
per object, cycles included; a plain object in between is opaque (shared in
threads, deep-copied under ``copied``, pickled in processes).  The clone's
bookkeeping lists the child's objects, so nothing outside the objects keeps a
runnable or a value alive.
"""

from __future__ import annotations

import copy
import types
from typing import Any, TypeVar

from puma._attributes.actions import CHILD, COPY, DROP, FACTORY, NONE, PARENT, REFUSE
from puma._attributes.bookkeeping import MISSING, STATE_KEY, State, get_state
from puma._attributes.scopes import ScopedAttribute
from puma._attributes.sealing import seal
from puma._attributes.tables import declared, plain_class, side_of
from puma._attributes.value_sources import ValueSource
from puma._attributes.views import custom_method, fast_dict, new_view_object
from puma._buffers.base import Buffer
from puma._core.errors import NotPicklableError, PumaError

__all__ = ["enter_child", "for_process", "for_thread"]

T = TypeVar("T")

_ATOMIC: frozenset[type] = frozenset(
    {int, float, complex, bool, str, bytes, type(None), range, slice, type(Ellipsis), type(NotImplemented)}
)
_CONTAINERS: frozenset[type] = frozenset({list, tuple, dict, set, frozenset})


class _Crossing:
    """One launch: builds the child's objects from the parent's, each object once."""

    def __init__(self, thread: bool) -> None:
        self.thread = thread
        self.shared: dict[int, Any] = {}  # id(original) -> what the child gets where sharing
        self.copies: dict[int, Any] = {}  # id(original) -> deep copy (also copy.deepcopy's memo)
        self.holds: dict[int, bool] = {}  # id(container) -> whether it holds scoped objects
        self.tables: dict[type, dict[str, ScopedAttribute[Any]]] = {}
        self.clones: list[Any] = []

    def table(self, t: type) -> dict[str, ScopedAttribute[Any]]:
        table = self.tables.get(t)
        if table is None:
            table = self.tables[t] = declared(t)
        return table

    def source(self, obj: Any) -> dict[str, Any]:
        """The attributes of ``obj`` (through its own ``__getstate__`` for a process, if it has one)."""
        d = object.__getattribute__(obj, "__dict__")
        attributes = dict(d)
        if not self.thread:
            getstate = custom_method(type(obj), "__getstate__")
            if getstate is not None:
                state = getstate(obj)
                if not isinstance(state, dict):
                    owner = plain_class(type(obj)).__qualname__
                    raise TypeError(f"{owner}.__getstate__ must return a dict for its scoped attributes")
                attributes = dict(state)
                attributes.setdefault(STATE_KEY, d.get(STATE_KEY))
        fast_dict(obj)  # reading them made the parent's dict from its inline values
        return attributes

    def clone(self, obj: Any, table: dict[str, ScopedAttribute[Any]], path: str) -> Any:
        key = id(obj)
        seal(obj)
        new = new_view_object(type(obj), CHILD)
        self.shared[key] = new
        self.copies[key] = new
        src = self.source(obj)
        parent_state: State | None = src.pop(STATE_KEY, None)
        held = parent_state.child if parent_state is not None and side_of(obj) == PARENT else {}
        state = State()
        out: dict[str, Any] = {}
        for name, value in src.items():
            desc = table.get(name)
            if desc is None:
                if isinstance(value, ValueSource):
                    raise TypeError(
                        f"{plain_class(type(obj)).__qualname__}.{name} holds {value._describe()} but is not a scoped "
                        f"attribute: declare it at class level (e.g. {name} = puma.attributes.copied[...]())"
                    )
                out[name] = self.share(value, f"{path}.{name}")
                continue
            action = self.action(desc, value, path)
            if action is None or name in held:
                continue
            if action == NONE:
                out[name] = None
            elif action == COPY and self.thread:
                out[name] = self.deep(value, f"{path}.{name}")
            else:
                out[name] = self.share(value, f"{path}.{name}")
        for name, (how, value) in held.items():
            desc = table.get(name)
            if desc is None:
                continue
            action = self.action(desc, value if how == COPY else MISSING, path)
            if action is None:
                continue
            if action == NONE:
                out[name] = None
            elif how == FACTORY:
                out.pop(name, None)
                state.pending[name] = value
            else:
                out[name] = self.deep(value, f"{path}.{name}") if self.thread else self.share(value, f"{path}.{name}")
        for name, value in out.items():
            object.__setattr__(new, name, value)  # one by one: the values stay inline, reads stay fast
        object.__setattr__(new, STATE_KEY, state)
        self.clones.append(new)
        return new

    def action(self, desc: ScopedAttribute[Any], value: Any, path: str) -> str | None:
        """The action for ``desc`` here; None when the child gets nothing."""
        action = desc._action(self.thread)
        if action == DROP:
            return None
        if action == REFUSE:
            if value is None:
                return NONE
            where = "thread" if self.thread else "process"
            raise PumaError(
                f"attribute {path}.{desc._name} is manually_managed with {where}=NOT_ALLOWED, so a runnable "
                f"holding it cannot be started in a {where} while it holds a value (it holds "
                f"{'a child factory' if value is MISSING else type(value).__qualname__}); set it to None "
                f"or use another environment"
            )
        return action

    def share(self, value: Any, path: str) -> Any:
        """The same object, except that scoped objects inside (through containers) are cloned."""
        t = type(value)
        if t in _ATOMIC:
            return value
        key = id(value)
        hit = self.shared.get(key, MISSING)
        if hit is not MISSING:
            return hit
        table = self.table(t)
        if table:
            return self.clone(value, table, path)
        if t is types.MethodType and self.table(type(value.__self__)):
            return types.MethodType(value.__func__, self.share(value.__self__, path))  # calls the child's object
        if t not in _CONTAINERS or not self.holds_scoped(value):
            return value
        if t is list:
            new_list: list[Any] = []
            self.shared[key] = new_list
            new_list.extend(self.share(x, f"{path}[{i}]") for i, x in enumerate(value))
            return new_list
        if t is dict:
            new_dict: dict[Any, Any] = {}
            self.shared[key] = new_dict
            for k, v in value.items():
                new_dict[self.share(k, path)] = self.share(v, f"{path}[{k!r}]")
            return new_dict
        made = t(self.share(x, f"{path}[{i}]") for i, x in enumerate(value))
        self.shared[key] = made
        return made

    def holds_scoped(self, container: Any) -> bool:
        key = id(container)
        known = self.holds.get(key)
        if known is not None:
            return known
        self.holds[key] = False  # while looking: a cycle back here adds nothing
        found = False
        items = (x for kv in container.items() for x in kv) if type(container) is dict else container
        for x in items:
            t = type(x)
            if t in _ATOMIC:
                continue
            if (
                self.table(t)
                or (t in _CONTAINERS and self.holds_scoped(x))
                or (t is types.MethodType and self.table(type(x.__self__)))
            ):
                found = True
                break
        self.holds[key] = found
        return found

    def deep(self, value: Any, path: str) -> Any:
        """A deep copy for a thread child; scoped objects inside are cloned by their own scopes."""
        t = type(value)
        if t in _ATOMIC:
            return value
        key = id(value)
        hit = self.copies.get(key, MISSING)
        if hit is not MISSING:
            return hit
        table = self.table(t)
        if table:
            hit = self.shared.get(key, MISSING)
            return hit if hit is not MISSING else self.clone(value, table, path)
        if isinstance(value, Buffer):
            return value  # a channel, never copied
        if t is types.MethodType and self.table(type(value.__self__)):
            return types.MethodType(value.__func__, self.deep(value.__self__, path))  # calls the child's object
        if t is list:
            new_list: list[Any] = []
            self.copies[key] = new_list
            new_list.extend(self.deep(x, f"{path}[{i}]") for i, x in enumerate(value))
            return new_list
        if t is dict:
            new_dict: dict[Any, Any] = {}
            self.copies[key] = new_dict
            for k, v in value.items():
                new_dict[self.deep(k, path)] = self.deep(v, f"{path}[{k!r}]")
            return new_dict
        if t in _CONTAINERS:
            made = t(self.deep(x, f"{path}[{i}]") for i, x in enumerate(value))
            self.copies[key] = made
            return made
        try:
            return copy.deepcopy(value, self.copies)
        except Exception as exc:
            raise NotPicklableError(
                f"attribute {path} ({t.__qualname__}) cannot be copied into the child: "
                f"{type(exc).__name__}: {exc}. Keep it out of the child (puma.attributes.parent_only), make it there "
                "(puma.attributes.factory), or share it on purpose (puma.attributes.unmanaged)"
            ) from exc


def _cross(runnable: Any, thread: bool) -> Any:
    crossing = _Crossing(thread)
    name = getattr(runnable, "name", type(runnable).__name__)
    root = crossing.clone(runnable, declared(type(runnable)), str(name))
    root_state = get_state(root)
    assert root_state is not None
    root_state.objects = crossing.clones
    return root


def for_thread(runnable: T) -> T:
    """The object a thread child runs: a clone of ``runnable`` with every scope applied.

    Unannotated attributes refer to the same objects as the parent's (Python's
    sharing between threads); copied ones are deep copies; parent-only ones are
    absent.  Raises before anything starts if a value cannot be copied or may
    not go to a thread.
    """
    clone: T = _cross(runnable, thread=True)
    return clone


def for_process(runnable: T) -> T:
    """The object to send to a process child: a clone of ``runnable`` with every scope applied.

    Values are not copied here: pickling (spawn, forkserver) or fork copies
    them.  Parent-only attributes are absent, so they need not pickle.
    """
    clone: T = _cross(runnable, thread=False)
    return clone


def enter_child(runnable: Any) -> None:
    """In the child, before ``execute()``: call the child factories of the runnable and its objects."""
    state = get_state(runnable)
    if state is None or not state.objects:
        return
    objects, state.objects = state.objects, []
    for obj in objects:
        own = get_state(obj)
        if own is None:
            continue
        for name in list(own.pending):
            make = own.pending.pop(name)
            try:
                object.__setattr__(obj, name, make())
            except BaseException as exc:
                exc.add_note(f"raised by the child factory of {plain_class(type(obj)).__qualname__}.{name}")
                raise
