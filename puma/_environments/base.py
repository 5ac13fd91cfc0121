"""Execution environments: where runnables run, and the buffers that fit.

Switching a whole program between threads and processes is one line: make a
:class:`ThreadEnvironment` or a :class:`ProcessEnvironment` and make every
buffer through it.  The environment is the only place that knows the
difference; the Runner and the runnables do not branch on it.
"""

from __future__ import annotations

import abc
import faulthandler
import multiprocessing
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from puma import _attributes
from puma._buffers.base import Buffer
from puma._buffers.process import ProcessBuffer
from puma._buffers.thread import ThreadBuffer
from puma._core import logs as _logging
from puma._environments.channels import ProcessChildLink, ProcessLink, ThreadLink
from puma._environments.pickling import Sealed, check_picklable
from puma._runnable.context import ChildContext
from puma._runnable.runnable import Runnable, run_child

if TYPE_CHECKING:
    from puma._runner.runner import ChildRecord

__all__ = ["Environment", "ProcessEnvironment", "ThreadEnvironment"]

T = TypeVar("T")


class Environment(abc.ABC):
    """Where runnables run (threads or processes) and how buffers are made."""

    @overload
    def buffer(self, item_type: type[T], size: int, name: str) -> Buffer[T]: ...
    @overload
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]: ...
    @abc.abstractmethod
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]:
        """A bounded FIFO buffer of ``size`` values of ``item_type`` named ``name``.

        ``item_type`` is checked with ``isinstance`` on every publish (a class,
        a tuple or union of classes, or ``object`` for anything).
        """

    @property
    @abc.abstractmethod
    def is_process(self) -> bool:
        """True if runnables run in child processes."""

    @abc.abstractmethod
    def _prepare(self, runnable: Runnable) -> Runnable:
        """Check, in the caller's thread, that ``runnable`` can run here; return what the child runs.

        That is a clone of ``runnable`` with its attributes' scopes applied.
        """

    @abc.abstractmethod
    def _launch(self, record: ChildRecord, child: Runnable, to_parent: Callable[[tuple[Any, ...]], None]) -> None:
        """Start ``child`` (from :meth:`_prepare`) for ``record``; set its link and thread or process.

        The link is set last, once the child exists: the supervisor watches a
        record as soon as its link is set.
        """

    @abc.abstractmethod
    def _abandon(self, record: ChildRecord) -> None:
        """Undo a launch nobody will supervise (it failed half-way): leave no orphan behind."""


class ThreadEnvironment(Environment):
    """Run runnables in threads of this process. Buffers are thread buffers."""

    @overload
    def buffer(self, item_type: type[T], size: int, name: str) -> Buffer[T]: ...
    @overload
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]: ...
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]:
        return ThreadBuffer(item_type, size, name)

    @property
    def is_process(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "ThreadEnvironment()"

    def _prepare(self, runnable: Runnable) -> Runnable:
        return _attributes.for_thread(runnable)  # a clone with the attributes' scopes applied

    def _launch(self, record: ChildRecord, child: Runnable, to_parent: Callable[[tuple[Any, ...]], None]) -> None:
        link = ThreadLink(to_parent)
        ctx = ChildContext(child, link, record.token)
        thread = threading.Thread(target=run_child, args=(child, ctx), name=f"puma:{record.runnable.name}", daemon=True)
        record.thread = thread
        record.pid = os.getpid()
        record.link = link  # before start: the thread may post at once
        try:
            thread.start()
        except BaseException:
            self._abandon(record)
            raise

    def _abandon(self, record: ChildRecord) -> None:
        record.link = None  # a thread cannot be killed: one that runs ends with its stop request
        record.thread = None


def default_start_method() -> str:
    """forkserver where the platform has it (safe with threads, fast), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods and sys.platform != "darwin" else "spawn"


class ProcessEnvironment(Environment):
    """Run runnables in child processes. Buffers are process buffers.

    Args:
        start_method: ``"fork"``, ``"forkserver"`` or ``"spawn"``.  The default
            is forkserver on Linux (fork is unsafe once puma's own threads run)
            and spawn elsewhere.  puma never changes the global start method:
            it uses its own ``multiprocessing`` context.
    """

    def __init__(self, start_method: str | None = None) -> None:
        method = start_method or default_start_method()
        if method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start method {method!r} is not available here; choose from {multiprocessing.get_all_start_methods()}"
            )
        self._start_method = method
        self._context: Any = multiprocessing.get_context(method)

    @property
    def start_method(self) -> str:
        """The multiprocessing start method in use."""
        return self._start_method

    @property
    def context(self) -> Any:
        """The ``multiprocessing`` context processes and buffers are made with."""
        return self._context

    @property
    def is_process(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"ProcessEnvironment(start_method={self._start_method!r})"

    @overload
    def buffer(self, item_type: type[T], size: int, name: str) -> Buffer[T]: ...
    @overload
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]: ...
    def buffer(self, item_type: Any, size: int, name: str) -> Buffer[Any]:
        return ProcessBuffer(item_type, size, name, self._context)

    def _prepare(self, runnable: Runnable) -> Runnable:
        child = _attributes.for_process(runnable)  # a clone with the attributes' scopes applied
        check_picklable(child, runnable.name)  # exactly what is sent
        return child

    def _launch(self, record: ChildRecord, child: Runnable, to_parent: Callable[[tuple[Any, ...]], None]) -> None:
        _prctl()  # resolved here, so a forked child does not pay for it
        link = ProcessLink(self._context)
        link.on_pending = record.runner._commands_pending
        # A forked child inherits the runnable as it is; others get it sealed (see Sealed).
        sent = child if self._start_method == "fork" else Sealed(child)
        process = self._context.Process(
            target=_process_main,
            args=(sent, link.child, record.token, _logging.child_settings(), os.getpid()),
            kwargs={"name": record.name},
            name=f"puma:{record.runnable.name}",
        )
        try:
            try:
                process.start()
            finally:
                link.close_child_end()
        except BaseException:
            record.process, record.link = process, link
            self._abandon(record)  # forked, then interrupted (Ctrl-C)?
            raise
        record.process = process
        record.pid = process.pid  # known now, before the child reports STARTED
        record.link = link  # last: the supervisor watches a record once its link is set

    def _abandon(self, record: ChildRecord) -> None:
        process, link = record.process, record.link
        record.link = None
        record.process = None
        if process is not None and getattr(process, "_popen", None) is not None:
            process.kill()  # nobody would supervise it
            process.join(5)
        if link is not None:
            link.close()


_PRCTL: list[Any] = []

# What a child does before it reports STARTED is on every start's critical path, and in a
# forked child each object touched for the first time costs a copy-on-write page fault.
# signal.signal() converts its arguments and result through enums (some 200 us of faults
# there); _signal.signal, the C function it wraps, takes plain ints (some 15 us).
_SIGINT = int(signal.SIGINT)
_SIGKILL = int(signal.SIGKILL)
_SIG_IGN = int(signal.SIG_IGN)
_set_signal: Callable[[int, int], Any]
try:
    import _signal  # type: ignore[import-not-found]

    _set_signal = _signal.signal
except ImportError:  # an implementation without CPython's _signal module
    _set_signal = signal.signal


def _prctl() -> Any:
    """libc's prctl on Linux, looked up once (before a fork, so forked children inherit it)."""
    if not _PRCTL:
        function = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                function = ctypes.CDLL(None, use_errno=True).prctl
            except (OSError, AttributeError):
                function = None
        _PRCTL.append(function)
    return _PRCTL[0]


def _die_with_parent(parent_pid: int) -> None:
    """End this child process when the Runner's process dies, whatever the start method.

    Linux's parent-death signal covers fork and spawn (the kernel sends SIGKILL
    when the launching thread dies); under forkserver the parent is the fork
    server, which outlives the Runner's process while children exist, so a
    daemon thread also blocks on a pidfd of the Runner's process and kills this
    process when it becomes readable (the process ended).  No polling.
    """
    prctl = _prctl()
    if prctl is not None:
        pr_set_pdeathsig = 1
        prctl(pr_set_pdeathsig, _SIGKILL)
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is None or os.getppid() == parent_pid:
        return  # the parent-death signal above already ties us to the Runner's process
    try:
        pidfd = pidfd_open(parent_pid)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)  # the parent is already gone
        return
    except OSError:
        return

    def watch() -> None:
        select.select([pidfd], [], [])
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="puma-parent-watch", daemon=True).start()


def _process_main(
    sent: Runnable | Sealed, link: ProcessChildLink, token: int, log_settings: Any, parent_pid: int, *, name: str
) -> None:
    """Entry point of a child process.

    Only what must come first is done before the child reports STARTED:
    ignoring Ctrl-C (the parent decides how children stop), and opening a
    sealed runnable (a failure there is reported as the runnable's error, in
    place of STARTED).  The rest of the set-up runs after, while the parent
    wakes up, and before ``execute``: tying the child's life to the Runner's
    process (which also catches a parent that died before then), logging,
    faulthandler.
    """
    _set_signal(_SIGINT, _SIG_IGN)  # Ctrl-C reaches the whole process group
    threading.current_thread().name = "MainThread"  # fork copies the launching thread's name
    try:
        runnable: Runnable = sent.open() if isinstance(sent, Sealed) else sent
    except BaseException as exc:  # noqa: BLE001 - reported to the parent as the runnable's error
        _die_with_parent(parent_pid)
        exc.add_note(f"raised while rebuilding runnable {name!r} in its child process {os.getpid()}")
        try:
            exc._puma_origin = f"{name}:{os.getpid()}:rebuild"  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001, S110 - an exception without a __dict__ is reported all the same
            pass
        link.send_finished(exc, False)
        return

    def setup() -> None:
        _die_with_parent(parent_pid)
        faulthandler.enable()
        _logging.setup_child(log_settings, link, runnable.name)

    try:
        run_child(runnable, ChildContext(runnable, link, token), setup)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
