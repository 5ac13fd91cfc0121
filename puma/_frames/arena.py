"""A process buffer's shared memory for large out-of-band buffers: recycled blocks in one file.

A process buffer makes one arena when it is made (one descriptor; no memory
until a large value is published).  A publisher that pickles a value with an
out-of-band buffer of :data:`THRESHOLD` bytes or more copies that buffer into
a block of the arena and writes only a small handle on the pipe, so its
``publish`` returns as soon as there is room in the buffer instead of
waiting in the pipe write for a reader; the reader maps the block and the
value's array uses the shared memory itself (no copy).

* The arena is one file: an ``os.memfd_create`` file on Linux (nothing in
  ``/dev/shm``; the kernel frees it when the last process that has it lets
  go, whoever is killed), a named segment elsewhere.  It crosses into child
  processes with the buffer (inherited under fork, its descriptor duplicated
  under spawn and forkserver).
* Blocks come in size classes (four to an octave, from 64 KiB), carved once
  from the file and recycled: a freed block goes on its class's free list
  and the next value of that class reuses it, its pages already mapped in
  the processes that used it.  A process maps the file in a few large
  windows (each twice the one before), never once per value.
* The header (64-bit slots at the start of the file) records each block's
  holder: the publisher copying into it, in flight (its handle in the pipe),
  or the reader holding the value.  Changes happen under a record lock on
  the file, which the kernel lets go of when its holder dies.
* A block is freed when the value's buffer is collected in the reader; when
  a process dies, the Runner frees the blocks it held
  (:func:`puma._frames.registry.free_frames_held_by`), and when a buffer is
  closed with no reader left, the blocks in flight
  (:func:`~puma._frames.registry.free_frames_sent_to`).
* Each block is reserved (``posix_fallocate``) when it is carved: when the
  memory is short, or the block table full, the publisher writes the value
  into the pipe as before (never a ``SIGBUS``).
"""

from __future__ import annotations

import mmap
import os
import threading
import weakref
from multiprocessing.reduction import DupFd
from typing import Any

from puma._core.errors import PumaError
from puma._frames import registry as _registry
from puma._frames.filelock import _FileLock

__all__ = ["THRESHOLD", "Arena", "size_class"]

#: Out-of-band buffers of at least this many bytes go through shared memory (see docs/buffers.md).
THRESHOLD = 1 << 16

_PAGE = mmap.PAGESIZE
_Q = 8
# --- the header's 64-bit slots -----------------------------------------------------------------
_H_END = 0  # bytes of the file carved into blocks so far (the bump pointer), after the header
_H_BLOCKS = 1  # blocks carved
_H_BYTES = 2  # bytes carved (for statistics and tests)
_CLASSES = 96  # size classes: 64 KiB to 2**39 bytes, four to an octave
_H_HEADS = 8  # each class's free list: its first block + 1 (0: empty)
_MAX_BLOCKS = 1024
_B = _H_HEADS + _CLASSES  # the block table
_W = 5  # slots per block: offset, length, owner, generation, next free (+1)
_OFF, _LEN, _OWNER, _GEN, _NEXT = range(_W)
_HEADER_BYTES = -(-(_Q * (_B + _W * _MAX_BLOCKS)) // _PAGE) * _PAGE
FREE = 0
IN_FLIGHT = -1
# The file's windows (virtual: only carved blocks are backed): window k is _WINDOW << k bytes.
_WINDOW = 64 << 20
_MAX_WINDOWS = 24


def _window(k: int) -> tuple[int, int]:
    """Window ``k``: (its offset in the file, its size)."""
    return _HEADER_BYTES + _WINDOW * ((1 << k) - 1), _WINDOW << k


def size_class(n: int) -> tuple[int, int]:
    """The class of a buffer of ``n`` bytes: (its index, its blocks' size)."""
    if n <= THRESHOLD:
        return 0, THRESHOLD
    b = (n - 1).bit_length()  # 2**(b-1) < n <= 2**b
    step = 1 << (b - 3)
    j = -(-(n - (1 << (b - 1))) // step)  # 1 to 4
    return (b - 17) * 4 + j, (1 << (b - 1)) + j * step


class Arena:
    """One process buffer's shared memory for large out-of-band buffers (see the module's text)."""

    def __init__(self, key: str, fd: int, name: str | None, owner: bool) -> None:
        self.key = key  # the buffer's key
        self.fd = fd
        self.name = name  # a named segment's name (not on Linux)
        self._owner = os.getpid() if owner else -1  # unlinks a named segment
        self._lock = _FileLock(fd)
        self._thread_lock = threading.Lock()  # maps windows
        self._maps: dict[int, tuple[mmap.mmap, memoryview]] = {}
        self._header: memoryview | None = None
        self.closed = False
        self._finalizer = weakref.finalize(self, _close_fd, fd)  # an arena dropped without close()
        _registry.arenas[key] = self
        _registry.track(_after_fork_in_child)

    @classmethod
    def create(cls, key: str) -> Arena:
        """A new, empty arena for the buffer ``key``."""
        from puma._frames import memory

        name: str | None = None
        if memory._anonymous():
            fd = os.memfd_create(f"puma-buffer-{key}", getattr(os, "MFD_CLOEXEC", 0))
        else:
            memory.sweep_dead_owners()
            name = memory.segment_name()
            fd = os.open(os.path.join(memory.SHM_PATH, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        return cls(key, fd, name, True)

    def __reduce__(self) -> Any:
        if self.closed:
            raise ValueError("arena closed")
        return (_attach, (self.key, DupFd(self.fd), self.name))

    # --- the header and the windows ------------------------------------------------------------
    def _slots(self) -> memoryview | None:
        """The header's slots, mapped on first use (None while no block was ever carved)."""
        header = self._header
        if header is None:
            with self._thread_lock:
                if self._header is None:
                    if os.fstat(self.fd).st_size < _HEADER_BYTES:
                        return None
                    area = mmap.mmap(self.fd, _HEADER_BYTES)
                    self._maps[-1] = (area, memoryview(area))
                    self._header = memoryview(area).cast("q")
                header = self._header
        return header

    def _area(self, k: int) -> memoryview:
        """Window ``k`` of the file, mapped in this process (once)."""
        found = self._maps.get(k)
        if found is None:
            with self._thread_lock:
                found = self._maps.get(k)
                if found is None:
                    offset, size = _window(k)
                    area = mmap.mmap(self.fd, size, offset=offset)
                    found = self._maps[k] = (area, memoryview(area))
        return found[1]

    def _where(self, offset: int) -> tuple[int, int]:
        """The window holding file offset ``offset``, and the offset in it."""
        k = ((offset - _HEADER_BYTES) // _WINDOW + 1).bit_length() - 1
        return k, offset - _window(k)[0]

    # --- publishing ------------------------------------------------------------------------------------
    def put(self, raw: memoryview) -> tuple[int, int] | None:
        """Copy ``raw`` into a block now in flight: (block, generation); None if no block can be had."""
        if self.closed:
            return None
        c, length = size_class(raw.nbytes)
        if c >= _CLASSES:
            return None
        me = _registry.pid
        with self._lock:
            header = self._slots()
            if header is None:
                if not self._grow(_HEADER_BYTES) or not _reserve(self.fd, 0, _HEADER_BYTES):
                    return None
                header = self._slots()
                assert header is not None
            head = header[_H_HEADS + c]
            if head:
                index = head - 1
                base = _B + _W * index
                header[_H_HEADS + c] = header[base + _NEXT]
            else:
                index = self._carve(header, length)
                if index < 0:
                    return None
                base = _B + _W * index
            header[base + _OWNER] = me
            header[base + _GEN] += 1
            gen = int(header[base + _GEN])
            offset = int(header[base + _OFF])
        k, at = self._where(offset)
        self._area(k)[at : at + raw.nbytes] = raw  # the one copy, outside the lock
        header[base + _OWNER] = IN_FLIGHT  # only its holder changes a held block's owner
        return index, gen

    def _grow(self, size: int) -> bool:
        """The file is at least ``size`` bytes long (sparse: nothing is backed by this)."""
        try:
            if os.fstat(self.fd).st_size < size:
                os.ftruncate(self.fd, size)
        except OSError:
            return False
        return True

    def _carve(self, header: memoryview, length: int) -> int:
        """A new block of ``length`` bytes, reserved (lock held); -1 if none can be had."""
        count = int(header[_H_BLOCKS])
        if count >= _MAX_BLOCKS:
            return -1
        offset = _HEADER_BYTES + int(header[_H_END])
        k, at = self._where(offset)
        while at + length > _window(k)[1]:  # it does not fit in this window: the next one that holds it
            k += 1
            if k >= _MAX_WINDOWS:
                return -1
            offset, at = _window(k)[0], 0
        start, size = _window(k)
        if not self._grow(start + size):
            return -1
        if not _reserve(self.fd, offset, length):  # reserved now: too little memory is no SIGBUS later
            return -1
        base = _B + _W * count
        header[base + _OFF] = offset
        header[base + _LEN] = length
        header[base + _NEXT] = 0
        header[_H_END] = offset + length - _HEADER_BYTES
        header[_H_BLOCKS] = count + 1
        header[_H_BYTES] += length
        return count

    def abandon(self, refs: list[tuple[int, int]]) -> None:
        """Blocks :meth:`put` gave for a value that was not written after all: free them."""
        for index, gen in refs:
            self._free(index, gen, IN_FLIGHT)

    # --- receiving -------------------------------------------------------------------------------------
    def claim(self, index: int, gen: int) -> bool:
        """A handle was read from the pipe (read lock held): its block is this process's now."""
        header = self._slots()
        if header is None or not 0 <= index < _MAX_BLOCKS:
            return False
        base = _B + _W * index
        if header[base + _GEN] != gen or header[base + _OWNER] != IN_FLIGHT:
            return False
        header[base + _OWNER] = _registry.pid
        return True

    def view(self, index: int, gen: int, size: int) -> Any:
        """The block's first ``size`` bytes, writable; the block is freed when the view is collected."""
        header = self._slots()
        base = _B + _W * index
        if header is None or header[base + _GEN] != gen or header[base + _OWNER] != _registry.pid:
            raise PumaError(
                "a large value's shared memory was reclaimed before it was received (its buffer was closed)"
            )
        k, at = self._where(int(header[base + _OFF]))
        self._area(k)
        import ctypes  # (not at import: most programs never receive a large value)

        # A ctypes array over the mapping: the exporter numpy (or whatever unpickles the value) keeps
        # alive, so it is collected with the value's last view (a memoryview would be let go at once).
        view = (ctypes.c_char * size).from_buffer(self._maps[k][0], at)
        weakref.finalize(view, self._free, index, gen, _registry.pid)
        return view

    def adopt(self, index: int, gen: int, holder: int) -> bool:
        """A dead reader's journal holds this block's handle: make it this process's, if ``holder`` or nobody had it.

        ``holder`` is the dead reader's pid; nobody: the handle was read from the
        pipe and not claimed yet (in flight).  False if the block was freed
        since (its value collected in the reader) or given to another value.
        """
        header = self._slots()
        if header is None or not 0 <= index < _MAX_BLOCKS:
            return False
        base = _B + _W * index
        with self._lock:
            if header[base + _GEN] != gen or header[base + _OWNER] not in (holder, IN_FLIGHT):
                return False
            header[base + _OWNER] = _registry.pid
        return True

    def copy(self, index: int, gen: int, size: int) -> bytearray:
        """A copy of the first ``size`` bytes of a block this process holds (see :meth:`adopt`)."""
        header = self._slots()
        base = _B + _W * index
        if header is None or header[base + _GEN] != gen or header[base + _OWNER] != _registry.pid:
            raise PumaError("a large value's shared memory was freed before its journal was read")
        k, at = self._where(int(header[base + _OFF]))
        return bytearray(self._area(k)[at : at + size])

    def release(self, refs: list[tuple[int, int]]) -> None:
        """Free the blocks this process holds of ``refs`` (adopted ones, once copied)."""
        for index, gen in refs:
            self._free(index, gen, _registry.pid)

    def _free(self, index: int, gen: int, holder: int) -> None:
        """Free a block held by ``holder`` (a pid, or IN_FLIGHT) if it still is (same generation)."""
        if self.closed or (holder > 0 and holder != _registry.pid):
            return  # a forked child's copy of a value its parent holds: the parent frees it
        header = self._slots()
        if header is None:
            return
        base = _B + _W * index
        with self._lock:
            if header[base + _GEN] == gen and header[base + _OWNER] == holder:
                self._push(header, index)

    def _push(self, header: memoryview, index: int) -> None:
        base = _B + _W * index
        c = size_class(int(header[base + _LEN]))[0]
        header[base + _OWNER] = FREE
        header[base + _GEN] += 1
        header[base + _NEXT] = header[_H_HEADS + c]
        header[_H_HEADS + c] = index + 1

    # --- the Runner ------------------------------------------------------------------------------------
    def free_where(self, owner: int) -> int:
        """Free every block whose holder is ``owner`` (a dead pid, or IN_FLIGHT); how many."""
        if self.closed:
            return 0
        header = self._slots()
        if header is None:
            return 0
        freed = 0
        with self._lock:
            for index in range(int(header[_H_BLOCKS])):
                if header[_B + _W * index + _OWNER] == owner:
                    self._push(header, index)
                    freed += 1
        return freed

    def usage(self) -> tuple[int, int, int]:
        """(blocks carved, blocks not free, bytes carved)."""
        header = self._slots()
        if header is None:
            return 0, 0, 0
        with self._lock:
            count = int(header[_H_BLOCKS])
            busy = sum(header[_B + _W * i + _OWNER] != FREE for i in range(count))
            return count, busy, int(header[_H_BYTES])

    def close(self) -> None:
        """Close the file here (and unlink a named one this process made); mappings go with their last view."""
        if self.closed:
            return
        self.closed = True
        if _registry.arenas.get(self.key) is self:
            del _registry.arenas[self.key]
        header, self._header = self._header, None
        if header is not None:
            header.release()
        for area, view in self._maps.values():
            view.release()
            try:
                area.close()
            except BufferError:
                pass  # values still use it: the mapping goes with the last of them
        self._maps.clear()
        self._finalizer()  # closes the descriptor, once
        if self.name is not None and self._owner == os.getpid():
            from puma._frames import memory

            memory._unlink(self.name)


def _reserve(fd: int, offset: int, length: int) -> bool:
    """Back ``length`` bytes of the file at ``offset`` now; False if the memory is not there."""
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # macOS: the pages are backed when first written
        return True
    try:
        fallocate(fd, offset, length)
    except OSError:
        return False
    return True


def _attach(key: str, fd: Any, name: str | None) -> Arena:
    """The arena in this process: the one already here, or the descriptor passed."""
    number = fd.detach()
    found = _registry.arenas.get(key)
    if found is not None and not found.closed:
        os.close(number)
        return found
    return Arena(key, number, name, False)


def _close_fd(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass


def _after_fork_in_child() -> None:
    """In a forked child (registered when the first arena is made in a process)."""
    for arena in list(_registry.arenas.values()):
        arena._lock = _FileLock(arena.fd)  # a lock held by another thread at the fork is nobody's here
        arena._thread_lock = threading.Lock()
