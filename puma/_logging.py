"""Central logging: every child process logs through the parent's handlers.

The parent configures stdlib ``logging`` as usual.  When a process runnable
starts, it receives a snapshot of the parent's logger levels
(:func:`child_settings`); :func:`setup_child` applies them in the child, drops
any handler inherited through fork, and puts one
``logging.handlers.QueueHandler`` on the root logger whose "queue" is the
child's status channel.  Records filtered out by level never leave the child.

In the parent the Runner's supervisor hands each received record to
:func:`dispatch`, which feeds a ``logging.handlers.QueueListener`` whose one
handler re-enters the record into the parent's own logger of the same name,
so the user's configuration (console, files, rotating files...) writes it.
Because records share the status channel with the child's other statuses and
the channel is drained before a child is reported ended, records logged just
before a child returns or raises are written before the Runner reports it.

Thread runnables log in-process, with no queue hop.  :class:`RunnableFilter`
adds ``%(runnable)s`` to every record for formatters.
"""

from __future__ import annotations

import logging
import logging.handlers
import queue
import threading
from typing import Any

from puma import _context
from puma import _messages as msg

__all__ = ["RunnableFilter", "child_settings", "dispatch", "flush_child", "setup_child", "wait_dispatched"]


class RunnableFilter(logging.Filter):
    """Adds ``record.runnable``: the name of the runnable that logged it ("main" outside any).

    Put it on a handler (``handler.addFilter(puma.logging.RunnableFilter())``)
    to use ``%(runnable)s`` in its formatter.  Records from child processes
    already carry the name and keep it.
    """

    def __init__(self, default: str = "main") -> None:
        super().__init__()
        self._default = default

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "runnable"):
            ctx = _context.current()
            record.runnable = ctx.name if ctx is not None else self._default
        return True


class _NameFilter(logging.Filter):
    def __init__(self, name: str) -> None:
        super().__init__()
        self._runnable = name

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "runnable"):
            record.runnable = self._runnable
        return True


def child_settings() -> dict[str, Any]:
    """The parent's logger levels, to apply in a child before it logs."""
    manager = logging.Logger.manager
    levels: dict[str, int] = {}
    disabled: list[str] = []
    for name, logger in list(manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            if logger.level != logging.NOTSET:
                levels[name] = logger.level
            if logger.disabled:
                disabled.append(name)
    return {"root": logging.getLogger().level, "levels": levels, "disabled": disabled, "disable": manager.disable}


class _LinkQueue:
    """The 'queue' of the child's QueueHandler: the child's status channel."""

    def __init__(self, link: Any) -> None:
        self._link = link

    def put_nowait(self, record: logging.LogRecord) -> None:
        self._link.send_status((msg.LOG, record))


def setup_child(settings: dict[str, Any], link: Any, name: str) -> None:
    """In a child process: send every record to the parent, with the parent's levels."""
    root = logging.getLogger()
    manager = logging.Logger.manager
    for logger in [root, *manager.loggerDict.values()]:
        if isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
            logger.setLevel(logging.NOTSET)
    root.setLevel(settings["root"])
    for logger_name, level in settings["levels"].items():
        logging.getLogger(logger_name).setLevel(level)
    for logger_name in settings["disabled"]:
        logging.getLogger(logger_name).disabled = True
    logging.disable(settings["disable"])
    handler = logging.handlers.QueueHandler(_LinkQueue(link))  # type: ignore[arg-type]
    handler.addFilter(_NameFilter(name))
    root.addHandler(handler)


def flush_child() -> None:
    """Make sure every record logged so far in this child has been handed over."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001, S110 - a broken handler must not hide the outcome
            pass


class _Dispatch(logging.Handler):
    """Re-enters a child's record into the parent's logger of the same name."""

    def handle(self, record: logging.LogRecord) -> bool:  # type: ignore[override]
        logger = logging.getLogger(record.name)
        if logger.disabled:
            return False
        logger.handle(record)
        return True

    def emit(self, record: logging.LogRecord) -> None:  # pragma: no cover - handle() does the work
        self.handle(record)


_listener_lock = threading.Lock()
_listener: logging.handlers.QueueListener | None = None
_listener_queue: queue.Queue[Any] | None = None
_listener_users = 0


def start_listener() -> None:
    """Start (or share) the parent's listener; pair with :func:`stop_listener`."""
    global _listener, _listener_queue, _listener_users
    with _listener_lock:
        _listener_users += 1
        if _listener is None:
            _listener_queue = queue.Queue()
            _listener = logging.handlers.QueueListener(_listener_queue, _Dispatch(), respect_handler_level=False)
            _listener.start()


def stop_listener() -> None:
    """Release the listener; the last user stops it after writing every record."""
    global _listener, _listener_queue, _listener_users
    with _listener_lock:
        _listener_users -= 1
        if _listener_users == 0 and _listener is not None:
            _listener.stop()
            _listener = None
            _listener_queue = None


def dispatch(record: logging.LogRecord) -> None:
    """Hand a child's record to the listener (or write it now if none runs)."""
    q = _listener_queue
    if q is not None:
        q.put_nowait(record)
    else:
        _Dispatch().handle(record)


def wait_dispatched() -> None:
    """Block until the listener has written every record handed to it so far."""
    q = _listener_queue
    if q is not None:
        q.join()
