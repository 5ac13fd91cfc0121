"""What a batch map gives back: a value per good input, a :class:`Failure` per failing one, and its errors.

A failing input never raises out of the map by default: its place in the
results holds a :class:`Failure` naming the input (its index and a short
repr), what went wrong (the exception with the worker's traceback, or the
signal that killed the worker), which worker ran it and how many times it
was tried.  :class:`BatchError` groups the failures when the caller asks for
an exception; :class:`Interrupted` carries the partial results out of a
Ctrl-C.
"""

from __future__ import annotations

import reprlib
import signal as _signal
import time
from dataclasses import dataclass, field
from typing import Any

from puma._core.errors import PumaError

__all__ = ["BatchError", "Failure", "Interrupted", "ItemTimeout", "WorkerDied", "short_repr"]

_REPR = reprlib.Repr()
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def short_repr(value: object) -> str:
    """A repr of at most about 80 characters (an input may be a whole image)."""
    try:
        text = _REPR.repr(value)
    except Exception as exc:  # noqa: BLE001 - a broken __repr__ must not hide the failure
        text = f"<{type(value).__qualname__} (repr raised {type(exc).__name__})>"
    return text if len(text) <= 80 else text[:77] + "..."


class WorkerDied(PumaError):
    """The worker running an input died (killed, crashed): the input is what it was running.

    Attributes:
        index: the input's index.
        pid: the worker's process id.
        exitcode: its exit code, negative for a signal.
        signal: the signal's name (``"SIGKILL"``), or None.
        poison: True if the input killed more than one worker and is failed for good.
    """

    def __init__(self, index: int, pid: int | None, exitcode: int | None, deaths: int, poison: bool) -> None:
        self.index = index
        self.pid = pid
        self.exitcode = exitcode
        self.deaths = deaths
        self.poison = poison
        self.signal = signal_name(exitcode)
        #: ``time.monotonic()`` when the parent saw the death (the clock is the same in every process).
        self.noticed_at = time.monotonic()
        how = f"killed by {self.signal}" if self.signal else f"exited with code {exitcode}"
        text = f"input {index} killed its worker (process {pid}, {how})"
        if poison:
            text += f"; it killed {deaths} workers, so it is a poison pill and is not tried again"
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.index, self.pid, self.exitcode, self.deaths, self.poison), self.__dict__)


class ItemTimeout(PumaError, TimeoutError):
    """An input ran longer than the per-item timeout; its worker was replaced."""


def signal_name(exitcode: int | None) -> str | None:
    """``"SIGKILL"`` for exit code -9, None for a plain exit."""
    if exitcode is None or exitcode >= 0:
        return None
    try:
        return _signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


@dataclass
class Failure:
    """The record of one input that failed.

    Attributes:
        index: the input's position in the iterable.
        input_repr: a short repr of the input.
        error: the exception, with the worker's traceback (:class:`WorkerDied`
            for a death, :class:`ItemTimeout` for a timeout).
        worker: which worker ran it last ("batch-worker-2 (process 1234)").
        attempts: how many times it was tried.
        signal: the name of the signal that killed the worker (``"SIGKILL"``), if one did.
        task: for a chain, the name of the task that failed.
        clipboard: for a chain, the clipboard as the failing task left it.
        input: the input itself, kept in the parent (for :func:`replay`).
    """

    index: int
    input_repr: str
    error: BaseException
    worker: str = ""
    attempts: int = 1
    signal: str | None = None
    task: str | None = None
    clipboard: dict[str, Any] | None = None
    input: Any = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        where = f" in task {self.task!r}" if self.task else ""
        tries = f", {self.attempts} attempts" if self.attempts > 1 else ""
        return (
            f"input {self.index} ({self.input_repr}){where}: {type(self.error).__name__}: {self.error}"
            f" [{self.worker}{tries}]"
        )

    def report(self) -> str:
        """A few lines for a person: the input, the error, the worker's traceback, the clipboard."""
        import traceback

        lines = [str(self)]
        if not isinstance(self.error, WorkerDied | ItemTimeout):
            lines.extend(
                "    " + line.rstrip("\n")
                for chunk in traceback.format_exception(self.error)
                for line in chunk.splitlines()
            )
        if self.clipboard is not None:
            lines.append(f"    clipboard: {short_repr(self.clipboard)}")
        return "\n".join(lines)


def _members(failures: list[Failure]) -> list[Exception]:
    out = [f.error if isinstance(f.error, Exception) else PumaError(repr(f.error)) for f in failures]
    return out or [PumaError("no failure")]


class BatchError(PumaError, ExceptionGroup):
    """One or more inputs failed (raised on request, or at once after ``max_failures``).

    An :class:`ExceptionGroup` of the failures' exceptions, with the records:

    Attributes:
        failures: the :class:`Failure` records, in input order.
        results: the results so far, by index (values and failures).
        stopped_early: True if the map stopped at ``max_failures`` (inputs left undone).
    """

    failures: list[Failure]
    results: dict[int, Any]
    stopped_early: bool

    def __new__(
        cls, message: str, failures: list[Failure], results: dict[int, Any], stopped_early: bool = False
    ) -> BatchError:
        self = super().__new__(cls, message, _members(failures))
        self.failures = failures
        self.results = results
        self.stopped_early = stopped_early
        return self

    def __init__(
        self, message: str, failures: list[Failure], results: dict[int, Any], stopped_early: bool = False
    ) -> None:
        super().__init__(message, _members(failures))

    def derive(self, excs: Any) -> BatchError:  # type: ignore[override]
        return BatchError(self.message, self.failures, self.results, self.stopped_early)

    def __str__(self) -> str:
        head = super().__str__()
        return head + "".join(f"\n  {f}" for f in self.failures[:10])


class Interrupted(KeyboardInterrupt):
    """Ctrl-C stopped a map: the pending work was cancelled and the workers stopped.

    Attributes:
        results: what had finished, by index (values and :class:`Failure` records).
        done: how many inputs had finished.
    """

    def __init__(self, results: dict[int, Any]) -> None:
        self.results = results
        self.done = len(results)
        super().__init__(f"interrupted: {self.done} inputs had finished (their results are in .results)")
