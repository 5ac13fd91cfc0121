"""A reader's journal: what a restartable reader holds, kept where its parent can read it after a ``SIGKILL``.

A process buffer's subscription reads the pipe in bulk: the values it read
ahead of what it hands out live in its own memory, and die with it.  A
runnable its Runner may restart (:class:`puma.RestartPolicy`) keeps, per
input, a journal in a small memory-mapped file (under ``/dev/shm`` where
there is one): a copy of the bytes its last read brought, and where in them
it is.  When the process is killed outright the parent reads the journal and
gives the next incarnation what was read but not handed out, and knows the
values that were in flight.

The header is eight 64-bit words:

* ``VALID``: 1 while the data is a faithful copy (0 while it is rewritten, or
  after a read too large to copy: then the buffer's part is lost);
* ``TAIL``: how many bytes of data the last read brought;
* ``DONE``, ``DONE_INDEX``: the position (frame offset, index in a batch) up
  to which the values were processed (the reader came back for more);
* ``TAKEN``, ``TAKEN_INDEX``: the position up to which they were handed out;
* ``STASH_DONE``, ``STASH_TAKEN``: the same, counted in the values the
  incarnation was given back first (its stash), which come before the buffer's.

Writes cost a few word stores per value; the copy is one ``memcpy`` per bulk read.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import pickle
import struct
import tempfile
from typing import Any

from puma._buffers.process_publisher import BATCH, ITEM, OOB
from puma._core import codec

__all__ = ["DATA", "Journal", "journal_dir", "journal_path", "read", "recover", "remove"]

VALID, TAIL, DONE, DONE_INDEX, TAKEN, TAKEN_INDEX, STASH_DONE, STASH_TAKEN = range(8)
_HEADER = 64
_SIZE = codec.SIZE
_COUNT = struct.Struct("!I")
DATA = 1 << 19  # bytes of data a journal copies (twice a subscription's usual read buffer)


def journal_dir() -> str:
    """Where journals live: memory (``/dev/shm``) where there is one."""
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()  # noqa: S108


def journal_path(prefix: str, key: str) -> str:
    """The journal of the input ``key`` (a buffer's supervision key) of the incarnation named by ``prefix``."""
    return f"{prefix}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"  # noqa: S324 - a name, not a secret


class Journal:
    """The writing side, in the reader's process."""

    def __init__(self, path: str) -> None:
        self.path = path
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, _HEADER + DATA)
            self._map = mmap.mmap(fd, _HEADER + DATA)
        finally:
            os.close(fd)
        view = memoryview(self._map)
        self.words = view[:_HEADER].cast("q")
        self.data = view[_HEADER:]

    def filled(self, source: memoryview, tail: int) -> None:
        """A bulk read brought ``source[:tail]`` (every earlier value was processed)."""
        words = self.words
        words[VALID] = 0
        words[STASH_DONE] = words[STASH_TAKEN]
        words[DONE] = words[DONE_INDEX] = words[TAKEN] = words[TAKEN_INDEX] = 0
        if tail <= DATA:
            self.data[:tail] = source[:tail]
            words[TAIL] = tail
            words[VALID] = 1

    def overflow(self) -> None:
        """The reader's bytes outgrew the journal (a large frame): the buffer's part cannot be recovered."""
        self.words[VALID] = 0

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


def recover(path: str) -> tuple[int, int, list[Any], list[Any]] | None:
    """Read (and remove) a process buffer reader's journal after its death.

    Returns ``(stash_done, stash_taken, in_flight, rest)``: how many values of
    its stash it had processed and been handed, the buffer's values it was
    handed and had not processed, and those it had read and not been handed;
    None if it kept no journal.
    """
    found = read(path)
    remove(path)
    if found is None:
        return None
    words, data = found
    in_flight: list[Any] = []
    rest: list[Any] = []
    done = (words[DONE], words[DONE_INDEX])
    taken = (words[TAKEN], words[TAKEN_INDEX])
    view = memoryview(data)
    p = 0
    while p + 5 <= len(data):
        head, size = 4, _SIZE.unpack_from(data, p)[0]
        if size < 0:
            head, size = codec.parse_header(data, p, len(data))
        stop = p + head + size
        if stop > len(data):
            break
        kind = data[p + head]
        body = view[p + head + 1 : stop]
        following = stop
        try:
            if kind == OOB:
                (count,) = _COUNT.unpack_from(body, 0)
                sizes = struct.unpack_from(f"!{count}Q", body, 4)
                offset = 4 + 8 * count
                kind = body[offset]
                raws = []
                for n in sizes:
                    raws.append(bytearray(view[following : following + n]))
                    following += n
                if following > len(data):
                    break
                payload = pickle.loads(body[offset + 1 :], buffers=raws)
            else:
                payload = pickle.loads(body)
        except Exception:  # noqa: BLE001 - a value that cannot be rebuilt here is lost
            p = following
            continue
        values = [payload] if kind == ITEM else list(payload) if kind == BATCH else []
        for index, value in enumerate(values):
            if (p, index) < done:
                continue
            (in_flight if (p, index) < taken else rest).append(value)
        p = following
    return words[STASH_DONE], words[STASH_TAKEN], in_flight, rest
