"""Logging: one output for every thread and process, through the parent's handlers (issue #3).

Runnables are defined here, at module level, so spawn and forkserver children can import them.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import puma
import puma.logging
from puma._core import logs as _logging

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
PAYLOAD = "x" * 120


class Chatty(puma.Runnable):
    """Logs ``count`` INFO records ``n=<i>`` on ``logger``, then does ``then``.

    ``then``: None (return), "raise", "stop" (wait for a stop, log "stopping"),
    "kill" (hand every record over, then SIGKILL itself), "kill-now" (SIGKILL
    at once, records possibly still pending).
    """

    def __init__(self, name: str, count: int, then: str | None = None, logger: str = "test.chatty") -> None:
        super().__init__(name)
        self._count = count
        self._then = then
        self._logger = logger

    @puma.run_in_child_scope
    def log_more(self, start: int, count: int) -> int:
        log = logging.getLogger(self._logger)
        for i in range(start, start + count):
            log.info("n=%d %s", i, PAYLOAD)
        return os.getpid()

    def execute(self) -> None:
        log = logging.getLogger(self._logger)
        for i in range(self._count):
            log.info("n=%d %s", i, PAYLOAD)
        if self._then == "raise":
            raise ValueError("failed right after logging")
        if self._then == "stop":
            self.send_status("logged", True)
            self.wait_for_stop()
            log.warning("stopping")
        elif self._then == "kill":
            puma.logging.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        elif self._then == "kill-now":
            os.kill(os.getpid(), signal.SIGKILL)


class LevelProbe(puma.Runnable):
    """Logs DEBUG, INFO and WARNING on three loggers; reports which levels were enabled in the child."""

    def __init__(self) -> None:
        super().__init__("probe")

    def execute(self) -> None:
        enabled: dict[str, list[int]] = {}
        for name in ("test.levels", "test.levels.noisy", "test.levels.chatty", "test.levels.off"):
            log = logging.getLogger(name)
            enabled[name] = [lv for lv in (logging.DEBUG, logging.INFO, logging.WARNING) if log.isEnabledFor(lv)]
            log.debug("debug")
            log.info("info")
            log.warning("warning")
        self.send_status("enabled", enabled)
        self.send_status("handler levels", [h.level for h in logging.getLogger().handlers])


class Unusual:
    """Pickles, but only a process that can import this module can unpickle it."""

    def __str__(self) -> str:
        return "an Unusual object"


class Detailed(puma.Runnable):
    """Logs an exception, a stack, extras that are not plain data, and from a thread of its own."""

    def __init__(self) -> None:
        super().__init__("detailed")

    def execute(self) -> None:
        log = logging.getLogger("test.detailed")
        try:
            1 / 0
        except ZeroDivisionError:
            log.exception("division failed")
        log.info("with stack", stack_info=True)
        log.info("extras", extra={"lock": threading.Lock(), "count": 3, "items": [1, "a"], "obj": Unusual()})
        log.info("argument %s", Unusual())
        helper = threading.Thread(target=lambda: log.info("from a helper"), name="helper")
        helper.start()
        helper.join()
        self.send_status("pid", os.getpid())


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the logging configuration back as it was after a test that configures it."""
    root = logging.getLogger()
    manager = logging.Logger.manager
    saved = {
        name: (logger.level, logger.disabled, logger.propagate, list(logger.handlers))
        for name, logger in list(manager.loggerDict.items())
        if isinstance(logger, logging.Logger)
    }
    root_state = (root.level, list(root.handlers))
    yield
    for handler in list(root.handlers):
        if handler not in root_state[1]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(root_state[0])
    for handler in root_state[1]:
        if handler not in root.handlers:
            root.addHandler(handler)
    for name, logger in list(manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger):
            continue
        level, disabled, propagate, handlers = saved.get(name, (logging.NOTSET, False, True, []))
        for handler in list(logger.handlers):
            if handler not in handlers:
                logger.removeHandler(handler)
                handler.close()
        logger.setLevel(level)
        logger.disabled = disabled
        logger.propagate = propagate


def numbers(messages: list[str]) -> list[int]:
    return [int(m.split()[0][2:]) for m in messages if m.startswith("n=")]


# --- the path of a record ----------------------------------------------------------------------------
def test_records_from_four_runnables_arrive_complete_and_in_order_per_source(env: puma.Environment) -> None:
    with puma.logging.capture(logging.INFO) as logs:
        with puma.Runner(env) as runner:
            chatty = [runner.start(Chatty(f"chatty-{i}", 1000)) for i in range(4)]
            runner.join()
            pids = {r.name: runner.pid(r) for r in chatty}
            # every record is written once the runnables are reported ended: no flush needed
            for runnable in chatty:
                records = logs.from_runnable(runnable.name)
                assert numbers([r.getMessage() for r in records]) == list(range(1000))
                assert {r.process for r in records} == {pids[runnable.name]}
                expected_thread = "MainThread" if env.is_process else f"puma:{runnable.name}"
                assert {r.threadName for r in records} == {expected_thread}
    assert (len(set(pids.values())) == 4) == env.is_process


def test_thread_runnables_log_in_process_without_a_listener() -> None:
    users = _logging._listener_users  # other Runners of this process may use the listener
    with puma.logging.capture() as logs:
        with puma.Runner(puma.ThreadEnvironment()) as runner:
            runner.start(Chatty("in-thread", 3))
            runner.join()
            assert _logging._listener_users == users  # thread runnables do not need it
    assert logs.messages_from("in-thread") == [f"n={i} {PAYLOAD}" for i in range(3)]
    assert {r.process for r in logs.from_runnable("in-thread")} == {os.getpid()}


def test_exceptions_stacks_extras_and_threads_of_a_child_arrive_intact(env: puma.Environment) -> None:
    formatter = logging.Formatter("%(runnable)s %(threadName)s %(message)s")
    with puma.logging.capture() as logs:
        with puma.Runner(env) as runner:
            detailed = runner.start(Detailed())
            runner.join()
    records = [r for r in logs if r.name == "test.detailed"]
    assert [r.getMessage() for r in records] == [
        "division failed",
        "with stack",
        "extras",
        "argument an Unusual object",
        "from a helper",
    ]
    failed = formatter.format(records[0])
    thread = "MainThread" if env.is_process else "puma:detailed"
    assert failed.startswith(f"detailed {thread} division failed\nTraceback (most recent call last):")
    assert "1 / 0" in failed and failed.endswith("ZeroDivisionError: division by zero")
    assert records[0].getMessage() == "division failed"  # the traceback is not merged into the message
    assert records[1].stack_info is not None and "in execute" in records[1].stack_info
    extras = records[2].__dict__
    assert extras["count"] == 3 and extras["items"] == [1, "a"] and str(extras["obj"]) == "an Unusual object"
    if env.is_process:  # what is not plain data crosses as its str()
        assert isinstance(extras["lock"], str) and extras["obj"] == "an Unusual object"
    assert records[4].threadName == "helper"
    # in a process every record is the runnable's; a thread runnable's own threads are not known to puma
    assert records[4].runnable == ("detailed" if env.is_process else "main")  # type: ignore[attr-defined]
    assert {r.runnable for r in records[:4]} == {"detailed"}  # type: ignore[attr-defined]
    assert {r.process for r in records} == {detailed.status("pid")}
    assert {r.levelname for r in records} == {"ERROR", "INFO"}


def test_per_logger_levels_of_the_parent_apply_in_the_child(
    process_env: puma.ProcessEnvironment, restore_logging: None
) -> None:
    logging.getLogger("test.levels").setLevel(logging.INFO)
    logging.getLogger("test.levels.noisy").setLevel(logging.WARNING)
    logging.getLogger("test.levels.chatty").setLevel(logging.DEBUG)
    logging.getLogger("test.levels.off").disabled = True
    with puma.logging.capture(logging.DEBUG) as logs:
        with puma.Runner(process_env) as runner:
            probe = runner.start(LevelProbe())
            runner.join()
    enabled = probe.status("enabled")
    info, debug, warning = logging.INFO, logging.DEBUG, logging.WARNING
    assert enabled["test.levels"] == [info, warning]
    assert enabled["test.levels.noisy"] == [warning]
    assert enabled["test.levels.chatty"] == [debug, info, warning]
    got = [(r.name, r.getMessage()) for r in logs.from_runnable("probe")]
    assert got == [
        ("test.levels", "info"),
        ("test.levels", "warning"),
        ("test.levels.noisy", "warning"),
        ("test.levels.chatty", "debug"),
        ("test.levels.chatty", "info"),
        ("test.levels.chatty", "warning"),
    ]


def test_records_below_every_handler_level_are_not_sent(
    process_env: puma.ProcessEnvironment, restore_logging: None
) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):  # pytest's own capture handlers take every level
        root.removeHandler(handler)
    collected: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            collected.append(record)

    root.addHandler(Collect(logging.WARNING))
    root.setLevel(logging.DEBUG)
    settings = _logging.child_settings()
    assert settings["floor"] == logging.WARNING
    with puma.Runner(process_env) as runner:
        probe = runner.start(LevelProbe())
        runner.join()
    assert probe.status("handler levels") == [logging.WARNING]  # the child's one handler drops the rest
    assert [r.getMessage() for r in collected] == ["warning"] * 4


def test_a_rotating_file_handler_gets_every_child_record_without_interleaving(
    process_env: puma.ProcessEnvironment, tmp_path: Path, restore_logging: None
) -> None:
    path = tmp_path / "app.log"
    handler = logging.handlers.RotatingFileHandler(path, maxBytes=32_000, backupCount=1000, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(runnable)s|%(process)d|%(threadName)s|%(message)s"))
    handler.addFilter(puma.logging.RunnableFilter())
    logging.getLogger().addHandler(handler)
    logging.getLogger("test.chatty").setLevel(logging.INFO)
    with puma.Runner(process_env) as runner:
        chatty = [runner.start(Chatty(f"chatty-{i}", 500)) for i in range(4)]
        runner.join()
        pids = {r.name: runner.pid(r) for r in chatty}
    handler.close()
    files = sorted(tmp_path.glob("app.log.*"), key=lambda p: -int(p.suffix[1:]))
    assert len(files) > 5  # it did rotate
    line = re.compile(rf"^(chatty-[0-3])\|(\d+)\|MainThread\|n=(\d+) {PAYLOAD}$")
    seen: dict[str, list[int]] = {name: [] for name in pids}
    for file in [*files, path]:
        for text in file.read_text(encoding="utf-8").splitlines():
            match = line.match(text)
            assert match, f"corrupt line in {file.name}: {text!r}"
            assert int(match[2]) == pids[match[1]]
            seen[match[1]].append(int(match[3]))
    assert seen == {name: list(range(500)) for name in pids}


# --- nothing lost ------------------------------------------------------------------------------------
def test_records_logged_right_before_a_raise_are_written_before_the_error_is_reported(
    env: puma.Environment,
) -> None:
    with puma.logging.capture(logging.INFO) as logs:
        with pytest.raises(ValueError, match="failed right after logging"):
            with puma.Runner(env) as runner:
                runner.start(Chatty("raiser", 300, then="raise"))
                try:
                    runner.join()
                except ValueError:
                    written_when_reported = numbers(logs.messages_from("raiser"))
                    raise
    assert written_when_reported == list(range(300))


def test_records_logged_when_stopped_are_written_before_the_end_is_reported(env: puma.Environment) -> None:
    with puma.logging.capture(logging.INFO) as logs:
        with puma.Runner(env) as runner:
            stopped = runner.start(Chatty("stopped", 200, then="stop"))
            stopped.wait_status("logged", timeout=30)
            runner.stop(stopped)
            runner.join()
            assert logs.messages_from("stopped")[-1] == "stopping"
            assert numbers(logs.messages_from("stopped")) == list(range(200))


def test_a_sigkilled_child_does_not_take_the_listener_down(process_env: puma.ProcessEnvironment) -> None:
    with puma.logging.capture(logging.INFO) as logs:
        with pytest.raises(ExceptionGroup) as died:
            with puma.Runner(process_env, on_failure="continue") as runner:
                steady = runner.start(Chatty("steady", 100, then="stop"))
                killed = runner.start(Chatty("killed", 300, then="kill"))
                killed_now = runner.start(Chatty("killed-now", 3000, then="kill-now"))
                steady.wait_status("logged", timeout=30)
                for victim in (killed, killed_now):
                    with pytest.raises(puma.RunnableNotRunningError):
                        victim.wait_status("never", timeout=30)  # returns when it has died
                steady.log_more(100, 100)  # the listener still serves the others
                runner.stop(steady)
                runner.join()
    assert [type(e) for e in died.value.exceptions] == [puma.ChildDiedError] * 2
    assert numbers(logs.messages_from("killed")) == list(range(300))  # all handed over before the kill
    partial = numbers(logs.messages_from("killed-now"))
    assert partial == list(range(len(partial)))  # whatever arrived is whole and in order
    assert numbers(logs.messages_from("steady")) == list(range(200))
    assert logs.messages_from("steady")[-1] == "stopping"
    with puma.logging.capture(logging.INFO) as logs:  # and a new Runner logs as usual
        with puma.Runner(process_env) as runner:
            runner.start(Chatty("after", 10))
            runner.join()
    assert numbers(logs.messages_from("after")) == list(range(10))


@pytest.mark.parametrize("kind", ["thread", "fork", "forkserver", "spawn"])
def test_records_logged_before_a_status_are_written_when_the_status_is_seen(kind: str) -> None:
    env = puma.ThreadEnvironment() if kind == "thread" else puma.ProcessEnvironment(kind)
    with puma.logging.capture(logging.INFO) as logs:
        with puma.Runner(env) as runner:
            chatty = runner.start(Chatty("ordered", 500, then="stop"))
            chatty.wait_status("logged", timeout=30)
            # no wait on the logs themselves: the status comes after them
            assert numbers(logs.messages_from("ordered")) == list(range(500))
            runner.stop(chatty)


class _WaitsForStop(puma.Runnable):
    def execute(self) -> None:
        logging.getLogger("test.waits").warning("%s is up", self.name)
        self.send_status("up", True)  # its record reaches the parent before this status
        self.wait_for_stop()


def test_the_listener_runs_while_a_runner_has_process_runnables(process_env: puma.ProcessEnvironment) -> None:
    users = _logging._listener_users  # other Runners of this process may use the listener
    with puma.logging.capture(logging.WARNING, logger="test.waits") as logs:
        with puma.Runner(process_env) as first, puma.Runner(process_env) as second:
            first.start(_WaitsForStop("one")).wait_status("up", timeout=30)
            assert _logging.listener_running()
            second.start(_WaitsForStop("two")).wait_status("up", timeout=30)
            first.close()
            assert _logging.listener_running()  # the second Runner's runnable still logs through it
        assert _logging._listener_users == users
        assert _logging.listener_running() == (users > 0)
    assert sorted(r.getMessage() for r in logs) == ["one is up", "two is up"]


# --- the public set-ups ------------------------------------------------------------------------------
def test_configure_writes_a_file_with_runnable_names(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "sub" / "app.log"
    puma.logging.configure("INFO", file=path, console=False, levels={"test.chatty": "WARNING"})
    logging.getLogger("test.main").info("from main")
    logging.getLogger("test.chatty").info("filtered out")
    with puma.Runner(puma.ProcessEnvironment("fork")) as runner:
        runner.start(Chatty("child", 2, logger="test.child"))
        runner.join()
    puma.logging.flush()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    assert re.match(r"^\S+ \S+ INFO     main\[\d+/MainThread\] test\.main: from main$", lines[0])
    assert re.match(rf"^\S+ \S+ INFO     child\[\d+/MainThread\] test\.child: n=1 {PAYLOAD}$", lines[2])


def test_configure_with_rotation(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "app.log"
    puma.logging.configure(logging.DEBUG, file=path, console=False, max_bytes=1000, backup_count=2)
    for i in range(100):
        logging.getLogger("test.rotate").debug("line %d", i)
    puma.logging.flush()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.log", "app.log.1", "app.log.2"]
    with pytest.raises(ValueError, match="unknown logging level"):
        puma.logging.configure("LOUD")


def test_production_preset_puts_warnings_in_a_time_stamped_file_and_all_on_the_console(
    tmp_path: Path, restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    path = puma.logging.production(tmp_path / "logs", name="svc")
    assert re.fullmatch(r"svc_\d{8}-\d{6}\.log", path.name) and path.parent == tmp_path / "logs"
    log = logging.getLogger("test.prod")
    log.debug("not shown")
    log.info("for the console")
    log.warning("for the file too")
    puma.logging.flush()
    assert [line.split(": ", 1)[1] for line in path.read_text(encoding="utf-8").splitlines()] == ["for the file too"]
    err = capfd.readouterr().err
    assert "for the console" in err and "for the file too" in err and "not shown" not in err
    config = puma.logging.production_config(tmp_path)
    assert config["handlers"]["file"]["class"] == "logging.handlers.RotatingFileHandler"


def test_development_preset_shows_debug_on_the_console(
    restore_logging: None, capfd: pytest.CaptureFixture[str]
) -> None:
    puma.logging.development()
    logging.getLogger("test.dev").debug("a detail")
    err = capfd.readouterr().err
    assert re.search(r"DEBUG    main\[\d+/MainThread\] test\.dev \(test_logging\.py:\d+\): a detail", err)


def test_configure_file_reads_yaml_json_and_ini(tmp_path: Path, restore_logging: None) -> None:
    out = tmp_path / "out.log"
    config = {
        "version": 1,
        "formatters": {"plain": {"format": "%(runnable)s %(levelname)s %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "filename": str(out), "formatter": "plain"}},
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    yaml_file = tmp_path / "logging.yaml"
    yaml = pytest.importorskip("yaml")
    yaml_file.write_text(yaml.safe_dump(config), encoding="utf-8")
    json_file = tmp_path / "logging.json"
    json_file.write_text(json.dumps(config), encoding="utf-8")
    ini_file = tmp_path / "logging.ini"
    ini_file.write_text(
        "[loggers]\nkeys=root\n[handlers]\nkeys=file\n[formatters]\nkeys=plain\n"
        "[logger_root]\nlevel=INFO\nhandlers=file\n"
        f"[handler_file]\nclass=FileHandler\nformatter=plain\nargs=({str(out)!r}, 'a')\n"
        "[formatter_plain]\nformat=%(runnable)s %(levelname)s %(message)s\n",
        encoding="utf-8",
    )
    for file in (yaml_file, json_file, ini_file):
        puma.logging.configure_file(file)
        logging.getLogger("test.file").info("via %s", file.suffix)
    logging.getLogger().handlers[0].flush()
    assert out.read_text(encoding="utf-8").splitlines() == [
        "main INFO via .yaml",
        "main INFO via .json",
        "main INFO via .ini",
    ]
    with pytest.raises(FileNotFoundError):
        puma.logging.configure_file(tmp_path / "missing.ini")


def test_configure_dict_does_not_modify_its_argument(restore_logging: None) -> None:
    config = puma.logging.development_config("INFO")
    before = json.dumps(config, sort_keys=True)
    puma.logging.configure_dict(config)
    assert json.dumps(config, sort_keys=True) == before
    with pytest.raises(TypeError):
        puma.logging.configure_dict([])  # type: ignore[arg-type]


def test_capture_restores_the_level_and_collects_main_thread_records() -> None:
    root = logging.getLogger()
    before = root.level
    with puma.logging.capture("DEBUG") as logs:
        assert root.getEffectiveLevel() == logging.DEBUG
        logging.getLogger("test.capture").debug("here")
    assert root.level == before
    assert logs.messages == ["here"] and logs.from_runnable("main")[0].name == "test.capture"
    with puma.logging.capture(logger="test.capture.only") as only:
        logging.getLogger("test.capture").warning("elsewhere")
        logging.getLogger("test.capture.only.sub").warning("inside")
    assert only.messages == ["inside"]


# --- the documentation -------------------------------------------------------------------------------
DOC = REPO / "docs" / "logging.md"


def _doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.mark.parametrize("index", range(len(_doc_blocks("python"))))
def test_docs_examples_run(index: int, tmp_path: Path) -> None:
    """Each Python block of docs/logging.md is a script (or a pytest file) that runs and checks itself."""
    code = _doc_blocks("python")[index]
    for block in _doc_blocks("yaml"):  # files the examples read: "# file: <name>" on the first line
        first = block.splitlines()[0]
        if first.startswith("# file: "):
            (tmp_path / first.removeprefix("# file: ").strip()).write_text(block, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if "def test_" in code:
        script = tmp_path / "test_example.py"
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(script)]
    else:
        script = tmp_path / "example.py"
        command = [sys.executable, str(script)]
    script.write_text(code, encoding="utf-8")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=50, check=False)
    report = f"example {index} failed:\n{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.returncode == 0, report
