"""The Runner: launches runnables and supervises them.

One supervisor thread per Runner blocks in a single wait over every child's
control pipe, status pipe and process sentinel, plus a wake-up for thread
children and requests from the caller.  It:

* launches process children for callers other than the main thread (Linux's
  parent-death signal is tied to the thread that forked, which must outlive
  the child; the main thread forks its own);
* delivers command results to futures, keeps statuses, hands log records to
  the log listener;
* notices a child's end: a FINISHED message, or a sentinel that fires without
  one (a crash: SIGKILL, segfault, ``os._exit``), reported as
  :class:`~puma.ChildDiedError` with the exit code or signal;
* on a failure, stops every other runnable except those downstream of the
  failed one, which end by themselves when the error reaches them through
  their buffers (default policy, ``on_failure="stop"``);
* when a subscriber ends, closes its buffer so publishers are not left
  blocked, and drains it.

The caller's thread waits on a condition for starts and ends, except that
``start_blocking`` in the main thread reads a process child's STARTED itself
(see :meth:`Runner._wait_started_here`); nothing polls.
"""

from __future__ import annotations

import atexit
import itertools
import sys
import threading
import time
import traceback
import weakref
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from multiprocessing.connection import wait as wait_for
from types import TracebackType
from typing import Any, Literal, TypeVar

from puma._buffers.base import Buffer
from puma._buffers.process import ProcessBuffer
from puma._core import logs as _logging
from puma._core import messages as msg
from puma._core.errors import (
    ChildDiedError,
    CommandError,
    PumaError,
    RunnableNotRunningError,
    SerializedError,
    StuckRunnableError,
    deserialize_error,
    serialize_error,
)
from puma._core.waiting import Waker
from puma._environments.base import Environment, ThreadEnvironment
from puma._environments.channels import ProcessLink, ThreadLink
from puma._runnable.runnable import Runnable

__all__ = ["ChildRecord", "Runner"]

R = TypeVar("R", bound=Runnable)

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 10.0
_KILL_GRACE = 2.0
#: Status messages (statuses, log batches) read from one child per wake of the supervisor.
_STATUS_BATCH = 64


class ChildRecord:
    """The parent's bookkeeping for one running runnable."""

    def __init__(self, runnable: Runnable, environment: Environment, token: int, runner: Runner) -> None:
        self.runnable = runnable
        self.name = runnable.name
        self.environment = environment
        self.token = token
        self.runner = runner
        self.link: ThreadLink | ProcessLink | None = None
        self.process: Any = None
        self.thread: threading.Thread | None = None
        self.pid: int | None = None
        self.started = False
        self.ended = False
        self.stop_sent = False
        self.stop_sent_at: float | None = None
        self.stuck = False
        self.killed = False  # stuck, and SIGTERM did not end it
        self.finished = False  # a process child reported its end (FINISHED) and is exiting
        self.error: BaseException | None = None
        self.stopped = False
        self.statuses: dict[str, Any] = {}
        self._futures: dict[int, Future[Any]] = {}
        self._calls = itertools.count(1)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.control_open = True
        # True while the thread in start_blocking() reads the child's STARTED itself (one hop
        # fewer than through the supervisor); the supervisor does not watch the child meanwhile.
        self.start_claimed = False
        self.logged = False  # log records dispatched since its last status
        self.inputs = _inputs_of(runnable)  # ids of the buffers it holds but does not publish to

    def __repr__(self) -> str:
        state = "ended" if self.ended else "running" if self.started else "starting"
        return f"<ChildRecord {self.name!r} {state}>"

    # called from user threads ---------------------------------------------------
    def send_command(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Future[Any]:
        future: Future[Any] = Future()
        call_id = self._new_call(name, future)
        link = self.link
        assert link is not None
        try:
            link.post((msg.CALL, call_id, name, args, kwargs))
        except Exception as exc:
            with self._lock:
                self._futures.pop(call_id, None)
            if isinstance(exc, OSError):
                raise RunnableNotRunningError(f"runnable {self.name!r} has ended: {exc}") from exc
            raise CommandError(
                f"command {name!r} to runnable {self.name!r}: its arguments cannot be sent: {exc}"
            ) from exc
        return future

    def _new_call(self, name: str, future: Future[Any] | None) -> int:
        """Check the command exists and the runnable runs; number the call (and file its future)."""
        from puma._runnable.commands import command_function

        command_function(type(self.runnable), name)  # fail early on a wrong name
        with self._lock:
            if self.ended or self.finished:
                raise RunnableNotRunningError(
                    f"cannot run command {name!r}: runnable {self.name!r} has ended"
                    + (f" ({self.error})" if self.error is not None else "")
                )
            call_id = next(self._calls)
            if future is not None:
                self._futures[call_id] = future
        return call_id

    def call_command(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float | None) -> Any:
        """A blocking command call: a process child answers it straight to this thread.

        Falls back to :meth:`send_command` (answered through the supervisor) for
        thread children, and while another thread is making a direct call.
        """
        link = self.link
        if not isinstance(link, ProcessLink):
            return self._result(self.send_command(name, args, kwargs), timeout)
        call_id = self._new_call(name, None)
        try:
            answer = link.call((msg.CALL, call_id, name, args, kwargs, True), timeout, self.name)
        except (RunnableNotRunningError, TimeoutError, KeyboardInterrupt):  # TimeoutError is an OSError
            supervisor = self.runner._supervisor
            if link.orphaned and supervisor is not None:
                supervisor.rewatch = True  # so it drains the answer that may still come
                supervisor.waker.wake()
            raise
        except OSError as exc:
            raise RunnableNotRunningError(f"runnable {self.name!r} has ended: {exc}") from exc
        except Exception as exc:
            raise CommandError(
                f"command {name!r} to runnable {self.name!r}: its arguments cannot be sent: {exc}"
            ) from exc
        if answer is None:  # another thread is calling: take the supervisor's path
            return self._result(self.send_command(name, args, kwargs), timeout)
        ok, value = answer
        if ok:
            return value
        raise deserialize_error(value) if isinstance(value, SerializedError) else value

    def _result(self, future: Future[Any], timeout: float | None) -> Any:
        """The command's answer; a ``TimeoutError`` that says what timed out."""
        try:
            return future.result(timeout)
        except TimeoutError:
            if future.done():
                raise  # the command itself raised it
            raise TimeoutError(f"runnable {self.name!r} did not answer within {timeout} s") from None

    def wait_status(self, key: str, predicate: Callable[[Any], bool] | None, timeout: float | None) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if key in self.statuses:
                    value = self.statuses[key]
                    if predicate is None or predicate(value):
                        return value
                if self.ended:
                    raise RunnableNotRunningError(f"runnable {self.name!r} ended before reporting {key!r}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"runnable {self.name!r} did not report {key!r} within {timeout} s")
                self._cond.wait(remaining)

    # called from the supervisor ----------------------------------------------
    def set_status(self, key: str, value: Any) -> None:
        with self._cond:
            self.statuses[key] = value
            self._cond.notify_all()

    def resolve(self, call_id: int, ok: bool, value: Any) -> None:
        with self._lock:
            future = self._futures.pop(call_id, None)
        if future is None:
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(deserialize_error(value) if isinstance(value, SerializedError) else value)

    def mark_ended(self) -> None:
        with self._cond:
            self.ended = True
            futures = list(self._futures.values())
            self._futures.clear()
            self._cond.notify_all()
        for future in futures:
            future.set_exception(RunnableNotRunningError(f"runnable {self.name!r} ended before answering"))


class _Supervisor(threading.Thread):
    """The Runner's one waiting thread."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(name="puma-supervisor", daemon=True)
        self._runner = runner
        self.waker = Waker()
        self.inbox: deque[tuple[ChildRecord, tuple[Any, ...]]] = deque()
        self.launches: deque[tuple[ChildRecord, Runnable, Future[None]]] = deque()
        self.draining: dict[int, ProcessBuffer[Any]] = {}
        self.calls: deque[Callable[[], None]] = deque()
        self.shutdown = False
        # What the one wait watches is rebuilt only when it may have changed (a launch,
        # an end, a closed command pipe, an abandoned call, the draining set), so a wake
        # per message costs nothing per child.
        self.rewatch = True

    def call_soon(self, function: Callable[[], None]) -> None:
        """Run ``function`` in the supervisor thread, which owns the draining set."""
        self.calls.append(function)
        self.waker.wake()

    def post(self, record: ChildRecord, message: tuple[Any, ...]) -> None:
        if message[0] == msg.RESULT:  # a thread child's answer: resolve it here, no hop through this thread
            record.resolve(message[1], message[2], message[3])
            return
        self.inbox.append((record, message))
        self.waker.wake()

    def launch(self, record: ChildRecord, child: Runnable) -> Future[None]:
        """Launch ``child`` from this thread (see :meth:`Runner.start` for when that matters)."""
        future: Future[None] = Future()
        self.launches.append((record, child, future))
        self.waker.wake()
        return future

    def launch_here(self, record: ChildRecord, child: Runnable) -> None:
        """Launch ``child`` from the calling thread, then have this thread watch it."""
        record.environment._launch(record, child, lambda m: self.post(record, m))
        self.launched(record)

    def launched(self, record: ChildRecord) -> None:
        """Watch ``record``, launched by another thread.

        A record whose start is claimed is watched once :meth:`watch` is
        called, when the claim ends; until then there is nothing to watch (its
        first message is STARTED, read by the claimer).
        """
        if not record.start_claimed:
            self.watch()

    def watch(self) -> None:
        """Rebuild what this thread watches (e.g. a start claim ended)."""
        self.rewatch = True
        self.waker.wake()

    def run(self) -> None:
        runner = self._runner
        while True:
            self.waker.clear()
            while self.launches:
                self.rewatch = True
                record, child, future = self.launches.popleft()
                try:
                    record.environment._launch(record, child, lambda m, r=record: self.post(r, m))  # type: ignore[misc]
                except BaseException as exc:  # noqa: BLE001 - handed to start()
                    future.set_exception(exc)
                else:
                    future.set_result(None)
            while self.inbox:
                record, message = self.inbox.popleft()
                runner._handle(record, message)
            while self.calls:
                self.calls.popleft()()
            if self.rewatch or self.shutdown:
                self.rewatch = False
                live = [r for r in runner._records if not r.ended and r.link is not None]
                if self.shutdown and not live and not self.launches:
                    return
                handlers, writable = self._handlers(live)
                fds = tuple(handlers)
            for fd in self.waker.wait(fds, None, writable):
                handlers[fd]()
                if self.rewatch:  # what is watched changed: the other ready descriptors may be stale
                    break

    def _handlers(self, live: list[ChildRecord]) -> tuple[dict[int, Callable[[], None]], tuple[int, ...]]:
        """What to call when each watched descriptor is ready; the descriptors watched for room too.

        Those are the command pipes of children with commands waiting to be
        written: their handler writes what fits, and reads what came.
        """
        runner = self._runner
        handlers: dict[int, Callable[[], None]] = {}
        writable: list[int] = []
        for record in live:
            link = record.link
            if isinstance(link, ProcessLink):
                if record.start_claimed:  # the starting thread reads STARTED (or sees the death) itself
                    continue
                if record.control_open and link.pending:
                    writable.append(link.control.fileno())
                    handlers[link.control.fileno()] = lambda r=record: runner._serve_control(r)  # type: ignore[misc]
                elif record.control_open:
                    handlers[link.control.fileno()] = lambda r=record: runner._read_control(r)  # type: ignore[misc]
                handlers[link.status.fileno()] = lambda r=record: runner._read_status(r)  # type: ignore[misc]
                handlers[record.process.sentinel] = lambda r=record: runner._process_exited(r)  # type: ignore[misc]
                if link.orphaned:  # a direct command call was abandoned; its answer may still come
                    handlers[link.reply.fileno()] = link.drain_replies
        for fd, buffer in list(self.draining.items()):
            handlers[fd] = buffer._drain
        return handlers, tuple(writable)


class Runner:
    """Launches runnables in their environment and supervises them.

    Use it as a context manager.  Leaving the ``with`` block stops and joins
    every runnable and raises what failed: the exception itself when one
    runnable failed, an ``ExceptionGroup`` when several did.

    Args:
        environment: where runnables run by default (``ThreadEnvironment()`` if
            omitted).  :meth:`start` can override it per runnable, so threads and
            processes can be mixed under one Runner.
        stop_timeout: how long a stopped runnable may take to end before it is
            terminated, then killed, and reported as :class:`~puma.StuckRunnableError`.
        start_timeout: default bound of :meth:`start_blocking` and
            :meth:`wait_until_running`.
        on_failure: ``"stop"`` (default): when a runnable fails or dies, stop the
            others (those downstream of it end when the error reaches them).
            ``"continue"``: leave the others running; errors are still raised.

    Example::

        env = puma.ThreadEnvironment()        # or puma.ProcessEnvironment()
        with puma.Runner(env) as runner:
            raw = env.buffer(int, 10, "raw")
            runner.start(Producer(raw, 100))
            runner.start(Consumer(raw))
            runner.join()
    """

    def __init__(
        self,
        environment: Environment | None = None,
        *,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        on_failure: Literal["stop", "continue"] = "stop",
    ) -> None:
        if environment is not None and not isinstance(environment, Environment):
            raise TypeError(f"environment must be a puma Environment, not {type(environment).__name__}")
        if stop_timeout <= 0 or start_timeout <= 0:
            raise ValueError("stop_timeout and start_timeout must be positive")
        if on_failure not in ("stop", "continue"):
            raise ValueError(f"on_failure must be 'stop' or 'continue', not {on_failure!r}")
        self._environment = environment if environment is not None else ThreadEnvironment()
        self._stop_timeout = stop_timeout
        self._start_timeout = start_timeout
        self._on_failure = on_failure
        self._records: list[ChildRecord] = []
        self._by_token: dict[int, ChildRecord] = {}
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._errors: list[BaseException] = []
        self._reported = 0
        self._origins: set[str] = set()
        self._closed = False
        self._supervisor: _Supervisor | None = None
        self._logging = False
        _track(self)

    # --- context manager ---------------------------------------------------------
    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except BaseException as child_errors:  # noqa: BLE001 - joined with the body's error below
            if isinstance(exc, KeyboardInterrupt):
                return  # Ctrl-C wins; children are stopped
            members = list(child_errors.exceptions) if isinstance(child_errors, BaseExceptionGroup) else [child_errors]
            # The body may be raising a runnable's own error (received from a buffer it read):
            # that one is not a second failure.
            origin = getattr(exc, "_puma_origin", None)
            members = [
                m for m in members if m is not exc and (origin is None or getattr(m, "_puma_origin", None) != origin)
            ]
            if not members:
                return  # the body's exception goes on
            raise BaseExceptionGroup("the Runner's body and its runnables failed", [exc, *members]) from None

    # --- starting ----------------------------------------------------------------
    @property
    def environment(self) -> Environment:
        """The default environment of :meth:`start`."""
        return self._environment

    def start(self, runnable: R, environment: Environment | None = None) -> R:
        """Launch ``runnable`` (in ``environment``, or the Runner's) and return it.

        Returns as soon as the child is launched; see :meth:`start_blocking` to
        wait until it runs.

        Raises:
            NotPicklableError: a process runnable has an attribute that cannot
                cross (the message names it).
            PumaError: the runnable was already started, or the Runner is closed.
        """
        self._start(runnable, environment, claim=False)
        return runnable

    def _start(self, runnable: Runnable, environment: Environment | None, claim: bool) -> ChildRecord:
        """Launch ``runnable``; ``claim``: the caller reads a process child's STARTED itself."""
        if not isinstance(runnable, Runnable):
            raise TypeError(f"Runner.start() takes a puma.Runnable, not {type(runnable).__name__}")
        env = environment if environment is not None else self._environment
        with self._lock:
            if self._closed:
                raise PumaError(f"this Runner is closed; cannot start runnable {runnable.name!r}")
            if runnable._puma_record is not None:
                raise PumaError(f"runnable {runnable.name!r} was already started; make a new one to run it again")
        child = env._prepare(runnable)
        if env.is_process:
            for out in runnable.outputs:
                if not out._crossable():
                    raise PumaError(
                        f"runnable {runnable.name!r} runs in a process but its output {out.name!r} is a "
                        "thread buffer; make it with ProcessEnvironment.buffer()"
                    )
        record = ChildRecord(runnable, env, next(self._tokens), self)
        with self._lock:
            if runnable._puma_record is not None:
                raise PumaError(f"runnable {runnable.name!r} was already started; make a new one to run it again")
            runnable._puma_record = record
            self._records.append(record)
            self._by_token[record.token] = record
        for out in runnable.outputs:
            out._register_publisher()
        if env.is_process and not self._logging:
            self._logging = True
            _logging.start_listener()
        try:
            self._launch(record, child, env, claim)
        except BaseException:
            record.start_claimed = False
            for out in runnable.outputs:
                out._register_publisher(-1)
            with self._cond:
                self._records.remove(record)
                del self._by_token[record.token]
                runnable._puma_record = None
                self._cond.notify_all()
            raise
        if self._on_failure == "stop" and self._errors and not self._downstream_of_a_failure(record):
            self._send_stop(record)  # the Runner is already stopping after a failure
            if self._supervisor is not None:
                self._supervisor.call_soon(self._close_unread_buffers)
        return record

    def _launch(self, record: ChildRecord, child: Runnable, env: Environment, claim: bool) -> None:
        """Launch ``child`` in the right thread; have the supervisor watch it.

        ``claim``: the caller (start_blocking) reads a process child's STARTED.
        """
        # Linux sends a child its parent-death signal when the *thread* that forked it
        # ends, so a process is forked from a thread that lives as long as the process:
        # the main thread (directly: the fastest start), or else the supervisor's.
        if env.is_process and threading.current_thread() is threading.main_thread():
            record.start_claimed = claim
            env._launch(record, child, _no_messages)
            try:  # started after the fork: a Runner's first child does not wait for it
                self._ensure_supervisor().launched(record)
            except BaseException:
                env._abandon(record)
                raise
        else:
            supervisor = self._ensure_supervisor()
            if env.is_process:
                supervisor.launch(record, child).result()
            else:
                supervisor.launch_here(record, child)

    def start_blocking(self, runnable: R, environment: Environment | None = None, timeout: float | None = None) -> R:
        """Launch ``runnable`` and wait until it runs (see :meth:`wait_until_running`)."""
        limit = self._start_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        record = self._start(runnable, environment, claim=True)
        if record.start_claimed:
            self._wait_started_here(record, deadline)
        self._wait_running(record, deadline, limit)
        return runnable

    def _wait_started_here(self, record: ChildRecord, deadline: float) -> None:
        """Read a process child's first message (STARTED) in this thread, not through the supervisor.

        One thread hop fewer on every ``start_blocking``.  Ends the claim in any
        case: a child that dies first, a timeout or Ctrl-C leave the rest (the
        death's report, the later STARTED) to the supervisor, which
        :meth:`wait_until_running` then waits on.
        """
        link = record.link
        supervisor = self._supervisor
        assert isinstance(link, ProcessLink) and supervisor is not None
        handed_over = False
        try:
            remaining = deadline - time.monotonic()
            if remaining > 0 and link.control in wait_for([link.control, record.process.sentinel], remaining):
                message = link.control.recv()  # the child's first message: one small frame, all there
                if message[0] == msg.STARTED:
                    self._handle(record, message)
                else:  # FINISHED: it could not start (see _pickling.Sealed)
                    # The claim passes to the supervisor with the message, so the child's
                    # exit is not seen before what it said: no death reported in its place.
                    supervisor.call_soon(lambda: self._take_over(record, message))
                    handed_over = True
        except (EOFError, OSError):
            pass  # it died before starting: the supervisor reports it
        finally:
            if not handed_over:
                record.start_claimed = False
                supervisor.watch()

    def _take_over(self, record: ChildRecord, message: tuple[Any, ...]) -> None:
        """In the supervisor: handle a claimed child's first message, then watch it as any other."""
        self._handle(record, message)
        record.start_claimed = False
        self._rewatch()

    def wait_until_running(self, runnable: Runnable, timeout: float | None = None) -> None:
        """Wait until ``runnable`` has started executing.

        ``timeout`` defaults to the Runner's ``start_timeout``.  Raises
        ``TimeoutError`` when it passes, and the runnable's own error (or
        :class:`~puma.ChildDiedError`) if it ended before it could start.
        """
        record = self._record(runnable)
        limit = self._start_timeout if timeout is None else timeout
        self._wait_running(record, time.monotonic() + limit, limit)

    def _wait_running(self, record: ChildRecord, deadline: float, limit: float) -> None:
        with self._cond:
            while not record.started and not record.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"runnable {record.name!r} did not start within {limit} s")
                self._cond.wait(remaining)
        if not record.started and record.error is not None:
            self._raise_errors()

    # --- watching ----------------------------------------------------------------
    def is_alive(self, runnable: Runnable | None = None) -> bool:
        """True while ``runnable`` (or any runnable, if None) has not ended."""
        if runnable is not None:
            return not self._record(runnable).ended
        return any(not r.ended for r in self._records)

    @property
    def runnables(self) -> tuple[Runnable, ...]:
        """Every runnable started by this Runner, in start order."""
        return tuple(r.runnable for r in self._records)

    def pid(self, runnable: Runnable) -> int | None:
        """The process id ``runnable`` runs in (the parent's for threads), known as soon as :meth:`start` returns."""
        return self._record(runnable).pid

    def check_for_exceptions(self) -> None:
        """Raise any error from a runnable not raised yet; return if there is none."""
        self._raise_errors()

    # --- stopping ----------------------------------------------------------------
    def stop(self, runnable: Runnable | None = None) -> None:
        """Ask ``runnable`` (or every runnable) to stop. Does not wait: see :meth:`join`."""
        if runnable is not None:
            self._send_stop(self._record(runnable))
            return
        for record in list(self._records):
            self._send_stop(record)
        if self._supervisor is not None:
            self._supervisor.call_soon(self._close_unread_buffers)

    def join(self, timeout: float | None = None) -> None:
        """Wait until every runnable has ended, then raise what failed.

        Waiting has no limit by default, since the work is the runnables';
        a child that dies is still noticed at once.  With ``timeout``, raises
        ``TimeoutError`` if runnables are still running then.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            overdue: list[ChildRecord] = []
            with self._cond:
                while any(not r.ended for r in self._records):
                    if self._unreported() and self._on_failure == "stop":
                        break
                    now = time.monotonic()
                    remaining = None if deadline is None else deadline - now
                    if remaining is not None and remaining <= 0:
                        alive = [r.name for r in self._records if not r.ended]
                        raise TimeoutError(f"runnables still running after {timeout} s: {alive}")
                    # A runnable asked to stop has stop_timeout to end (the wait is bounded then).
                    stops = self._stop_deadlines()
                    overdue = [r for r, due in stops if due <= now]
                    if overdue:
                        break
                    if stops:
                        first = min(due for _r, due in stops) - now
                        remaining = first if remaining is None else min(remaining, first)
                    self._cond.wait(remaining)
            if not overdue:
                break
            self._terminate_stuck(overdue)
        if self._unreported():
            self._wait_all_ended(self._stop_timeout)
            self._raise_errors()

    def close(self) -> None:
        """Stop every runnable, wait for them (killing the stuck), and raise what failed.

        Leaving the ``with`` block calls it.  A closed Runner refuses new starts.
        """
        with self._lock:
            self._closed = True
        try:
            self.stop()
            if self._supervisor is not None:
                self._supervisor.call_soon(self._close_main_program_inputs)
            self._wait_all_ended(self._stop_timeout)
        finally:
            self._terminate_stuck()
            supervisor = self._supervisor
            if supervisor is not None:
                supervisor.shutdown = True
                supervisor.waker.wake()
                supervisor.join(self._stop_timeout)
            if self._logging:
                self._logging = False
                _logging.stop_listener()
        self._raise_errors()

    # --- internals: user side ---------------------------------------------------------
    def _record(self, runnable: Runnable) -> ChildRecord:
        record = runnable._puma_record
        if not isinstance(record, ChildRecord) or record.runner is not self:
            raise RunnableNotRunningError(f"runnable {runnable.name!r} was not started by this Runner")
        return record

    def _ensure_supervisor(self) -> _Supervisor:
        with self._lock:
            if self._supervisor is None:
                self._supervisor = _Supervisor(self)
                self._supervisor.start()
            return self._supervisor

    def _send_stop(self, record: ChildRecord) -> None:
        with self._lock:
            if record.ended or record.stop_sent or record.link is None:
                return
            record.stop_sent = True
            record.stop_sent_at = time.monotonic()
        try:
            record.link.post((msg.STOP,))
        except OSError:
            return  # the child is gone already; the supervisor reports it
        for out in record.runnable.outputs:
            out._interrupt_publishers()

    def _wait_all_ended(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while any(not r.ended for r in self._records):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _stop_deadlines(self) -> list[tuple[ChildRecord, float]]:
        """Runnables asked to stop and not ended yet, with when their stop_timeout runs out."""
        return [
            (r, r.stop_sent_at + self._stop_timeout)
            for r in self._records
            if r.stop_sent_at is not None and not r.ended and not r.stuck
        ]

    def _terminate_stuck(self, records: list[ChildRecord] | None = None) -> None:
        """Terminate, then kill, children (``records``, or all) still running after their stop timeout; report them."""
        stuck = [r for r in (self._records if records is None else records) if not r.ended and r.link is not None]
        supervisor = self._supervisor
        if not stuck or supervisor is None:
            return
        for record in stuck:
            record.stuck = True
            if record.process is not None:
                if record.process.is_alive():
                    record.process.terminate()
            else:  # a thread cannot be killed: report it and leave it behind (it is a daemon)
                supervisor.post(record, (msg.FINISHED, self._stuck_error(record), False))
        if not self._wait_all_ended(_KILL_GRACE):
            for record in stuck:
                if not record.ended and record.process is not None:
                    record.killed = True
                    record.process.kill()
            self._wait_all_ended(_KILL_GRACE)

    def _stuck_error(self, record: ChildRecord) -> StuckRunnableError:
        if record.process is not None and record.finished:
            return StuckRunnableError(
                f"runnable {record.name!r} (pid {record.pid}) finished, but its process did not exit within "
                f"{self._stop_timeout} s (a non-daemon thread still running?); it was terminated"
            )
        if record.process is not None:
            how = f"killed (SIGTERM did not end it within {_KILL_GRACE} s)" if record.killed else "terminated"
            return StuckRunnableError(
                f"runnable {record.name!r} (pid {record.pid}) did not end within {self._stop_timeout} s "
                f"of being asked to stop; it was {how}"
            )
        return StuckRunnableError(
            f"runnable {record.name!r} (a thread) did not end within {self._stop_timeout} s of being asked "
            "to stop; threads cannot be killed, so it is left running as a daemon thread"
        )

    def _unreported(self) -> bool:
        return self._reported < len(self._errors)

    def _raise_errors(self) -> None:
        with self._lock:
            errors = self._errors[self._reported :]
            self._reported = len(self._errors)
        if not errors:
            return
        if len(errors) == 1:
            raise errors[0]
        raise BaseExceptionGroup(f"{len(errors)} runnables failed", errors)

    # --- internals: supervisor side -------------------------------------------------
    def _handle(self, record: ChildRecord, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == msg.STATUS:
            if record.logged:  # its records logged before this status are written before it is seen
                record.logged = False
                _logging.wait_dispatched()
            record.set_status(message[1], message[2])
        elif kind == msg.LOG:
            record.logged = True
            _logging.dispatch(message[1])
        elif kind == msg.RESULT:
            record.resolve(message[1], message[2], message[3])
        elif kind == msg.STARTED:
            with self._cond:
                record.pid = message[1]
                record.started = True
                self._cond.notify_all()
        elif kind == msg.FINISHED:
            if record.ended:
                return  # already handled (its death was seen first)
            if isinstance(record.link, ProcessLink):
                self._read_status(record, None)
                _logging.wait_dispatched()  # its last records are written before its error is known
            error = message[1]
            if isinstance(error, SerializedError):
                error = deserialize_error(error)
            record.stopped = message[2]
            if error is not None:
                self._record_error(record, error)
                if not record.started:  # it never ran (it could not be rebuilt): end its streams for it
                    self._complete_outputs_for(record, error, None)
            if record.process is None:
                self._finish(record)
                return
            # A process has ended once it has exited, which may take a while yet (atexit
            # handlers, a non-daemon thread, a busy machine): its sentinel says when.  What
            # it read is freed now, since it reads no more.
            record.finished = True
            self._close_inputs_of(record)
            if record.process.exitcode is not None:
                self._finish(record)

    def _serve_control(self, record: ChildRecord) -> None:
        """The command pipe has room (write the commands waiting) or messages (read them)."""
        link = record.link
        assert isinstance(link, ProcessLink)
        link.flush()
        self._read_control(record)

    def _read_control(self, record: ChildRecord) -> None:
        link = record.link
        assert isinstance(link, ProcessLink)
        try:
            while link.control.poll(0):
                self._handle(record, link.control.recv())
                if record.ended:
                    return
        except (EOFError, OSError):
            record.control_open = False
            self._rewatch()

    def _read_status(self, record: ChildRecord, limit: int | None = _STATUS_BATCH) -> None:
        """Handle the statuses and log batches ``record`` sent: at most ``limit`` per wake.

        The cap keeps one chatty child from holding the supervisor while others
        need it (the wait wakes again at once for the rest); at the child's end
        everything left is read (``limit=None``).
        """
        link = record.link
        assert isinstance(link, ProcessLink)
        try:
            while link.status.poll(0):
                self._handle(record, link.status.recv())
                if limit is not None:
                    limit -= 1
                    if limit <= 0:
                        return
        except (EOFError, OSError):
            pass

    def _process_exited(self, record: ChildRecord) -> None:
        if record.control_open:
            self._read_control(record)
        if record.ended:
            return
        if record.finished:  # it reported its end before exiting
            if record.stuck:
                self._record_error(record, self._stuck_error(record))
            self._finish(record)
            return
        self._read_status(record, None)
        _logging.wait_dispatched()  # what it handed over is written before its death is known
        process = record.process
        process.join(_KILL_GRACE)
        intact = self._free_locks_of(process.pid)  # before anything below takes a buffer's lock
        error: PumaError = ChildDiedError(record.name, process.pid, process.exitcode, not record.started)
        if record.stuck:
            error = self._stuck_error(record)
        error._puma_origin = f"{record.name}:{process.pid}:died"  # type: ignore[attr-defined]
        if record.stop_sent and process.exitcode == 0:
            record.stopped = True
        else:
            self._record_error(record, error)
        self._complete_outputs_for(record, error, intact)
        self._finish(record)

    def _complete_outputs_for(self, record: ChildRecord, error: BaseException, intact: set[str] | None) -> None:
        """Complete the outputs of a process child that could not, with ``error``.

        ``intact``: keys of the buffers whose streams can still take a completion
        (None: all of them); a subscriber of any other is told directly.
        """
        for out in record.runnable.outputs:
            if not isinstance(out, ProcessBuffer):
                continue
            if not ((intact is None or out._key in intact) and out._complete_for(record.name, error)):
                self._tell_subscriber(out, error)

    def _free_locks_of(self, pid: int) -> set[str]:
        """Free the buffer locks a dead process held; the keys of the buffers whose streams are intact."""
        intact: set[str] = set()
        for other in self._records:
            for out in other.runnable.outputs:
                if isinstance(out, ProcessBuffer) and out._free_locks_of(pid):
                    intact.add(out._key)
        return intact

    def _tell_subscriber(self, buffer: ProcessBuffer[Any], error: BaseException) -> None:
        """``buffer`` cannot carry the completion (broken, or full): send its subscriber the error directly."""
        buffer._fail(error)  # a subscriber in this process: a thread runnable, or the main program
        subscriber = self._by_token.get(buffer._subscriber_token())
        if subscriber is None or subscriber.ended or subscriber.link is None:
            return  # the main program, or nobody yet: a later subscriber finds the buffer broken
        try:
            subscriber.link.post((msg.INPUT_FAILED, buffer._key, serialize_error(error)))
        except OSError:
            pass  # it is gone too

    def _record_error(self, record: ChildRecord, error: BaseException) -> None:
        origin = getattr(error, "_puma_origin", None)
        with self._cond:
            if record.error is None:
                record.error = error
            if origin is not None:
                if origin in self._origins:
                    return  # the same error, passed downstream and re-raised there
                self._origins.add(origin)
            self._errors.append(error)
            self._cond.notify_all()
        if self._on_failure == "stop":
            downstream = self._downstream(record)
            for other in list(self._records):
                if other is not record and other.token not in downstream:
                    self._send_stop(other)

    def _downstream(self, record: ChildRecord) -> set[int]:
        """Tokens of the runnables that read, directly or not, what ``record`` publishes.

        A reader is the buffer's subscriber, or a runnable holding the buffer
        without publishing to it (it will subscribe: it may not have yet).
        """
        found: set[int] = set()
        frontier = [record]
        while frontier:
            current = frontier.pop()
            for out in current.runnable.outputs:
                readers = [r for r in self._records if id(out) in r.inputs]
                token = out._subscriber_token()
                if token and token in self._by_token:
                    readers.append(self._by_token[token])
                for reader in readers:
                    if reader.token not in found:
                        found.add(reader.token)
                        frontier.append(reader)
        return found

    def _downstream_of_a_failure(self, record: ChildRecord) -> bool:
        with self._lock:
            failed = [r for r in self._records if r.error is not None and r is not record]
        return any(record.token in self._downstream(f) for f in failed)

    def _finish(self, record: ChildRecord) -> None:
        if record.ended:
            return
        _logging.wait_dispatched()
        link = record.link
        if record.process is not None:
            record.process.join(_KILL_GRACE)
        elif record.thread is not None and not record.stuck:
            record.thread.join(_KILL_GRACE)
        record.mark_ended()
        self._rewatch()
        if not record.finished:  # else done when it reported its end
            self._close_inputs_of(record)
        if isinstance(link, ProcessLink):
            link.close()
            if record.process.exitcode is not None:  # it has: the sentinel fired (join() reaps it)
                record.process.close()
        elif isinstance(link, ThreadLink):
            link.close()
        with self._cond:
            self._cond.notify_all()

    def _commands_pending(self) -> None:
        """A child's command pipe is full, or no longer: the supervisor watches it for room, or stops."""
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.watch()

    def _rewatch(self) -> None:
        """What the supervisor watches changed (call from the supervisor thread)."""
        if self._supervisor is not None:
            self._supervisor.rewatch = True

    def _close_unread_buffers(self) -> None:
        """After a stop of everything: free publishers of buffers nobody ever subscribed to."""
        self._close_outputs_where(lambda out: not out._is_subscribed())

    def _close_outputs_where(self, closing: Callable[[Buffer[Any]], bool]) -> None:
        """Close the outputs of running runnables that ``closing`` picks (draining process buffers)."""
        supervisor = self._supervisor
        for other in self._records:
            if other.ended or other.finished:  # a runnable that has finished publishes no more
                continue
            for out in other.runnable.outputs:
                if closing(out):
                    out._close()
                    if isinstance(out, ProcessBuffer) and supervisor is not None:
                        supervisor.draining[out._reader_fd()] = out
                        supervisor.rewatch = True

    def _close_main_program_inputs(self) -> None:
        """On close: the main program reads no more; free publishers of the buffers it subscribed to.

        A publisher blocked in the middle of writing a large value into a full
        pipe cannot see its stop until somebody reads; the supervisor drains
        the pipe instead, so the stop is seen and the close does not end in a
        false :class:`~puma.StuckRunnableError`.
        """
        self._close_outputs_where(lambda out: out._is_subscribed() and out._subscriber_token() == 0)

    def _close_inputs_of(self, record: ChildRecord) -> None:
        """The subscriber ``record`` ended: free the publishers of the buffers it read."""
        buffers: dict[int, Buffer[Any]] = {}
        for other in self._records:
            for out in other.runnable.outputs:
                if out._subscriber_token() == record.token:
                    buffers[id(out)] = out
        for buffer in buffers.values():
            publishers_alive = any(
                not other.ended and any(out is buffer for out in other.runnable.outputs) for other in self._records
            )
            buffer._close()
            if isinstance(buffer, ProcessBuffer) and publishers_alive and self._supervisor is not None:
                self._supervisor.draining[buffer._reader_fd()] = buffer
                self._supervisor.rewatch = True
        if self._supervisor is not None:
            for fd, buffer in list(self._supervisor.draining.items()):
                if not any(
                    not other.ended and any(out is buffer for out in other.runnable.outputs) for other in self._records
                ):
                    del self._supervisor.draining[fd]
                    self._supervisor.rewatch = True


def _no_messages(message: tuple[Any, ...]) -> None:
    """The ``to_parent`` of a process launch: a process child talks through its pipes."""
    raise AssertionError(f"a process child's message went through memory: {message[0]}")


def _inputs_of(runnable: Runnable) -> frozenset[int]:
    """Ids of the buffers ``runnable`` holds in its attributes (or in lists, tuples, sets and
    dicts of them) without publishing to them: the buffers it reads."""
    outputs = {id(out) for out in runnable.outputs}
    found: set[int] = set()
    values = list(getattr(runnable, "__dict__", {}).values())
    for depth in range(2):
        nested: list[Any] = []
        for value in values:
            if isinstance(value, Buffer):
                if id(value) not in outputs:
                    found.add(id(value))
            elif depth == 0 and isinstance(value, list | tuple | set | frozenset):
                nested.extend(value)
            elif depth == 0 and isinstance(value, dict):
                nested.extend(value.values())
        values = nested
    return frozenset(found)


_live: weakref.WeakSet[Runner] = weakref.WeakSet()
_atexit_registered = False


def _track(runner: Runner) -> None:
    global _atexit_registered
    _live.add(runner)
    if not _atexit_registered:
        _atexit_registered = True
        atexit.register(_close_all)


def _close_all() -> None:
    """At interpreter exit: stop children of Runners nobody closed, leaving no orphans.

    What their runnables raised is written to stderr: exiting anyway, but not silently.
    """
    for runner in list(_live):
        if not runner._closed:
            try:
                runner.close()
            except BaseException as exc:  # noqa: BLE001 - reported, not raised: the interpreter is exiting
                try:
                    print("puma: a Runner was left open until exit; closing it raised:", file=sys.stderr)
                    traceback.print_exception(exc, file=sys.stderr)
                except BaseException:  # noqa: BLE001, S110 - stderr may be gone
                    pass
