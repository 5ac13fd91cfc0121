"""The parent's records of a batch map's workers (seats) and of the chunks they hold."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from puma._batch.worker import BatchWorker
from puma._buffers.base import Publisher, Subscription

__all__ = ["Chunk", "Seat", "contiguous"]


class Chunk:
    """Inputs sent together: their indices and the inputs (kept until their results are back)."""

    __slots__ = ("args", "id", "indices")

    def __init__(self, chunk_id: int, indices: Sequence[int], args: Sequence[Any]) -> None:
        self.id = chunk_id
        self.indices = indices
        self.args = args


class Seat:
    """One worker: its runnable, its inbox and outbox, its mark slot, the chunks it holds."""

    def __init__(self, worker: BatchWorker, slot: int, pub: Publisher[Any], sub: Subscription[Any]) -> None:
        self.worker = worker
        self.slot = slot
        self.pub = pub
        self.sub = sub
        self.outstanding: deque[int] = deque()
        self.items = 0
        self.assigned = 0
        self.retiring = False
        self.timed_out: int | None = None
        self.pid: int | None = None
        self.label = worker.name


def contiguous(indices: Sequence[int]) -> Sequence[int]:
    """A range when the indices follow each other (it pickles in a few bytes)."""
    if isinstance(indices, list) and indices:
        span = range(indices[0], indices[0] + len(indices))
        if indices[-1] == span[-1] and indices == list(span):
            return span
    return indices
