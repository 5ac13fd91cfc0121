"""Scoped attributes: each attribute of a runnable declares how it crosses from parent to child.

In plain Python an attribute that a thread mutates is shared with the parent,
while a process gets a copy, so a program that works in threads can silently
break in processes.  A scoped attribute says, once, at class level, what the
child gets, and the Runner applies it identically in threads and processes::

    class Camera(puma.Runnable):
        settings = puma.copied[dict[str, float]]()        # the child gets its own copy
        device = puma.child_only[Device]()                # exists only in the child
        window = puma.parent_only[Window]()               # stays in the parent, never sent

How it works (see docs/attributes.md for the user's view):

* The declarations are *non-data* descriptors (``__get__`` only).  Where an
  attribute is usable, its value lives in the instance ``__dict__`` under its
  own name, which shadows the descriptor: reading it costs what a plain
  attribute read costs.  Where it is not usable, the value is kept out of
  ``__dict__``, so the descriptor's ``__get__`` runs and raises
  :class:`AttributeScopeError` naming the attribute and its scope.
* Decisions are taken at two moments only: when a runnable has been
  constructed (its values are *sealed*: a ``child_only`` value moves out of
  the parent's reach, value sources such as :func:`factory` are unpacked) and
  when it is launched: a thread child runs on a *clone* of the runnable
  (:func:`for_thread`), a process child on a transformed clone that is then
  pickled or forked (:func:`for_process`).  Child factories run in the child
  just before ``execute()`` (:func:`enter_child`).
* The bookkeeping of an object lives in the object itself (one entry of its
  ``__dict__`` whose key is not an identifier); class tables are held in a
  weak dictionary.  Nothing here keeps a runnable or a value alive.

Objects reached from a runnable through scoped objects and the builtin
containers (list, tuple, dict, set, frozenset) are handled recursively, once
per object, cycles included; a plain object in between is opaque (shared in
threads, deep-copied under ``copied``, pickled in processes).
"""

from __future__ import annotations

import copy
import enum
import functools
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, overload

from puma._buffer import Buffer
from puma._errors import NotPicklableError, PumaError

__all__ = [
    "STATE_KEY",
    "AttributeScopeError",
    "ProcessAction",
    "ScopedAttribute",
    "ThreadAction",
    "ValueSource",
    "child_only",
    "copied",
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

T = TypeVar("T")

_STATE = "puma:scopes"  # the key of an object's scope bookkeeping in its __dict__ (never an attribute name)
_MISSING: Any = object()

# what the child gets, per attribute and environment
_SHARE = "share"  # the same object (threads); in processes a copy, made by pickling or fork
_COPY = "copy"  # a deep copy (threads); in processes a copy, made by pickling or fork
_DROP = "drop"  # nothing: the attribute does not exist in the child
_NONE = "none"  # None
_REFUSE = "refuse"  # the runnable may not be launched there while the attribute holds a value

_PARENT = "parent"
_CHILD = "child"

_ATOMIC: frozenset[type] = frozenset(
    {int, float, complex, bool, str, bytes, type(None), range, slice, type(Ellipsis), type(NotImplemented)}
)
_CONTAINERS: frozenset[type] = frozenset({list, tuple, dict, set, frozenset})


class AttributeScopeError(PumaError, AttributeError):
    """A scoped attribute was used where its scope says it does not exist.

    Reading a :class:`child_only` attribute in the parent, or a
    :class:`parent_only` one in the child, raises it; the message names the
    attribute and its scope.  It is an ``AttributeError``, so ``hasattr`` and
    ``getattr(obj, name, default)`` treat the attribute as absent there.
    """


class ThreadAction(enum.Enum):
    """What a thread child gets for a :class:`manually_managed` attribute."""

    SHARED = "shared"
    """The same object as the parent (Python's behaviour in threads)."""
    COPIED = "copied"
    """A deep copy: mutations on either side are not seen by the other."""
    NOT_ALLOWED = "not allowed"
    """Starting the runnable in a thread while the attribute holds a value (not None) is an error."""


class ProcessAction(enum.Enum):
    """What a process child gets for a :class:`manually_managed` attribute."""

    COPIED = "copied"
    """A copy, made by pickling (spawn, forkserver) or by fork (Python's behaviour in processes)."""
    SET_TO_NONE = "set to None"
    """None: the value is not sent (it may be unpicklable)."""
    NOT_ALLOWED = "not allowed"
    """Starting the runnable in a process while the attribute holds a value (not None) is an error."""


# --- value sources --------------------------------------------------------------------------------
class ValueSource(Generic[T]):
    """How each scope gets its own value of a scoped attribute; made by
    :func:`per_scope_value`, :func:`factory` and :func:`scope_specific`.

    Assign one to a scoped attribute (usually in ``__init__``); the attribute
    then reads as the value of the current scope, never as the source itself.
    """

    __slots__ = ()

    def _describe(self) -> str:
        return type(self).__name__


class _PerScope(ValueSource[T]):
    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def _describe(self) -> str:
        return "puma.per_scope_value(...)"


class _Factory(ValueSource[T]):
    __slots__ = ("make",)

    def __init__(self, make: Callable[[], T]) -> None:
        self.make = make

    def _describe(self) -> str:
        return "puma.factory(...)"


class _ScopeSpecific(ValueSource[T]):
    __slots__ = ("child_factory", "parent_value")

    def __init__(self, parent_value: T, child_factory: Callable[[], T]) -> None:
        self.parent_value = parent_value
        self.child_factory = child_factory

    def _describe(self) -> str:
        return "puma.scope_specific(...)"


def per_scope_value(value: T) -> ValueSource[T]:
    """The same initial value in each scope, each scope with its own copy.

    The parent gets ``value``; the child gets a deep copy of ``value`` as it
    was when the runnable was constructed, whatever the parent did to it since.
    """
    return _PerScope(value)


def factory(make: Callable[[], T]) -> ValueSource[T]:
    """A fresh value in each scope: ``make()`` is called in each scope that uses the attribute.

    In the child it is called in the child (thread or process) just before
    ``execute()``: the place to open a file, a socket or a device.  In the
    parent it is called on the first read there.  For a process, ``make`` must
    pickle (a module-level function or a ``functools.partial`` of one).
    """
    if not callable(make):
        raise TypeError(f"puma.factory() takes a callable, not {type(make).__name__}")
    return _Factory(make)


def scope_specific(parent_value: T, child_factory: Callable[[], T]) -> ValueSource[T]:
    """``parent_value`` in the parent; ``child_factory()``, called in the child, in the child.

    For things that do not pickle: the parent keeps its object, which is never
    sent; the child makes its own.
    """
    if not callable(child_factory):
        raise TypeError(f"puma.scope_specific() takes a callable child factory, not {type(child_factory).__name__}")
    return _ScopeSpecific(parent_value, child_factory)


# --- an object's bookkeeping ----------------------------------------------------------------------
class _State:
    """Kept in an object's ``__dict__`` under ``_STATE``: its role and what is held for the other side."""

    __slots__ = ("child", "objects", "pending", "role", "sealed")

    def __init__(self, role: str) -> None:
        self.role = role
        self.child: dict[str, tuple[str, Any]] = {}  # parent side: name -> (_COPY, value) or ("factory", make)
        self.pending: dict[str, Callable[[], Any]] = {}  # factories to call on first use in this scope
        self.sealed: dict[str, Any] = {}  # parent values produced by a value source, to notice re-assignment
        self.objects: list[Any] = []  # child root: the objects whose factories run before execute()

    def _probe_children(self) -> list[tuple[str, Any]]:
        """For the pickling checker: what of this crosses into a process, named after its attribute."""
        out = [(f".{name} (its child factory)", make) for name, make in self.pending.items()]
        out += [(f".{name} (its child value)", value) for name, (_, value) in self.child.items()]
        return out


_FACTORY = "factory"
STATE_KEY = _STATE


def probe_children(state: Any) -> list[tuple[str, Any]]:
    """For the pickling checker: the parts of a scoped object's bookkeeping that cross, by attribute."""
    return state._probe_children() if isinstance(state, _State) else [(".<puma scopes>", state)]


def _state(d: dict[str, Any]) -> _State:
    state: _State | None = d.get(_STATE)
    if state is None:
        state = _State(_PARENT)
        d[_STATE] = state
    return state


# --- the declarations -------------------------------------------------------------------------------
class ScopedAttribute(Generic[T]):
    """Base of the scope declarations (:class:`copied`, :class:`child_only`, ...).

    A non-data descriptor: declare it at class level and assign the attribute
    as usual.  The type parameter is the attribute's type, which type checkers
    see on reads and check on assignments::

        count = puma.copied[int]()
        count: puma.ScopedAttribute[int] = puma.copied()    # the same, annotated

    Args:
        why: an optional sentence added to the error raised where the
            attribute may not be used.
    """

    _scope: ClassVar[str] = "scoped"
    _in_parent: ClassVar[bool] = True
    _in_child: ClassVar[bool] = True
    _thread: ClassVar[str] = _SHARE
    _process: ClassVar[str] = _SHARE

    __slots__ = ("_name", "_owner", "_why")

    def __init__(self, *, why: str = "") -> None:
        self._name = ""
        self._owner = ""
        self._why = why

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name
        self._owner = owner.__qualname__
        install_seal(owner)

    @property
    def name(self) -> str:
        """The attribute's name (set when the class is made)."""
        return self._name

    @property
    def scope(self) -> str:
        """The scope's name, e.g. ``"child_only"``."""
        return self._scope

    def _action(self, thread: bool) -> str:
        return self._thread if thread else self._process

    def __repr__(self) -> str:
        return f"<{self._scope} attribute {self._owner}.{self._name}>"

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None) -> Self: ...
    @overload
    def __get__(self, obj: object, owner: type[Any] | None = None) -> T: ...
    def __get__(self, obj: object | None, owner: type[Any] | None = None) -> Self | T:
        # Only reached when the value is not in the instance __dict__ (which shadows us).
        if obj is None:
            return self
        value: T = _missing(self, obj)
        return value

    if TYPE_CHECKING:  # at run time there is no __set__: assignments go straight to __dict__

        def __set__(self, obj: object, value: T | ValueSource[T]) -> None: ...

    def _forbidden(self, obj: object, where: str) -> AttributeScopeError:
        if where == _PARENT:
            text = (
                f"{type(obj).__qualname__}.{self._name} is child_only: it exists only in the child "
                "(inside execute() and commands), so the parent cannot read it"
            )
        else:
            text = (
                f"{type(obj).__qualname__}.{self._name} is {self._scope}: it stays in the parent and is "
                "not sent to the child, so the child cannot read it"
            )
        if self._why:
            text += f" ({self._why})"
        error = AttributeScopeError(text)
        error.name = self._name
        return error


class copied(ScopedAttribute[T]):  # noqa: N801 - reads as a scope keyword: x = puma.copied[int]()
    """The child gets its own deep copy, in threads exactly as in processes.

    Mutations in the child never show in the parent, and the reverse.  Threads
    copy with ``copy.deepcopy`` when the child is launched (puma buffers inside
    are not copied: they are channels); processes copy by pickling or fork.
    """

    _scope = "copied"
    _thread = _COPY
    _process = _COPY
    __slots__ = ()


class child_only(ScopedAttribute[T]):  # noqa: N801
    """Usable only in the child; reading it in the parent raises :class:`AttributeScopeError`.

    A value assigned in the parent (in ``__init__``) is handed to the child
    (copied, as with :class:`copied`) and removed from the parent; a
    :func:`factory` makes the value in the child.
    """

    _scope = "child_only"
    _in_parent = False
    _thread = _COPY
    _process = _COPY
    __slots__ = ()


class parent_only(ScopedAttribute[T]):  # noqa: N801
    """Usable only in the parent; never sent to the child, so it may hold anything (a GUI handle).

    Reading it in the child raises :class:`AttributeScopeError`.
    """

    _scope = "parent_only"
    _in_child = False
    _thread = _DROP
    _process = _DROP
    __slots__ = ()


class unmanaged(ScopedAttribute[T]):  # noqa: N801
    """Python's default, said explicitly: shared in threads, copied in processes.

    The behaviour of unannotated attributes; declare it to say you want exactly
    that (for example a ``queue`` or a lock that threads share on purpose).
    """

    _scope = "unmanaged"
    _thread = _SHARE
    _process = _SHARE
    __slots__ = ()


python_default = unmanaged
"""Another name of :class:`unmanaged`."""


class manually_managed(ScopedAttribute[T]):  # noqa: N801
    """Explicit actions for each environment.

    Args:
        thread: what a thread child gets: :attr:`ThreadAction.SHARED`,
            :attr:`ThreadAction.COPIED` or :attr:`ThreadAction.NOT_ALLOWED`.
        process: what a process child gets: :attr:`ProcessAction.COPIED`,
            :attr:`ProcessAction.SET_TO_NONE` or :attr:`ProcessAction.NOT_ALLOWED`.

    "Not allowed" makes ``Runner.start`` raise :class:`~puma.PumaError`, naming
    the attribute, if the attribute holds a value other than None.
    """

    _scope = "manually_managed"
    __slots__ = ("_process_action", "_thread_action")

    def __init__(self, *, thread: ThreadAction, process: ProcessAction, why: str = "") -> None:
        super().__init__(why=why)
        if not isinstance(thread, ThreadAction):
            raise TypeError(f"manually_managed(thread=...) takes a puma.ThreadAction, not {thread!r}")
        if not isinstance(process, ProcessAction):
            raise TypeError(f"manually_managed(process=...) takes a puma.ProcessAction, not {process!r}")
        self._thread_action = thread
        self._process_action = process

    @property
    def thread(self) -> ThreadAction:
        """What a thread child gets."""
        return self._thread_action

    @property
    def process(self) -> ProcessAction:
        """What a process child gets."""
        return self._process_action

    def _action(self, thread: bool) -> str:
        if thread:
            return {ThreadAction.SHARED: _SHARE, ThreadAction.COPIED: _COPY, ThreadAction.NOT_ALLOWED: _REFUSE}[
                self._thread_action
            ]
        return {ProcessAction.COPIED: _SHARE, ProcessAction.SET_TO_NONE: _NONE, ProcessAction.NOT_ALLOWED: _REFUSE}[
            self._process_action
        ]

    def __repr__(self) -> str:
        return (
            f"<manually_managed attribute {self._owner}.{self._name} "
            f"(thread={self._thread_action.name}, process={self._process_action.name})>"
        )


# --- class tables ---------------------------------------------------------------------------------
_tables: weakref.WeakKeyDictionary[type, dict[str, ScopedAttribute[Any]]] = weakref.WeakKeyDictionary()
_NO_TABLE: dict[str, ScopedAttribute[Any]] = {}


def _table(cls: type) -> dict[str, ScopedAttribute[Any]]:
    """The scoped attributes of ``cls`` by name (empty for a plain class). Cached weakly per class."""
    try:
        return _tables[cls]
    except KeyError:
        pass
    except TypeError:  # not weakly referenceable: not one of ours
        return _NO_TABLE
    table: dict[str, ScopedAttribute[Any]] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, ScopedAttribute):
                table[name] = value
            elif name in table:
                del table[name]  # a subclass replaced the declaration with something else
    try:
        _tables[cls] = table
    except TypeError:
        pass
    return table


def _dict_of(obj: object) -> dict[str, Any]:
    try:
        d: dict[str, Any] = obj.__dict__
    except AttributeError:
        raise TypeError(
            f"{type(obj).__qualname__} declares scoped attributes but its instances have no __dict__ "
            "(scoped attributes keep their values there; remove __slots__ or add '__dict__' to it)"
        ) from None
    return d


def _missing(desc: ScopedAttribute[Any], obj: object) -> Any:
    """A read of ``desc`` on ``obj`` that the instance dict did not answer."""
    d = _dict_of(obj)
    name = desc._name
    state: _State | None = d.get(_STATE)
    role = _PARENT
    if state is not None:
        role = state.role
        make = state.pending.pop(name, None)
        if make is not None:
            try:
                value = make()
            except BaseException:
                state.pending[name] = make
                raise
            d[name] = value
            if role == _PARENT:
                state.sealed[name] = value
            return value
    if role == _CHILD and not desc._in_child:
        raise desc._forbidden(obj, _CHILD)
    if role == _PARENT and not desc._in_parent:
        raise desc._forbidden(obj, _PARENT)
    error = AttributeError(f"{type(obj).__qualname__!r} object has no attribute {name!r} ({desc._scope}, not set)")
    error.name = name
    raise error


# --- sealing: the parent's side ------------------------------------------------------------------
def _seal_one(obj: object, table: dict[str, ScopedAttribute[Any]]) -> None:
    """Put the values of ``obj`` where its scopes say, in the parent. Idempotent."""
    d = _dict_of(obj)
    state: _State | None = d.get(_STATE)
    if state is not None and state.role == _CHILD:
        return
    for name, value in list(d.items()):
        if name == _STATE:
            continue
        desc = table.get(name)
        if desc is None:
            if isinstance(value, ValueSource):
                raise TypeError(
                    f"{type(obj).__qualname__}.{name} holds {value._describe()} but is not a scoped attribute: "
                    f"declare it at class level (e.g. {name} = puma.copied[...]())"
                )
            continue
        if isinstance(value, ValueSource):
            _unpack(obj, d, desc, value)
            continue
        if not desc._in_parent:  # child_only: the value is the child's; the parent lets go of it
            del d[name]
            st = _state(d)
            st.child[name] = (_COPY, value)
            st.pending.pop(name, None)
            continue
        if state is not None:
            state.pending.pop(name, None)  # assigned: a lazy factory is superseded
            if name in state.child and state.sealed.get(name, _MISSING) is not value:
                del state.child[name]  # re-assigned since sealed: the child gets a copy of the new value
                state.sealed.pop(name, None)


def _unpack(obj: object, d: dict[str, Any], desc: ScopedAttribute[Any], source: ValueSource[Any]) -> None:
    name = desc._name
    st = _state(d)
    del d[name]
    st.pending.pop(name, None)
    st.child.pop(name, None)
    st.sealed.pop(name, None)
    gives_child = desc._in_child
    if isinstance(source, _PerScope):
        value = source.value
        if desc._in_parent:
            d[name] = value
            st.sealed[name] = value
            if gives_child:
                try:
                    snapshot = copy.deepcopy(value)
                except Exception as exc:
                    raise NotPicklableError(
                        f"{type(obj).__qualname__}.{name}: the value of puma.per_scope_value() cannot be copied "
                        f"for the child ({type(exc).__name__}: {exc}); use puma.factory() or puma.scope_specific()"
                    ) from exc
                st.child[name] = (_COPY, snapshot)
        elif gives_child:
            st.child[name] = (_COPY, value)
    elif isinstance(source, _Factory):
        if desc._in_parent:
            st.pending[name] = source.make
        if gives_child:
            st.child[name] = (_FACTORY, source.make)
    elif isinstance(source, _ScopeSpecific):
        if not (desc._in_parent and desc._in_child):
            raise TypeError(
                f"{type(obj).__qualname__}.{name} is {desc._scope}: puma.scope_specific() gives a value to both "
                f"parent and child; use puma.factory() or a plain value"
            )
        d[name] = source.parent_value
        st.sealed[name] = source.parent_value
        st.child[name] = (_FACTORY, source.child_factory)


def seal(root: object) -> None:
    """Seal ``root`` and every scoped object reachable from it (through scoped objects and containers)."""
    seen: set[int] = set()
    stack: list[Any] = [root]
    while stack:
        value = stack.pop()
        t = type(value)
        if t in _ATOMIC or id(value) in seen:
            continue
        seen.add(id(value))
        if t in _CONTAINERS:
            stack.extend(value.items() if t is dict else value)
            continue
        table = _table(t)
        if not table:
            continue
        _seal_one(value, table)
        d = value.__dict__
        stack.extend(v for k, v in d.items() if k != _STATE)
        state: _State | None = d.get(_STATE)
        if state is not None:
            stack.extend(v for how, v in state.child.values() if how == _COPY)


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


# --- crossing: what the child gets ----------------------------------------------------------------
class _Crossing:
    """One launch: builds the child's objects from the parent's, each object once."""

    def __init__(self, thread: bool) -> None:
        self.thread = thread
        self.shared: dict[int, Any] = {}  # id(original) -> what the child gets where sharing
        self.copies: dict[int, Any] = {}  # id(original) -> deep copy (also copy.deepcopy's memo)
        self.holds: dict[int, bool] = {}  # id(container) -> whether it holds scoped objects
        self.tables: dict[type, dict[str, ScopedAttribute[Any]]] = {}
        self.with_factories: list[Any] = []

    def table(self, t: type) -> dict[str, ScopedAttribute[Any]]:
        table = self.tables.get(t)
        if table is None:
            table = self.tables[t] = _table(t)
        return table

    def clone(self, obj: Any, table: dict[str, ScopedAttribute[Any]], path: str) -> Any:
        key = id(obj)
        _seal_one(obj, table)
        cls: Any = type(obj)
        try:
            new = object.__new__(cls) if cls.__new__ is object.__new__ else cls.__new__(cls)
        except Exception as exc:
            raise TypeError(f"{path} ({cls.__qualname__}) cannot be recreated for the child: {exc}") from exc
        self.shared[key] = new
        self.copies[key] = new
        src = obj.__dict__
        parent_state: _State | None = src.get(_STATE)
        child_values = parent_state.child if parent_state is not None else {}
        state = _State(_CHILD)
        out: dict[str, Any] = {}
        for name, value in list(src.items()):
            if name == _STATE:
                continue
            desc = table.get(name)
            if desc is None:
                out[name] = self.share(value, f"{path}.{name}")
                continue
            action = self.action(desc, value, path)
            if action is None or name in child_values:
                continue
            if action == _NONE:
                out[name] = None
            elif action == _COPY and self.thread:
                out[name] = self.deep(value, f"{path}.{name}")
            else:
                out[name] = self.share(value, f"{path}.{name}")
        for name, (how, value) in child_values.items():
            desc = table.get(name)
            if desc is None:
                continue
            action = self.action(desc, value if how == _COPY else _MISSING, path)
            if action is None:
                continue
            if action == _NONE:
                out[name] = None
            elif how == _FACTORY:
                out.pop(name, None)
                state.pending[name] = value
            else:
                out[name] = self.deep(value, f"{path}.{name}") if self.thread else self.share(value, f"{path}.{name}")
        new.__dict__.update(out)
        new.__dict__[_STATE] = state
        if state.pending:
            self.with_factories.append(new)
        return new

    def action(self, desc: ScopedAttribute[Any], value: Any, path: str) -> str | None:
        """The action for ``desc`` here; None when the child gets nothing."""
        action = desc._action(self.thread)
        if action == _DROP:
            return None
        if action == _REFUSE:
            if value is None:
                return _NONE
            where = "thread" if self.thread else "process"
            raise PumaError(
                f"attribute {path}.{desc._name} is manually_managed with {where}=NOT_ALLOWED, so a runnable "
                f"holding it cannot be started in a {where} while it holds a value (it holds "
                f"{'a child factory' if value is _MISSING else type(value).__qualname__}); set it to None "
                f"or use another environment"
            )
        return action

    def share(self, value: Any, path: str) -> Any:
        """The same object, except that scoped objects inside (through containers) are cloned."""
        t = type(value)
        if t in _ATOMIC:
            return value
        key = id(value)
        hit = self.shared.get(key, _MISSING)
        if hit is not _MISSING:
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
        hit = self.copies.get(key, _MISSING)
        if hit is not _MISSING:
            return hit
        table = self.table(t)
        if table:
            hit = self.shared.get(key, _MISSING)
            return hit if hit is not _MISSING else self.clone(value, table, path)
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
                f"{type(exc).__name__}: {exc}. Keep it out of the child (puma.parent_only), make it there "
                "(puma.factory), or share it on purpose (puma.unmanaged)"
            ) from exc


def _cross(runnable: Any, thread: bool) -> Any:
    crossing = _Crossing(thread)
    table = _table(type(runnable))
    name = getattr(runnable, "name", type(runnable).__name__)
    root = crossing.clone(runnable, table, str(name))
    root_state: _State = root.__dict__[_STATE]
    root_state.objects = crossing.with_factories
    return root


def for_thread(runnable: Any) -> Any:
    """The object a thread child runs: a clone of ``runnable`` with every scope applied.

    Unannotated attributes refer to the same objects as the parent's (Python's
    sharing between threads); copied ones are deep copies; parent-only ones are
    absent.  Raises before anything starts if a value cannot be copied or may
    not go to a thread.
    """
    return _cross(runnable, thread=True)


def for_process(runnable: Any) -> Any:
    """The object to send to a process child: a clone of ``runnable`` with every scope applied.

    Values are not copied here: pickling (spawn, forkserver) or fork copies
    them.  Parent-only attributes are absent, so they need not pickle.
    """
    return _cross(runnable, thread=False)


def enter_child(runnable: Any) -> None:
    """In the child, before ``execute()``: call the child factories of the runnable and its objects."""
    state: _State | None = runnable.__dict__.get(_STATE)
    if state is None or state.role != _CHILD or not state.objects:
        return
    objects, state.objects = state.objects, []
    for obj in objects:
        d = obj.__dict__
        own: _State = d[_STATE]
        for name in list(own.pending):
            make = own.pending.pop(name, None)
            if make is None:
                continue
            try:
                d[name] = make()
            except BaseException as exc:
                exc.add_note(f"raised by the child factory of {type(obj).__qualname__}.{name}")
                raise
