"""A reader's journal: what a restartable reader holds, kept where its parent can read it after a ``SIGKILL``.

A process buffer's subscription reads the pipe in bulk: the values it read
ahead of what it hands out live in its own memory, and die with it.  A
runnable its Runner may restart (:class:`puma.RestartPolicy`) keeps, per
input, a journal in a memory-mapped file (under ``/dev/shm`` where there is
one): a copy of every byte each read of the pipe brought, written as soon as
the read returns (still holding the buffer's read lock), and where in them
the reader is.  The copy is the stream as it came off the pipe, whatever
the values: small frames, frames of any size (the journal grows for them,
and shrinks back once they stop coming), and the raw buffers of out-of-band values
(NumPy arrays), which follow their frame there as on the pipe even when the
subscription read them straight into the arrays' memory.  A large value whose
buffers are in the buffer's arena (:mod:`puma._buffers.process_large`) is a
small frame of handles there: when its reader dies, the Runner keeps the
blocks the journal names (:func:`keep_blocks`, before the dead process's
blocks are freed), and :func:`recover` copies the values out of them.

When the process is killed outright the parent reads the journal and gives
the next incarnation what was read but not handed out, and knows the values
that were in flight.  A reader killed in the middle of a frame (it held the
read lock, the pipe is not at a frame boundary) is finished by the parent
(:func:`finish_read`): it reads the rest of that frame from the pipe, on the
dead reader's behalf and before the lock is let go, so the stream goes on.

The header is sixteen 64-bit words (see the names below):

* ``VALID``: 1 once the positions describe the data (0 while a read resets
  them; 2 when the fill outgrew the memory the journal could get: lost);
* ``TAIL``: how many bytes of data the reads of this fill brought;
* ``DONE``, ``DONE_INDEX``: the position (frame offset, index in a batch) up
  to which the values were processed (the reader came back for more);
* ``TAKEN``, ``TAKEN_INDEX``: the position up to which they were handed out;
* ``STASH_DONE``, ``STASH_TAKEN``: the same, counted in the values the
  incarnation was given back first (its stash), which come before the buffer's;
* ``READING``: 1 while a read of the pipe is under way (its count not yet
  known: the bytes it took cannot be told, and the stream cannot be recovered);
* ``COUNTED``: the completions of this fill were counted in the buffer;
* ``FINISHED``: the parent read the rest of a frame the reader died in;
* ``OWED``, ``GIVEN``: the permits the reader owes the buffer (it gives them
  back in groups), and the offset before which the frames' permits were
  counted so (a frame at ``GIVEN`` or after still holds its own): the
  parent gives back what a dead reader held, so the buffer keeps its capacity.

Writes cost a few word stores per value; the copy is one ``memcpy`` per read.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import pickle
import select
import struct
import time
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from puma._buffers import process_large as _large
from puma._buffers.process_large import SHARED
from puma._buffers.process_publisher import BATCH, COMPLETE, HANDED, ITEM, OOB
from puma._buffers.shared import BROKEN, READER
from puma._core import codec
from puma._frames.frame import received_handle

if TYPE_CHECKING:
    from puma._buffers.process import ProcessBuffer
    from puma._frames.arena import Arena

__all__ = [
    "DATA",
    "Journal",
    "finish_read",
    "journal_dir",
    "journal_path",
    "keep_blocks",
    "read",
    "recover",
    "remove",
]

(
    VALID,
    TAIL,
    DONE,
    DONE_INDEX,
    TAKEN,
    TAKEN_INDEX,
    STASH_DONE,
    STASH_TAKEN,
    READING,
    COUNTED,
    FINISHED,
    OWED,
    GIVEN,
) = range(13)
log = logging.getLogger("puma.supervision")
_WORDS = 16
_HEADER = 8 * _WORDS
_SIZE = codec.SIZE
_BIG = codec.BIG_SIZE
_COUNT = struct.Struct("!I")
_WORD = struct.Struct("q")
DATA = 1 << 19  # bytes of data a journal maps to begin with (twice a subscription's usual read buffer)
_SHRINK_AFTER = 64  # fills in a row that fit in DATA before a grown journal gives its memory back
_PATIENCE = 2.0  # seconds without a byte of a frame's rest before the parent deems it never coming


def journal_dir() -> str:
    """Where journals live: memory (``/dev/shm``) where there is one."""
    if os.path.isdir("/dev/shm"):  # noqa: S108
        return "/dev/shm"  # noqa: S108
    import tempfile  # only where there is no /dev/shm: it loads a lot (random, shutil) for one call

    return tempfile.gettempdir()


def journal_path(prefix: str, key: str) -> str:
    """The journal of the input ``key`` (a buffer's supervision key) of the incarnation named by ``prefix``."""
    # Two 32-bit checksums make the name (not hashlib: loading OpenSSL into every parent costs
    # about 20 ms and a dozen shared libraries, which every fork then copies the mappings of).
    data = key.encode()
    return f"{prefix}-{zlib.crc32(data):08x}{zlib.adler32(data):08x}"


class Journal:
    """The writing side, in the reader's process."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        self._map: mmap.mmap | None = None
        self._capacity = 0
        self._last = 0  # bytes the current fill holds
        self._small = 0  # fills in a row that needed no more than DATA, while grown
        self._lost = False  # this fill outgrew the memory the journal could get
        self._warned = False
        self.words: memoryview
        self.data: memoryview
        if not self._remap(DATA):
            raise OSError(f"no room for a read journal at {path}")

    def _remap(self, capacity: int) -> bool:
        """Map the file anew with room for ``capacity`` bytes of data (what it holds stays in the file).

        The room is reserved first (``posix_fallocate``): a full ``/dev/shm``
        says so here (False, the old mapping kept) rather than with a
        ``SIGBUS`` when the copy touches a page it cannot have.
        """
        fd = os.open(self.path, os.O_RDWR)
        try:
            if capacity > max(self._capacity, DATA):  # (the first DATA bytes stay sparse, as most reads are small)
                try:
                    os.posix_fallocate(fd, 0, _HEADER + capacity)
                except OSError:
                    return False
            else:
                os.ftruncate(fd, _HEADER + capacity)
            if self._map is not None:
                self.words.release()
                self.data.release()
                with contextlib.suppress(BufferError, ValueError):
                    self._map.close()
            self._map = mmap.mmap(fd, _HEADER + capacity)
        finally:
            os.close(fd)
        self._capacity = capacity
        self._small = 0
        view = memoryview(self._map)
        self.words = view[:_HEADER].cast("q")
        self.data = view[_HEADER:]
        return True

    def _grow(self, size: int) -> bool:
        """Room for ``size`` bytes of this fill; False (and this fill is lost to the journal) if there is none."""
        if size <= self._capacity:
            return not self._lost
        if self._lost or not self._remap(size):
            if not self._lost:
                self._lost = True
                self.words[VALID] = 2
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "a read journal could not grow to %d bytes (no room under %s): a value this large is "
                        "lost if its reader dies holding it",
                        size,
                        os.path.dirname(self.path),
                    )
            return False
        return True

    def expect(self, size: int) -> None:
        """This fill will hold ``size`` bytes (a large frame is being read): make room at once."""
        self._grow(size)

    def begin(self) -> None:
        """A read of the pipe starts a new fill (holding the read lock; every earlier value was processed)."""
        words = self.words
        words[VALID] = 0
        words[COUNTED] = 0
        words[STASH_DONE] = words[STASH_TAKEN]
        words[DONE] = words[DONE_INDEX] = words[TAKEN] = words[TAKEN_INDEX] = words[TAIL] = words[GIVEN] = 0
        self._lost = False
        words[VALID] = 1
        if self._capacity > DATA:
            # Grown for large values: give the memory back once they stop coming (not at each
            # small fill in between: a remap costs its pages' faults again).
            self._small = self._small + 1 if self._last <= DATA else 0
            if self._small >= _SHRINK_AFTER:
                self._remap(DATA)
                self.words[VALID] = 1
        self._last = 0

    def reading(self) -> None:
        """A read system call starts: until :meth:`wrote`, the bytes it takes are unknown."""
        self.words[READING] = 1

    def wrote(self, offset: int, source: memoryview) -> None:
        """The read brought ``source``, which sits at ``offset`` in the fill's stream of bytes."""
        stop = offset + len(source)
        words = self.words
        if stop <= self._capacity or self._grow(max(stop, 2 * self._capacity)):
            self.data[offset:stop] = source
            self._last = stop
            words = self.words
            words[TAIL] = stop
        words[READING] = 0

    def owing(self, owed: int, given: int) -> None:
        """The reader owes ``owed`` permits; the frames before offset ``given`` are counted in them (or given back)."""
        words = self.words
        words[OWED] = owed
        words[GIVEN] = given

    def counted(self) -> None:
        """The completions this fill read were counted in the buffer."""
        self.words[COUNTED] = 1

    def taken(self, offset: int, index: int) -> None:
        """Values up to (``offset``, ``index``) were handed out."""
        words = self.words
        words[TAKEN] = offset
        words[TAKEN_INDEX] = index

    def done(self) -> None:
        """The reader came back for more: what it was handed is processed."""
        words = self.words
        words[DONE] = words[TAKEN]
        words[DONE_INDEX] = words[TAKEN_INDEX]
        words[STASH_DONE] = words[STASH_TAKEN]

    def stash_taken(self, count: int) -> None:
        """``count`` values of the stash were handed out."""
        self.words[STASH_TAKEN] = count

    def close(self, unlink: bool = True) -> None:
        """Release the mapping (and remove the file)."""
        self.words.release()
        self.data.release()
        if self._map is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._map.close()
        if unlink:
            remove(self.path)


def read(path: str) -> tuple[list[int], bytes] | None:
    """The header words and the valid data of the journal at ``path``; None if there is none."""
    try:
        with open(path, "rb") as file:
            content = file.read()
    except FileNotFoundError:
        return None
    if len(content) < _HEADER:
        return None
    words = list(memoryview(content[:_HEADER]).cast("q"))
    data = content[_HEADER : _HEADER + words[TAIL]] if words[VALID] == 1 else b""
    return words, data


def remove(path: str) -> None:
    """Remove the journal at ``path`` if it is there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def missing(data: bytes | bytearray) -> int:
    """How many more bytes the stream ``data`` needs to end at a frame boundary (0: it does), or to tell how many.

    An out-of-band frame ends after its raw buffers.
    """
    p, n = 0, len(data)
    while p < n:
        if n - p < 4:
            return p + 4 - n
        size: int = _SIZE.unpack_from(data, p)[0]
        head = 4
        if size < 0:
            if n - p < 12:
                return p + 12 - n
            head, size = 12, _BIG.unpack_from(data, p + 4)[0]
        stop = p + head + size
        if stop > n:
            return stop - n
        if data[p + head] == OOB:
            (count,) = _COUNT.unpack_from(data, p + head + 1)
            raw: tuple[int, ...] = struct.unpack_from(f"!{count}Q", data, p + head + 5)
            stop += sum(raw)
            if stop > n:
                return stop - n
        p = stop
    return 0


def finish_read(path: str, buffer: ProcessBuffer[Any], pid: int) -> bool:
    """The reader ``pid``, keeping the journal at ``path``, died: finish the frame it was reading, if it was.

    Called by the Runner before the dead reader's locks are let go.  If it
    died holding the read lock in the middle of a frame, the rest of that
    frame is read from the pipe (as the dead reader would have, waiting for a
    publisher writing it now) and added to the journal; the pipe is then at a
    frame boundary and the stream goes on.  False if that cannot be done: the
    read it died in had not recorded what it took, or the frame's writer died
    too, or no byte of it came for ``_PATIENCE`` seconds.  The stream is then
    broken, as without a journal.  True if it was not reading, or the frame
    is finished.
    """
    shared = buffer._shared
    if shared[READER] != -pid:
        return True
    found = read(path)
    if found is None:
        return False
    words, data = found
    if words[VALID] == 0:
        shared[READER] = pid  # it died starting a fill: nothing of the pipe was read yet
        return True
    if words[VALID] != 1 or words[READING]:
        return False  # what it read is not all in the journal (no room), or not known (a read under way)
    stream = bytearray(data)
    fd = buffer._reader.fileno()
    waiting = select.poll()
    waiting.register(fd, select.POLLIN)
    patience = time.monotonic() + _PATIENCE
    while (need := missing(stream)) > 0:
        try:
            chunk = os.read(fd, need)
        except BlockingIOError:
            left = patience - time.monotonic()
            if shared[BROKEN] or left <= 0:
                return False
            waiting.poll(min(left, 0.05) * 1000)  # a writer's death has no other signal here
            continue
        if not chunk:
            return False
        stream += chunk
        patience = time.monotonic() + _PATIENCE
    with open(path, "r+b") as file:
        file.seek(_HEADER + len(data))
        file.write(stream[len(data) :])
        file.seek(8 * TAIL)
        file.write(_WORD.pack(len(stream)))
        file.seek(8 * FINISHED)
        file.write(_WORD.pack(1))
    shared[READER] = pid  # at a frame boundary again: its locks are let go as after any read
    return True


def _walk(data: bytes) -> Iterator[tuple[int, int, memoryview, int]]:
    """``(offset, kind, body, next)`` of each whole frame of ``data``; an out-of-band frame's raws end at ``next``."""
    view = memoryview(data)
    p = 0
    while p + 5 <= len(data):
        head, size = 4, _SIZE.unpack_from(data, p)[0]
        if size < 0:
            head, size = codec.parse_header(data, p, len(data))
        stop = p + head + size
        if head == 0 or stop > len(data):
            return
        kind = data[p + head]
        body = view[p + head + 1 : stop]
        if kind == OOB:
            (count,) = _COUNT.unpack_from(body, 0)
            stop += sum(struct.unpack_from(f"!{count}Q", body, 4))
            if stop > len(data):
                return
        yield p, kind, body, stop
        p = stop


def keep_blocks(path: str, arena: Arena, pid: int) -> list[tuple[int, int]]:
    """The reader ``pid`` died: the arena blocks its journal's values use are this process's now; those blocks.

    Called before the dead process's blocks are freed (after
    :func:`finish_read`): :func:`recover` copies the values out of them, then
    they are freed (:meth:`Arena.release`).
    """
    found = None if pid == os.getpid() else read(path)  # (a reader in a thread does not die alone)
    if found is None:
        return []
    kept: list[tuple[int, int]] = []
    for _, kind, body, _ in _walk(found[1]):
        if kind == SHARED:
            kept.extend(ref for ref in _large.blocks(body) if arena.adopt(*ref, pid))
    return kept


def _frames(data: bytes, arena: Arena | None, done: tuple[int, int]) -> Iterator[tuple[int, int, Any]]:
    """``(offset, kind, payload)`` of each whole frame of ``data``; an out-of-band frame's kind is its inner kind.

    A frame whose value cannot be rebuilt here is skipped (it is lost).  A
    large value's item processed already (before ``done``) is not copied out
    of the arena (its payload: None).
    """
    for p, kind, body, following in _walk(data):
        try:
            found = _payload(data, p, kind, body, following, arena=arena, done=done)
        except Exception:  # noqa: BLE001 - a value that cannot be rebuilt here is lost
            found = None
        if found is not None:
            yield p, *found


def _payload(
    data: bytes, p: int, kind: int, body: memoryview, following: int, *, arena: Arena | None, done: tuple[int, int]
) -> tuple[int, Any] | None:
    """The (inner) kind and payload of the frame at ``p`` (see :func:`_frames`); None if it is lost."""
    if kind == OOB:
        (count,) = _COUNT.unpack_from(body, 0)
        sizes = struct.unpack_from(f"!{count}Q", body, 4)
        offset = 4 + 8 * count
        pos = following - sum(sizes)
        raws = []
        for n in sizes:
            raws.append(bytearray(data[pos : pos + n]))
            pos += n
        return body[offset], pickle.loads(body[offset + 1 :], buffers=raws)
    if kind == SHARED:
        if body[_large.inner_kind_at(body)] == ITEM and (p, 0) < done:
            return ITEM, None
        return None if arena is None else _large.load(arena, body, copy=True)
    if kind == HANDED:
        return ITEM, received_handle(body)
    return kind, pickle.loads(body)


def recover(path: str, buffer: ProcessBuffer[Any] | None = None) -> tuple[int, int, list[Any], list[Any]] | None:
    """Read (and remove) a process buffer reader's journal after its death.

    Returns ``(stash_done, stash_taken, in_flight, rest)``: how many values of
    its stash it had processed and been handed, the buffer's values it was
    handed and had not processed, and those it had read and not been handed;
    None if it kept no journal.  The completions of a read the parent
    finished (:func:`finish_read`) are counted in ``buffer`` here, once the
    dead reader's locks are free, and the permits it held are given back.
    """
    found = read(path)
    remove(path)
    if found is None:
        return None
    words, data = found
    in_flight: list[Any] = []
    rest: list[Any] = []
    completions: list[Any] = []
    held = words[OWED]  # permits the dead reader held
    done = (words[DONE], words[DONE_INDEX])
    taken = (words[TAKEN], words[TAKEN_INDEX])
    for p, kind, payload in _frames(data, None if buffer is None else buffer._arena, done):
        if kind == COMPLETE:
            completions.append(payload)
        values = [payload] if kind == ITEM else list(payload) if kind == BATCH else []
        if p >= words[GIVEN]:
            held += len(values)  # read from the pipe, its permits not given back yet
        for index, value in enumerate(values):
            if (p, index) < done:
                continue
            (in_flight if (p, index) < taken else rest).append(value)
    if buffer is not None:
        if completions and words[FINISHED] and not words[COUNTED]:
            buffer._count_completions(completions)  # the dead reader read them and could not count them
        if held > 0:
            buffer._give_back(held)
    return words[STASH_DONE], words[STASH_TAKEN], in_flight, rest
