"""The process environment: runnables run in child processes.

A process child is watched through three descriptors in the supervisor's one
wait: its control pipe (STARTED, results, FINISHED; writable while commands
wait for room), its status pipe (statuses, log records) and its process
sentinel, which fires when it exits: a sentinel with no FINISHED before it is
a crash (SIGKILL, segfault, ``os._exit``).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as wait_for
from typing import Any, TypeVar, overload

from puma import _attributes
from puma._buffers.base import Buffer
from puma._buffers.process import ProcessBuffer
from puma._core import logs as _logging
from puma._environments.base import ChildHandle, Environment, ExitStatus, Message, check_outputs_cross
from puma._environments.pickling import Sealed, check_picklable
from puma._environments.process_child import prctl, process_main
from puma._environments.process_link import ProcessLink, decode
from puma._frames import memory as _memory
from puma._runnable.runnable import Runnable

__all__ = ["ProcessEnvironment", "ProcessHandle", "default_start_method"]

T = TypeVar("T")

#: Status messages (statuses, log batches) read from one child per wake of the supervisor.
_STATUS_BATCH = 64


def default_start_method() -> str:
    """forkserver where the platform has it (safe with threads, fast), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return "forkserver" if "forkserver" in methods and sys.platform != "darwin" else "spawn"


class ProcessHandle(ChildHandle):
    """A child running in its own process."""

    kind = "process"
    claimable = True

    def __init__(
        self,
        process: Any,
        link: ProcessLink,
        on_change: Callable[[], None],
        end_tree: bool,
        start_method: str,
        *,
        kept: Any = None,
    ) -> None:
        super().__init__(None)
        # What the child was given, kept until the handle closes: freed right after its fork, it
        # would be written between two forks of a start_all (see puma._runner.starting).
        self._kept = kept
        self._from_fork_server = start_method == "forkserver"
        self._end_tree = end_tree
        self._process = process
        self._link = link
        link.on_pending = on_change
        self._on_change = on_change
        self._control = link.control
        self._status = link.status
        self._control_fd: int = link.control.fileno()
        self._status_fd: int = link.status.fileno()
        self._reply_fd: int = link.reply.fileno()
        self._sentinel = -1
        self._control_open = True
        self._lock = threading.Lock()  # guards the process object against close() from the supervisor
        self._closed = False
        # The parent end of the child's log records, from the handle's making: a batch of
        # starts then writes nothing between two forks (see puma._runner.starting).
        _logging.start_listener()
        self._listening = True
        self._exitcode: int | None = None
        self._fork_server: int | None = None  # the pid of the fork server that made it, if one did

    # --- starting ---------------------------------------------------------------
    def start(self) -> None:
        try:
            try:
                self._process.start()
            finally:
                self._link.close_child_end()
        except BaseException:
            self._abandon()  # forked, then interrupted (Ctrl-C)?
            raise

    def started(self) -> None:
        self.pid = self._process.pid  # known now, before the child reports STARTED
        self._sentinel = self._process.sentinel
        self._fork_server = _fork_server_pid() if self._from_fork_server else None

    def _abandon(self) -> None:
        """Undo a start nobody will supervise: leave no orphan behind."""
        with self._lock:
            process = self._process
            if getattr(process, "_popen", None) is not None:
                process.kill()
                process.join(5)
        self.close()

    def first_message(self, timeout: float) -> Message | None:
        try:
            if timeout > 0 and self._control in wait_for([self._control, self._sentinel], timeout):
                message: Message = decode(self._control.recv_bytes())  # one small frame, all there
                return message
        except (EOFError, OSError):
            pass  # it died before starting: the supervisor reports it
        return None

    # --- commands -----------------------------------------------------------------
    def post(self, message: Message) -> None:
        self._link.post(message)

    def call(self, message: Message, timeout: float | None, name: str) -> tuple[bool, Any] | None:
        return self._link.call(message, timeout, name)

    @property
    def abandoned_call(self) -> bool:
        return self._link.orphaned

    # --- watching ---------------------------------------------------------------------
    def watched(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        readable = [self._status_fd, self._sentinel]
        writable: tuple[int, ...] = ()
        if self._control_open:
            readable.append(self._control_fd)
            if self._link.pending:
                writable = (self._control_fd,)
        if self._link.orphaned:  # a direct call was abandoned; its answer may still come
            readable.append(self._reply_fd)
        return tuple(readable), writable

    def ready(self, fd: int) -> tuple[list[Message], bool]:
        if fd == self._control_fd:
            if self._link.pending:
                self._link.flush()  # room came: write the commands waiting
            return self._read_control(), False
        if fd == self._status_fd:
            return self._read_status(_STATUS_BATCH), False
        if fd == self._sentinel:
            return (self._read_control() if self._control_open else []), True
        if fd == self._reply_fd:
            self._link.drain_replies()
        return [], False

    def _read_control(self) -> list[Message]:
        messages: list[Message] = []
        control = self._control
        try:
            while control.poll(0):
                messages.append(decode(control.recv_bytes()))
        except (EOFError, OSError):
            self._control_open = False
            self._on_change()
        return messages

    def _read_status(self, limit: int | None) -> list[Message]:
        messages: list[Message] = []
        status = self._status
        try:
            while (limit is None or len(messages) < limit) and status.poll(0):
                messages.append(decode(status.recv_bytes()))
        except (EOFError, OSError):
            pass
        return messages

    def remaining_messages(self) -> list[Message]:
        rest = self._read_control() if self._control_open else []
        return rest + self._read_status(None)

    # --- its end ----------------------------------------------------------------------
    def has_exited(self) -> bool:
        with self._lock:
            if self._closed:
                return True
            return self._process.exitcode is not None

    def exit_status(self) -> ExitStatus:
        with self._lock:
            if not self._closed:
                self._exitcode = self._process.exitcode
            code = self._exitcode
        cause = None
        if code == 255 and self._fork_server is not None and _has_ended(self._fork_server):
            cause = (
                f"the fork server (pid {self._fork_server}) that started it died, and every runnable it started "
                "died with it (was it killed, or out of memory or file descriptors?)"
            )
        return ExitStatus(code, cause)

    def join(self, timeout: float) -> bool:
        with self._lock:
            if self._closed:
                return True
            process = self._process
        process.join(timeout)
        return process.exitcode is not None

    def terminate(self) -> bool:
        with self._lock:
            if not self._closed and self._process.exitcode is None:
                self._process.terminate()
        return True

    def kill(self) -> None:
        with self._lock:
            if not self._closed and self._process.exitcode is None:
                self._process.kill()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._kept = None
            self._link.close()
            process = self._process
            if getattr(process, "_popen", None) is not None and process.exitcode is not None:
                self._exitcode = process.exitcode
                process.close()  # its sentinel fired (join() reaped it): release the process object
            if self._end_tree and self.pid is not None:
                _end_group(self.pid)
        if self._listening:
            self._listening = False
            _logging.stop_listener()


#: What a process child imports to run a runnable (``import puma`` alone loads almost nothing: its
#: names load on first use).  The fork server imports these once for all its children.
CHILD_MODULES = ("puma._environments.process_child", "puma._buffers.process")


def _preload_in_fork_server(context: Any, modules: Sequence[str]) -> None:
    """Have the fork server import ``modules`` once, so the children it forks start with them loaded.

    Without it every forkserver child imports puma (and the main module's
    imports) itself.  The fork server is one per program and takes its list
    when it starts: later additions count only if it has not started yet.
    multiprocessing offers no way to read the list, so it is read from its
    private singleton, to add to it rather than replace what others asked for.
    """
    from multiprocessing import forkserver

    current = list(getattr(getattr(forkserver, "_forkserver", None), "_preload_modules", None) or ["__main__"])
    wanted = current + [m for m in modules if m not in current]
    if wanted != current:
        context.set_forkserver_preload(wanted)


def _fork_server_pid() -> int | None:
    """The pid of this process's fork server (multiprocessing keeps it in its private singleton)."""
    from multiprocessing import forkserver

    pid = getattr(getattr(forkserver, "_forkserver", None), "_forkserver_pid", None)
    return pid if isinstance(pid, int) else None


def _has_ended(pid: int, within: float = 1.0) -> bool:
    """True if the process ``pid`` has ended or ends within ``within`` seconds (it is not reaped).

    Asked when a fork server's child came back with 255, the code multiprocessing
    gives when the fork server's pipe closed: the server may still be dying then.
    """
    pidfd_open = getattr(os, "pidfd_open", None)
    if pidfd_open is not None:
        try:
            fd = pidfd_open(pid)
        except ProcessLookupError:
            return True
        except OSError:
            pass
        else:
            try:
                return bool(select.select([fd], [], [], within)[0])
            finally:
                os.close(fd)
    import psutil  # here: a Runner's process does not load it to start children (a larger process forks slower)

    try:
        return bool(psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD))
    except psutil.Error:
        return True


def _end_group(pgid: int) -> None:
    """Kill what is left of a child's process group: the processes its runnable started.

    The group outlives its leader while members remain, and its id is not
    given to a new process meanwhile, so this reaches only the child's tree.
    """
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # nothing left of it


class ProcessEnvironment(Environment):
    """Run runnables in child processes. Buffers are process buffers.

    Args:
        start_method: ``"fork"``, ``"forkserver"`` or ``"spawn"``.  The default
            is forkserver on Linux (fork is unsafe once puma's own threads run)
            and spawn elsewhere.  puma never changes the global start method:
            it uses its own ``multiprocessing`` context.
        preload: modules the fork server imports once, before it forks any
            child (forkserver only; what a puma child needs is always preloaded): heavy
            imports such as ``numpy`` then cost a child nothing.  They must be
            importable without side effects.
        end_process_tree: end the processes a runnable starts (``subprocess``,
            its own ``multiprocessing`` children) when the runnable ends, is
            stopped or dies (default True).  Each child process leads a process
            group that its descendants join; what is left of the group is
            killed when the child ends.  Turn it off for a runnable whose child
            processes must outlive it, or that reads the terminal (a
            background process group cannot).
    """

    # Linux sends a child its parent-death signal when the *thread* that forked it ends.
    launch_needs_lasting_thread = True

    def __init__(
        self, start_method: str | None = None, *, end_process_tree: bool = True, preload: Sequence[str] = ()
    ) -> None:
        self._end_tree = end_process_tree
        method = start_method or default_start_method()
        if method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start method {method!r} is not available here; choose from {multiprocessing.get_all_start_methods()}"
            )
        if isinstance(preload, str):
            raise TypeError("preload takes a sequence of module names, e.g. preload=['numpy']")
        self._start_method = method
        self._context: Any = multiprocessing.get_context(method)
        if method == "forkserver":
            _preload_in_fork_server(self._context, [*CHILD_MODULES, *preload])

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

    def prepare(self, runnable: Runnable) -> Runnable:
        child = _attributes.for_process(runnable)  # a clone with the attributes' scopes applied
        check_picklable(child, runnable.name)  # exactly what is sent
        check_outputs_cross(runnable, runnable.outputs)
        return child

    def launch(
        self,
        child: Runnable,
        token: int,
        deliver: Callable[[Message], None],
        on_change: Callable[[], None],
    ) -> ChildHandle:
        prctl()  # resolved here, so a forked child does not pay for it
        link = ProcessLink(self._context)
        # A forked child inherits the runnable as it is, and its log handler is made here (see
        # for_forked_child); others get the runnable sealed (see Sealed) and a snapshot of the
        # levels.
        forked = self._start_method == "fork"
        sent = child if forked else Sealed(child)
        logs = _logging.for_forked_child(child.name) if forked else _logging.child_settings()
        process = self._context.Process(
            target=process_main,
            args=(sent, link.child_ends, token, logs, os.getpid()),
            kwargs={
                "name": child.name,
                "own_group": self._end_tree,
                "segment_owner": os.getpid() if _memory.makes_named_segments() else None,
            },
            name=f"puma:{child.name}",
        )
        return ProcessHandle(process, link, on_change, self._end_tree, self._start_method, kept=logs)
