"""The queue of a child process's log records: its sender takes everything pending at once.

Part of the log transport (:mod:`puma._core.logs`): the child's
``QueueHandler`` puts records here, its ``QueueListener`` (the sender thread)
takes them as batches and writes each batch to the parent as one message.
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Callable
from typing import Any

from puma._core.condition import Condition, Event

__all__ = ["CHILD_BACKLOG", "Batches", "Marker"]

#: Records a child may have pending (not yet written to its pipe) before logging waits.
CHILD_BACKLOG = 4096


class Marker:
    """Put on a queue behind records: set once everything before it is handled."""

    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = Event()


class Batches:
    """The child's QueueHandler "queue": ``get`` returns everything pending at once.

    ``put_nowait`` waits (back-pressure) while :data:`CHILD_BACKLOG` records are
    pending, except in the sender's own thread, which must never wait on itself.
    """

    def __init__(self) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._cond = Condition()
        self._getter_waiting = False
        self._putters_waiting = 0
        self.sender_thread: threading.Thread | None = None
        self.starter: Callable[[], None] | None = None  # starts the sender on the first record
        self._start_lock = threading.Lock()
        self.busy = False  # the sender holds records taken from here and not yet written

    def idle(self) -> bool:
        """True if every record put so far is written (nothing pending, nothing in the sender's hands)."""
        return not self._items and not self.busy

    def put_nowait(self, item: Any) -> None:
        if self.starter is not None:
            with self._start_lock:
                starter, self.starter = self.starter, None
            if starter is not None:
                starter()  # a child that never logs never starts the thread
        items = self._items
        if len(items) >= CHILD_BACKLOG and threading.current_thread() is not self.sender_thread:
            with self._cond:
                self._putters_waiting += 1
                try:
                    while len(items) >= CHILD_BACKLOG:
                        self._cond.wait()
                finally:
                    self._putters_waiting -= 1
        items.append(item)
        if self._getter_waiting:  # wake the sender once, not on every record while it gets going
            with self._cond:
                if self._getter_waiting:
                    self._getter_waiting = False
                    self._cond.notify_all()

    put = put_nowait

    def get(self, block: bool = True) -> Any:
        """Every pending item, as a list; the sentinel (None) alone when it comes first."""
        items = self._items
        with self._cond:
            while True:
                self._getter_waiting = True  # before looking: a put after the look sees it
                if items:
                    break
                if not block:
                    self._getter_waiting = False
                    raise queue.Empty
                self._cond.wait()
            self._getter_waiting = False
            if items[0] is None:
                items.popleft()
                return None
            self.busy = True  # before taking: idle() must never see an empty queue and an idle sender
            batch = []
            while items and items[0] is not None:
                batch.append(items.popleft())
            if self._putters_waiting:
                self._cond.notify_all()
        return batch
