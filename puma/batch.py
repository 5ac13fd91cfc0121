"""Batch map over worker runnables: one crashing input never sinks the rest, and the failing input is named.

``puma.batch.map(fn, items)`` runs ``fn`` over ``items`` in worker processes
(or threads, or inline) and returns a list: a value per good input, a
:class:`Failure` record per failing one (its index and repr, the exception
with the worker's traceback or the signal that killed the worker, the worker,
the attempts).  A killed worker costs exactly the one input it was running.
:func:`imap` and :func:`imap_unordered` are lazy; :func:`chain` carries a
clipboard dict through a list of tasks; :func:`replay` re-runs a failure in
the caller under ``pdb``.  See docs/batch.md.
"""

from __future__ import annotations

from puma._batch.api import chain, imap, imap_unordered, map, replay
from puma._batch.records import BatchError, Failure, Interrupted, ItemTimeout, WorkerDied

__all__ = [
    "BatchError",
    "Failure",
    "Interrupted",
    "ItemTimeout",
    "WorkerDied",
    "chain",
    "imap",
    "imap_unordered",
    "map",
    "replay",
]
