"""The memory behind a frame pool: anonymous on Linux, named elsewhere; reserved and touched at creation.

On Linux a pool is one ``os.memfd_create`` file: nothing is named in
``/dev/shm``, the descriptor reaches children like a pipe (inherited under
fork, duplicated under spawn and forkserver), and the kernel frees the memory
when the last process that maps it goes, however it ends.  Elsewhere it is a
named segment in ``/dev/shm``, kept out of the resource tracker, unlinked by
the process that made it when it is closed, and owned by the Runner: a
segment made in a child process is named for the process that runs its
Runner (``puma-<that pid>-<random>``), which unlinks what its children left
when it closes (:func:`release_children_segments`), and segments named for a
process that died are swept when the next one is made.

Either way the memory is reserved with ``os.posix_fallocate`` before any page
is used, so too little shared memory is a :class:`SharedMemoryTooSmall` at
creation and never a ``SIGBUS`` later, and every page is touched once then
(a first touch costs about 12 times a warm copy).
"""

from __future__ import annotations

import errno
import mmap
import os
import sys
from typing import Any

from puma._core.errors import PumaError
from puma._core.forking import refresh_in_children

__all__ = [
    "SHM_PATH",
    "Memory",
    "SharedMemoryTooSmall",
    "close_shared",
    "free_shared_memory",
    "makes_named_segments",
    "open_shared",
    "release_children_segments",
    "segment_name",
    "set_segment_owner",
    "sweep_dead_owners",
]

#: Where named segments live, and what a container's ``--shm-size`` limits.
SHM_PATH = "/dev/shm"  # noqa: S108 - the system's shared-memory mount, not a temporary file
_PAGE = mmap.PAGESIZE
_MiB = 1 << 20


def _mib(n: int) -> str:
    return f"{n / _MiB:.1f} MiB"


class SharedMemoryTooSmall(PumaError, MemoryError):
    """There is not enough shared memory for a frame pool (raised when the pool is made, never later).

    Attributes:
        needed: bytes the pool needs.
        free: bytes that were free (``-1`` if unknown).
        where: what ran short (``/dev/shm``, or the machine's memory for an anonymous pool).
    """

    def __init__(self, name: str, needed: int, free: int, where: str) -> None:
        self.needed = needed
        self.free = free
        self.where = where
        room = f"only {_mib(free)} is free" if free >= 0 else "the system refused to reserve it"
        hint = max(2 * needed, 256 * _MiB) // _MiB
        super().__init__(
            f"frame pool {name!r} needs {_mib(needed)} of shared memory and {room} in {where}; "
            f"use fewer or smaller frames, or give it more: in Docker, run the container with "
            f"--shm-size={hint}m (the default is 64 MiB)"
        )

    def __reduce__(self) -> Any:
        return (_too_small, (str(self), self.needed, self.free, self.where))


def _too_small(message: str, needed: int, free: int, where: str) -> SharedMemoryTooSmall:
    error = SharedMemoryTooSmall.__new__(SharedMemoryTooSmall)
    PumaError.__init__(error, message)
    error.needed, error.free, error.where = needed, free, where
    return error


def free_shared_memory(anonymous: bool) -> tuple[int, str]:
    """Bytes of shared memory free now, and where: ``/dev/shm`` for named segments, memory for anonymous ones."""
    if not anonymous:
        try:
            st = os.statvfs(SHM_PATH)
        except OSError:
            return -1, SHM_PATH
        return st.f_bavail * st.f_frsize, SHM_PATH
    import psutil

    free, where = int(psutil.virtual_memory().available), "the machine's memory"
    room = _cgroup_room()
    if room is not None and room < free:
        free, where = room, "this container's memory limit"
    return free, where


def _cgroup_room() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, else v1); None without a limit."""
    for limit, usage in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            with open(limit) as f:
                text = f.read().strip()
            with open(usage) as f:
                used = int(f.read().strip())
        except (OSError, ValueError):
            continue
        if text == "max" or int(text) >= 1 << 60:
            return None
        return max(int(text) - used, 0)
    return None


def _anonymous() -> bool:
    return hasattr(os, "memfd_create") and not _FORCE_NAMED


def makes_named_segments() -> bool:
    """True where the segments made here are named (and so need an owner: :func:`set_segment_owner`)."""
    return not _anonymous()


#: Tests set it to use named segments where memfd exists.
_FORCE_NAMED = False

#: The process whose Runner owns the named segments made here (None: this process, unless a Runner
#: started it).  Reset in forked children once either is set (see :mod:`puma._core.forking`).
_segment_owner: int | None = None
#: Named segments this process made and has not unlinked yet.
_made_here: set[str] = set()


def set_segment_owner(pid: int) -> None:
    """This process was started by the Runner in process ``pid``: the named segments made here are its."""
    global _segment_owner
    _segment_owner = pid
    refresh_in_children(_forked)


def segment_name() -> str:
    """A new named segment's name, for the Runner that owns it (see the module's text)."""
    owner = os.getpid() if _segment_owner is None else _segment_owner
    name = f"puma-{owner}-{os.urandom(6).hex()}"
    _made_here.add(name)
    refresh_in_children(_forked)
    return name


def release_children_segments() -> list[str]:
    """Unlink the named segments made for this process's Runner by its children (it is closing); their names.

    Those this process made itself are left to their own close.  Nothing to do where segments are
    anonymous (Linux).
    """
    if _anonymous():
        return []
    prefix = f"puma-{os.getpid()}-"
    try:
        names = [n for n in os.listdir(SHM_PATH) if n.startswith(prefix) and n not in _made_here]
    except OSError:
        return []
    for name in names:
        _unlink(name)
    return names


def _forked() -> None:
    global _segment_owner
    _segment_owner = None  # this process, until a Runner that started it says otherwise
    _made_here.clear()


class Memory:
    """One pool's shared memory, mapped in this process.

    ``fd`` is the memfd (Linux) or the named segment's descriptor; ``name``
    is ``None`` for anonymous memory.
    """

    __slots__ = ("__weakref__", "fd", "map", "name", "owner", "size")

    owner: int

    def __init__(self, fd: int, size: int, name: str | None, owner: bool) -> None:
        self.fd = fd
        self.size = size
        self.name = name
        self.owner = os.getpid() if owner else -1  # the process that made it (and unlinks a named one)
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        self.map = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        # (Python's mmap keeps a duplicate descriptor of its own while the mapping lives.)

    @classmethod
    def create(cls, label: str, size: int) -> Memory:
        """Reserve ``size`` bytes (raising :class:`SharedMemoryTooSmall`) and touch every page once."""
        anonymous = _anonymous()
        free, where = free_shared_memory(anonymous)
        if 0 <= free < size:
            raise SharedMemoryTooSmall(label, size, free, where)
        name: str | None = None
        if not anonymous:
            sweep_dead_owners()
        if anonymous:
            fd = os.memfd_create(f"puma-frames-{label}"[:200], getattr(os, "MFD_CLOEXEC", 0))
        else:
            name = segment_name()
            fd = os.open(os.path.join(SHM_PATH, name), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            _reserve(fd, size, label, anonymous)
        except BaseException:
            os.close(fd)
            if name is not None:
                _unlink(name)
            raise
        memory = cls(fd, size, name, True)
        _touch(memory.map, size)
        return memory

    @classmethod
    def open_named(cls, name: str, size: int) -> Memory:
        """Map a named segment another process made."""
        fd = os.open(os.path.join(SHM_PATH, name), os.O_RDWR)
        return cls(fd, size, name, False)

    def close(self) -> None:
        """Close the descriptor and unlink a named segment this process made; the mapping goes with its last view."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            try:
                self.map.close()  # and its own descriptor
            except BufferError:
                pass  # arrays still use it: the mapping (and its descriptor) go with the last of them
        if self.owner == os.getpid() and self.name is not None:
            _unlink(self.name)
            self.owner = -1


def open_shared(what: str, fds: Any, where: tuple[int, ...], name: str | None, size: int) -> tuple[Memory, int, int]:
    """Map shared memory (and its wake-up pipe) another process made: ``(memory, pipe read end, write end)``.

    ``fds``: the descriptors passed while this child was started (``DupFd``s);
    else they are opened from the process that made them (``where``: its pid
    and descriptor numbers), through /proc.  ``name``: a named segment's.
    """
    pid, *numbers = where
    if fds is not None:
        mem_fd, r, w = (d.detach() for d in fds)
    else:
        try:
            mem_fd = os.open(f"/proc/{pid}/fd/{numbers[0]}", os.O_RDWR) if name is None else -1
            r = os.open(f"/proc/{pid}/fd/{numbers[1]}", os.O_RDONLY | os.O_NONBLOCK)
            w = os.open(f"/proc/{pid}/fd/{numbers[2]}", os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            raise PumaError(
                f"{what} is not open in this process (pid {os.getpid()}) and cannot be opened from process "
                f"{pid}: give it to the runnable (an attribute, or a constructor argument) so it crosses when "
                "the runnable starts"
            ) from exc
    if name is not None and mem_fd < 0:
        return Memory.open_named(name, size), r, w
    return Memory(mem_fd, size, name, False), r, w  # a named segment's descriptor passed: its name may be gone


def close_shared(memory: Memory, r: int, w: int) -> None:
    """Close a pool's (or a region's) descriptors in this process, and its memory's."""
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass
    memory.close()


def sweep_dead_owners() -> list[str]:
    """Unlink named segments left by puma processes that died without unlinking them (SIGKILL); their names."""
    import psutil

    swept: list[str] = []
    try:
        names = os.listdir(SHM_PATH)
    except OSError:
        return swept
    for name in names:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "puma" or not parts[1].isdigit():
            continue
        if not psutil.pid_exists(int(parts[1])):
            _unlink(name)
            swept.append(name)
    return swept


def _reserve(fd: int, size: int, label: str, anonymous: bool) -> None:
    fallocate = getattr(os, "posix_fallocate", None)
    if fallocate is None:  # macOS: ftruncate has sized it; pages are touched next
        return
    try:
        fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.ENOMEM, errno.EFBIG):
            free, where = free_shared_memory(anonymous)
            raise SharedMemoryTooSmall(label, size, free, where) from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise


def _touch(area: mmap.mmap, size: int) -> None:
    """Fault every page in once (one byte per page), so the first frame costs what the others do."""
    import numpy as np

    pages = np.frombuffer(area, dtype=np.uint8, count=size)[::_PAGE]
    pages[:] = pages  # a write: the page is this process's now, not a shared zero page
    del pages


def _unlink(name: str) -> None:
    _made_here.discard(name)
    try:
        os.unlink(os.path.join(SHM_PATH, name))
    except FileNotFoundError:
        pass


if sys.platform == "win32":  # pragma: no cover - puma's process environment is POSIX only
    raise ImportError("puma.frames needs a POSIX system")
