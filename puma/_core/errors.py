"""puma's exceptions, and how a child's exception crosses back to the parent.

An exception raised in a child (thread or process) reaches the parent as the
original exception type, with the child's traceback attached (through
``tblib.Traceback``, never by patching pickling globally) and a note naming the
runnable and where it ran.  Exceptions that will not pickle, or will not
unpickle (a constructor that cannot be re-run from ``args``), arrive as a
:class:`RemoteError` carrying the type name, message and formatted traceback.
"""

from __future__ import annotations

import pickle
import signal
import sys
import traceback
import types
from dataclasses import dataclass
from typing import Any

import tblib

__all__ = [
    "BufferClosedError",
    "BufferCompleted",
    "BufferEmpty",
    "BufferFull",
    "ChildDiedError",
    "CommandError",
    "NotPicklableError",
    "PumaError",
    "RemoteError",
    "RunnableNotRunningError",
    "StopRequested",
    "StuckRunnableError",
]


class PumaError(Exception):
    """Base class of every error puma raises itself."""


class StopRequested(BaseException):
    """Raised inside a runnable that was asked to stop while it waited.

    It derives from :class:`BaseException` (like ``KeyboardInterrupt``) so that a
    user's ``except Exception`` does not swallow it.  The runnable machinery
    treats it as a clean stop, not as an error.
    """


class BufferCompleted(PumaError):
    """The buffer's stream has ended: every publisher completed without error."""


class BufferEmpty(PumaError, TimeoutError):
    """No value arrived within the timeout."""


class BufferFull(PumaError, TimeoutError):
    """The buffer stayed full for the whole timeout."""


class BufferClosedError(PumaError):
    """The buffer cannot take this operation any more: its stream ended, its readers are gone, or it was released."""


class UsageError(PumaError):
    """puma was used in a way its rules do not allow (a bug in the calling code); the message names the rule.

    For example: publishing to a buffer that is not one of the runnable's
    ``outputs``, or using a runnable's child-side methods outside its ``execute``.
    """


class RunnableNotRunningError(PumaError):
    """A command was sent to a runnable that is not running (not started, or ended)."""


class CommandError(PumaError):
    """A command could not be delivered: its arguments cannot be sent to the child.

    A command that is delivered but not answered in time raises ``TimeoutError``;
    one sent to a runnable that has ended raises :class:`RunnableNotRunningError`.
    """


class NotPicklableError(PumaError, TypeError):
    """A runnable (or a buffer) cannot be sent to a child process.

    The message names the offending attribute path, e.g. ``camera._device._lock``.
    """


class ChildDiedError(PumaError):
    """A child process ended without reporting how: killed, crashed or ``os._exit``.

    Attributes:
        runnable: the runnable's name.
        pid: the child's process id.
        exitcode: the process exit code; negative for a signal (``-9`` is SIGKILL).
    """

    def __init__(
        self,
        runnable: str,
        pid: int | None,
        exitcode: int | None,
        before_start: bool = False,
        cause: str | None = None,
    ) -> None:
        self.runnable = runnable
        self.pid = pid
        self.exitcode = exitcode
        self.before_start = before_start
        self.cause = cause
        super().__init__(describe_exit(runnable, pid, exitcode, before_start, cause))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.runnable, self.pid, self.exitcode, self.before_start, self.cause), self.__dict__)


class StuckRunnableError(PumaError):
    """A runnable did not end within its stop timeout and was terminated."""


class RemoteError(PumaError):
    """An exception from a child that could not be rebuilt in the parent.

    Attributes:
        type_name: qualified name of the original exception type.
        message: ``str()`` of the original exception.
        remote_traceback: the child's formatted traceback.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        super().__init__(type_name, message, remote_traceback)

    def __str__(self) -> str:
        # The child's frames travel as this error's own traceback: printing it shows them once.
        return f"{self.type_name}: {self.message}"


_CAUSES = {
    signal.SIGKILL: "killed (kill -9, or the kernel's out-of-memory killer)",
    signal.SIGSEGV: "segmentation fault (a crash in native code)",
    signal.SIGABRT: "aborted (a failed assertion in native code)",
    signal.SIGTERM: "terminated",
    signal.SIGBUS: "bus error (a crash in native code, or shared memory gone)",
}


def is_clean_exit(exc: BaseException) -> bool:
    """``sys.exit()`` or ``sys.exit(0)``: a runnable ending cleanly, as a script would."""
    return isinstance(exc, SystemExit) and exc.code in (None, 0)


def visible_exit(exc: BaseException, who: str) -> BaseException:
    """``exc``, unless it would end the program that receives it: ``sys.exit(n)`` or ``KeyboardInterrupt``.

    Raised again in the parent, a child's ``SystemExit(3)`` would end the main
    program with status 3 and nothing on stderr; it becomes a :class:`PumaError`
    naming ``who``, chained from the original.
    """
    if isinstance(exc, SystemExit) and not is_clean_exit(exc):
        what = f"sys.exit({exc.code!r})"
    elif isinstance(exc, KeyboardInterrupt):
        what = "KeyboardInterrupt"
    else:
        return exc
    error = PumaError(
        f"{who} raised {what}; a runnable ends by returning from execute(), so this is reported as an "
        "error instead of ending the program that started it"
    )
    error.__cause__ = exc
    return error


def describe_exit(
    runnable: str, pid: int | None, exitcode: int | None, before_start: bool = False, cause: str | None = None
) -> str:
    """A one-line account of how a child process ended, naming signal and likely cause.

    ``cause``: what the environment knows of why (it wins over guesses from the exit code).
    """
    where = f"runnable {runnable!r} (pid {pid})"
    if cause is not None:
        return f"{where} died ({'exit code ' + str(exitcode) if exitcode is not None else 'no exit code'}): {cause}"
    if exitcode is None:
        return f"{where} ended without reporting"
    if exitcode > 0 and before_start:
        return (
            f"{where} exited with code {exitcode} before it started: the child's Python failed while "
            "preparing it (its stderr says why); under spawn and forkserver the usual cause is a main "
            'script without the `if __name__ == "__main__":` guard, or one that fails when the child imports it'
        )
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"{where} died from signal {-exitcode}"
        cause = _CAUSES.get(sig, "killed by a signal")
        return f"{where} died with {sig.name}({exitcode}): {cause}"
    return (
        f"{where} exited with code {exitcode} without reporting "
        "(os._exit() or sys.exit() called from a thread, or the interpreter aborted)"
    )


def _without_columns(code: types.CodeType) -> types.CodeType:
    """``code`` with every instruction on its first line and no column positions (PEP 657 table).

    A rebuilt traceback's frames run a stub, not the child's code: columns taken
    from the stub would put the ``^^^^`` markers under the wrong part of each
    source line, so the rebuilt frames carry none (lines only).
    """
    units = len(code.co_code) // 2
    table = bytearray()
    while units:
        span = min(units, 8)
        table.append(0x80 | (13 << 3) | (span - 1))  # code 13: a line (delta 0 here), no columns
        table.append(0)
        units -= span
    return code.replace(co_linetable=bytes(table))


_STUB = _without_columns(compile("raise __traceback_maker", "<string>", "exec"))


def _as_traceback(tb: Any) -> types.TracebackType | None:
    """A real traceback from a ``tblib.Traceback``, as tblib's ``as_traceback`` builds it, without column markers."""
    current = tb
    top: types.TracebackType | None = None
    last: types.TracebackType | None = None
    while current:
        f_code = current.tb_frame.f_code
        code = _STUB.replace(co_firstlineno=current.tb_lineno, co_filename=f_code.co_filename, co_name=f_code.co_name)
        try:
            exec(code, dict(current.tb_frame.f_globals), dict(current.tb_frame.f_locals))  # noqa: S102 - the stub raises
        except Exception:  # noqa: BLE001 - the NameError it raises carries the frame we want
            made = sys.exc_info()[2]
            frame = made.tb_next if made is not None else None
            if top is None:
                top = frame
            if last is not None:
                last.tb_next = frame
            last = frame
        current = current.tb_next
    return top


@dataclass(frozen=True)
class _Frozen:
    """One exception of a chain, made safe to pickle."""

    exc: bytes | None  # the pickled exception, or None when it would not round-trip
    notes: tuple[str, ...]
    type_name: str
    message: str
    formatted: str
    tb: dict[str, Any] | None
    link: str  # "cause", "context" or "" for the head


@dataclass(frozen=True)
class SerializedError:
    """An exception with its chain, ready to cross a process boundary."""

    chain: tuple[_Frozen, ...]
    note: str
    origin: str | None = None


def _freeze_one(exc: BaseException, link: str) -> _Frozen:
    module = type(exc).__module__
    if module == "__mp_main__":  # the main script, as spawn and forkserver children import it
        module = "__main__"
    type_name = f"{module}.{type(exc).__qualname__}"
    formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))
    try:
        message = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the error
        message = f"<unprintable {type_name}>"
    pickled: bytes | None
    try:
        pickled = pickle.dumps(exc, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.loads(pickled)  # a constructor that cannot be re-run from args fails here
    except Exception:  # noqa: BLE001 - any failure means: send it as a RemoteError
        pickled = None
    tb_dict: dict[str, Any] | None = None
    if exc.__traceback__ is not None:
        try:
            tb_dict = tblib.Traceback(exc.__traceback__).as_dict()
        except Exception:  # noqa: BLE001
            tb_dict = None
    notes = tuple(str(n) for n in getattr(exc, "__notes__", ()))
    return _Frozen(pickled, notes, type_name, message, formatted, tb_dict, link)


def serialize_error(exc: BaseException, note: str = "") -> SerializedError:
    """Freeze ``exc`` and its ``__cause__``/``__context__`` chain for the trip to the parent."""
    chain: list[_Frozen] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen and len(chain) < 16:
        seen.add(id(current))
        chain.append(_freeze_one(current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "context"
        else:
            current = None
    return SerializedError(tuple(chain), note, getattr(exc, "_puma_origin", None))


def _thaw_one(frozen: _Frozen) -> BaseException:
    exc: BaseException | None = None
    if frozen.exc is not None:
        try:
            loaded = pickle.loads(frozen.exc)
            if isinstance(loaded, BaseException):
                exc = loaded
        except Exception:  # noqa: BLE001 - e.g. the type is not importable here
            exc = None
    if exc is None:
        exc = RemoteError(frozen.type_name, frozen.message, frozen.formatted)
        for note in frozen.notes:
            exc.add_note(note)
    if frozen.tb is not None:
        try:
            exc = exc.with_traceback(_as_traceback(tblib.Traceback.from_dict(frozen.tb)))
        except Exception:  # noqa: BLE001, S110 - the formatted text is still in the message
            pass
    return exc


def deserialize_error(data: SerializedError) -> BaseException:
    """Rebuild the exception chain made by :func:`serialize_error`, with the note added."""
    thawed = [_thaw_one(f) for f in data.chain]
    for outer, (inner, frozen) in zip(thawed, zip(thawed[1:], data.chain[1:], strict=True), strict=False):
        if frozen.link == "cause":
            outer.__cause__ = inner
        else:
            outer.__context__ = inner
    head = thawed[0]
    if data.note and data.note not in getattr(head, "__notes__", ()):
        head.add_note(data.note)
    if data.origin is not None:
        try:
            head._puma_origin = data.origin  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001, S110 - an exception without a __dict__
            pass
    return head
