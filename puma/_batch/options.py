"""What a batch map was asked to do, and the small helpers around it (worker count, where workers run, progress)."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

from puma._core.errors import UsageError
from puma._environments.base import Environment
from puma._environments.thread import ThreadEnvironment

__all__ = ["Options", "check_workers", "crosses", "crossing_pid", "progress_bar"]


@dataclass
class Options:
    """Everything a map was asked to do (checked by the public functions)."""

    environment: Environment
    workers: int
    chunk_size: int | None = None
    timeout: float | None = None
    retries: int = 0
    retry_on: tuple[type[BaseException], ...] = ()
    poison_after: int = 2
    max_items: int | None = None
    max_rss: int | None = None
    max_in_flight: int | None = None
    max_failures: int | None = None
    progress: bool = False
    ordered: bool = True


def crosses(environment: Environment) -> bool:
    """True if the environment's workers run in processes of their own (every one but threads)."""
    return not isinstance(environment, ThreadEnvironment)


def crossing_pid(pid: int | None) -> bool:
    """True for a worker in a process of its own."""
    return pid is not None and pid != os.getpid()


def progress_bar(total: int | None) -> Any:
    """A tqdm bar on stderr, or None if tqdm is not installed."""
    try:
        tqdm = importlib.import_module("tqdm").tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="input", file=sys.stderr, dynamic_ncols=True)


def check_workers(workers: int | None) -> int:
    """The worker count: ``os.cpu_count()`` by default."""
    if workers is None:
        return max(1, os.cpu_count() or 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UsageError(f"workers must be a positive int, not {workers!r}")
    return workers
