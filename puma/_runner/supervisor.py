"""The Runner's supervisor: one thread, one wait, every message from every child.

The supervisor blocks in a single wait over what each child's
:class:`~puma._environments.base.ChildHandle` says to watch (a process
child's pipes and sentinel; nothing for a thread child, whose messages arrive
in memory and wake it), the buffers it drains, and a wake-up for requests
from other threads.  It:

* launches children for callers whose thread must not be the launching one
  (see :attr:`~puma._environments.base.Environment.launch_needs_lasting_thread`);
* moves each child's lifecycle forward (STARTED, FINISHED, its exit);
* delivers command results to futures, keeps statuses, hands log records to
  the log listener;
* notices a child's end, and a death (an exit with no FINISHED before it:
  SIGKILL, segfault, ``os._exit``), reported as :class:`~puma.ChildDiedError`
  with the exit code or signal; a dead child's buffers are freed and its
  streams completed with the error (through the buffers'
  :class:`~puma._buffers.supervision.StreamSupervision`);
* asks the failure policy what to do with the others;
* when a reader ends, closes its buffer so publishers are not left blocked,
  and drains it while publishers may still be writing.

It holds no thread/process branch: what differs lives in the handles and the
buffers.
"""

from __future__ import annotations

import _thread
import signal
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from puma._buffers.base import Buffer
from puma._buffers.supervision import StreamSupervision
from puma._core import logs as _logging
from puma._core import messages as msg
from puma._core.condition import Event, new_future
from puma._core.errors import ChildDiedError, PumaError, SerializedError, deserialize_error, serialize_error
from puma._core.waiting import Waker
from puma._environments.base import Message
from puma._frames.registry import free_frames_held_by, free_frames_sent_to
from puma._runnable.runnable import Runnable
from puma._runner.records import ChildRecord, Lifecycle, buffers_held_by

if TYPE_CHECKING:
    from puma._runner.runner import Runner

__all__ = ["KILL_GRACE", "Supervisor"]

KILL_GRACE = 2.0  # seconds an ending child is given to exit before the next step


class Supervisor(threading.Thread):
    """The Runner's one waiting thread."""

    def __init__(self, runner: Runner) -> None:
        super().__init__(name="puma-supervisor", daemon=True)
        self._runner = runner
        self.waker = Waker()
        self.inbox: deque[tuple[ChildRecord, Message]] = deque()
        self.launches: deque[tuple[ChildRecord, Runnable, Future[None]]] = deque()
        self.draining: dict[int, StreamSupervision] = {}
        self.calls: deque[Callable[[], None]] = deque()
        self.shutdown = False
        # What the one wait watches is rebuilt only when it may have changed (a launch,
        # an end, a closed command pipe, an abandoned call, the draining set), so a wake
        # per message costs nothing per child.
        self.rewatch = True
        self.started = Event()
        self.start_error: BaseException | None = None
        self.start_error_raised = False  # wait_started() raised it (close() raises it otherwise)

    def start_soon(self) -> None:
        """Start this thread without waiting until it runs (``start()`` waits); :meth:`wait_started` waits.

        A helper thread makes the call that waits, so a Runner's first start
        does not wait for its supervisor to be scheduled.  The Runner starts
        it before its first fork (it gets going meanwhile instead of competing
        with the new child's start-up on a small machine), and a
        ``start_blocking`` whose child runs returns without waiting for it;
        ``join``, ``stop`` and the waits for a start that has not come wait,
        and raise what starting it raised.
        """

        def start() -> None:
            try:
                self.start()
            except BaseException as exc:  # noqa: BLE001 - kept for wait_started
                self.start_error = exc
            finally:
                self.started.set()

        _thread.start_new_thread(start, ())

    def wait_started(self, timeout: float | None = None) -> None:
        """Wait (up to ``timeout``) until :meth:`start_soon` has started the thread; raise what starting it raised."""
        self.started.wait(timeout)
        if self.start_error is not None:
            self.start_error_raised = True
            raise self.start_error

    # --- requests from other threads --------------------------------------------------
    def call_soon(self, function: Callable[[], None]) -> None:
        """Run ``function`` in the supervisor thread, which owns the draining set and the lifecycles."""
        self.calls.append(function)
        self.waker.wake()

    def deliver(self, record: ChildRecord, message: Message) -> None:
        """A message from a child whose messages travel in memory (any thread)."""
        if message[0] == msg.RESULT:  # a command's answer: resolve it here, no hop through this thread
            record.resolve(message[1], message[2], message[3])
            return
        self.inbox.append((record, message))
        self.waker.wake()

    def launch(self, record: ChildRecord, child: Runnable) -> Future[None]:
        """Launch ``child`` from this thread; the future tells the caller how it went."""
        future: Future[None] = new_future()
        self.launches.append((record, child, future))
        self.waker.wake()
        return future

    def watch(self) -> None:
        """What is watched changed (a launch, a start claim ended, commands wait for room): rebuild it."""
        self.rewatch = True
        self.waker.wake()

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> None:
        runner = self._runner
        handlers: dict[int, Callable[[], None]] = {}
        fds: tuple[int, ...] = ()
        writable: tuple[int, ...] = ()
        policy = runner._policy
        while True:
            self.waker.clear()
            policy.tick()  # restarts that are due
            while self.launches:
                self.rewatch = True
                record, child, future = self.launches.popleft()
                try:
                    runner._launch_now(record, child)
                except BaseException as exc:  # noqa: BLE001 - handed to start()
                    future.set_exception(exc)
                else:
                    future.set_result(None)
            while self.inbox:
                record, message = self.inbox.popleft()
                self.handle(record, message)
            while self.calls:
                self.calls.popleft()()
            if self.rewatch or self.shutdown:
                self.rewatch = False
                live = [r for r in runner._records if not r.ended and r.handle is not None]
                if self.shutdown and not live and not self.launches:
                    return
                handlers, writable = self._handlers(live)
                fds = tuple(handlers)
            for fd in self.waker.wait(fds, policy.due_in(), writable):
                handlers[fd]()
                if self.rewatch:  # what is watched changed: the other ready descriptors may be stale
                    break

    def _handlers(self, live: list[ChildRecord]) -> tuple[dict[int, Callable[[], None]], tuple[int, ...]]:
        """What to call when each watched descriptor is ready; the descriptors watched for room too."""
        handlers: dict[int, Callable[[], None]] = {}
        writable: list[int] = []
        for record in live:
            handle = record.handle
            if handle is None or record.start_claimed or not record.launched:
                continue  # not started yet, or the starting thread reads its STARTED (or sees its death) itself
            readable, room = handle.watched()
            writable.extend(room)
            for fd in (*readable, *room):
                handlers[fd] = lambda r=record, fd=fd: self._ready(r, fd)  # type: ignore[misc]
        for fd, stream in list(self.draining.items()):
            handlers[fd] = stream.drain
        return handlers, tuple(writable)

    def _ready(self, record: ChildRecord, fd: int) -> None:
        handle = record.handle
        assert handle is not None
        messages, exited = handle.ready(fd)
        for message in messages:
            if record.ended:
                return
            self.handle(record, message)
        if exited and not record.ended:
            self._exited(record)

    # --- messages -------------------------------------------------------------------
    def handle(self, record: ChildRecord, message: Message) -> None:
        """Act on one message from ``record``'s child (this thread, or a claiming starter)."""
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
            if message[1] is not None:  # (a process child's is its handle's, known since its start)
                record.pid = message[1]
            record.move_to(Lifecycle.RUNNING)
            self._runner._notify()
        elif kind == msg.FINISHED:
            self._finished(record, message)
        elif kind == msg.ACTIVITY:
            record.set_activity(message[1])

    def _finished(self, record: ChildRecord, message: Message) -> None:
        if record.ended:
            return  # already handled (its death was seen first)
        handle = record.handle
        assert handle is not None
        for rest in handle.remaining_messages():  # its statuses and logs come before its end
            if rest[0] != msg.FINISHED:
                self.handle(record, rest)
        _logging.wait_dispatched()  # its last records are written before its error is known
        error = message[1]
        if isinstance(error, SerializedError):
            error = deserialize_error(error)
        record.stopped = message[2]
        if len(message) > 3:
            record.lingering = tuple(message[3])
        taken = self._runner._policy.ending(record, error)  # a restart policy may take the error
        if error is not None and not taken:
            # Its streams end before anyone hears of the error (and stops the others), so a
            # reader is told why it ended, not merely stopped.
            if not record.has_started:  # it never ran (it could not be rebuilt): end its streams for it
                self._complete_outputs_for(record, error, None)
            self.record_error(record, error)
        # A process has ended once it has exited, which may take a while yet (atexit
        # handlers, a non-daemon thread, a busy machine): its exit is watched.  What it
        # read is freed now, since it reads no more.
        record.move_to(Lifecycle.FINISHING)
        if not record.restart_pending:  # else its inputs wait for the next incarnation
            self._close_inputs_of(record)
        if handle.has_exited():
            self.finish(record)
        else:
            self._runner._notify()  # join() now bounds the wait for its exit

    def _exited(self, record: ChildRecord) -> None:
        """``record``'s child has exited: after its FINISHED, or without one (a death)."""
        runner = self._runner
        handle = record.handle
        assert handle is not None
        if record.finished:  # it reported its end before exiting
            if record.stuck:
                self.record_error(record, runner._stuck_error(record))
            self.finish(record)
            return
        for message in handle.remaining_messages():  # what it handed over is known before its death
            if message[0] == msg.FINISHED:
                self._finished(record, message)
                if record.ended:
                    return
            else:
                self.handle(record, message)
        if record.finished:
            self.finish(record)
            return
        _logging.wait_dispatched()
        handle.join(KILL_GRACE)
        status = handle.exit_status()
        pid = handle.pid
        if pid is not None:
            runner._policy.died(record, pid)  # a restart policy finishes what it was reading (its journals)
        intact = self._free_held_by(pid) if pid is not None else set()  # before anything takes a buffer's lock
        error: PumaError = ChildDiedError(record.name, pid, status.exitcode, not record.has_started, status.cause)
        if record.stuck:
            error = runner._stuck_error(record)
        error._puma_origin = f"{record.name}:{pid}:died"  # type: ignore[attr-defined]
        if record.stop_sent and status.exitcode in (0, -signal.SIGINT):
            # Asked to stop, it ended cleanly, or a Ctrl-C reached it before it could ignore it
            # (while a spawn or forkserver child starts up): a stop, not a death.
            record.stopped = True
            runner._policy.ending(record, None)
        else:
            # A stream it left broken (it died mid-value, writing or reading) cannot go on: no restart.
            broken_keys = {stream.key for stream in self._streams()} - intact
            mine = (*record.runnable.outputs, *buffers_held_by(record.runnable))
            broken = any(buffer.supervision.key in broken_keys for buffer in mine)
            if not runner._policy.ending(record, error, broken):
                if not record.restart_pending:  # its streams end before anyone hears of the error
                    self._complete_outputs_for(record, error, intact)
                self.record_error(record, error)
                self.finish(record)
                return
        if not record.restart_pending:  # else the next incarnation publishes in its place
            self._complete_outputs_for(record, error, intact)
        self.finish(record)

    def finish(self, record: ChildRecord) -> None:
        """``record`` has ended: release its handle, free its inputs' publishers, tell the waiters."""
        if record.ended:
            return
        _logging.wait_dispatched()
        handle = record.handle
        if handle is not None and not record.stuck:
            handle.join(KILL_GRACE)
        was_finished = record.finished
        # First: a restart policy may put a new incarnation in its place, so that nobody waiting
        # on the Runner sees every runnable ended in between.
        self._runner._policy.ended(record)
        record.move_to(Lifecycle.ENDED)
        self.rewatch = True
        if not was_finished and not record.restart_pending:  # else done when it reported its end
            self._close_inputs_of(record)
        if handle is not None:
            handle.close()
        if record.error is not None:
            self._end_streams_nobody_can_publish(record.error)
        self._runner._notify()

    # --- failures ----------------------------------------------------------------------
    def record_error(self, record: ChildRecord, error: BaseException) -> None:
        """Keep ``error`` (once per origin) and let the failure policy act."""
        runner = self._runner
        if runner._add_error(record, error):
            runner._policy.failed(record, runner._records, runner._send_stop)

    def _complete_outputs_for(self, record: ChildRecord, error: BaseException, intact: set[str] | None) -> None:
        """Complete the outputs of a child that could not, with ``error``.

        ``intact``: keys of the buffers whose streams can still take a completion
        (None: all of them); the readers of any other are told directly.
        """
        for out in record.runnable.outputs:
            stream = out.supervision
            if not ((intact is None or stream.key in intact) and stream.complete_for(record.name, error)):
                self._tell_readers(stream, error)

    def _free_held_by(self, pid: int) -> set[str]:
        """Free what a dead process held in every buffer; the keys of the buffers whose streams are intact."""
        intact: set[str] = set()
        free_frames_held_by(pid)  # its frames go back to their pools, and a borrower waiting wakes
        for stream in self._streams():
            if stream.free_held_by(pid):
                intact.add(stream.key)
        return intact

    def _tell_readers(self, stream: StreamSupervision, error: BaseException) -> None:
        """A stream cannot carry a completion (broken, or full): send its readers the error directly."""
        stream.fail_readers_here(error)  # readers in this process: thread runnables, the main program
        by_token = self._runner._by_token
        for token in stream.readers():
            reader = by_token.get(token)
            if reader is None or reader.ended or reader.handle is None:
                continue  # the main program, or gone too: a later reader finds the stream broken
            try:
                reader.handle.post((msg.INPUT_FAILED, stream.key, serialize_error(error)))
            except OSError:
                pass  # it is gone too

    def _end_streams_nobody_can_publish(self, error: BaseException) -> None:
        """End, with ``error``, the streams that no publisher joined and no live runnable holds.

        A runnable that forgot ``outputs=[buffer]`` fails in ``publisher()``;
        without this its readers (the main program among them) would wait for
        ever on a stream nobody can publish to.
        """
        records = self._runner._records
        live = [r for r in records if not r.finished]
        for buffer in self._held_buffers():
            stream = buffer.supervision
            if buffer.statistics().publishers or not stream.readers():
                continue
            if any(buffer is b for r in live for b in (*r.runnable.outputs, *buffers_held_by(r.runnable))):
                continue
            self._tell_readers(stream, error)

    def _held_buffers(self) -> list[Buffer[Any]]:
        """Every buffer a runnable of this Runner holds or publishes to, once each."""
        seen: dict[int, Buffer[Any]] = {}
        for record in self._runner._records:
            for buffer in (*record.runnable.outputs, *buffers_held_by(record.runnable)):
                seen.setdefault(id(buffer), buffer)
        return list(seen.values())

    # --- closing buffers ----------------------------------------------------------------
    def _streams(self) -> list[StreamSupervision]:
        """Every buffer a runnable of this Runner publishes to, once each."""
        seen: dict[int, StreamSupervision] = {}
        for record in self._runner._records:
            for out in record.runnable.outputs:
                if id(out) not in seen:
                    seen[id(out)] = out.supervision
        return list(seen.values())

    def _publishers_alive(self, buffer: Buffer[Any]) -> bool:
        return any(
            not other.ended and any(out is buffer for out in other.runnable.outputs) for other in self._runner._records
        )

    def _close(self, buffer: Buffer[Any]) -> None:
        """Close ``buffer`` (nobody reads it any more); drain it while publishers may still write."""
        stream = buffer.supervision
        stream.close()
        free_frames_sent_to(stream.key)  # frames handed into it will not be received: back to their pools
        fd = stream.drain_fd()
        if fd is not None and self._publishers_alive(buffer):
            self.draining[fd] = stream
            self.rewatch = True

    def close_outputs_where(self, closing: Callable[[Buffer[Any]], bool]) -> None:
        """Close the outputs of running runnables that ``closing`` picks."""
        for other in self._runner._records:
            if other.finished:  # a runnable that has finished publishes no more
                continue
            for out in other.runnable.outputs:
                if closing(out):
                    self._close(out)

    def close_unread_buffers(self) -> None:
        """After a stop of everything: free publishers of buffers nobody ever subscribed to."""
        self.close_outputs_where(lambda out: not out.supervision.readers())

    def close_main_program_inputs(self) -> None:
        """On close: the main program reads no more; free publishers of the buffers only it reads.

        A publisher blocked in the middle of writing a large value into a full
        pipe cannot see its stop until somebody reads; the drain reads instead,
        so the stop is seen and the close does not end in a false
        :class:`~puma.StuckRunnableError`.
        """
        self.close_outputs_where(lambda out: out.supervision.readers() == frozenset({0}))

    def _close_inputs_of(self, record: ChildRecord) -> None:
        """The reader ``record`` ended: free the publishers of the buffers only it read.

        Not while a stop of everything is being posted: a publisher that finds
        its buffer closed then finds its own stop too (a stop, not an error).
        """
        with self._runner._stopping:
            self._close_inputs_now(record)

    def _close_inputs_now(self, record: ChildRecord) -> None:
        buffers: dict[int, Buffer[Any]] = {}
        for other in self._runner._records:
            for out in other.runnable.outputs:
                readers = out.supervision.readers()
                if record.token in readers and self._no_reader_left(readers, record):
                    buffers[id(out)] = out
        for buffer in buffers.values():
            self._close(buffer)
        for fd, stream in list(self.draining.items()):
            if not any(
                not other.ended and any(out.supervision.key == stream.key for out in other.runnable.outputs)
                for other in self._runner._records
            ):
                del self.draining[fd]
                self.rewatch = True

    def _no_reader_left(self, readers: frozenset[int], ending: ChildRecord) -> bool:
        """True if none of ``readers`` (tokens) but ``ending`` can still read."""
        by_token = self._runner._by_token
        for token in readers:
            if token == ending.token:
                continue
            if token == 0:
                return False  # the main program reads it too
            other = by_token.get(token)
            if other is not None and not other.finished:
                return False
        return True
