"""User commands: methods called on the runnable in the parent that run in the child.

Decorate a method of a :class:`~puma.Runnable` with :func:`run_in_child_scope`.
Called inside the runnable (in the child) it is a plain call.  Called anywhere
else on a running runnable it is sent down the command channel, runs in the
child between two values, and its return value or exception comes back::

    class Camera(puma.Runnable):
        @puma.run_in_child_scope
        def set_exposure(self, ms: float) -> float:
            self._exposure = ms
            return ms

    camera.set_exposure(20.0)                 # blocks, returns 20.0
    future = camera.set_exposure.submit(5.0)  # concurrent.futures.Future
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

from puma._core import current as _context
from puma._core.condition import new_future

if TYPE_CHECKING:
    from puma._runnable.runnable import Runnable

__all__ = ["BoundCommand", "ChildScopeMethod", "command_function", "run_in_child_scope"]

P = ParamSpec("P")
R = TypeVar("R")
S = TypeVar("S", bound="Runnable")

DEFAULT_COMMAND_TIMEOUT = 30.0

_functions: dict[tuple[type[Any], str], Callable[..., Any]] = {}  # command_function's answers


class BoundCommand(Generic[P, R]):
    """A :func:`run_in_child_scope` method bound to a runnable.

    Calling it blocks until the child has run it (at most ``timeout`` seconds,
    see :meth:`call`); :meth:`submit` returns a future instead.
    """

    __slots__ = ("_function", "_runnable")

    def __init__(self, runnable: Runnable, function: Callable[..., R]) -> None:
        self._runnable = runnable
        self._function = function

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self._call(DEFAULT_COMMAND_TIMEOUT, args, kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Future[R]:
        """Send the command and return a future of its result (or exception)."""
        ctx = _context.current()
        if ctx is not None and ctx.runnable is self._runnable:
            future: Future[R] = new_future()
            try:
                future.set_result(self._function(self._runnable, *args, **kwargs))
            except Exception as exc:  # noqa: BLE001 - delivered through the future
                future.set_exception(exc)
            return future
        return self._runnable._puma_send_command(self._function.__name__, args, kwargs)

    def call(self, *args: Any, timeout: float | None = DEFAULT_COMMAND_TIMEOUT, **kwargs: Any) -> R:
        """Like calling it, with an explicit ``timeout`` (``None`` waits for ever)."""
        return self._call(timeout, args, kwargs)

    def _call(self, timeout: float | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        """A blocking call; a process child answers it straight to this thread (see _channels)."""
        ctx = _context.current()
        if ctx is not None and ctx.runnable is self._runnable:
            return self._function(self._runnable, *args, **kwargs)
        record = self._runnable._puma_record
        if record is None:  # not started: submit() raises the error that says so
            return self.submit(*args, **kwargs).result(timeout)
        result: R = record.call_command(self._function.__name__, args, kwargs, timeout)
        return result

    @property
    def __wrapped__(self) -> Callable[..., R]:
        return self._function

    def __repr__(self) -> str:
        return f"<command {self._function.__qualname__} of {self._runnable!r}>"


class ChildScopeMethod(Generic[S, P, R]):
    """Descriptor made by :func:`run_in_child_scope`."""

    def __init__(self, function: Callable[Concatenate[S, P], R]) -> None:
        self._function = function
        functools.update_wrapper(self, function)  # type: ignore[arg-type]

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> ChildScopeMethod[S, P, R]: ...
    @overload
    def __get__(self, instance: S, owner: type[Any]) -> BoundCommand[P, R]: ...
    def __get__(self, instance: S | None, owner: type[Any]) -> ChildScopeMethod[S, P, R] | BoundCommand[P, R]:
        if instance is None:
            return self
        return BoundCommand(instance, self._function)

    @property
    def function(self) -> Callable[Concatenate[S, P], R]:
        """The undecorated method."""
        return self._function


def run_in_child_scope(function: Callable[Concatenate[S, P], R]) -> ChildScopeMethod[S, P, R]:
    """Mark a runnable's method as a command: called in the parent, run in the child.

    The return value (or exception) comes back to the caller.  A command that
    raises does not harm the runnable: later commands still run.  Calling a
    command on a runnable that is not running raises
    :class:`~puma.RunnableNotRunningError`.

    Examples:
        >>> import puma
        >>> class Counter(puma.CommandDrivenRunnable):
        ...     def __init__(self) -> None:
        ...         super().__init__("counter")
        ...         self._count = 0
        ...     @puma.run_in_child_scope
        ...     def add(self, n: int) -> int:
        ...         if n < 0:
        ...             raise ValueError("only up")
        ...         self._count += n
        ...         return self._count
        >>> with puma.Runner(puma.ThreadEnvironment()) as runner:
        ...     counter = runner.start(Counter())
        ...     print(counter.add(2), counter.add(3))
        ...     try:
        ...         counter.add(-1)
        ...     except ValueError as error:
        ...         print("refused:", error)
        ...     print(counter.add.submit(10).result(timeout=30))  # a future instead of waiting
        ...     runner.stop()
        2 5
        refused: only up
        15
    """
    return ChildScopeMethod(function)


def command_function(cls: type[Any], name: str) -> Callable[..., Any]:
    """The plain function behind the command ``name`` of class ``cls``."""
    key = (cls, name)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    for klass in cls.__mro__:
        attr = klass.__dict__.get(name)
        if isinstance(attr, ChildScopeMethod):
            fn = attr.function
            if len(_functions) < 4096:  # a bound on classes made on the fly
                _functions[key] = fn
            return fn
    raise AttributeError(f"{cls.__qualname__} has no command {name!r} (decorate it with @puma.run_in_child_scope)")
