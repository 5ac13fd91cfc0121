"""Central logging: every child process logs through the parent's handlers.

The parent configures stdlib ``logging`` as usual (``puma.logging`` has
one-call set-ups).  The path of a record logged in a process runnable:

1. **Child.**  When the process starts, :func:`setup_child` applies a snapshot
   of the parent's logger levels (:func:`child_settings`), or, in a forked
   child that inherited them, drops the handlers it inherited, and puts one
   :class:`_ChildHandler` (a ``logging.handlers.QueueHandler``) on the root
   logger (a forked child's is made by the parent before the fork:
   :func:`for_forked_child`).  Records filtered out
   by level never leave the child.  The handler's ``prepare`` turns a record
   into a plain, picklable dict: message merged with its arguments, traceback
   formatted into ``exc_text``, the runnable's name added, extra attributes
   that are not plain data turned into strings.
2. **Child, sender thread.**  The handler's "queue" is a ``Batches``
   queue; a ``logging.handlers.QueueListener`` (:class:`_Sender`) takes
   everything pending at once and writes it to the child's status pipe as one
   message ``(LOG, pickled list of dicts)``.  A busy child thus sends a few
   large messages instead of one per record; an idle child's record leaves at
   once.  The queue is bounded: a child that logs faster than the parent can
   write waits (back-pressure) rather than filling its memory.
3. **Parent, supervisor.**  The Runner's supervisor reads the message and
   hands the payload to :func:`dispatch`, which puts it on the listener's
   bounded queue, without unpickling it.
4. **Parent, listener thread.**  A ``logging.handlers.QueueListener``
   (:class:`_Listener`) unpickles each payload and re-enters every record
   into the parent's logger of the same name (``logger.handle``), so the
   user's configuration (console, files, rotating files...) writes it.  Its
   thread starts with the first records, so children that never log cost
   no thread (and no start-up time).

Nothing is lost on a normal end: :func:`flush_child` (called when
``execute`` ends, before the final outcome is sent) waits until the sender has
written every pending record to the pipe; the supervisor drains the pipe and
calls :func:`wait_dispatched` before it reports the child ended.  A child
killed with SIGKILL loses only what its sender had not yet written.

Thread runnables log in-process, with no queue hop.  :class:`RunnableFilter`
adds ``%(runnable)s`` to records for formatters.
"""

from __future__ import annotations

import collections
import functools
import logging
import logging.handlers
import os
import pickle
import queue
import sys
import threading
import traceback
from typing import Any

from puma._core import current as _context
from puma._core import messages as msg
from puma._core.condition import Condition
from puma._core.log_queue import Batches as _Batches
from puma._core.log_queue import Marker as _Marker

__all__ = [
    "ForkedChildLogging",
    "RunnableFilter",
    "child_settings",
    "dispatch",
    "flush_child",
    "for_forked_child",
    "listener_running",
    "setup_child",
    "start_listener",
    "stop_listener",
    "wait_dispatched",
]

#: Most records a child sends in one pipe message.
BATCH_RECORDS = 512
#: Messages (batches or single records) the parent's listener may have pending before the supervisor waits.
LISTENER_BACKLOG = 16

_STANDARD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "runnable"}
_PLAIN_FIELD_COUNT = len(logging.makeLogRecord({}).__dict__) + 2  # a record with message and runnable, no extra
_current = _context.current
_PLAIN_TYPES = (str, int, float, bool, type(None), bytes)
_traceback_formatter = logging.Formatter()


class RunnableFilter(logging.Filter):
    """Adds ``record.runnable``: the name of the runnable that logged it ("main" outside any).

    Put it on a handler (``handler.addFilter(puma.logging.RunnableFilter())``)
    to use ``%(runnable)s`` in its formatter; ``puma.logging``'s set-ups do it
    for every handler they make.  Records from child processes already carry
    the name and keep it.
    """

    def __init__(self, default: str = "main") -> None:
        super().__init__()
        self._default = default

    def filter(self, record: logging.LogRecord) -> bool:
        """Set ``record.runnable`` if it has none; never rejects a record."""
        if "runnable" not in record.__dict__:  # not hasattr(): no exception raised per record
            ctx = _context.current()
            record.runnable = ctx.name if ctx is not None else self._default
        return True


# --- parent: what a child needs to know ------------------------------------------------------------
def _handler_floor() -> int:
    """The lowest level any handler of this process (or the last resort) would write."""
    manager = logging.Logger.manager
    loggers: list[Any] = [logging.getLogger(), *list(manager.loggerDict.values())]
    floor = logging.lastResort.level if logging.lastResort is not None else logging.NOTSET
    for logger in loggers:
        if isinstance(logger, logging.Logger):
            for handler in list(logger.handlers):
                floor = min(floor, handler.level)
    return floor


def child_settings() -> dict[str, Any]:
    """The parent's logger levels (and lowest handler level), to apply in a child before it logs."""
    manager = logging.Logger.manager
    levels: dict[str, int] = {}
    disabled: list[str] = []
    for name, logger in list(manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            if logger.level != logging.NOTSET:
                levels[name] = logger.level
            if logger.disabled:
                disabled.append(name)
    return {
        "root": logging.getLogger().level,
        "levels": levels,
        "disabled": disabled,
        "disable": manager.disable,
        "floor": _handler_floor(),
    }


# --- child: records to the parent ------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """``value`` if it is plain data (which any process can unpickle), else its ``str``."""
    kind = type(value)
    if kind in _PLAIN_TYPES:
        return value
    if kind is list or kind is tuple:
        return kind(_plain(item) for item in value)
    if kind is dict:
        return {_plain(k): _plain(v) for k, v in value.items()}
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the record
        return f"<unprintable {kind.__qualname__}>"


class _ChildHandler(logging.handlers.QueueHandler):
    """The one handler of a child process's root logger; ``runnable`` names the records' runnable.

    Every record logged in the process is the runnable's, whatever thread
    logged it, except those of a runnable a nested Runner runs in a thread here.
    """

    def __init__(self, batches: _Batches, runnable: str) -> None:
        super().__init__(batches)
        self._runnable = runnable
        self._main_thread = threading.get_ident()  # where execute() runs

    def createLock(self) -> None:  # noqa: N802 - logging's name
        """A lock of its own, not registered for logging's after-fork reset.

        A forked child's handler is made in the parent (:func:`for_forked_child`):
        registered there, every child forked after it would reset it too, each
        a page written for nothing.  Nothing can hold it across a fork: the
        child's process does not use it before it forked, and a process forked
        from the child drops it (``_after_fork_in_child``).
        """
        self.lock = threading.RLock()

    def prepare(self, record: logging.LogRecord) -> Any:  # the dict, not a record: see _Listener
        """A picklable copy of ``record`` as a dict, with ``runnable``; the original is left intact."""
        fields = record.__dict__.copy()
        fields["msg"] = fields["message"] = record.getMessage()
        fields["args"] = None
        if fields["exc_info"]:
            if not fields["exc_text"]:
                fields["exc_text"] = _traceback_formatter.formatException(fields["exc_info"])
            fields["exc_info"] = None
        if "runnable" not in fields:
            ctx = None if fields["thread"] == self._main_thread else _current()  # other threads: nested runnable?
            fields["runnable"] = ctx.name if ctx is not None else self._runnable
        if len(fields) != _PLAIN_FIELD_COUNT and not _STANDARD_FIELDS.issuperset(fields):  # extra=...
            for key in fields.keys() - _STANDARD_FIELDS:
                fields[key] = _plain(fields[key])
        return fields


class _Sender(logging.handlers.QueueListener):
    """The child's sender thread: writes every batch of records to the status pipe as one message."""

    def __init__(self, batches: _Batches, link: Any) -> None:
        super().__init__(batches)
        self._batches = batches
        self._link = link
        self._broken = False

    def start(self) -> None:
        super().start()
        thread = self._thread
        assert thread is not None
        thread.name = "puma-log-sender"
        self._batches.sender_thread = thread

    def handle(self, batch: list[Any]) -> None:  # type: ignore[override]
        records: list[dict[str, Any]] = []
        try:
            for item in batch:
                if isinstance(item, _Marker):
                    self._send(records)
                    records = []
                    item.event.set()
                else:
                    records.append(item)
                    if len(records) >= BATCH_RECORDS:
                        self._send(records)
                        records = []
            self._send(records)
        finally:
            for item in batch:  # whatever happened, nobody waits forever on a flush
                if isinstance(item, _Marker):
                    item.event.set()
            self._batches.busy = False

    def _send(self, records: list[dict[str, Any]]) -> None:
        if not records or self._broken:
            return
        try:
            try:
                payload = pickle.dumps(records, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001 - e.g. a str subclass that does not pickle: make it all plain
                plain = [{k: _plain(v) for k, v in r.items()} for r in records]
                payload = pickle.dumps(plain, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception:  # noqa: BLE001 - the sender must outlive a record it cannot send
            _report(f"{len(records)} log records could not be sent to the parent process")
            return
        try:
            self._link.send_status((msg.LOG, payload))
        except (OSError, ValueError):
            self._broken = True  # the parent is gone: nobody to tell


_child_batches: _Batches | None = None
_child_sender: _Sender | None = None
_child_handler: _ChildHandler | None = None


class ForkedChildLogging:
    """A forked child's logging, made by the parent just before the fork (see :func:`for_forked_child`)."""

    __slots__ = ("batches", "handler", "loggers")

    def __init__(self, batches: _Batches, handler: _ChildHandler, loggers: list[logging.Logger]) -> None:
        self.batches = batches
        self.handler = handler
        self.loggers = loggers  # those with handlers to drop, or that do not propagate


def for_forked_child(runnable: str) -> ForkedChildLogging:
    """In the parent, just before forking a child: the child's handler, and what the child must undo.

    A forked child inherits the parent's levels, disabled flags and
    ``logging.disable`` as they are; it only has to drop the handlers it
    inherited (they are the parent's files) and let every record propagate to
    its one handler.  Everything is looked up and made here, in the parent: in
    the child each object first written and each function first run costs a
    copy-on-write page, and a child that never logs touches almost nothing.
    """
    _register_fork_hook()  # forgets the parent's listener in the child
    floor = logging.lastResort.level if logging.lastResort is not None else logging.NOTSET
    loggers: list[logging.Logger] = []
    for logger in _every_logger():
        if logger.handlers or not logger.propagate:
            for handler in logger.handlers:
                floor = min(floor, handler.level)
            loggers.append(logger)
    batches = _Batches()
    child_handler = _ChildHandler(batches, runnable)
    child_handler.setLevel(floor)
    return ForkedChildLogging(batches, child_handler, loggers)


def setup_child(settings: dict[str, Any] | ForkedChildLogging, link: Any, name: str) -> None:
    """In a child process: send every record to the parent, with the parent's levels.

    ``settings``: what :func:`for_forked_child` made for a forked child, else
    the parent's levels (:func:`child_settings`).
    """
    global _child_batches, _child_handler
    if isinstance(settings, ForkedChildLogging):
        for logger in settings.loggers:
            logger.handlers = []  # not closed: they are the parent's files
            logger.propagate = True
        batches, handler = settings.batches, settings.handler
        ident = threading.get_ident()
        if handler._main_thread != ident:  # (the same unless forked from another thread than it was made in)
            handler._main_thread = ident
        batches.starter = functools.partial(_start_sender, batches, link)
        logging.root.handlers = [handler]
        _child_batches, _child_handler = batches, handler
        return
    _register_fork_hook()
    _forget_listener()
    _apply_levels(settings)
    batches = _Batches()
    handler = _ChildHandler(batches, name)
    handler.setLevel(settings.get("floor", logging.NOTSET))
    batches.starter = functools.partial(_start_sender, batches, link)
    logging.getLogger().addHandler(handler)
    _child_batches, _child_handler = batches, handler


def _every_logger() -> list[logging.Logger]:
    """The root logger and every named one made so far (not the placeholders of names not used yet)."""
    named = list(logging.Logger.manager.loggerDict.values())
    return [logging.getLogger(), *(logger for logger in named if isinstance(logger, logging.Logger))]


def _start_sender(batches: _Batches, link: Any) -> None:
    """Start the child's sender thread: with the first record (a child that never logs never has one)."""
    global _child_sender
    _child_sender = _Sender(batches, link)
    _child_sender.start()


def _apply_levels(settings: dict[str, Any]) -> None:
    """In a spawned or forkserver child: drop any handler, every record propagates, the parent's levels."""
    root = logging.getLogger()
    for logger in _every_logger():
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)
        logger.disabled = False
    root.setLevel(settings["root"])
    for logger_name, level in settings["levels"].items():
        logging.getLogger(logger_name).setLevel(level)
    for logger_name in settings["disabled"]:
        logging.getLogger(logger_name).disabled = True
    logging.disable(settings["disable"])


def flush_child() -> None:
    """In a child process: return once every record logged so far is written to the parent's pipe.

    Does nothing in the parent process.
    """
    batches = _child_batches
    if batches is None or batches.idle():
        return
    marker = _Marker()
    batches.put_nowait(marker)
    marker.event.wait()


# --- parent: the listener --------------------------------------------------------------------------
_loggers: dict[str, logging.Logger] = {}


_LogRecord = logging.LogRecord
_new_record = logging.LogRecord.__new__
_start_time: float = getattr(logging, "_startTime", 0.0)


def _write(fields: dict[str, Any]) -> None:
    """Re-enter one child record into this process's logger of the same name."""
    record = _new_record(_LogRecord)
    record.__dict__ = fields
    fields["relativeCreated"] = (fields["created"] - _start_time) * 1000  # from this process's start
    name = fields["name"]
    logger = _loggers.get(name)
    if logger is None:
        logger = _loggers[name] = logging.getLogger(name)
    if logger.isEnabledFor(fields["levelno"]):
        logger.handle(record)


def _report(what: str) -> None:
    """A failure of the log path itself, said on stderr like ``Handler.handleError``."""
    if logging.raiseExceptions and sys.stderr is not None:
        try:
            sys.stderr.write(f"--- puma: {what} ---\n{traceback.format_exc()}")
        except Exception:  # noqa: BLE001, S110 - stderr is gone too
            pass


def _handle(item: Any) -> None:
    """Write a child's batch (pickled list of dicts), or set a marker."""
    if isinstance(item, _Marker):
        item.event.set()
        return
    try:
        batch = pickle.loads(item) if isinstance(item, bytes) else [item.__dict__.copy()]
    except Exception:  # noqa: BLE001 - the listener must outlive a bad message
        _report("a child's log records could not be read")
        return
    for fields in batch:
        try:
            _write(fields)
        except BaseException:  # noqa: BLE001 - a failing handler or filter must not stop the listener
            _report("a child's log record could not be written")


class _Pending:
    """The listener's bounded queue (``put`` waits for room), on a Condition a Ctrl-C cannot leave locked."""

    __slots__ = ("_cond", "_items", "_size")

    def __init__(self, size: int) -> None:
        self._items: collections.deque[Any] = collections.deque()
        self._size = size
        self._cond = Condition()

    def put(self, item: Any) -> None:
        with self._cond:
            while len(self._items) >= self._size:
                self._cond.wait()
            self._items.append(item)
            self._cond.notify_all()

    def get(self, block: bool = True) -> Any:
        with self._cond:
            while not self._items:
                if not block:
                    raise queue.Empty
                self._cond.wait()
            item = self._items.popleft()
            self._cond.notify_all()
            return item


class _Listener(logging.handlers.QueueListener):
    """The parent's listener thread: writes children's records with the parent's handlers."""

    def __init__(self) -> None:
        self.pending = _Pending(LISTENER_BACKLOG)
        super().__init__(self.pending)  # type: ignore[arg-type]  # a queue in all it uses

    def start(self) -> None:
        super().start()
        thread = self._thread
        assert thread is not None
        thread.name = "puma-log-listener"

    def put(self, item: Any) -> None:
        """Queue ``item``, starting the thread with the first (children that never log cost no thread)."""
        if self._thread is None:
            self.start()
        self.pending.put(item)

    def stop(self) -> None:
        if self._thread is not None:
            super().stop()

    def handle(self, item: Any) -> None:
        _handle(item)

    def enqueue_sentinel(self) -> None:
        self.pending.put(None)  # the sentinel; the queue is bounded: wait for room


_listener_lock = threading.Lock()
_listener: _Listener | None = None
_listener_users = 0


def _forget_listener() -> None:
    """After a fork: the parent's listener thread does not exist here."""
    global _listener, _listener_lock, _listener_users
    _listener_lock = threading.Lock()
    _listener = None
    _listener_users = 0
    _loggers.clear()


def _after_fork_in_child() -> None:
    global _child_batches, _child_sender, _child_handler
    _forget_listener()
    handler = _child_handler
    if handler is not None:
        # A process forked by a runnable's code (not by puma) has no sender thread and must not
        # write into its parent's pipe: it logs to stderr (logging's last resort) instead.
        logging.getLogger().removeHandler(handler)
        _child_batches = _child_sender = _child_handler = None


_fork_hook_registered = False


def _register_fork_hook() -> None:
    """Register the after-fork clean-up on first use (importing puma registers nothing)."""
    global _fork_hook_registered
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        _fork_hook_registered = True
        os.register_at_fork(after_in_child=_after_fork_in_child)


def start_listener() -> None:
    """Start (or share) the parent's listener; pair with :func:`stop_listener`."""
    global _listener, _listener_users
    _register_fork_hook()
    with _listener_lock:
        _listener_users += 1
        if _listener is None:
            _listener = _Listener()  # its thread starts with the first records


def stop_listener() -> None:
    """Release the listener; the last user stops it once it has written every record."""
    global _listener, _listener_users
    with _listener_lock:
        _listener_users -= 1
        listener = _listener
        if _listener_users > 0 or listener is None:
            return
        _listener = None
        listener.stop()


def listener_running() -> bool:
    """True while a Runner of this process has process runnables (the listener runs)."""
    return _listener is not None


def dispatch(item: Any) -> None:
    """Hand a child's records to the listener (or write them now if none runs).

    Waits while the listener has :data:`LISTENER_BACKLOG` messages pending,
    which in turn makes chatty children wait: back-pressure, not memory.
    """
    with _listener_lock:
        listener = _listener
        if listener is not None:
            listener.put(item)
            return
    _handle(item)


def wait_dispatched() -> None:
    """Block until the listener has written every record handed to it so far."""
    marker = _Marker()
    with _listener_lock:
        listener = _listener
        if listener is None or listener._thread is None:
            return  # nothing handed over yet
        listener.pending.put(marker)
    marker.event.wait()
