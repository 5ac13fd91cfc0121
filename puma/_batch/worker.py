"""The worker side of a batch map: a runnable that runs chunks of inputs and says which input it is on.

Each worker owns two slots of a small array of 64-bit integers shared with
the parent (:class:`Marks`): before each input it writes the input's index
(plus one; 0 while it is between chunks) and, when a per-item timeout is
set, the time it started it.  Writing a slot is a store to memory, not a
system call, so a killed worker's parent still knows the one input it was
running.
"""

from __future__ import annotations

import mmap
import os
import pickle
import time
from collections.abc import Callable, Sequence
from typing import Any

from puma._buffers.base import Buffer
from puma._core.errors import SerializedError, StopRequested, serialize_error
from puma._runnable.runnable import Runnable

__all__ = ["SLOTS_PER_WORKER", "BatchWorker", "Chain", "Marks", "TaskFailed", "run_chunk"]

SLOTS_PER_WORKER = 2  # [index + 1 of the input running (0: none), when it started (monotonic ns)]

#: A chunk sent to a worker: (chunk id, the inputs' indices, the inputs).
Chunk = tuple[int, Sequence[int], list[Any]]
#: What a worker sends back: (chunk id, values, failures, seconds spent, resident set size or 0).
#: A failure is (position in the chunk, the error, the task, the clipboard).
Done = tuple[int, list[Any], list[tuple[int, SerializedError | BaseException, str | None, Any]], float, int]


class Marks:
    """The array every worker marks the input it is on in (shared memory between processes).

    In the parent it is a ``multiprocessing.shared_memory.SharedMemory`` block
    (or a plain ``bytearray`` when every worker is a thread); a process worker
    maps the same block by name.
    """

    def __init__(self, slots: int, shared: bool) -> None:
        self._slots = slots
        self._shm: Any = None
        self._map: mmap.mmap | None = None
        if shared:
            from multiprocessing import shared_memory

            self._shm = shared_memory.SharedMemory(create=True, size=max(8, slots * 8))
            self.name: str | None = self._shm.name
            self._view = self._shm.buf.cast("q")
        else:
            self.name = None
            self._local = bytearray(slots * 8)
            self._view = memoryview(self._local).cast("q")
        for i in range(slots):
            self._view[i] = 0

    @property
    def view(self) -> memoryview:
        """The slots, as 64-bit integers."""
        view: memoryview = self._view
        return view

    def __getstate__(self) -> dict[str, Any]:
        if self.name is None:
            raise TypeError("the marks of a thread-only map do not cross to a process")
        return {"name": self.name, "slots": self._slots}

    def __setstate__(self, state: dict[str, Any]) -> None:
        import importlib

        shm_open = importlib.import_module("_posixshmem").shm_open
        self._slots = state["slots"]
        self.name = state["name"]
        self._shm = None
        # Mapped straight from the block's name: not registered with a resource tracker, since
        # the parent alone creates and unlinks it.
        fd = shm_open("/" + self.name, os.O_RDWR, mode=0o600)
        try:
            self._map = mmap.mmap(fd, max(8, self._slots * 8))
        finally:
            os.close(fd)
        self._view = memoryview(self._map).cast("q")

    def close(self) -> None:
        """Let go of the block (and, in the parent, remove it)."""
        view, self._view = self._view, memoryview(b"")
        view.release()
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None


class TaskFailed(Exception):
    """A task of a chain raised: which task, and the clipboard as it left it."""

    def __init__(self, task: str, clipboard: Any, error: BaseException) -> None:
        super().__init__(task)
        self.task = task
        self.clipboard = clipboard
        self.error = error


class Chain:
    """An ordered list of tasks over a clipboard: each task gets the dict, changes it (or returns updates)."""

    def __init__(self, tasks: Sequence[Callable[[dict[str, Any]], Any]]) -> None:
        self.tasks = tuple(tasks)

    def __call__(self, start: Any) -> dict[str, Any]:
        clipboard: dict[str, Any] = dict(start) if isinstance(start, dict) else {"input": start}
        for task in self.tasks:
            try:
                update = task(clipboard)
            except Exception as exc:
                if exc.__traceback__ is not None:  # the traceback starts in the task, not here
                    exc.__traceback__ = exc.__traceback__.tb_next
                raise TaskFailed(getattr(task, "__qualname__", repr(task)), clipboard, exc) from exc
            if isinstance(update, dict):
                clipboard.update(update)
        return clipboard


def _crossing_clipboard(clipboard: Any, crossing: bool) -> Any:
    """A copy of the clipboard that can travel to the parent (reprs for what will not pickle)."""
    if not isinstance(clipboard, dict):
        return clipboard
    copied = dict(clipboard)
    if not crossing:
        return copied
    for key, value in copied.items():
        try:
            pickle.dumps(value, protocol=5)
        except Exception:  # noqa: BLE001 - what will not cross is shown as its repr
            from puma._batch.records import short_repr

            copied[key] = short_repr(value)
    return copied


def run_chunk(
    call: Callable[[Any], Any],
    indices: Sequence[int],
    args: Sequence[Any],
    view: memoryview,
    *,
    at: int,
    timed: bool,
    crossing: bool,
) -> tuple[list[Any], list[tuple[int, SerializedError | BaseException, str | None, Any]]]:
    """Run ``call`` over one chunk, marking each input in ``view[at]`` before it runs."""
    values: list[Any] = []
    failures: list[tuple[int, SerializedError | BaseException, str | None, Any]] = []
    append = values.append
    clock = time.monotonic_ns
    for index, arg in zip(indices, args, strict=True):
        if timed:
            view[at + 1] = clock()  # written before the index, so the parent never sees an old start
        view[at] = index + 1
        try:
            append(call(arg))
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - every failure is one input's record
            position = len(values)
            append(None)
            task: str | None = None
            clipboard: Any = None
            error: BaseException = exc
            if isinstance(exc, TaskFailed):
                task, clipboard, error = exc.task, _crossing_clipboard(exc.clipboard, crossing), exc.error
            failures.append((position, serialize_error(error) if crossing else error, task, clipboard))
    view[at] = 0
    return values, failures


class BatchWorker(Runnable):
    """Runs the chunks that arrive in its inbox; sends each chunk's results to its outbox."""

    def __init__(
        self,
        name: str,
        call: Callable[[Any], Any],
        inbox: Buffer[Any],
        outbox: Buffer[Any],
        *,
        marks: Marks,
        slot: int,
        timed: bool,
        measure_rss: bool,
    ) -> None:
        super().__init__(name, outputs=[outbox])
        self._call = call
        self._inbox = inbox
        self._outbox = outbox
        self._marks = marks
        self._at = slot * SLOTS_PER_WORKER
        self._timed = timed
        self._measure_rss = measure_rss

    def execute(self) -> None:
        crossing = self._marks.name is not None
        view = self._marks.view
        call, at, timed = self._call, self._at, self._timed
        process: Any = None
        if self._measure_rss:
            import psutil

            process = psutil.Process()
        with self.publisher(self._outbox) as out:
            for chunk_id, indices, args in self._inbox.subscribe():
                began = time.perf_counter()
                values, failures = run_chunk(call, indices, args, view, at=at, timed=timed, crossing=crossing)
                rss = process.memory_info().rss if process is not None else 0
                done: Done = (chunk_id, values, failures, time.perf_counter() - began, rss)
                try:
                    out.publish(done)
                except (StopRequested, Exception) as exc:
                    if not crossing or isinstance(exc, StopRequested) or not _is_pickling_error(exc):
                        raise
                    out.publish(_without_unpicklable(done))


def _is_pickling_error(exc: BaseException) -> bool:
    return isinstance(exc, pickle.PicklingError | TypeError | AttributeError)


def _without_unpicklable(done: Done) -> Done:
    """The chunk's results with each value that will not pickle turned into that input's failure."""
    chunk_id, values, failures, elapsed, rss = done
    failed = {f[0] for f in failures}
    kept: list[Any] = []
    extra = list(failures)
    for position, value in enumerate(values):
        if position in failed:
            kept.append(None)
            continue
        try:
            pickle.dumps(value, protocol=5)
        except Exception as exc:  # noqa: BLE001 - the result of this input cannot reach the parent
            error = TypeError(f"the result ({type(value).__qualname__}) cannot be sent to the parent: {exc}")
            extra.append((position, serialize_error(error), None, None))
            kept.append(None)
        else:
            kept.append(value)
    return (chunk_id, kept, extra, elapsed, rss)
