"""puma: runnables in threads or processes, with buffers, commands, statuses and errors handled.

The whole public surface is here and in five namespaces: :mod:`puma.attributes`
(how each attribute of a runnable crosses into its child), :mod:`puma.logging`
(one log output for every thread and process), :mod:`puma.environments`
(for writing an environment of your own), :mod:`puma.frames` (shared-memory
numpy frames) and :mod:`puma.batch` (a batch map with a record per failing
input).  Everything else lives in private
modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from puma._core import errors as _errors
from puma._core.naming import present_as as _present_as

if TYPE_CHECKING:  # what the names are, for type checkers; at run time they load on first use
    from puma import attributes as attributes
    from puma import batch as batch
    from puma import environments as environments
    from puma import frames as frames
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
    from puma._environments.base import Environment
    from puma._environments.process import ProcessEnvironment
    from puma._environments.thread import ThreadEnvironment
    from puma._ready.command_driven import CommandDrivenRunnable
    from puma._ready.multicaster import Multicaster
    from puma._ready.servicing import BufferSubscriber, MultiBufferServicingRunnable, SingleBufferServicingRunnable
    from puma._ready.ticking import tick_clock
    from puma._runnable.commands import BoundCommand, run_in_child_scope
    from puma._runnable.runnable import Runnable
    from puma._runner.restart_policy import RestartPolicy
    from puma._runner.runner import Runner

_WHERE: dict[str, str] = {
    "BoundCommand": "puma._runnable.commands",
    "Buffer": "puma._buffers.base",
    "BufferClosedError": "puma._core.errors",
    "BufferCompleted": "puma._core.errors",
    "BufferEmpty": "puma._core.errors",
    "BufferFull": "puma._core.errors",
    "BufferStatistics": "puma._buffers.base",
    "BufferSubscriber": "puma._ready.servicing",
    "ChildDiedError": "puma._core.errors",
    "CommandDrivenRunnable": "puma._ready.command_driven",
    "CommandError": "puma._core.errors",
    "Environment": "puma._environments.base",
    "MultiBufferServicingRunnable": "puma._ready.servicing",
    "Multicaster": "puma._ready.multicaster",
    "NotPicklableError": "puma._core.errors",
    "ProcessEnvironment": "puma._environments.process",
    "Publisher": "puma._buffers.base",
    "PumaError": "puma._core.errors",
    "RemoteError": "puma._core.errors",
    "Runnable": "puma._runnable.runnable",
    "RunnableNotRunningError": "puma._core.errors",
    "RestartPolicy": "puma._runner.restart_policy",
    "Runner": "puma._runner.runner",
    "SingleBufferServicingRunnable": "puma._ready.servicing",
    "StopRequested": "puma._core.errors",
    "StuckRunnableError": "puma._core.errors",
    "Subscription": "puma._buffers.base",
    "ThreadEnvironment": "puma._environments.thread",
    "UsageError": "puma._core.errors",
    "attributes": "puma.attributes",
    "batch": "puma.batch",
    "environments": "puma.environments",
    "frames": "puma.frames",
    "logging": "puma.logging",
    "supervision": "puma.supervision",
    "run_in_child_scope": "puma._runnable.commands",
    "tick_clock": "puma._ready.ticking",
}

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
    "RestartPolicy",
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


# Errors are named after ``puma`` from the start: a traceback shows ``puma.UsageError`` even when the
# program never wrote that name.  (Every child imports them anyway.)
_present_as("puma", vars(_errors), [n for n, m in _WHERE.items() if m == "puma._core.errors"])


def __getattr__(name: str) -> object:
    """Load a public name on first use (PEP 562), so a child process imports only what it runs.

    ``import puma`` costs a few milliseconds: a process child that only runs a
    runnable never imports the Runner, the ready-made runnables or the logging
    set-up.  Names that moved to a namespace say where they went.
    """
    module = _WHERE.get(name)
    if module is not None:
        if module == f"puma.{name}":
            value: object = importlib.import_module(module)
        else:
            loaded = importlib.import_module(module)
            # Name every public object of that module after ``puma`` at once, so tracebacks and
            # pickles say ``puma.X`` whichever of its names was used first.
            _present_as("puma", vars(loaded), [n for n, m in _WHERE.items() if m == module])
            value = getattr(loaded, name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        # The scoped-attribute helpers live in puma.attributes: ``puma.copied`` says so.
        from puma import attributes

        if name in attributes.__all__:
            raise AttributeError(f"puma.{name} is puma.attributes.{name} (from puma.attributes import {name})")
    raise AttributeError(f"module 'puma' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
