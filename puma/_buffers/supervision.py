"""What a supervisor does to a buffer: the one protocol every kind of buffer implements.

The Runner never reaches into a buffer's private state.  Everything it must
do when runnables start, end or die goes through ``buffer.supervision``, a
:class:`StreamSupervision`:

* a runnable holding the buffer in its ``outputs`` is started: a publisher
  **joins** the stream (:meth:`StreamSupervision.join`); a launch that failed
  takes it back (``join(-1)``);
* a publisher is asked to stop while it may wait for room:
  :meth:`StreamSupervision.interrupt_publishers`;
* every reader has ended (or none will come, after a stop): :meth:`close`
  the buffer, so publishers are not left blocked, and, while publishers may
  still be writing, drain what they write (:meth:`drain_fd`, :meth:`drain`);
* a publisher died: free what it held (:meth:`free_held_by`), complete its
  stream with the error (:meth:`complete_for`) or, when the stream cannot
  carry it, end the readers' streams directly (:meth:`fail_readers_here`
  for readers in this process; the Runner sends the others
  ``INPUT_FAILED`` with :attr:`key`);
* the Runner closes: :meth:`release` gives back the operating-system
  resources (pipes, semaphores) at once, not when the garbage collector
  gets to them; :meth:`~puma.Buffer.statistics` still answers afterwards.

A new kind of buffer (shared-memory frames, a remote queue) implements this
protocol and plugs into the Runner unchanged.
"""

from __future__ import annotations

import abc
from typing import Any

__all__ = ["StreamSupervision"]


class StreamSupervision(abc.ABC):
    """The supervisor's side of one buffer."""

    @property
    @abc.abstractmethod
    def key(self) -> str:
        """A name for the buffer that is the same in every process (used in messages between them)."""

    @property
    @abc.abstractmethod
    def crossable(self) -> bool:
        """True if the buffer can be used from a child process."""

    @abc.abstractmethod
    def join(self, count: int = 1) -> None:
        """``count`` publishers join the stream (negative: a launch that failed takes them back).

        Call it before the child is recorded, so a refusal leaves nothing behind.

        Raises:
            BufferClosedError: the stream has ended (every publisher that joined
                completed and no hold was outstanding): no publisher may join it.
        """

    @abc.abstractmethod
    def readers(self) -> frozenset[int]:
        """Runner tokens of the runnables subscribed (0: the main program); empty while nobody is."""

    @abc.abstractmethod
    def interrupt_publishers(self) -> None:
        """Wake publishers waiting for room, so they see a stop request."""

    @abc.abstractmethod
    def close(self) -> None:
        """No reader remains: refuse new values, discard those queued, wake every waiting publisher."""

    @abc.abstractmethod
    def drain_fd(self) -> int | None:
        """A descriptor the supervisor watches after :meth:`close`, calling :meth:`drain` when it is readable.

        ``None`` when nothing needs draining (a publisher never blocks in the
        middle of a value).
        """

    @abc.abstractmethod
    def drain(self) -> None:
        """Discard what publishers wrote after :meth:`close` (never blocks)."""

    @abc.abstractmethod
    def free_held_by(self, pid: int) -> bool:
        """The process ``pid`` died: free what it held. False if it left the stream broken."""

    @abc.abstractmethod
    def complete_for(self, owner: str, error: BaseException) -> bool:
        """Complete the stream of a publisher that died, with ``error``; never blocks for long.

        False if the stream cannot carry the completion (broken, or full):
        the readers must then be told directly.
        """

    @abc.abstractmethod
    def fail_readers_here(self, error: BaseException) -> None:
        """End the streams of this buffer's readers in this process with ``error`` (after what they already have)."""

    def finish_read(self, journal: str, pid: int) -> bool:
        """A restartable reader (process ``pid``, its journal at ``journal``) died: finish the value it was reading.

        Called before :meth:`free_held_by`.  False if it died in the middle of
        reading a value that cannot be finished: the stream is then broken.
        """
        return True

    def recover(self, journal: str) -> tuple[int, int, list[Any], list[Any]] | None:
        """A restartable reader died: what its journal at ``journal`` says it held (see :mod:`puma._buffers.journal`).

        ``(stash_done, stash_taken, in_flight, rest)``, or None when the buffer
        keeps no journal (a reader in a thread does not die alone).
        """
        return None

    def forget(self, journal: str) -> None:
        """The journal at ``journal`` of a reader that died is done with: let go of what was kept to recover it."""
        return None

    @abc.abstractmethod
    def release(self) -> None:
        """Give back operating-system resources now (the Runner has closed); statistics still answer."""
