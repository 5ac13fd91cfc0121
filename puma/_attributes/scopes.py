"""Scope declarations: each attribute of a runnable declares how it crosses from parent to child.

In plain Python an attribute that a thread mutates is shared with the parent,
while a process gets a copy, so a program that works in threads can silently
break in processes.  A scoped attribute says, once, at class level, what the
child gets, and the Runner applies it identically in threads and processes::

    from puma.attributes import child_only, copied, parent_only

    class Camera(puma.Runnable):
        settings = copied[dict[str, float]]()        # the child gets its own copy
        device = child_only[Device]()                # exists only in the child
        window = parent_only[Window]()               # stays in the parent, never sent

Reads cost what plain attribute reads cost because they *are* plain reads:
the value sits in the instance under its own name, and no class in the
object's type has anything at that name.  (CPython 3.11 does not specialise a
read shadowing even a non-data descriptor: 3-4x slower; so a declaration
registers itself with its class and removes itself from the class, in
:meth:`ScopedAttribute.__set_name__`.)  Each scope maps each environment to
an action (:mod:`puma._attributes.actions`).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, overload

from puma._attributes.actions import COPY, DROP, NONE, PARENT, REFUSE, SHARE
from puma._attributes.sealing import install_seal
from puma._attributes.tables import DECLARED_KEY, plain_class
from puma._attributes.value_sources import ValueSource
from puma._attributes.views import install_new
from puma._core.errors import PumaError

__all__ = [
    "AttributeScopeError",
    "ProcessAction",
    "ScopedAttribute",
    "ThreadAction",
    "child_only",
    "copied",
    "manually_managed",
    "parent_only",
    "python_default",
    "unmanaged",
]

T = TypeVar("T")


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


class ScopedAttribute(Generic[T]):
    """Base of the scope declarations (:class:`copied`, :class:`child_only`, ...).

    Declare one at class level, then assign and read the attribute as usual.
    The type parameter is the attribute's type, which type checkers see on
    reads and check on assignments::

        count = copied[int]()
        count: ScopedAttribute[int] = copied()    # the same, annotated

    When the class is made, the declaration registers with it and leaves the
    class's namespace, so reads are plain instance reads.

    Args:
        why: an optional sentence added to the error raised where the
            attribute may not be used.
    """

    _scope: ClassVar[str] = "scoped"
    _in_parent: ClassVar[bool] = True
    _in_child: ClassVar[bool] = True
    _thread: ClassVar[str] = SHARE
    _process: ClassVar[str] = SHARE

    __slots__ = ("_name", "_owner", "_why")

    def __init__(self, *, why: str = "") -> None:
        self._name = ""
        self._owner = ""
        self._why = why

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self._name = name
        self._owner = owner.__qualname__
        mine = owner.__dict__.get(DECLARED_KEY)
        if mine is None:
            mine = {}
            type.__setattr__(owner, DECLARED_KEY, mine)
        mine[name] = self
        type.__delattr__(owner, name)  # reads must find nothing on the class: see the module's docstring
        install_seal(owner)
        install_new(owner)

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
        owner = plain_class(type(obj)).__qualname__
        if side == PARENT:
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


class copied(ScopedAttribute[T]):  # noqa: N801 - reads as a scope keyword: x = copied[int]()
    """The child gets its own deep copy, in threads exactly as in processes.

    Mutations in the child never show in the parent, and the reverse.  Threads
    copy with ``copy.deepcopy`` when the child is launched (puma buffers inside
    are not copied: they are channels); processes copy by pickling or fork.
    """

    _scope = "copied"
    _thread = COPY
    _process = COPY
    __slots__ = ()


class child_only(ScopedAttribute[T]):  # noqa: N801
    """Usable only in the child; reading it in the parent raises :class:`AttributeScopeError`.

    A value assigned in the parent (in ``__init__``) is handed to the child
    (copied, as with :class:`copied`) and removed from the parent; a
    :func:`factory` makes the value in the child.
    """

    _scope = "child_only"
    _in_parent = False
    _thread = COPY
    _process = COPY
    __slots__ = ()


class parent_only(ScopedAttribute[T]):  # noqa: N801
    """Usable only in the parent; never sent to the child, so it may hold anything (a GUI handle).

    Reading it in the child raises :class:`AttributeScopeError`.
    """

    _scope = "parent_only"
    _in_child = False
    _thread = DROP
    _process = DROP
    __slots__ = ()


class unmanaged(ScopedAttribute[T]):  # noqa: N801
    """Python's default, said explicitly: shared in threads, copied in processes.

    The behaviour of unannotated attributes; declare it to say you want exactly
    that (for example a ``queue`` or a lock that threads share on purpose).
    """

    _scope = "unmanaged"
    _thread = SHARE
    _process = SHARE
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
            raise TypeError(f"manually_managed(thread=...) takes a puma.attributes.ThreadAction, not {thread!r}")
        if not isinstance(process, ProcessAction):
            raise TypeError(f"manually_managed(process=...) takes a puma.attributes.ProcessAction, not {process!r}")
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
            return {ThreadAction.SHARED: SHARE, ThreadAction.COPIED: COPY, ThreadAction.NOT_ALLOWED: REFUSE}[
                self._thread_action
            ]
        return {ProcessAction.COPIED: SHARE, ProcessAction.SET_TO_NONE: NONE, ProcessAction.NOT_ALLOWED: REFUSE}[
            self._process_action
        ]

    def __repr__(self) -> str:
        return (
            f"<manually_managed attribute {self._owner}.{self._name} "
            f"(thread={self._thread_action.name}, process={self._process_action.name})>"
        )
