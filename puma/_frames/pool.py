"""A pool of fixed-shape numpy chunks: borrowed, handed over through buffers, returned, crash-aware.

Design (see docs/frames.md):

* The pool's memory is one shared file (:mod:`puma._frames.memory`): a
  header of 64-bit slots, then ``count`` chunks.  The header records, for
  each chunk, who has it: free, held by a pid, in flight (handed over, not
  received yet), or shared by fan-out readers (their pids).  A generation
  number per chunk changes whenever it changes hands, so a stale handle (an
  old holder, a frame dropped by a live source) is recognised.
* Free chunks are 4-byte indices in a pipe.  A borrower takes one with a
  non-blocking read; one that finds none waits for the pipe to become
  readable in its runnable's one wait, so stops and commands still reach it,
  and any process that frees a chunk wakes it by writing the index back.
* The header and the pipe change together under a lock: a thread lock plus
  a POSIX record lock on the memory file, which the kernel lets go of when
  its holder dies, so a killed process never leaves the pool locked.
* When a process dies the Runner's supervisor calls
  :func:`free_frames_held_by`: its chunks (held, or its reader's share)
  return and the free list is rebuilt from the header, so a chunk is never
  lost between the pipe and the header either.
* In a ThreadEnvironment the same pool keeps plain arrays and a deque: no
  system call per frame.
"""

from __future__ import annotations

import collections
import fcntl
import multiprocessing
import os
import pickle
import struct
import threading
import weakref
from typing import Any

import numpy as np

from puma._core import current as _context
from puma._core.errors import BufferEmpty, PumaError
from puma._core.waiting import Deadline, Waker
from puma._frames import registry as _registry
from puma._frames.errors import FrameOwnershipError
from puma._frames.frame import LIVE, SHARE, WRITABLE, Frame
from puma._frames.header import (
    FREE,
    GEN,
    H_BORROWS,
    H_COUNT,
    H_DROPS,
    H_RETURNED,
    H_SEQ,
    HEAD,
    IN_FLIGHT,
    MAX_SHARES,
    MOST_CHUNKS,
    OWNER,
    READERS,
    SEQ,
    SHARED,
    SHARES,
    TAG,
    FramePoolStatistics,
    W,
    _FileLock,
    _layout,
)
from puma._frames.memory import Memory, close_shared, open_shared
from puma._frames.registry import pools

__all__ = ["FramePool"]

_TOKEN = struct.Struct("=i")
_here = pools
_spawning = multiprocessing.context.get_spawning_popen


class FramePool:
    """A pool of ``count`` numpy chunks of one ``shape`` and ``dtype``, borrowed and handed over without copies.

    Make it through the environment (``env.frame_pool(...)``) or with
    ``FramePool(env, ...)``: in a :class:`~puma.ProcessEnvironment` the chunks
    live in shared memory (on Linux an anonymous ``memfd``, nothing in
    ``/dev/shm``) and the pool crosses into child processes as an attribute of
    a runnable; in a :class:`~puma.ThreadEnvironment` they are plain arrays.
    The API is the same.

    >>> import numpy as np, puma
    >>> pool = puma.frames.FramePool(puma.ThreadEnvironment(), (2, 3), np.float32, count=2)
    >>> with pool.borrow() as frame:
    ...     frame.array[:] = 1.5
    ...     float(frame.array.sum())
    9.0
    >>> pool.statistics().free
    2

    Args:
        env: the environment the runnables using it run in.
        shape: every chunk's shape.
        dtype: every chunk's dtype.
        count: how many chunks (frames in use at once, in flight included).
        name: for messages and statistics.
        drop_oldest: for live sources: when no chunk is free, :meth:`borrow`
            takes the oldest frame handed over and not received yet instead
            of waiting (readers never get a dropped frame; ``drops`` counts).

    Raises:
        SharedMemoryTooSmall: the machine (or ``/dev/shm``) cannot hold it.
    """

    _dtype: np.dtype[Any]
    _header: memoryview  # the 64-bit slots (see puma._frames.header)
    _count: int
    _shape: tuple[int, ...]
    _name: str

    def __init__(
        self,
        env: Any,
        shape: int | tuple[int, ...],
        dtype: Any = np.uint8,
        count: int = 4,
        name: str = "frames",
        *,
        drop_oldest: bool = False,
    ) -> None:
        shape = (shape,) if isinstance(shape, int) else tuple(int(n) for n in shape)
        if any(n < 0 for n in shape):
            raise ValueError(f"frame pool {name!r}: shape {shape} has a negative size")
        if not 1 <= count <= MOST_CHUNKS:
            raise ValueError(f"frame pool {name!r}: count must be between 1 and {MOST_CHUNKS}, got {count}")
        self._dtype = np.dtype(dtype)
        if self._dtype.hasobject:
            raise TypeError(f"frame pool {name!r}: dtype {self._dtype} holds Python objects, which cannot be shared")
        self._shape = shape
        self._count = count
        self._name = name
        self._drop_oldest = drop_oldest
        self._key = f"{os.getpid()}-{os.urandom(6).hex()}"
        self._creator = os.getpid()
        self._origin: tuple[int, ...] = ()
        self._header_bytes, self._stride, size = _layout(shape, self._dtype, count)
        self._shared_memory: Memory | None = None
        if getattr(env, "is_process", False):
            self._shared_memory = Memory.create(name, size)
            tokens_r, tokens_w = os.pipe()
            self._origin = (os.getpid(), self._shared_memory.fd, tokens_r, tokens_w)
            self._setup_shared(tokens_r, tokens_w)
            self._header[H_COUNT] = count
            self._put_tokens(range(count))
        else:
            self._setup_local()
        _here[self._key] = self
        _registry.track(_after_fork_in_child)

    # --- set-up in each process --------------------------------------------------------------
    def _setup_local(self) -> None:
        self._memory: Any = np.zeros(self._header_bytes + self._stride * self._count, dtype=np.uint8)
        self._header = _local_header(self._count)
        self._header[H_COUNT] = self._count
        self._lock: Any = threading.RLock()  # reentrant: see _FileLock
        self._free_local: collections.deque[int] = collections.deque(range(self._count))
        self._waiters: list[Waker] = []
        self._tokens_r = self._tokens_w = -1
        self._closed = False
        self._reduced: Any = None
        self._finalizer: Any = None

    def _setup_shared(self, tokens_r: int, tokens_w: int) -> None:
        memory = self._shared_memory
        assert memory is not None
        self._memory = memory.map
        # A memoryview of 64-bit slots: indexing it gives plain ints, much cheaper than numpy scalars.
        self._header = memoryview(memory.map)[: 8 * (HEAD + W * self._count)].cast("q")
        self._lock = _FileLock(memory.fd)
        self._tokens_r, self._tokens_w = tokens_r, tokens_w
        os.set_blocking(tokens_r, False)
        os.set_blocking(tokens_w, False)
        need = 4 * self._count
        if need > 4096 and hasattr(fcntl, "F_SETPIPE_SZ"):
            fcntl.fcntl(tokens_w, fcntl.F_SETPIPE_SZ, max(need, 65536))
        self._closed = False
        self._reduced = None
        self._finalizer = weakref.finalize(self, close_shared, memory, tokens_r, tokens_w)

    # --- the public face -------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """The pool's name."""
        return self._name

    @property
    def shape(self) -> tuple[int, ...]:
        """Every chunk's shape."""
        return self._shape

    @property
    def dtype(self) -> np.dtype[Any]:
        """Every chunk's dtype."""
        return self._dtype

    @property
    def count(self) -> int:
        """How many chunks the pool has."""
        return self._count

    @property
    def nbytes(self) -> int:
        """Bytes of one chunk's array."""
        return int(np.prod(self._shape, dtype=np.int64)) * self._dtype.itemsize

    @property
    def shared(self) -> bool:
        """True if the chunks are in shared memory (the pool crosses into child processes)."""
        return self._shared_memory is not None

    def borrow(self, timeout: float | None = None) -> Frame:
        """A free chunk, held by the caller: wait for one while none is free (the producer is held back).

        The wait is the runnable's one wait: a stop or a command reaches it.
        A ``drop_oldest`` pool takes the oldest frame in flight instead of
        waiting, when there is one.

        Raises:
            BufferEmpty: no chunk came free within ``timeout`` seconds (a ``TimeoutError``).
            StopRequested: the runnable was asked to stop while it waited.
        """
        frame = self.try_borrow()
        if frame is not None:
            return frame
        ctx = _context.waiting_context()
        deadline = Deadline(timeout)
        got: list[Frame] = []
        waker = ctx.waker

        def ready() -> bool:
            found = self.try_borrow(_waker=waker)
            if found is not None:
                got.append(found)
            return found is not None

        fds = (self._tokens_r,) if self._shared_memory is not None else ()
        try:
            if not ctx.wait(fds, deadline.remaining(), ready, f"a free frame of pool {self._name!r}"):
                raise BufferEmpty(f"frame pool {self._name!r}: no chunk came free within {timeout} s")
        finally:
            if self._shared_memory is None:
                with self._lock:
                    if waker in self._waiters:
                        self._waiters.remove(waker)
        return got[0]

    def try_borrow(self, *, _waker: Waker | None = None) -> Frame | None:
        """A free chunk now, or ``None`` (a ``drop_oldest`` pool takes the oldest frame in flight first)."""
        self._check_open()
        me = _registry.pid
        header = self._header
        with self._lock:
            index = self._take_token()
            while index is not None and header[HEAD + W * index + OWNER] != FREE:
                index = self._take_token()  # a token written twice (see _give_back): its chunk is taken
            if index is None and self._drop_oldest:
                index = self._oldest_in_flight()
                if index is not None:
                    header[H_DROPS] += 1
            if index is None:
                if _waker is not None and self._shared_memory is None and _waker not in self._waiters:
                    self._waiters.append(_waker)
                return None
            base = HEAD + W * index
            header[base + OWNER] = me
            header[base + GEN] += 1
            header[H_BORROWS] += 1
            gen = int(header[base + GEN])
        return Frame(self, index, gen, WRITABLE, LIVE)

    def statistics(self) -> FramePoolStatistics:
        """Who holds the chunks now, and the counters."""
        header = self._header
        with self._lock:
            owners = header[HEAD + OWNER : HEAD + W * self._count : W].tolist()
            drops, borrows, returned = int(header[H_DROPS]), int(header[H_BORROWS]), int(header[H_RETURNED])
        return FramePoolStatistics(
            self._name,
            self._count,
            owners.count(FREE),
            sum(owner > 0 for owner in owners),
            owners.count(IN_FLIGHT),
            owners.count(SHARED),
            drops,
            borrows,
            returned,
        )

    def reclaim_in_flight(self) -> int:
        """Return every chunk handed over and not received yet; how many.

        For when no buffer will deliver them any more: a reader killed after
        reading their handles, or a buffer discarded with frames in it (once
        its Runner has closed). Their handles, if they still arrive
        somewhere, are :attr:`~Frame.dropped`: a subscription skips them.
        """
        self._check_open()
        return self._reclaim_in_flight(None)

    def _reclaim_in_flight(self, tag: int | None) -> int:
        """Return the chunks in flight (handed into the buffer ``tag``; None: any); how many."""
        if self._closed:
            return 0
        header = self._header
        returned = []
        with self._lock:
            for index in range(self._count):
                base = HEAD + W * index
                if header[base + OWNER] == IN_FLIGHT and (tag is None or header[base + TAG] == tag):
                    header[base + OWNER] = FREE
                    header[base + GEN] += 1
                    returned.append(index)
            self._put_tokens(returned)
        return len(returned)

    def close(self) -> None:
        """Close the pool's descriptors in this process; the memory goes when the last view and process let go."""
        if self._closed:
            return
        self._closed = True
        _here.pop(self._key, None)
        if self._shared_memory is not None:
            self._header.release()  # let go of the mapping
            self._header = _local_header(self._count)
            self._memory = None
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> FramePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "shared" if self._shared_memory is not None else "thread"
        return f"<FramePool {self._name!r}: {self._count} x {self._shape} {self._dtype}, {where}>"

    # --- crossing into a child process ---------------------------------------------------------------
    def __reduce__(self) -> Any:
        reduced = self._reduced
        if reduced is not None and not self._closed and _spawning() is None:
            return reduced  # the usual case: a frame's handle in a buffer
        memory = self._shared_memory
        if memory is None:
            raise PumaError(
                f"frame pool {self._name!r} was made for threads: make it with the ProcessEnvironment "
                "its runnables run in to use it from a child process"
            )
        self._check_open()
        spec = (self._key, self._name, self._shape, self._dtype.str, self._count, self._drop_oldest, memory.size)
        # A process that does not have the pool opens it from the process that made it (alive as
        # long as the pool is used), through /proc.
        where = self._origin
        if _spawning() is not None:  # a child being started: pass the fds
            from multiprocessing.reduction import DupFd

            fds = (DupFd(memory.fd), DupFd(self._tokens_r), DupFd(self._tokens_w))
            return (_attach, (spec, fds, where, memory.name))
        if self._reduced is None:  # inside a value: the key, and how to open it from its maker if need be
            self._reduced = (_by_key, (self._key, pickle.dumps((_attach, (spec, None, where, memory.name)))))
        return self._reduced

    def _handle_ref(self) -> tuple[str, bytes] | None:
        """What a frame's handle carries to name this pool: (key, how to open it); None while a child starts."""
        reduced = self._reduced
        if reduced is None or _spawning() is not None:
            if self._shared_memory is None or _spawning() is not None:
                return None
            reduced = self.__reduce__()
        ref: tuple[str, bytes] = reduced[1]
        return ref

    # --- the chunks' life (used by Frame) ---------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise PumaError(f"frame pool {self._name!r} is closed")

    def _view(self, index: int) -> np.ndarray[Any, Any]:
        offset = self._header_bytes + self._stride * index
        return np.ndarray(self._shape, self._dtype, buffer=self._memory, offset=offset)

    def _give_back(self, index: int, gen: int, kind: int) -> None:
        header = self._header
        base = HEAD + W * index
        me = _registry.pid
        if kind == WRITABLE and self._shared_memory is not None:
            # No lock (the borrower it wakes does not wait for it): only the holder changes a held
            # chunk's slots; a rebuild (_free_pid) meanwhile may write its token too: borrowers skip it.
            if header[base + GEN] != gen or header[base + OWNER] != me:
                return
            header[base + OWNER] = FREE
            header[base + GEN] = gen + 1
            os.write(self._tokens_w, _TOKEN.pack(index))
            return
        with self._lock:
            if header[base + GEN] != gen:
                return  # returned already (its holder was deemed dead, or the pool was reset)
            if kind == SHARE:
                if not self._drop_share(base, me):
                    return
            elif header[base + OWNER] != me:
                return
            header[base + OWNER] = FREE
            header[base + GEN] += 1
            self._put_tokens((index,))

    def _drop_share(self, base: int, pid: int) -> bool:
        """One reader of a shared chunk lets go (lock held): True if it was the last."""
        header = self._header
        for k in range(MAX_SHARES):
            if header[base + SHARES + k] == pid:
                header[base + SHARES + k] = 0
                header[base + READERS] -= 1
                break
        else:
            return False
        return bool(header[base + READERS] <= 0)

    def _hand_over(self, index: int, gen: int, kind: int, tag: int | None = None) -> int:
        """The holder publishes the frame (into buffer ``tag``, else the one pickling it); its new generation."""
        header = self._header
        base = HEAD + W * index
        me = _registry.pid
        if kind == WRITABLE and not self._drop_oldest:
            # Only the holder writes a held chunk's slots, and nothing else looks at a chunk that is
            # held or in flight (the free list is rebuilt from free chunks only): no lock needed.
            if header[base + GEN] != gen or header[base + OWNER] != me:
                raise FrameOwnershipError(f"frame {index} of pool {self._name!r} is no longer held here")
            header[base + TAG] = _registry.sending.tag if tag is None else tag
            header[base + OWNER] = IN_FLIGHT
            header[base + GEN] = gen + 1
            return gen + 1
        with self._lock:
            if header[base + GEN] != gen:
                raise FrameOwnershipError(f"frame {index} of pool {self._name!r} is no longer held here")
            if kind == SHARE:
                for k in range(MAX_SHARES):
                    if header[base + SHARES + k] == me:
                        header[base + SHARES + k] = -1  # a reader passes its share on
                        return gen
                raise FrameOwnershipError(f"frame {index} of pool {self._name!r} is no longer held here")
            header[base + TAG] = _registry.sending.tag if tag is None else tag
            header[base + OWNER] = IN_FLIGHT
            header[H_SEQ] += 1
            header[base + SEQ] = header[H_SEQ]
            header[base + GEN] += 1
            return int(header[base + GEN])

    def _fan_out(self, index: int, gen: int, kind: int, count: int) -> int:
        """The holder hands ``count`` read-only shares on; the new generation."""
        if count > MAX_SHARES:
            raise PumaError(f"frame pool {self._name!r}: a frame can be shared by at most {MAX_SHARES} readers")
        header = self._header
        base = HEAD + W * index
        me = _registry.pid
        with self._lock:
            if header[base + GEN] != gen:
                raise FrameOwnershipError(f"frame {index} of pool {self._name!r} is no longer held here")
            if kind == SHARE:
                if not self._drop_share(base, me):
                    raise FrameOwnershipError(f"frame {index} of pool {self._name!r} is no longer held here")
                free = [k for k in range(MAX_SHARES) if header[base + SHARES + k] == 0]
                if len(free) < count:
                    raise PumaError(f"frame pool {self._name!r}: a frame can be shared by at most {MAX_SHARES} readers")
            else:
                free = list(range(MAX_SHARES))
                header[base + READERS] = 0
            for k in free[:count]:
                header[base + SHARES + k] = -1
            header[base + READERS] += count
            header[base + OWNER] = SHARED
            return gen

    def _claim(self, index: int, gen: int, kind: int) -> bool:
        """A frame handed to this process arrives: take it (False: dropped meanwhile)."""
        header = self._header
        base = HEAD + W * index
        me = _registry.pid
        if kind == WRITABLE and not self._drop_oldest:  # nobody else may take a chunk in flight: no lock
            if header[base + GEN] != gen or header[base + OWNER] not in (IN_FLIGHT, me):
                return False
            header[base + OWNER] = me
            return True
        with self._lock:
            if header[base + GEN] != gen:
                return False
            if kind == SHARE:
                if header[base + OWNER] != SHARED:
                    return False
                for k in range(MAX_SHARES):
                    if header[base + SHARES + k] == -1:
                        header[base + SHARES + k] = me
                        return True
                return False
            if header[base + OWNER] not in (IN_FLIGHT, me):
                return False
            header[base + OWNER] = me
            return True

    def _oldest_in_flight(self) -> int | None:
        """A drop-oldest pool reclaims the frame handed over longest ago and not received (lock held)."""
        header = self._header
        owners = header[HEAD + OWNER : HEAD + W * self._count : W].tolist()
        seqs = header[HEAD + SEQ : HEAD + W * self._count : W].tolist()
        waiting = [(seqs[i], i) for i, owner in enumerate(owners) if owner == IN_FLIGHT]
        return min(waiting)[1] if waiting else None

    def _free_pid(self, pid: int) -> int:
        """Return the chunks the dead process ``pid`` held, and rebuild the free list (how many returned)."""
        if self._closed or pid <= 0:
            return 0
        header = self._header
        returned = 0
        with self._lock:
            while self._take_token() is not None:
                pass  # the free list is rebuilt from the header below
            for index in range(self._count):
                base = HEAD + W * index
                owner = header[base + OWNER]
                last = False
                while owner == SHARED and pid in header[base + SHARES : base + W].tolist():
                    last = self._drop_share(base, pid)
                if owner == pid or last:
                    header[base + OWNER] = FREE
                    header[base + GEN] += 1
                    returned += 1
            header[H_RETURNED] += returned
            self._put_tokens([i for i in range(self._count) if header[HEAD + W * i + OWNER] == FREE])
        return returned

    # --- the free list ---------------------------------------------------------------------------------
    def _take_token(self) -> int | None:
        """A free chunk's index, or None (lock held)."""
        if self._shared_memory is None:
            return self._free_local.popleft() if self._free_local else None
        try:
            data = os.read(self._tokens_r, 4)
        except BlockingIOError:
            return None
        index: int = _TOKEN.unpack(data)[0]
        return index

    def _put_tokens(self, indices: Any) -> None:
        """Chunks came free (lock held): wake whoever waits for one."""
        if self._shared_memory is None:
            self._free_local.extend(indices)
            for waker in self._waiters:
                waker.wake()
            self._waiters.clear()
            return
        data = b"".join(_TOKEN.pack(i) for i in indices)
        if data:
            os.write(self._tokens_w, data)  # the pipe holds every index at once: never full


def _local_header(count: int) -> memoryview:
    return memoryview(bytearray(8 * (HEAD + W * count))).cast("q")


def _by_key(key: str, how: bytes) -> FramePool:
    """The pool named in a pickle: the one open here, else opened from ``how``."""
    return _registry.pool_by_ref(key, how)


def _attach(spec: tuple[Any, ...], fds: Any, where: tuple[int, ...], name: str | None) -> FramePool:
    """The pool in this process: the one already here, or mapped from the descriptors passed (or named)."""
    key, label, shape, dtype, count, drop_oldest, size = spec
    found = _here.get(key)
    if found is not None and not found._closed:
        if fds is not None:
            for fd in (d.detach() for d in fds):
                os.close(fd)
        return found
    memory, tokens_r, tokens_w = open_shared(f"frame pool {label!r}", fds, where, name, size)
    pool = FramePool.__new__(FramePool)
    pool._key, pool._name, pool._shape, pool._dtype = key, label, tuple(shape), np.dtype(dtype)
    pool._count, pool._drop_oldest, pool._creator, pool._origin = count, drop_oldest, where[0], tuple(where)
    pool._header_bytes, pool._stride, _ = _layout(pool._shape, pool._dtype, count)
    pool._shared_memory = memory
    pool._setup_shared(tokens_r, tokens_w)
    _here[key] = pool
    _registry.track(_after_fork_in_child)
    return pool


def _after_fork_in_child() -> None:
    """In a forked child (registered when the first pool opens in a process)."""
    for pool in list(_here.values()):  # a lock held by another thread at the fork is nobody's here
        if pool._shared_memory is not None:
            pool._lock = _FileLock(pool._shared_memory.fd)
        else:
            pool._lock = threading.RLock()
