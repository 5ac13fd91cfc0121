"""puma: runnables in threads or processes, with buffers, commands, statuses and errors handled.

The whole public surface is here; everything else lives in private modules.
"""

from __future__ import annotations

from puma._attributes import (
    AttributeScopeError,
    ProcessAction,
    ScopedAttribute,
    ThreadAction,
    ValueSource,
    child_only,
    copied,
    factory,
    manually_managed,
    parent_only,
    per_scope_value,
    python_default,
    scope_specific,
    unmanaged,
)
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
)
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
    "AttributeScopeError",
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
    "ProcessAction",
    "ProcessEnvironment",
    "Publisher",
    "PumaError",
    "RemoteError",
    "Runnable",
    "RunnableNotRunningError",
    "Runner",
    "ScopedAttribute",
    "SingleBufferServicingRunnable",
    "StopRequested",
    "StuckRunnableError",
    "Subscription",
    "ThreadAction",
    "ThreadEnvironment",
    "ValueSource",
    "__version__",
    "child_only",
    "copied",
    "factory",
    "manually_managed",
    "parent_only",
    "per_scope_value",
    "python_default",
    "run_in_child_scope",
    "scope_specific",
    "tick_clock",
    "unmanaged",
]

for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "").startswith("puma._"):
        try:
            _obj.__module__ = "puma"
        except (AttributeError, TypeError):
            pass
del _name, _obj
