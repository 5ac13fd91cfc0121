"""Writing your own execution environment.

Most programs only choose one: :class:`puma.ThreadEnvironment` or
:class:`puma.ProcessEnvironment`.  This module is for those who want
runnables to run somewhere else (a pool of pre-started processes, another
machine): subclass :class:`Environment` and implement

* :meth:`Environment.buffer`: the buffers that connect runnables there;
* :meth:`Environment.prepare`: check a runnable can run there and return the
  object the child runs (apply its scoped attributes, e.g. by delegating to
  ``ThreadEnvironment().prepare``);
* :meth:`Environment.launch`: make the child and return a
  :class:`ChildHandle`, the small interface the Runner's supervisor drives:
  post a message, what to watch in its one wait, what a ready descriptor
  brought, terminate, kill, join, how the child exited, close.

On the child's side, :func:`serve_child` runs the runnable through a
:class:`MessageLink` (the transport: send to the parent, receive from it).
The Runner needs nothing else: ``tests/test_environments.py`` drives a
Runner through starts, commands, errors and a death with an environment
written this way.
"""

from __future__ import annotations

from puma._core.naming import present_as as _present_as
from puma._environments.base import ChildHandle, Environment, ExitStatus, Message, MessageLink, serve_child

__all__ = ["ChildHandle", "Environment", "ExitStatus", "Message", "MessageLink", "serve_child"]

_present_as("puma.environments", globals(), [n for n in __all__ if n != "Environment"])  # puma.Environment
