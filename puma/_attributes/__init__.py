"""Scoped attributes: each attribute of a runnable declares how it crosses from parent to child.

In plain Python an attribute that a thread mutates is shared with the parent,
while a process gets a copy, so a program that works in threads can silently
break in processes.  A scoped attribute says, once, at class level, what the
child gets, and the Runner applies it identically in threads and processes::

    class Camera(puma.Runnable):
        settings = puma.copied[dict[str, float]]()        # the child gets its own copy
        device = puma.child_only[Device]()                # exists only in the child
        window = puma.parent_only[Window]()               # stays in the parent, never sent

How it works (docs/attributes.md has the user's view):

* Reads cost what plain attribute reads cost because they *are* plain reads:
  the value sits in the instance under its own name, and no class in the
  object's type has anything at that name.  (CPython 3.11 does not specialise
  a read shadowing even a non-data descriptor: 3-4x slower; so a declaration
  registers itself with its class and removes itself from the class.)
* Where an attribute may not be used, the object is an instance of a *view*:
  a subclass of its class, made once per class and side, holding a guard (a
  data descriptor) at each forbidden name, which raises
  :class:`AttributeScopeError` naming the attribute and its scope.  Parent
  objects of a class with ``child_only`` attributes are born as the parent
  view (its guards also take the values assigned in the parent, to hand them
  to the child); child objects are instances of the child view (guards for
  ``parent_only``).  Views have the class's name, pickle as themselves and
  keep instance values inline (fast) when unpickled.
* Decisions are taken at two moments: when an object has been constructed
  (value sources such as :func:`factory` are unpacked) and when a runnable is
  launched: a thread child runs on a *clone* (:func:`for_thread`), a process
  child on a clone that is then pickled or forked (:func:`for_process`).
  Child factories run in the child just before ``execute()``
  (:func:`enter_child`).
* An object's bookkeeping lives in the object itself (an instance attribute
  whose name is not an identifier); class tables are in a weak dictionary and
  views hang off their class.  Nothing here keeps a runnable or a value alive.

Objects reached from a runnable through scoped objects and the builtin
containers (list, tuple, dict, set, frozenset) are handled recursively, once
per object, cycles included; a plain object in between is opaque (shared in
threads, deep-copied under ``copied``, pickled in processes).
"""

from __future__ import annotations

import copy
import enum
import functools
import threading
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, overload

from puma._buffers.base import Buffer
from puma._core import current as _context
from puma._core.errors import NotPicklableError, PumaError

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

T = TypeVar("T")

_STATE = "puma:scopes"  # the instance attribute holding an object's bookkeeping (never an identifier)
STATE_KEY = _STATE
_DECLARED = "__puma_scoped__"  # in a class's own __dict__: the scoped attributes it declares, by name
_VIEW_OF = "__puma_view_of__"  # in a view's own __dict__: (the plain class, its side)
_VIEWS = "__puma_views__"  # in a plain class's own __dict__: its views, by side
_MISSING: Any = object()

# what the child gets, per attribute and environment
_SHARE = "share"  # the same object (threads); in processes a copy, made by pickling or fork
_COPY = "copy"  # a deep copy (threads); in processes a copy, made by pickling or fork
_DROP = "drop"  # nothing: the attribute does not exist in the child
_NONE = "none"  # None
_REFUSE = "refuse"  # the runnable may not be launched there while the attribute holds a value
_FACTORY = "factory"  # (held for the child) made by calling a factory in the child

_PARENT = "parent"
_CHILD = "child"

_ATOMIC: frozenset[type] = frozenset(
    {int, float, complex, bool, str, bytes, type(None), range, slice, type(Ellipsis), type(NotImplemented)}
)
_CONTAINERS: frozenset[type] = frozenset({list, tuple, dict, set, frozenset})
_lock = threading.Lock()


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
    parent (if the attribute exists there) it is called when the object has
    been constructed.  For a process, ``make`` must pickle (a module-level
    function or a ``functools.partial`` of one).
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
    """An object's bookkeeping, kept in the object under ``_STATE``.

    Parent side: what is held for the child (``child``) and the values value
    sources produced (``sealed``, to notice a re-assignment).  Child side: the
    factories still to call (``pending``) and, on the runnable, every object
    of the child (``objects``).
    """

    __slots__ = ("child", "objects", "pending", "sealed")

    def __init__(self) -> None:
        self.child: dict[str, tuple[str, Any]] = {}  # name -> (_COPY, value) or (_FACTORY, make)
        self.sealed: dict[str, Any] = {}
        self.pending: dict[str, Callable[[], Any]] = {}
        self.objects: list[Any] = []

    def _probe_children(self) -> list[tuple[str, Any]]:
        out = [(f".{name} (its child factory)", make) for name, make in self.pending.items()]
        out += [(f".{name} (its child value)", value) for name, (_, value) in self.child.items()]
        return out


def probe_children(state: Any) -> list[tuple[str, Any]]:
    """For the pickling checker: the parts of an object's bookkeeping that cross, named by attribute."""
    return state._probe_children() if isinstance(state, _State) else [(".<puma scopes>", state)]


def _get_state(obj: object) -> _State | None:
    try:
        state: _State = object.__getattribute__(obj, _STATE)
    except AttributeError:
        return None
    return state


def _own_state(obj: object) -> _State:
    state = _get_state(obj)
    if state is None:
        state = _State()
        object.__setattr__(obj, _STATE, state)
    return state


# --- the declarations -------------------------------------------------------------------------------
class ScopedAttribute(Generic[T]):
    """Base of the scope declarations (:class:`copied`, :class:`child_only`, ...).

    Declare one at class level, then assign and read the attribute as usual.
    The type parameter is the attribute's type, which type checkers see on
    reads and check on assignments::

        count = puma.copied[int]()
        count: puma.ScopedAttribute[int] = puma.copied()    # the same, annotated

    When the class is made, the declaration registers with it and leaves the
    class's namespace, so reads are plain instance reads.

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
        mine = owner.__dict__.get(_DECLARED)
        if mine is None:
            mine = {}
            type.__setattr__(owner, _DECLARED, mine)
        mine[name] = self
        type.__delattr__(owner, name)  # reads must find nothing on the class: see the module's docstring
        install_seal(owner)
        _install_new(owner)

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
        # Only reached for a declaration added to a class after the class was made.
        if obj is None:
            return self
        error = AttributeError(f"{type(obj).__qualname__!r} object has no attribute {self._name!r}")
        error.name = self._name
        raise error

    if TYPE_CHECKING:  # what type checkers see; at run time the class holds nothing at the name

        def __set__(self, obj: object, value: T | ValueSource[T]) -> None: ...

    def _forbidden(self, obj: object, side: str) -> AttributeScopeError:
        owner = _plain(type(obj)).__qualname__
        if side == _PARENT:
            text = (
                f"{owner}.{self._name} is {self._scope}: it exists only in the child "
                "(inside execute() and commands), so the parent cannot read it"
            )
        else:
            text = (
                f"{owner}.{self._name} is {self._scope}: it stays in the parent and is "
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


# --- classes: declarations, views, construction ---------------------------------------------------
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
        mine = own.get(_DECLARED)
        if _VIEW_OF not in own:
            for name in [n for n in table if n in own]:
                del table[name]  # a subclass put something else at the name
        if mine:
            table.update(mine)
    try:
        _tables[cls] = table
    except TypeError:
        pass
    return table


def _plain(cls: type) -> type:
    """The user's class behind ``cls`` (``cls`` itself unless it is a view)."""
    view_of = cls.__dict__.get(_VIEW_OF)
    return cls if view_of is None else view_of[0]


def _side_of(obj: object) -> str:
    view_of = type(obj).__dict__.get(_VIEW_OF)
    return _PARENT if view_of is None else str(view_of[1])


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
        if self._side == _PARENT:
            _hold_for_child(obj, self._desc, value)  # child_only, assigned in the parent: the child's value
        # parent_only, assigned in the child: there is no such attribute here; the value is dropped

    def __delete__(self, obj: object) -> None:
        state = _get_state(obj)
        if state is not None:
            state.child.pop(self._desc._name, None)


def _view(cls: type, side: str) -> type:
    """The class objects of ``cls`` have on ``side``: the plain class, or its view with guards.

    The parent side needs a view only for ``child_only`` attributes; the child
    side always has one (it also decides how child objects pickle).
    """
    base = _plain(cls)
    table = declared(base)
    if side == _PARENT and all(d._in_parent for d in table.values()):
        return base
    views = base.__dict__.get(_VIEWS)
    view: type | None = None if views is None else views.get(side)
    if view is not None:
        return view
    with _lock:
        views = base.__dict__.get(_VIEWS)
        if views is None:
            views = {}
            type.__setattr__(base, _VIEWS, views)
        view = views.get(side)
        if view is None:
            namespace: dict[str, Any] = {
                "__module__": base.__module__,
                "__qualname__": base.__qualname__,
                "__doc__": base.__doc__,
                _VIEW_OF: (base, side),
                "__reduce_ex__": _view_reduce_ex,
                "__setstate__": _view_setstate,
            }
            for name, desc in table.items():
                if not (desc._in_child if side == _CHILD else desc._in_parent):
                    namespace[name] = _Guard(desc, side)
            view = type(base)(base.__name__, (base,), namespace)
            views[side] = view
    return view


def _view_reduce_ex(self: Any, protocol: int) -> tuple[Any, ...]:
    base, side = type(self).__dict__[_VIEW_OF]
    state = self.__getstate__()
    return (_new_view, (base, side), state if state is not None else {})


def _view_setstate(self: Any, state: Any) -> None:
    custom = _custom(_plain(type(self)), "__setstate__")
    if custom is not None:
        custom(self, state)
        return
    if isinstance(state, tuple):  # (dict, slots) from object.__getstate__
        state, slots = state
        for name, value in (slots or {}).items():
            object.__setattr__(self, name, value)
    for name, value in (state or {}).items():
        object.__setattr__(self, name, value)  # one by one: the values stay inline, reads stay fast


def _custom(cls: type, method: str) -> Any:
    """``cls``'s own ``__getstate__``/``__setstate__`` if a class (not puma, not object) defines one."""
    for klass in cls.__mro__:
        if klass is object or _VIEW_OF in klass.__dict__:
            continue
        found = klass.__dict__.get(method)
        if found is not None:
            module = getattr(found, "__module__", "") or ""
            return None if module.startswith("puma.") else found
    return None


def _new_view(base: type, side: str) -> Any:
    """A new, empty object of ``base``'s view for ``side`` (unpickling, cloning)."""
    return _allocate(_view(base, side))


def _allocate(cls: Any) -> Any:
    try:
        return object.__new__(cls)
    except TypeError:
        return cls.__new__(cls)


def _install_new(owner: type[Any]) -> None:
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
        return _view(cls, _CHILD)
    return _view(cls, _PARENT)


def _is_runnable(cls: type) -> bool:
    """Runnables say so with a class flag (this layer sits below the runnable's)."""
    return bool(getattr(cls, "_puma_handle", False))


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


# --- sealing: values where their scopes say ---------------------------------------------------------
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
    if _side_of(obj) == _CHILD:
        _seal_child(obj, table)
    else:
        _seal_parent(obj, table)


def _seal_parent(obj: object, table: dict[str, ScopedAttribute[Any]]) -> None:
    state = _get_state(obj)
    held = False
    for name, desc in table.items():
        try:
            value = object.__getattribute__(obj, name)
        except AttributeError:
            continue  # not set, or guarded
        if not desc._in_parent:  # an object that was not born as the parent view
            object.__delattr__(obj, name)
            _hold_for_child(obj, desc, value)
            held = True
        elif isinstance(value, ValueSource):
            _unpack_in_parent(obj, desc, value)
        elif state is not None and name in state.child and state.sealed.get(name, _MISSING) is not value:
            del state.child[name]  # re-assigned since it was sealed: the child gets a copy of the new value
            state.sealed.pop(name, None)
    if held:
        view = _view(type(obj), _PARENT)
        if type(obj) is not view:
            obj.__class__ = view
            _fast_dict(obj)


def _seal_child(obj: object, table: dict[str, ScopedAttribute[Any]]) -> None:
    for name in table:
        try:
            value = object.__getattribute__(obj, name)
        except AttributeError:
            continue
        if isinstance(value, _Factory):
            object.__setattr__(obj, name, value.make())
        elif isinstance(value, _PerScope):
            object.__setattr__(obj, name, value.value)
        elif isinstance(value, _ScopeSpecific):
            object.__setattr__(obj, name, value.child_factory())


def _hold_for_child(obj: object, desc: ScopedAttribute[Any], value: Any) -> None:
    """A value assigned to a ``child_only`` attribute in the parent: kept for the child."""
    state = _own_state(obj)
    name = desc._name
    if isinstance(value, _Factory):
        state.child[name] = (_FACTORY, value.make)
    elif isinstance(value, _PerScope):
        state.child[name] = (_COPY, value.value)
    elif isinstance(value, _ScopeSpecific):
        raise TypeError(
            f"{_plain(type(obj)).__qualname__}.{name} is {desc._scope}: puma.scope_specific() gives a value to "
            "both parent and child; use puma.factory() or a plain value"
        )
    else:
        state.child[name] = (_COPY, value)


def _unpack_in_parent(obj: object, desc: ScopedAttribute[Any], source: ValueSource[Any]) -> None:
    name = desc._name
    state = _own_state(obj)
    state.child.pop(name, None)
    if isinstance(source, _PerScope):
        value = source.value
        if desc._in_child:
            try:
                snapshot = copy.deepcopy(value)
            except Exception as exc:
                raise NotPicklableError(
                    f"{_plain(type(obj)).__qualname__}.{name}: the value of puma.per_scope_value() cannot be "
                    f"copied for the child ({type(exc).__name__}: {exc}); use puma.factory() or puma.scope_specific()"
                ) from exc
            state.child[name] = (_COPY, snapshot)
    elif isinstance(source, _Factory):
        value = source.make()
        if desc._in_child:
            state.child[name] = (_FACTORY, source.make)
    elif isinstance(source, _ScopeSpecific):
        if not desc._in_child:
            raise TypeError(
                f"{_plain(type(obj)).__qualname__}.{name} is {desc._scope}: puma.scope_specific() gives a value "
                "to both parent and child; use puma.factory() or a plain value"
            )
        value = source.parent_value
        state.child[name] = (_FACTORY, source.child_factory)
    else:
        raise TypeError(f"unknown value source {source!r}")
    object.__setattr__(obj, name, value)
    state.sealed[name] = value


def _fast_dict(obj: object) -> None:
    """Give ``obj`` a fresh instance dict: one that was made from inline values makes every read slow."""
    object.__setattr__(obj, "__dict__", dict(object.__getattribute__(obj, "__dict__")))


# --- crossing: what the child gets ----------------------------------------------------------------
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
            getstate = _custom(type(obj), "__getstate__")
            if getstate is not None:
                state = getstate(obj)
                if not isinstance(state, dict):
                    raise TypeError(
                        f"{_plain(type(obj)).__qualname__}.__getstate__ must return a dict for its scoped attributes"
                    )
                attributes = dict(state)
                attributes.setdefault(_STATE, d.get(_STATE))
        _fast_dict(obj)  # reading them made the parent's dict from its inline values
        return attributes

    def clone(self, obj: Any, table: dict[str, ScopedAttribute[Any]], path: str) -> Any:
        key = id(obj)
        seal(obj)
        new = _new_view(type(obj), _CHILD)
        self.shared[key] = new
        self.copies[key] = new
        src = self.source(obj)
        parent_state: _State | None = src.pop(_STATE, None)
        held = parent_state.child if parent_state is not None and _side_of(obj) == _PARENT else {}
        state = _State()
        out: dict[str, Any] = {}
        for name, value in src.items():
            desc = table.get(name)
            if desc is None:
                if isinstance(value, ValueSource):
                    raise TypeError(
                        f"{_plain(type(obj)).__qualname__}.{name} holds {value._describe()} but is not a scoped "
                        f"attribute: declare it at class level (e.g. {name} = puma.copied[...]())"
                    )
                out[name] = self.share(value, f"{path}.{name}")
                continue
            action = self.action(desc, value, path)
            if action is None or name in held:
                continue
            if action == _NONE:
                out[name] = None
            elif action == _COPY and self.thread:
                out[name] = self.deep(value, f"{path}.{name}")
            else:
                out[name] = self.share(value, f"{path}.{name}")
        for name, (how, value) in held.items():
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
        for name, value in out.items():
            object.__setattr__(new, name, value)  # one by one: the values stay inline, reads stay fast
        object.__setattr__(new, _STATE, state)
        self.clones.append(new)
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
    name = getattr(runnable, "name", type(runnable).__name__)
    root = crossing.clone(runnable, declared(type(runnable)), str(name))
    root_state = _get_state(root)
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
    state = _get_state(runnable)
    if state is None or not state.objects:
        return
    objects, state.objects = state.objects, []
    for obj in objects:
        own = _get_state(obj)
        if own is None:
            continue
        for name in list(own.pending):
            make = own.pending.pop(name)
            try:
                object.__setattr__(obj, name, make())
            except BaseException as exc:
                exc.add_note(f"raised by the child factory of {_plain(type(obj)).__qualname__}.{name}")
                raise
