"""puma: runnables in threads or processes, with buffers, commands, statuses and errors handled.

The whole public surface is here and in three namespaces: :mod:`puma.attributes`
(how each attribute of a runnable crosses into its child), :mod:`puma.logging`
(one log output for every thread and process) and :mod:`puma.environments`
(for writing an environment of your own).  Everything else lives in private
modules.
"""

from __future__ import annotations

from puma import attributes as attributes  # the public namespaces
from puma import environments as environments
from puma import logging as logging
from puma._buffers.base import Buffer, BufferStatistics, Publisher, Subscription
from puma._core.errors import (
    BufferClosedError,
    BufferCompleted,
    BufferEmpty,
    BufferFull,
    ChildDiedError,
    CommandError,
    NotPicklableError,
    PumaError,
    RemoteError,
    RunnableNotRunningError,
    StopRequested,
    StuckRunnableError,
    UsageError,
)
from puma._core.naming import present_as as _present_as
from puma._environments.base import Environment
from puma._environments.process import ProcessEnvironment
from puma._environments.thread import ThreadEnvironment
from puma._ready.command_driven import CommandDrivenRunnable
from puma._ready.multicaster import Multicaster
from puma._ready.servicing import BufferSubscriber, MultiBufferServicingRunnable, SingleBufferServicingRunnable
from puma._ready.ticking import tick_clock
from puma._runnable.commands import BoundCommand, run_in_child_scope
from puma._runnable.runnable import Runnable
from puma._runner.runner import Runner

__version__ = "0.1.0"

__all__ = [
    "BoundCommand",
    "Buffer",
    "BufferClosedError",
    "BufferCompleted",
    "BufferEmpty",
    "BufferFull",
    "BufferStatistics",
    "BufferSubscriber",
    "ChildDiedError",
    "CommandDrivenRunnable",
    "CommandError",
    "Environment",
    "MultiBufferServicingRunnable",
    "Multicaster",
    "NotPicklableError",
    "ProcessEnvironment",
    "Publisher",
    "PumaError",
    "RemoteError",
    "Runnable",
    "RunnableNotRunningError",
    "Runner",
    "SingleBufferServicingRunnable",
    "StopRequested",
    "StuckRunnableError",
    "Subscription",
    "ThreadEnvironment",
    "UsageError",
    "__version__",
    "run_in_child_scope",
    "tick_clock",
]

_present_as("puma", globals(), __all__)

_MOVED = {name: "puma.attributes" for name in attributes.__all__}


def __getattr__(name: str) -> object:
    """Names that moved to a namespace say where they went."""
    where = _MOVED.get(name)
    if where is not None:
        raise AttributeError(f"puma.{name} is {where}.{name} (from {where} import {name})")
    raise AttributeError(f"module 'puma' has no attribute {name!r}")
