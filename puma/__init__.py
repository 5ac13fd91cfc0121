"""puma: runnables in threads or processes, with buffers, commands, statuses and errors handled.

The whole public surface is here; everything else lives in private modules.
"""

from __future__ import annotations

from puma._buffer import Buffer, BufferStatistics, Publisher, Subscription
from puma._command_driven import CommandDrivenRunnable
from puma._commands import BoundCommand, run_in_child_scope
from puma._environment import Environment, ProcessEnvironment, ThreadEnvironment
from puma._errors import (
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
)
from puma._multicaster import Multicaster
from puma._runnable import Runnable
from puma._runner import Runner
from puma._servicing import BufferSubscriber, MultiBufferServicingRunnable, SingleBufferServicingRunnable
from puma._ticking import tick_clock

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
    "__version__",
    "run_in_child_scope",
    "tick_clock",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("puma._"):
        try:
            _obj.__module__ = "puma"
        except (AttributeError, TypeError):
            pass
del _name, _obj
