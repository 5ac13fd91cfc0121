"""The parent side of a batch map: hands chunks to workers, collects results, survives deaths.

One loop in the caller's thread does everything, sleeping in one wait over
the workers' outboxes (and, with a per-item timeout, until the earliest
moment an input can overrun):

* **dispatch**: each live worker has its own inbox and at most two chunks
  outstanding (the one it runs, the next); inputs are pulled lazily, never
  more than ``max_in_flight`` ahead of what the caller has taken;
* **collect**: a chunk's values and failures come back together; a failure
  whose type is retried goes back to the queue;
* **a death** ends the worker's outbox with the :class:`~puma.ChildDiedError`;
  the worker's mark names the input it was on: that input is failed (or
  retried, until it has killed ``poison_after`` workers), everything else it
  held is queued again, and a new worker takes its seat;
* **a timeout** kills the worker running the overdue input: its death fails
  that input with :class:`ItemTimeout`;
* **recycling**: a worker past ``max_items`` or ``max_rss`` gets no more work,
  ends when its last chunk is back, and a new one starts at once.
"""

from __future__ import annotations

import itertools
import math
import os
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from puma._batch.options import Options, crosses, crossing_pid, progress_bar
from puma._batch.records import BatchError, Failure, Interrupted, ItemTimeout, WorkerDied, short_repr
from puma._batch.seats import Chunk, Seat, contiguous
from puma._batch.worker import SLOTS_PER_WORKER, BatchWorker, Marks
from puma._buffers.base import Buffer
from puma._core import current as _current
from puma._core import signals as _signals
from puma._core.errors import (
    BufferClosedError,
    BufferCompleted,
    BufferEmpty,
    ChildDiedError,
    PumaError,
    SerializedError,
    StuckRunnableError,
    deserialize_error,
)
from puma._runner.runner import Runner

__all__ = ["Engine"]

PREFETCH = 2  # chunks outstanding per worker: the one it runs and the next
TARGET_CHUNK_SECONDS = 0.02  # self-tuned chunks aim at tens of milliseconds
GROWTH = 8  # a chunk is at most this many times the last one (a first fast input proves little)


class Engine:
    """One map: the Runner, the workers and the loop (iterate :meth:`run`)."""

    def __init__(self, call: Callable[[Any], Any], items: Iterable[Any], options: Options) -> None:
        self._call = call
        self._o = options
        try:
            self._total: int | None = len(items)  # type: ignore[arg-type]
        except TypeError:
            self._total = None
        if self._total is not None and 0 < self._total < options.workers:
            options.workers = self._total  # no worker would get an input
        self._source: Iterator[Any] | None = iter(items)
        # A range, list or tuple is sliced, not iterated: a range's slice crosses in a few bytes.
        self._seq: Any = items if isinstance(items, range | list | tuple) else None
        self._next_index = 0
        self._pending: deque[tuple[int, Any]] = deque()  # re-queued inputs: they go first
        self._chunks: dict[int, Chunk] = {}
        self._chunk_ids = 0
        self._attempts: dict[int, int] = {}
        self._deaths: dict[int, int] = {}
        self._seats: list[Seat] = []
        self._free_slots: list[int] = []
        self._names = 0
        self._per_item: float | None = None
        self._size = 1
        self._released = 0  # outcomes the caller has taken (bounds what is in flight)
        self._finished = 0
        self._failures: list[Failure] = []
        self._ready: list[tuple[Sequence[int], list[Any]]] = []
        self._runner: Runner | None = None
        self._marks: Marks | None = None
        self._bar: Any = None
        self._shown = 0  # inputs the progress bar shows as done
        self._ctrl_c = False  # Ctrl-C was pressed while the loop ran
        self._old_wakeup: int | None = None  # the wake-up descriptor puma's replaced while the loop runs
        if options.max_in_flight is not None:
            self._bound = options.max_in_flight
        elif self._total is not None:
            self._bound = max(self._total, 1)
        else:
            self._bound = max(1024, 256 * options.workers)

    # --- the public face ---------------------------------------------------------------------
    @property
    def failures(self) -> list[Failure]:
        """The failures so far, in the order they happened."""
        return self._failures

    def outcomes(self) -> dict[int, Any]:
        """The outcomes finished and not handed to the caller yet, by index."""
        out: dict[int, Any] = {}
        for indices, values in self._ready:
            out.update(zip(indices, values, strict=True))
        return out

    def release(self, count: int) -> None:
        """The caller has taken ``count`` more outcomes: as many more inputs may be pulled."""
        self._released += count

    def run(self) -> Iterator[list[tuple[Sequence[int], list[Any]]]]:
        """Batches of ``(indices, values or Failures)`` as they finish (any order)."""
        try:
            self._catch_ctrl_c(True)
            self._open()
            while True:
                self._dispatch()
                if self._ready:
                    batch, self._ready = self._ready, []
                    self._catch_ctrl_c(False)  # the caller's own code sees Ctrl-C as usual
                    yield batch
                    self._catch_ctrl_c(True)
                    continue
                if not self._chunks and not self._pending and self._source is None:
                    break
                self._collect()
                if self._ctrl_c:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            self._interrupt()
            raise Interrupted(self.outcomes()) from None
        except GeneratorExit:
            self._interrupt()  # the caller stopped iterating: what the workers run is not wanted
            raise
        finally:
            self._catch_ctrl_c(False)
            self._close()

    def _catch_ctrl_c(self, on: bool) -> None:
        """While the loop runs in the main thread, Ctrl-C sets a flag the loop acts on at a safe point.

        A KeyboardInterrupt raised at any bytecode could leave a buffer or the
        Runner half-way through a change; the flag is seen after the one wait.
        The signal may reach any thread, so it also writes to puma's wake-up
        pipe, which the one wait watches on the main thread (``signal.set_wakeup_fd``,
        taken over from the program for the while).  The first press puts the default
        handler back, so a second press interrupts at once.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        if on:
            if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
                return  # the program has its own handler: leave Ctrl-C to it
            signal.signal(signal.SIGINT, self._on_ctrl_c)
            self._old_wakeup = _signals.claim()
            return
        if signal.getsignal(signal.SIGINT) == self._on_ctrl_c:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        if self._old_wakeup is not None:
            _signals.give_back(self._old_wakeup)
            self._old_wakeup = None

    def _on_ctrl_c(self, signum: int, frame: object) -> None:
        self._ctrl_c = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    # --- set-up and tear-down ------------------------------------------------------------------
    def _open(self) -> None:
        o = self._o
        crossing = crosses(o.environment)
        slots = 2 * o.workers + 2
        self._marks = Marks(slots * SLOTS_PER_WORKER, shared=crossing)
        self._free_slots = list(range(slots - 1, -1, -1))
        self._crossing = crossing
        self._runner = Runner(o.environment, on_failure="continue", stop_timeout=1.0)
        if o.progress:
            self._bar = progress_bar(self._total)
        if self._total == 0:
            self._source = None
            return  # nothing to do: no worker is started
        self._top_up()

    def _seat(self) -> Seat | None:
        """Start a worker in a free slot."""
        if not self._free_slots:
            return None
        assert self._runner is not None and self._marks is not None
        slot = self._free_slots.pop()
        self._marks.view[slot * SLOTS_PER_WORKER] = 0
        env = self._o.environment
        self._names += 1
        inbox: Buffer[Any] = env.buffer(tuple, PREFETCH + 2, f"batch-inbox-{self._names}")
        outbox: Buffer[Any] = env.buffer(tuple, PREFETCH + 2, f"batch-outbox-{self._names}")
        worker = BatchWorker(
            f"batch-worker-{self._names}",
            self._call,
            inbox,
            outbox,
            marks=self._marks,
            slot=slot,
            timed=self._o.timeout is not None,
            measure_rss=self._o.max_rss is not None,
        )
        inbox._register_publisher()
        pub = inbox._open_publisher("the batch map")
        sub = outbox.subscribe()
        self._runner.start(worker)
        seat = Seat(worker, slot, pub, sub)
        seat.pid = self._runner.pid(worker)
        seat.label = f"{worker.name} (process {seat.pid})" if crossing_pid(seat.pid) else f"{worker.name} (thread)"
        self._seats.append(seat)
        return seat

    def _close(self) -> None:
        runner, self._runner = self._runner, None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        try:
            if runner is not None:
                for seat in self._seats:
                    if not seat.pub.completed:
                        try:
                            seat.pub.complete()
                        except PumaError:
                            pass
                try:
                    runner.close()
                except BaseException as errors:
                    members = list(errors.exceptions) if isinstance(errors, BaseExceptionGroup) else [errors]
                    left = [m for m in members if not isinstance(m, ChildDiedError | StuckRunnableError)]
                    if left and not isinstance(errors, KeyboardInterrupt):
                        raise
        finally:
            if self._marks is not None:
                self._marks.close()
                self._marks = None

    def _interrupt(self) -> None:
        """Ctrl-C: no more work; the workers are killed at once (what they ran is lost anyway)."""
        self._source = None
        self._pending.clear()
        for seat in self._seats:
            if seat.pid is not None and self._crossing:
                try:
                    os.kill(seat.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._runner is not None:
            self._runner.stop()

    # --- dispatch ----------------------------------------------------------------------------
    def _chunk_size(self) -> int:
        o = self._o
        if o.chunk_size is not None:
            return o.chunk_size
        if self._per_item is not None:
            wanted = max(1, int(TARGET_CHUNK_SECONDS / max(self._per_item, 1e-9)))
            self._size = max(1, min(wanted, GROWTH * self._size))
        left = self._bound if self._total is None else self._total - self._next_index + len(self._pending)
        cap = max(1, math.ceil(left / (2 * o.workers)))
        return max(1, min(self._size, cap))

    def _take(self, size: int) -> tuple[Sequence[int], Sequence[Any]]:
        indices: list[int] = []
        args: list[Any] = []
        pending = self._pending
        while pending and len(indices) < size:
            index, arg = pending.popleft()
            indices.append(index)
            args.append(arg)
        source = self._source
        if source is not None and len(indices) < size:
            room = self._bound - (self._next_index - self._released)
            want = min(size - len(indices), room)
            start = self._next_index
            if self._seq is not None:
                stop = min(start + want, len(self._seq))
                fresh: Any = self._seq[start:stop]
                if stop >= len(self._seq):
                    self._source = None
            else:
                fresh = list(itertools.islice(source, want))
                stop = start + len(fresh)
                if len(fresh) < want:
                    self._source = None
                    self._total = stop
            self._next_index = stop
            if not indices:
                return range(start, stop), fresh
            indices.extend(range(start, stop))
            args.extend(fresh)
        return indices, args

    def _dispatch(self) -> None:
        for seat in self._seats:
            if seat.retiring or seat.timed_out is not None:
                continue
            while len(seat.outstanding) < PREFETCH:
                limit = self._o.max_items
                if limit is not None and seat.assigned >= limit:
                    break
                if not self._pending and (self._source is None or self._next_index - self._released >= self._bound):
                    return
                size = self._chunk_size()
                if limit is not None:
                    size = min(size, limit - seat.assigned)
                indices, args = self._take(size)
                if not indices:
                    return
                self._send(seat, indices, args)

    def _send(self, seat: Seat, indices: Sequence[int], args: Sequence[Any]) -> None:
        """One chunk to ``seat``'s inbox (an input that will not pickle is that input's failure)."""
        self._chunk_ids += 1
        chunk = Chunk(self._chunk_ids, indices, args)
        try:
            seat.pub.publish((chunk.id, contiguous(indices), args))
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            if not self._crossing:
                raise
            kept: list[tuple[int, Any]] = []
            for index, arg in zip(indices, args, strict=True):
                try:
                    pickle.dumps(arg, protocol=5)
                except Exception as error:  # noqa: BLE001 - this input cannot reach a worker
                    failed = TypeError(f"the input ({type(arg).__qualname__}) cannot be sent to a worker: {error}")
                    failed.__cause__ = error
                    self._failed(index, arg, failed, None, retry=False)
                else:
                    kept.append((index, arg))
            if len(kept) == len(indices):
                raise exc from None  # something else would not pickle
            if kept:
                self._send(seat, [i for i, _ in kept], [a for _, a in kept])
            return
        self._chunks[chunk.id] = chunk
        seat.outstanding.append(chunk.id)
        seat.assigned += len(indices)

    # --- collect -----------------------------------------------------------------------------
    def _collect(self) -> None:
        seats = self._seats
        waker = _current.waiting_context().waker
        waker.clear()
        ready = [s for s in seats if s.sub.ready()]
        if not ready and not self._ctrl_c:
            fds = tuple(fd for s in seats for fd in s.sub._fds())
            waker.wait(fds, self._until_overdue())  # (a Ctrl-C wakes it: see _catch_ctrl_c)
            ready = [s for s in seats if s.sub.ready()]
        for seat in ready:
            self._drain(seat)
        if self._bar is not None and self._finished > self._shown:
            self._bar.update(self._finished - self._shown)  # inputs done (a retry is not one)
            self._shown = self._finished
        if self._o.timeout is not None:
            self._check_timeouts()

    def _drain(self, seat: Seat) -> None:
        while True:
            try:
                done = seat.sub.receive_many(8, timeout=0)
            except BufferEmpty:
                return
            except BufferCompleted:
                self._ended(seat)
                return
            except Exception as error:  # noqa: BLE001 - the worker is gone: its death, or its failure
                self._died(seat, error)
                return
            for message in done:
                self._chunk_done(seat, message)

    def _chunk_done(self, seat: Seat, message: tuple[Any, ...]) -> None:
        chunk_id, values, failures, elapsed, rss = message
        chunk = self._chunks.pop(chunk_id)
        seat.outstanding.remove(chunk_id)
        count = len(chunk.indices)
        seat.items += count
        per = elapsed / count
        self._per_item = per if self._per_item is None else 0.5 * (self._per_item + per)
        if failures:
            failed = {f[0]: f for f in failures}
            for position, (index, arg) in enumerate(zip(chunk.indices, chunk.args, strict=True)):
                entry = failed.get(position)
                if entry is None:
                    self._outcome(index, values[position])
                    continue
                _, frozen, task, clipboard = entry
                error = deserialize_error(frozen) if isinstance(frozen, SerializedError) else frozen
                self._failed(index, arg, error, seat, task=task, clipboard=clipboard)
        else:
            self._ready.append((chunk.indices, values))
            self._finished += count
            if self._attempts:
                for index in chunk.indices:
                    self._attempts.pop(index, None)
                    self._deaths.pop(index, None)
        o = self._o
        if (o.max_items is not None and seat.items >= o.max_items) or (o.max_rss is not None and rss > o.max_rss):
            self._retire(seat)

    def _outcome(self, index: int, value: Any) -> None:
        self._ready.append(((index,), [value]))
        self._finished += 1
        self._attempts.pop(index, None)
        self._deaths.pop(index, None)

    def _failed(
        self,
        index: int,
        arg: Any,
        error: BaseException,
        seat: Seat | None,
        *,
        task: str | None = None,
        clipboard: Any = None,
        retry: bool | None = None,
        signal_name: str | None = None,
    ) -> None:
        attempts = self._attempts.get(index, 1)
        o = self._o
        if retry is None:
            retry = isinstance(error, o.retry_on) if o.retry_on else False
            retry = retry and attempts <= o.retries
        if retry:
            self._attempts[index] = attempts + 1
            self._pending.append((index, arg))
            return
        worker = seat.label if seat is not None else "(not sent)"
        failure = Failure(index, short_repr(arg), error, worker, attempts, signal_name, task, clipboard, input=arg)
        self._failures.append(failure)
        if self._bar is not None:
            self._bar.set_postfix(failed=len(self._failures), refresh=False)
        self._outcome(index, failure)
        if o.max_failures is not None and len(self._failures) >= o.max_failures:
            raise BatchError(
                f"{len(self._failures)} inputs failed: stopped at max_failures={o.max_failures}",
                sorted(self._failures, key=lambda f: f.index),
                self.outcomes(),
                stopped_early=True,
            )

    # --- ends, deaths, timeouts, recycling ---------------------------------------------------------
    def _retire(self, seat: Seat) -> None:
        if seat.retiring:
            return
        seat.retiring = True
        seat.pub.complete()  # what is in its inbox still runs there; then it ends
        self._top_up()

    def _top_up(self) -> None:
        """Start workers until ``workers`` of them take work (a slot frees when a retired one ends)."""
        working = sum(1 for s in self._seats if not s.retiring)
        while working < self._o.workers and self._free_slots:
            self._seat()
            working += 1

    def _forget(self, seat: Seat) -> None:
        self._seats.remove(seat)
        self._free_slots.append(seat.slot)

    def _ended(self, seat: Seat) -> None:
        """A retired worker has sent its last results and ended."""
        self._forget(seat)
        if seat.outstanding:  # cannot happen: it ends after its inbox, and its results come first
            self._requeue_all(seat)
        self._top_up()

    def _requeue_all(self, seat: Seat, except_index: int | None = None) -> None:
        back: list[tuple[int, Any]] = []
        for chunk_id in seat.outstanding:
            chunk = self._chunks.pop(chunk_id)
            back.extend((i, a) for i, a in zip(chunk.indices, chunk.args, strict=True) if i != except_index)
        seat.outstanding.clear()
        self._pending.extendleft(reversed(back))

    def _died(self, seat: Seat, error: BaseException) -> None:
        """The worker's outbox ended with an error: it died (or failed outside any input)."""
        assert self._marks is not None
        mark = int(self._marks.view[seat.slot * SLOTS_PER_WORKER]) - 1
        victim = seat.timed_out if seat.timed_out is not None else mark
        held = {
            i: a
            for cid in seat.outstanding
            for i, a in zip(self._chunks[cid].indices, self._chunks[cid].args, strict=True)
        }
        self._forget(seat)
        # A death in the middle of writing results may show as the broken stream before the
        # Runner names the death: a death too (the worker was between inputs: none is failed).
        death = isinstance(error, ChildDiedError | BufferClosedError)
        if not death or (getattr(error, "before_start", False) and victim not in held):
            self._requeue_all(seat)
            raise error  # not a death an input caused: the workers cannot run (or puma failed)
        exitcode = getattr(error, "exitcode", None)
        self._requeue_all(seat, except_index=victim if victim in held else None)
        if victim in held:
            arg = held[victim]
            if seat.timed_out is not None:
                limit = self._o.timeout
                timeout = ItemTimeout(
                    f"input {victim} ran longer than the timeout of {limit} s; its worker was replaced"
                )
                timeout.__cause__ = error
                self._failed(victim, arg, timeout, seat)
            else:
                deaths = self._deaths.get(victim, 0) + 1
                self._deaths[victim] = deaths
                poison = deaths >= self._o.poison_after
                died = WorkerDied(victim, seat.pid, exitcode, deaths, poison and deaths > 1)
                died.__cause__ = error
                self._failed(victim, arg, died, seat, retry=not poison, signal_name=died.signal)
        self._top_up()

    def _until_overdue(self) -> float | None:
        """Seconds until the earliest moment a running input can pass the timeout (None: no timeout)."""
        timeout = self._o.timeout
        if timeout is None or self._marks is None:
            return None
        view = self._marks.view
        now = time.monotonic_ns()
        earliest = now + int(timeout * 1e9)
        for seat in self._seats:
            at = seat.slot * SLOTS_PER_WORKER
            if seat.timed_out is None and view[at]:
                earliest = min(earliest, int(view[at + 1]) + int(timeout * 1e9))
        return max(0.0, (earliest - now) / 1e9) + 0.001

    def _check_timeouts(self) -> None:
        assert self._marks is not None and self._o.timeout is not None
        view = self._marks.view
        limit = int(self._o.timeout * 1e9)
        now = time.monotonic_ns()
        for seat in self._seats:
            at = seat.slot * SLOTS_PER_WORKER
            index = int(view[at])
            if seat.timed_out is None and index and now - int(view[at + 1]) > limit and int(view[at]) == index:
                seat.timed_out = index - 1
                if seat.pid is not None:
                    try:
                        os.kill(seat.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
