"""The Runner: the public face of launching runnables and supervising them.

The work is split across this package:

* this module, the facade: start, wait, stop, join, close, errors;
* :mod:`puma._runner.supervisor`: the one thread that waits on every child;
* :mod:`puma._runner.policy`: what happens to the others when one fails;
* :mod:`puma._runner.records`: each runnable's lifecycle, statuses and calls.

The caller's thread waits on a condition for starts and ends, except that
``start_blocking`` in the main thread reads a process child's STARTED itself
when the child's handle allows it (see :meth:`Runner._wait_started_here`);
nothing polls.
"""

from __future__ import annotations

import itertools
import sys
import threading
import traceback
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Literal, TypeVar

from puma._buffers.base import Buffer
from puma._core import messages as msg
from puma._core.condition import Condition
from puma._core.errors import PumaError, RunnableNotRunningError, StuckRunnableError
from puma._core.waiting import Deadline
from puma._environments.base import ChildHandle, Environment, Message
from puma._environments.thread import ThreadEnvironment
from puma._runnable.runnable import Runnable
from puma._runner import snapshot as _snapshot
from puma._runner.policy import FailurePolicy, policy_for
from puma._runner.records import ChildRecord
from puma._runner.resources import hold_buffers, join_outputs, leave, let_go_of_buffers
from puma._runner.snapshot import RunnerSnapshot
from puma._runner.starting import Filed, admit, make_handle, start_batch, start_handle, unfile
from puma._runner.stopping import kill_all, stuck_error, terminate_stuck, track
from puma._runner.supervisor import KILL_GRACE, Supervisor

__all__ = ["Runner"]

R = TypeVar("R", bound=Runnable)

DEFAULT_START_TIMEOUT = 60.0
DEFAULT_STOP_TIMEOUT = 10.0


class Runner:
    """Launches runnables in their environment and supervises them.

    Use it as a context manager.  Leaving the ``with`` block stops and joins
    every runnable and raises what failed: the exception itself when one
    runnable failed, an ``ExceptionGroup`` when several did.  Everything the
    Runner opened (pipes, semaphores, threads) is released then, so a
    runnable kept afterwards still answers :meth:`~puma.Runnable.status` and
    holds no file descriptor.

    Args:
        environment: where runnables run by default (``ThreadEnvironment()`` if
            omitted).  :meth:`start` can override it per runnable, so threads and
            processes can be mixed under one Runner.
        stop_timeout: how long a stopped runnable may take to end before it is
            terminated, then killed, and reported as :class:`~puma.StuckRunnableError`.
        start_timeout: default bound of :meth:`start_blocking` and :meth:`wait_until_running`.
        on_failure: ``"stop"`` (default): when a runnable fails or dies, stop the others
            (those downstream end when the error reaches them); ``"continue"``: leave them
            running, errors still raised; a :class:`~puma.RestartPolicy`: restart it.

    Examples:
        >>> class Count(puma.Runnable):
        ...     def execute(self) -> None:
        ...         self.publisher(self.outputs[0]).publish_many(range(5))
        >>> env = puma.ThreadEnvironment()  # or puma.ProcessEnvironment()
        >>> with puma.Runner(env) as runner:
        ...     count = runner.start(Count("count", outputs=[env.buffer(int, 10, "numbers")]))
        ...     print(list(count.outputs[0].subscribe()))  # the main program reads its output
        [0, 1, 2, 3, 4]
    """

    def __init__(
        self,
        environment: Environment | None = None,
        *,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        on_failure: Literal["stop", "continue"] | FailurePolicy = "stop",
    ) -> None:
        if environment is not None and not isinstance(environment, Environment):
            raise TypeError(f"environment must be a puma Environment, not {type(environment).__name__}")
        if stop_timeout <= 0 or start_timeout <= 0:
            raise ValueError("stop_timeout and start_timeout must be positive")
        self._policy: FailurePolicy = policy_for(on_failure).bind(self)
        self._environment = environment if environment is not None else ThreadEnvironment()
        self._stop_timeout = stop_timeout
        self._start_timeout = start_timeout
        self._records: list[ChildRecord] = []
        self._by_token: dict[int, ChildRecord] = {}
        self._tokens = itertools.count(1)
        self._lock = self._cond = Condition()  # a Ctrl-C in a wait cannot leave it locked
        self._stopping = threading.Lock()  # held while a stop of everything is being posted
        self._errors: list[BaseException] = []
        self._reported = 0
        self._origins: set[str] = set()
        self._closed = False
        self._released = False
        self._supervisor: Supervisor | None = None
        self._buffers: dict[int, Buffer[Any]] = {}  # the buffers its runnables use (released when it closes)
        track(self)

    # --- context manager ---------------------------------------------------------
    def __enter__(self) -> Runner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.close()
            return
        if isinstance(exc, KeyboardInterrupt):
            self._interrupted()
            return  # Ctrl-C goes on
        try:
            self.close()
        except BaseException as child_errors:  # noqa: BLE001 - joined with the body's error below
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

    def _interrupted(self) -> None:
        """Ctrl-C in the ``with`` block: say what was running, stop everything, show what that raised.

        A second Ctrl-C while the runnables stop ends them at once.
        """
        try:
            print(f"puma: Ctrl-C; stopping every runnable.\n{self.snapshot(timeout=0.2)}", file=sys.stderr)
        except Exception:  # noqa: BLE001, S110 - a diagnosis must not stand in the way of stopping
            pass
        try:
            self.close()
        except KeyboardInterrupt:
            raise  # the second Ctrl-C: close() has killed them
        except BaseException as errors:  # noqa: BLE001 - shown, not raised: Ctrl-C is what goes on
            print("puma: while stopping after Ctrl-C, the runnables raised:", file=sys.stderr)
            traceback.print_exception(errors, file=sys.stderr)

    # --- starting ----------------------------------------------------------------
    @property
    def environment(self) -> Environment:
        """The default environment of :meth:`start`."""
        return self._environment

    def start(self, runnable: R, environment: Environment | None = None) -> R:
        """Launch ``runnable`` (in ``environment``, or the Runner's) and return it.

        Returns as soon as the child is launched; see :meth:`start_blocking` to wait until it runs.

        Raises:
            NotPicklableError: a process runnable has an attribute that cannot
                cross (the message names it).
            PumaError: the runnable was already started, or the Runner is closed.
        """
        self._start(runnable, environment, claim=False)
        return runnable

    def _start(self, runnable: Runnable, chosen: Environment | None, claim: bool, watch: bool = True) -> ChildRecord:
        """Launch ``runnable``; ``claim``: the caller reads its STARTED where it can; ``watch``: wake the supervisor."""
        filed = self._file(runnable, chosen)
        self._launch_filed(filed, claim, watch)
        admit(self, [filed.record])
        return filed.record

    def _file(self, runnable: Runnable, chosen: Environment | None) -> Filed:
        """Check and prepare ``runnable`` and file its record: everything before its launch."""
        if not isinstance(runnable, Runnable):
            raise TypeError(f"Runner.start() takes a puma.Runnable, not {type(runnable).__name__}")
        env = chosen if chosen is not None else self._environment
        self._check_startable(runnable)
        child = env.prepare(runnable)
        joined = join_outputs(runnable)  # first: a stream that has ended refuses it, and nothing is filed
        record = ChildRecord(runnable, env, next(self._tokens), self)
        try:
            with self._lock:
                self._check_startable(runnable)
                runnable._puma_record = record
                self._records.append(record)
                self._by_token[record.token] = record
        except BaseException:
            leave(joined)
            raise
        hold_buffers(self._buffers, runnable)
        return Filed(record, child, joined)

    def _launch_filed(self, filed: Filed, claim: bool, watch: bool) -> None:
        """Launch a filed runnable; if that fails, take its record back (as if never filed) and raise."""
        record = filed.record
        try:
            self._policy.starting(record, filed.child)
            self._launch(record, filed.child, record.environment, claim, watch)
        except BaseException:
            unfile(self, filed)
            raise

    def _check_startable(self, runnable: Runnable) -> None:
        try:
            runnable._puma_name  # noqa: B018 - set by Runnable.__init__
            runnable._puma_record  # noqa: B018
        except AttributeError:
            cls = type(runnable).__qualname__
            raise PumaError(
                f"{cls} was never initialised as a puma.Runnable: its __init__ must call "
                f"super().__init__(name, outputs=[...]) (a {cls} has no name or outputs yet)"
            ) from None
        if self._closed:
            raise PumaError(f"this Runner is closed; cannot start runnable {runnable.name!r}")
        if runnable._puma_record is not None:
            raise PumaError(f"runnable {runnable.name!r} was already started; make a new one to run it again")

    def _launch(self, record: ChildRecord, child: Runnable, env: Environment, claim: bool, watch: bool) -> None:
        """Launch ``child`` from the right thread; have the supervisor watch it (now if ``watch``)."""
        if env.launch_needs_lasting_thread and threading.current_thread() is not threading.main_thread():
            self._ensure_supervisor().launch(record, child).result()  # a thread that lives as long as the child
            return
        # Launched here (from the main thread, a process starts fastest); the supervisor starts first
        supervisor = self._ensure_supervisor() if watch else None
        handle = self._launch_now(record, child, claim)
        try:
            if supervisor is not None and not record.start_claimed:  # (a claimed start is watched after)
                supervisor.watch()
        except BaseException:
            _abandon(handle)
            raise

    def _launch_now(self, record: ChildRecord, child: Runnable, claim: bool = False) -> ChildHandle:
        """Launch ``child`` from this thread and file its handle (the supervisor watches it from then on)."""
        handle = make_handle(self, record, child, claim)
        start_handle(record, handle)
        return handle

    def _deliver(self, record: ChildRecord, message: Message) -> None:
        """A message from a child whose messages travel in memory."""
        supervisor = self._supervisor
        if supervisor is None:
            if self._released:
                return  # a thread left running after its Runner closed (it was reported stuck)
            supervisor = self._ensure_supervisor()  # a thread child may speak before the supervisor starts
        supervisor.deliver(record, message)

    def _watch(self) -> None:
        """What a handle watches changed (commands wait for room, or no longer; a pipe closed)."""
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.watch()

    def start_blocking(self, runnable: R, environment: Environment | None = None, timeout: float | None = None) -> R:
        """Launch ``runnable`` and wait until it runs (see :meth:`wait_until_running`)."""
        limit = self._start_timeout if timeout is None else timeout
        deadline = Deadline(limit)
        record = self._start(runnable, environment, claim=True)
        if record.start_claimed:
            self._wait_started_here(record, deadline)
        self._wait_running(record, deadline)
        return runnable

    def start_all(
        self, runnables: Iterable[R], environment: Environment | None = None, timeout: float | None = None
    ) -> list[R]:
        """Launch every runnable, then wait until all of them run; returns them, in order.

        Faster than one :meth:`start_blocking` after another: the children start up side by
        side.  ``timeout`` (default: the Runner's ``start_timeout``) bounds the whole wait; a
        runnable that fails to start raises its error, as in :meth:`wait_until_running`.
        """
        started = start_batch(self, runnables, environment)
        deadline = Deadline(self._start_timeout if timeout is None else timeout)
        for runnable in started:
            self._wait_running(self._record(runnable), deadline)
        return started

    def _wait_started_here(self, record: ChildRecord, deadline: Deadline) -> None:
        """Read the child's first message (STARTED) in this thread, not through the supervisor.

        One thread hop fewer on every ``start_blocking``.  Ends the claim in any
        case: a child that dies first, a timeout or Ctrl-C leave the rest (the
        death's report, the later STARTED) to the supervisor, which
        :meth:`wait_until_running` then waits on.
        """
        handle = record.handle
        supervisor = self._supervisor
        assert handle is not None and supervisor is not None
        handed_over = False
        try:
            message = handle.first_message(deadline.remaining() or 0.0)
            if message is not None:
                if message[0] == msg.STARTED:
                    supervisor.handle(record, message)
                else:  # FINISHED: it could not start (see puma._environments.pickling.Sealed)
                    # The claim passes to the supervisor with the message, so the child's
                    # exit is not seen before what it said: no death reported in its place.
                    supervisor.call_soon(lambda: self._take_over(record, message))
                    handed_over = True
        finally:
            if not handed_over:
                record.start_claimed = False
                supervisor.watch()

    def _take_over(self, record: ChildRecord, message: Message) -> None:
        """In the supervisor: handle a claimed child's first message, then watch it as any other."""
        supervisor = self._supervisor
        assert supervisor is not None
        supervisor.handle(record, message)
        record.start_claimed = False
        supervisor.rewatch = True

    def wait_until_running(self, runnable: Runnable, timeout: float | None = None) -> None:
        """Wait until ``runnable`` has started executing.

        ``timeout`` defaults to the Runner's ``start_timeout``.  Raises
        ``TimeoutError`` when it passes, and the runnable's own error (or
        :class:`~puma.ChildDiedError`) if it ended before it could start.
        """
        record = self._record(runnable)
        self._wait_running(record, Deadline(self._start_timeout if timeout is None else timeout))

    def _wait_running(self, record: ChildRecord, deadline: Deadline) -> None:
        supervisor = self._supervisor  # (a child that runs is not kept waiting on its thread's start)
        if supervisor is not None and (not record.has_started or supervisor.start_error is not None):
            supervisor.wait_started(deadline.remaining())  # raises if it could not start
        if not record.wait_started(deadline):
            raise TimeoutError(f"runnable {record.name!r} did not start within {deadline.timeout} s")
        if not record.has_started and record.error is not None:
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

    def snapshot(self, timeout: float = 0.5) -> RunnerSnapshot:
        """A diagnosis now: each runnable's state and where it is blocked, each buffer's fill, the errors.

        Every live runnable is asked what it is doing; one that does not
        answer within ``timeout`` seconds is busy in its own code (not
        waiting in puma).  ``print(runner.snapshot())`` gives a report.
        """
        with self._lock:
            errors = list(self._errors)
        return _snapshot.take(list(self._records), errors, timeout, self._policy.report())

    # --- stopping ----------------------------------------------------------------
    def stop(self, runnable: Runnable | None = None) -> None:
        """Ask ``runnable`` (or every runnable) to stop. Does not wait: see :meth:`join`."""
        if runnable is not None:
            self._send_stop(self._record(runnable))
            return
        # Every stop is posted before the supervisor may close a stopped reader's inputs, so a
        # publisher that finds its buffer closed finds its own stop too (a stop, not an error).
        with self._stopping:
            for record in list(self._records):
                self._send_stop(record)
        if self._supervisor is not None:
            self._supervisor.call_soon(self._supervisor.close_unread_buffers)

    def join(self, timeout: float | None = None) -> None:
        """Wait until every runnable has ended, then raise what failed.

        Waiting has no limit by default, since the work is the runnables';
        a child that dies is still noticed at once, and a runnable asked to
        stop has ``stop_timeout`` to end before it is terminated.  With
        ``timeout``, raises ``TimeoutError`` if runnables are still running then.
        """
        deadline = Deadline(timeout)
        if self._supervisor is not None:
            self._supervisor.wait_started()
        while True:
            overdue: list[ChildRecord] = []
            timed_out = False
            with self._cond:
                while any(not r.ended for r in self._records):
                    if self._unreported() and self._policy.stops_on_failure:
                        break
                    remaining = deadline.remaining()
                    if remaining is not None and remaining <= 0:
                        timed_out = True
                        break
                    # A runnable asked to stop has stop_timeout to end (the wait is bounded then).
                    stops = self._stop_deadlines()
                    overdue = [r for r, due in stops if due.expired]
                    if overdue:
                        break
                    for _r, due in stops:
                        remaining = due.earliest(remaining)
                    self._cond.wait(remaining)
            if timed_out:
                alive = [r.name for r in self._records if not r.ended]
                raise TimeoutError(f"runnables still running after {timeout} s: {alive}\n{self.snapshot()}")
            if not overdue:
                break
            self._terminate_stuck(overdue)
        if self._unreported():
            self._wait_all_ended(self._stop_timeout)
            self._raise_errors()

    def close(self) -> None:
        """Stop every runnable, wait for them (killing the stuck), release what the Runner opened, raise what failed.

        Leaving the ``with`` block calls it.  A closed Runner refuses new starts.
        A Ctrl-C while the runnables stop kills them at once; a Ctrl-C anywhere
        in it does not cut the shutdown short (it goes on after it).
        """
        interrupt: KeyboardInterrupt | None = None
        supervisor = self._supervisor  # (released below)
        done = 0  # the steps below, in order; one a Ctrl-C cut short runs again
        while done < 4:
            try:
                if done == 0:
                    self._stop_everything()
                    done = 2
                if done == 1:
                    self._closed = True
                    self.stop()  # (those it reached already are not asked twice)
                    kill_all(self._records)  # Ctrl-C while they stop: no more grace
                    done = 2
                if done == 2:
                    self._terminate_stuck()
                    done = 3
                if done == 3:
                    self._shut_down_supervisor()
                    self._release()
                    done = 4
            except KeyboardInterrupt as ctrl_c:
                interrupt = ctrl_c
                done = max(done, 1)
        if interrupt is not None:
            raise interrupt
        if supervisor is not None and not supervisor.start_error_raised:
            # A child may have run before the supervisor's thread failed to start: no wait saw it.
            supervisor.wait_started(self._stop_timeout)
        self._raise_errors()

    def _stop_everything(self) -> None:
        """Refuse new starts, stop every runnable and wait ``stop_timeout`` for them to end."""
        with self._lock:
            self._closed = True
        self.stop()
        if self._supervisor is not None:
            self._supervisor.call_soon(self._supervisor.close_main_program_inputs)
        self._wait_all_ended(self._stop_timeout)

    def _shut_down_supervisor(self) -> None:
        supervisor = self._supervisor
        if supervisor is not None:
            supervisor.shutdown = True
            supervisor.waker.wake()
            if supervisor.started.wait() and supervisor.start_error is None:
                supervisor.join(self._stop_timeout)

    def _release(self) -> None:
        """Give back at once what the Runner opened: its children's handles, its buffers, its wake-up pipe."""
        if self._released:
            return
        supervisor = self._supervisor
        if supervisor is not None and supervisor.is_alive():
            return  # a child could not be ended: the supervisor still needs what it watches
        self._released = True
        if supervisor is not None and supervisor.start_error is not None:
            for record in self._records:  # nobody supervised them: their handles are closed here
                if record.handle is not None:
                    _abandon(record.handle)
        let_go_of_buffers(self._buffers)
        self._buffers = {}
        if supervisor is not None:
            supervisor.waker.close()
            self._supervisor = None

    # --- internals ----------------------------------------------------------------------
    def _record(self, runnable: Runnable) -> ChildRecord:
        record = runnable._puma_record
        if not isinstance(record, ChildRecord) or record.runner is not self:
            raise RunnableNotRunningError(f"runnable {runnable.name!r} was not started by this Runner")
        return record

    def _ensure_supervisor(self) -> Supervisor:
        with self._lock:
            if self._supervisor is None:
                self._supervisor = Supervisor(self)
                self._supervisor.start_soon()
            return self._supervisor

    def _send_stop(self, record: ChildRecord) -> None:
        if not record.mark_stop_sent():
            return
        handle = record.handle
        assert handle is not None
        try:
            handle.post((msg.STOP,))
        except OSError:
            return  # the child is gone already; the supervisor reports it
        for out in record.runnable.outputs:
            out.supervision.interrupt_publishers()

    def _notify(self) -> None:
        """A lifecycle changed (the supervisor): wake whoever waits on the Runner."""
        with self._cond:
            self._cond.notify_all()

    def _wait_all_ended(self, timeout: float) -> bool:
        deadline = Deadline(timeout)
        with self._cond:
            while any(not r.ended for r in self._records):
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _stop_deadlines(self) -> list[tuple[ChildRecord, Deadline]]:
        """Runnables that must end soon, with when their stop_timeout runs out.

        Those asked to stop, and those that reported their end (FINISHED) and
        whose process has not exited yet: neither may keep ``join()`` waiting
        for ever.
        """
        due = []
        for r in self._records:
            if r.ended or r.stuck:
                continue
            since = r.finished_at if r.finished_at is not None else r.stop_sent_at
            if since is not None:
                due.append((r, Deadline.at(since + self._stop_timeout)))
        return due

    def _terminate_stuck(self, records: list[ChildRecord] | None = None) -> None:
        """Terminate, then kill, children (``records``, or all) still running after their stop timeout; report them."""
        if self._supervisor is not None:
            chosen = self._records if records is None else records
            terminate_stuck(chosen, self._supervisor, self._stop_timeout, self._wait_all_ended)

    def _stuck_error(self, record: ChildRecord) -> StuckRunnableError:
        return stuck_error(record, self._stop_timeout)

    def _add_error(self, record: ChildRecord, error: BaseException) -> bool:
        """Keep ``error``; False if it is one already kept (the same error, passed downstream and re-raised)."""
        origin = getattr(error, "_puma_origin", None)
        with self._cond:
            if record.error is None:
                record.error = error
            if origin is not None:
                if origin in self._origins:
                    return False
                self._origins.add(origin)
            self._errors.append(error)
            self._cond.notify_all()
        return True

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


def _abandon(handle: ChildHandle) -> None:
    """Undo a launch nobody will supervise (interrupted half-way): leave no orphan behind."""
    handle.kill()
    handle.join(KILL_GRACE)
    handle.close()
