"""Logging for puma applications: one output for every thread and process.

Configure the standard :mod:`logging` module in the parent process, as usual or
with the one-call set-ups here; every runnable's records, in threads and in
child processes alike, are written by the parent's handlers.  See
``docs/logging.md``.

* :func:`configure`: console and/or a (rotating) file, levels per logger.
* :func:`development` / :func:`production`: ready-made presets;
  :func:`development_config` / :func:`production_config` give their
  ``dictConfig`` dicts to adapt.
* :func:`configure_dict` / :func:`configure_file`: a ``dictConfig`` dict, or a
  YAML (needs PyYAML: ``pip install puma[yaml]``), JSON or ``fileConfig`` INI file.
* :func:`capture`: collect the records of every runnable in a test.
* :func:`flush`: wait until records logged so far are written.
* :class:`RunnableFilter`: ``%(runnable)s`` for formatters (added by every set-up here).

Every record, wherever it was logged, has ``%(runnable)s`` (the runnable's
name, "main" outside any), ``%(process)d``, ``%(processName)s`` and
``%(threadName)s`` of the code that logged it.
"""

from __future__ import annotations

import copy
import datetime
import json
import logging
import logging.config
import logging.handlers
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from puma._core import logs as _logging
from puma._core.logs import RunnableFilter

__all__ = [
    "DEFAULT_FORMAT",
    "DEVELOPMENT_FORMAT",
    "CapturedLogs",
    "RunnableFilter",
    "capture",
    "configure",
    "configure_dict",
    "configure_file",
    "development",
    "development_config",
    "flush",
    "production",
    "production_config",
]

#: The format of :func:`configure` and of the production preset.
DEFAULT_FORMAT = "%(asctime)s %(levelname)-8s %(runnable)s[%(process)d/%(threadName)s] %(name)s: %(message)s"
#: The console format of the development preset: short time, where the record was logged.
DEVELOPMENT_FORMAT = (
    "%(asctime)s.%(msecs)03d %(levelname)-8s %(runnable)s[%(process)d/%(threadName)s] "
    "%(name)s (%(filename)s:%(lineno)d): %(message)s"
)
_RUNNABLE_FILTER = "puma_runnable"

_Level = int | str


def _level(level: _Level) -> int:
    """A level as a number, checked ("INFO", "info", 20 all work)."""
    if isinstance(level, bool) or not isinstance(level, int | str):
        raise TypeError(f"a logging level is an int or a level name, not {type(level).__name__}")
    if isinstance(level, int):
        return level
    number = logging.getLevelName(level.upper())
    if not isinstance(number, int):
        raise ValueError(f"unknown logging level {level!r}")
    return number


def _console_handler(level: _Level, fmt: str) -> dict[str, Any]:
    return {
        "class": "logging.StreamHandler",
        "stream": "ext://sys.stderr",
        "level": _level(level),
        "formatter": fmt,
    }


def _file_handler(
    path: str | os.PathLike[str], level: _Level, fmt: str, max_bytes: int, backup_count: int
) -> dict[str, Any]:
    if max_bytes > 0:
        return {
            "class": "logging.handlers.RotatingFileHandler",
            "filename": os.fspath(path),
            "maxBytes": max_bytes,
            "backupCount": backup_count,
            "encoding": "utf-8",
            "level": _level(level),
            "formatter": fmt,
        }
    return {
        "class": "logging.FileHandler",
        "filename": os.fspath(path),
        "encoding": "utf-8",
        "level": _level(level),
        "formatter": fmt,
    }


def _config(
    handlers: dict[str, dict[str, Any]],
    formatters: dict[str, dict[str, Any]],
    level: _Level,
    levels: Mapping[str, _Level] | None,
) -> dict[str, Any]:
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": formatters,
        "handlers": handlers,
        "root": {"level": _level(level), "handlers": list(handlers)},
        "loggers": {name: {"level": _level(value)} for name, value in (levels or {}).items()},
    }


def configure(
    level: _Level = logging.INFO,
    *,
    file: str | os.PathLike[str] | None = None,
    console: bool = True,
    fmt: str = DEFAULT_FORMAT,
    levels: Mapping[str, _Level] | None = None,
    max_bytes: int = 0,
    backup_count: int = 5,
) -> None:
    """Set up logging for the whole application in one call (replaces any earlier set-up).

    Args:
        level: the root logger's level (``logging.INFO``, ``"DEBUG"``...).
            Runnables started afterwards use it too, in threads and processes.
        file: also write to this file (its directory is created).
        console: write to stderr.
        fmt: the format of every handler; ``%(runnable)s`` works.
        levels: levels of particular loggers, e.g. ``{"urllib3": "WARNING"}``.
        max_bytes: if > 0, ``file`` rotates when it reaches this size, keeping
            ``backup_count`` old files (``app.log.1``, ``app.log.2``...).
        backup_count: see ``max_bytes``.

    Example::

        puma.logging.configure(logging.INFO, file="logs/app.log", levels={"noisy": "WARNING"})
    """
    handlers: dict[str, dict[str, Any]] = {}
    if console:
        handlers["console"] = _console_handler(logging.NOTSET, "default")
    if file is not None:
        handlers["file"] = _file_handler(file, logging.NOTSET, "default", max_bytes, backup_count)
    configure_dict(_config(handlers, {"default": {"format": fmt}}, level, levels))


def development_config(level: _Level = logging.DEBUG, *, levels: Mapping[str, _Level] | None = None) -> dict[str, Any]:
    """The development preset as a ``dictConfig`` dict: everything from ``level`` up to the console.

    The console lines show the time to the millisecond, the runnable, process,
    thread and source line of each record.
    """
    formatters = {"development": {"format": DEVELOPMENT_FORMAT, "datefmt": "%H:%M:%S"}}
    return _config({"console": _console_handler(logging.NOTSET, "development")}, formatters, level, levels)


def production_config(
    directory: str | os.PathLike[str] = "logs",
    *,
    name: str = "app",
    level: _Level = logging.INFO,
    file_level: _Level = logging.WARNING,
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 10,
    levels: Mapping[str, _Level] | None = None,
    started: datetime.datetime | None = None,
) -> dict[str, Any]:
    """The production preset as a ``dictConfig`` dict.

    * the console gets everything from ``level`` up;
    * warnings and errors (``file_level`` and up) also go to a time-stamped
      rotating file, ``<directory>/<name>_<YYYYmmdd-HHMMSS>.log`` (the time
      ``started``, default now), rotated at ``max_bytes`` keeping
      ``backup_count`` old files.  Lines carry the full date and time.
    """
    stamp = (started or datetime.datetime.now()).strftime("%Y%m%d-%H%M%S")
    path = Path(directory) / f"{name}_{stamp}.log"
    formatters = {"production": {"format": DEFAULT_FORMAT}}
    handlers = {
        "console": _console_handler(logging.NOTSET, "production"),
        "file": _file_handler(path, file_level, "production", max_bytes, backup_count),
    }
    return _config(handlers, formatters, level, levels)


def development(level: _Level = logging.DEBUG, *, levels: Mapping[str, _Level] | None = None) -> None:
    """Apply the development preset (:func:`development_config`): everything to the console."""
    configure_dict(development_config(level, levels=levels))


def production(
    directory: str | os.PathLike[str] = "logs",
    *,
    name: str = "app",
    level: _Level = logging.INFO,
    file_level: _Level = logging.WARNING,
    max_bytes: int = 10 * 1024 * 1024,
    backup_count: int = 10,
    levels: Mapping[str, _Level] | None = None,
) -> Path:
    """Apply the production preset (:func:`production_config`); return the log file's path."""
    config = production_config(
        directory,
        name=name,
        level=level,
        file_level=file_level,
        max_bytes=max_bytes,
        backup_count=backup_count,
        levels=levels,
    )
    configure_dict(config)
    return Path(config["handlers"]["file"]["filename"])


def configure_dict(config: Mapping[str, Any]) -> None:
    """Apply a :func:`logging.config.dictConfig` dict, ready for puma.

    Differences from calling ``dictConfig`` yourself, all for convenience:

    * every handler gets a :class:`RunnableFilter`, so ``%(runnable)s`` works;
    * ``disable_existing_loggers`` defaults to False (loggers made at import
      time keep working);
    * the directories of handlers' ``filename`` are created.

    ``config`` itself is not modified.
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"a logging configuration must be a mapping, not {type(config).__name__}")
    conf: dict[str, Any] = copy.deepcopy(dict(config))
    conf.setdefault("version", 1)
    if not conf.get("incremental", False):
        conf.setdefault("disable_existing_loggers", False)
        filters = conf.setdefault("filters", {})
        filters.setdefault(_RUNNABLE_FILTER, {"()": RunnableFilter})
        for handler in (conf.get("handlers") or {}).values():
            if not isinstance(handler, dict):
                continue
            names = list(handler.get("filters", []))
            if _RUNNABLE_FILTER not in names:
                handler["filters"] = [_RUNNABLE_FILTER, *names]
            filename = handler.get("filename")
            if isinstance(filename, str | os.PathLike):
                Path(filename).parent.mkdir(parents=True, exist_ok=True)
    logging.config.dictConfig(conf)


def configure_file(path: str | os.PathLike[str]) -> None:
    """Apply a configuration file, chosen by its extension.

    * ``.yaml`` / ``.yml``: a ``dictConfig`` mapping in YAML (needs PyYAML:
      ``pip install puma[yaml]``);
    * ``.json``: the same mapping in JSON;
    * anything else: an INI file for :func:`logging.config.fileConfig`.

    Dict configurations go through :func:`configure_dict`.  With ``fileConfig``,
    existing loggers stay enabled and every handler gets a :class:`RunnableFilter`.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:  # pragma: no cover - PyYAML is in the test extra
            raise ImportError(f"reading {file} needs PyYAML: pip install 'puma[yaml]' (or use a .json file)") from exc
        with file.open(encoding="utf-8") as f:
            configure_dict(yaml.safe_load(f))
    elif suffix == ".json":
        with file.open(encoding="utf-8") as f:
            configure_dict(json.load(f))
    else:
        if not file.is_file():
            raise FileNotFoundError(f"logging configuration file not found: {file}")
        logging.config.fileConfig(file, disable_existing_loggers=False)
        _add_runnable_filters()


def _add_runnable_filters() -> None:
    """Put a RunnableFilter on every handler of every logger that has none."""
    loggers: list[Any] = [logging.getLogger(), *list(logging.Logger.manager.loggerDict.values())]
    for logger in loggers:
        if isinstance(logger, logging.Logger):
            for handler in logger.handlers:
                if not any(isinstance(f, RunnableFilter) for f in handler.filters):
                    handler.addFilter(RunnableFilter())


def flush() -> None:
    """Wait until every record logged so far has been written.

    In the parent: records already received from child processes are written
    by the parent's handlers (children's records are written by a background
    thread; this waits for it).  Inside a process runnable: every record
    logged so far has been handed over to the parent (so a later crash, even
    SIGKILL, cannot lose it).  Records of a runnable that has ended are always
    written already: the Runner waits for them before it reports the end.
    """
    _logging.flush_child()
    _logging.wait_dispatched()
    for handler in logging.getLogger().handlers:
        handler.flush()


class CapturedLogs(list[logging.LogRecord]):
    """The records collected by :func:`capture`, in the order they were written, plus helpers."""

    @property
    def messages(self) -> list[str]:
        """The message of each record (arguments merged)."""
        return [record.getMessage() for record in self]

    def from_runnable(self, name: str) -> list[logging.LogRecord]:
        """The records logged by the runnable called ``name`` ("main": outside any runnable)."""
        return [record for record in self if getattr(record, "runnable", None) == name]

    def messages_from(self, name: str) -> list[str]:
        """The messages logged by the runnable called ``name``."""
        return [record.getMessage() for record in self.from_runnable(name)]


class _Collector(logging.Handler):
    def __init__(self, records: CapturedLogs, level: int) -> None:
        super().__init__(level)
        self._records = records
        self.addFilter(RunnableFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self._records.append(record)


@contextmanager
def capture(level: _Level = logging.DEBUG, logger: str | None = None) -> Iterator[CapturedLogs]:
    """Collect every record from ``level`` up, from every runnable and the main thread.

    A context manager; it yields a :class:`CapturedLogs` (a list of
    ``logging.LogRecord``) that fills as records are written.  Runnables
    started inside the block, in threads or processes, are captured; the
    loggers' levels are lowered to ``level`` for the block if needed (and
    restored after), so that child processes send those records.  On leaving
    the block, every record already received from child processes has been
    written.  Records of runnables that ended inside the block are all there.

    Args:
        level: the lowest level captured.
        logger: capture only this logger and its children (default: all).

    Example (pytest)::

        def test_worker_logs(env):
            with puma.logging.capture() as logs:
                with puma.Runner(env) as runner:
                    runner.start(Worker())
            assert "done" in logs.messages_from("worker")
    """
    target = logging.getLogger(logger)
    number = _level(level)
    records = CapturedLogs()
    handler = _Collector(records, number)
    old_level = target.level
    if target.getEffectiveLevel() > number:
        target.setLevel(number)
    target.addHandler(handler)
    try:
        yield records
    finally:
        try:
            _logging.wait_dispatched()
        finally:
            target.removeHandler(handler)
            target.setLevel(old_level)
