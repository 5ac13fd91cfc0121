"""Pipelines end to end: threads and processes mixed under one Runner, errors from a middle stage
(chained, unpicklable) reaching the final consumer and the main program with the middle stage's
own traceback, and a middle stage killed while values flow."""

from __future__ import annotations

import inspect
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any

import pytest
from _helpers import Collector, EndlessProducer, Producer, Squarer, UnpicklableError

import puma

pytestmark = pytest.mark.timeout(90)


# --- runnables (module level, so spawn and forkserver children can import them) -------------------
class StageError(Exception):
    """Raised by the middle stage, chained to the error that caused it."""


class FailingStage(puma.Runnable):
    """Passes values on; on ``fail_on`` it fails in its own ``_check`` method.

    ``how``: "plain" (a ValueError), "chained" (a StageError raised ``from`` a KeyError),
    "unpicklable" (an exception holding a lock).
    """

    def __init__(self, inp: puma.Buffer[int], out: puma.Buffer[int], fail_on: int, how: str) -> None:
        super().__init__("stage", outputs=[out])
        self._in = inp
        self._out = out
        self._fail_on = fail_on
        self._how = how

    def execute(self) -> None:
        pub = self.publisher(self._out)
        for value in self._in.subscribe():
            self._check(value)
            pub.publish(value + 1000)

    def _check(self, value: int) -> None:
        if value != self._fail_on:
            return
        if self._how == "chained":
            settings: dict[str, int] = {}
            try:
                settings["gain"]
            except KeyError as original:
                raise StageError(f"no gain for value {value}") from original
        if self._how == "unpicklable":
            raise UnpicklableError(f"holds a lock at {value}")
        raise ValueError(f"stage rejects {value}")


def line_of(function: Callable[..., Any], text: str) -> str:
    """The traceback line naming the line of ``function`` that contains ``text``: 'File "...", line N, in name'."""
    lines, first = inspect.getsourcelines(function)
    matches = [first + i for i, line in enumerate(lines) if text in line]
    assert len(matches) == 1, f"{text!r} is not on exactly one line of {function.__qualname__}"
    code = function.__code__
    return f'File "{code.co_filename}", line {matches[0]}, in {code.co_name}'


def three_stages(env: puma.Environment, how: str, fail_on: int = 5) -> tuple[Collector, pytest.ExceptionInfo[Any]]:
    """Producer -> FailingStage -> Collector in ``env``; the stage fails on ``fail_on``.

    Returns the consumer and what ``runner.join()`` raised in the main program.
    """
    with pytest.raises(Exception) as info:  # each test checks exactly what arrived
        with puma.Runner(env) as runner:
            raw, passed = env.buffer(int, 4, "raw"), env.buffer(int, 4, "passed")
            runner.start(Producer(raw, 100))
            runner.start(FailingStage(raw, passed, fail_on, how))
            sink = runner.start(Collector(passed))
            runner.join()
    return sink, info


# --- threads and processes mixed -------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["thread-process-thread", "process-thread-process"])
def test_a_pipeline_mixing_threads_and_processes_delivers_every_value_in_order(
    process_env: puma.ProcessEnvironment, layout: str
) -> None:
    """One Runner, each stage in its own environment; the buffers that cross a process boundary are process buffers."""
    threads = puma.ThreadEnvironment()
    outer, middle = (threads, process_env) if layout == "thread-process-thread" else (process_env, threads)
    with puma.Runner(process_env) as runner:
        # process buffers, smaller than the stream: back-pressure crosses the process boundary
        raw, squared = process_env.buffer(int, 4, "raw"), process_env.buffer(int, 4, "squared")
        producer = runner.start(Producer(raw, 300), outer)
        squarer = runner.start(Squarer(raw, squared), middle)
        sink = runner.start(Collector(squared), outer)
        runner.join()
        pids = {r.name: runner.pid(r) for r in (producer, squarer, sink)}
    assert sink.status("values") == [i * i for i in range(300)]
    in_a_process = [name for name, pid in pids.items() if pid != os.getpid()]
    assert in_a_process == (["squarer"] if layout == "thread-process-thread" else ["producer", "collector"])


# --- errors from the middle stage ------------------------------------------------------------------
def test_a_chained_error_from_the_middle_stage_arrives_whole(env: puma.Environment) -> None:
    """``raise StageError(...) from KeyError`` in the middle: the consumer and the main program get the
    type, message, cause and the middle stage's traceback."""
    sink, info = three_stages(env, "chained")
    error = info.value
    assert type(error) is StageError
    assert str(error) == "no gain for value 5"
    assert "raised in runnable 'stage'" in error.__notes__[0]
    assert type(error.__cause__) is KeyError
    assert str(error.__cause__) == "'gain'"
    assert error.__suppress_context__  # shown as "direct cause", as in the child
    text = "".join(traceback.format_exception(error))
    assert line_of(FailingStage._check, "raise StageError(") in text
    assert line_of(FailingStage._check, 'settings["gain"]') in text  # the cause keeps its own traceback
    assert "The above exception was the direct cause of the following exception" in text

    error_type, message, consumer_text = sink.status("error")
    assert (error_type, message) == ("StageError", "no gain for value 5")
    assert "KeyError: 'gain'" in consumer_text
    assert line_of(FailingStage._check, "raise StageError(") in consumer_text
    assert sink.status("values") == [i + 1000 for i in range(5)]


def test_an_unpicklable_error_from_the_middle_stage_arrives_as_remote_error(env: puma.Environment) -> None:
    """An exception holding a lock cannot cross a process: the consumer and the main program get a
    ``RemoteError`` with its type name, message and the child's formatted traceback.

    In threads nothing is pickled: both get the original exception object's type and message.
    """
    sink, info = three_stages(env, "unpicklable")
    error = info.value
    raise_line = line_of(FailingStage._check, "raise UnpicklableError(")
    error_type, message, consumer_text = sink.status("error")
    if env.is_process:
        assert isinstance(error, puma.RemoteError)
        assert error.type_name == "_helpers.UnpicklableError"
        assert error.message == "holds a lock at 5"
        assert raise_line in error.remote_traceback
        assert "raised in runnable 'stage'" in error.__notes__[0]
        assert error_type == "RemoteError"
        assert message.startswith("_helpers.UnpicklableError: holds a lock at 5")
    else:
        assert type(error) is UnpicklableError
        assert str(error) == "holds a lock at 5"
        assert "raised in runnable 'stage'" in error.__notes__[0]
        assert (error_type, message) == ("UnpicklableError", "holds a lock at 5")
    assert raise_line in "".join(traceback.format_exception(error))
    assert raise_line in consumer_text
    assert sink.status("values") == [i + 1000 for i in range(5)]


def test_the_main_program_sees_the_middle_stages_own_raising_line(env: puma.Environment) -> None:
    """The traceback names the line of the middle stage that raised, not only the consumer's frames."""
    sink, info = three_stages(env, "plain", fail_on=0)
    assert type(info.value) is ValueError
    assert str(info.value) == "stage rejects 0"
    text = "".join(traceback.format_exception(info.value))
    assert line_of(FailingStage._check, "raise ValueError(") in text
    assert line_of(FailingStage.execute, "self._check(value)") in text
    assert 'raise ValueError(f"stage rejects {value}")' in text  # with its source line
    assert sink.status("error")[:2] == ("ValueError", "stage rejects 0")


# --- a middle stage killed -------------------------------------------------------------------------
@pytest.mark.parametrize("consumer", ["process", "thread"])
def test_a_middle_stage_killed_mid_stream_is_reported_and_its_consumer_ends(
    process_env: puma.ProcessEnvironment, consumer: str
) -> None:
    """kill -9 of the middle stage: join() raises ChildDiedError naming it and its pid, the consumer
    receives that error and ends on its own, and the producer is stopped."""
    where = puma.ThreadEnvironment() if consumer == "thread" else process_env
    with puma.Runner(process_env) as runner:
        raw, squared = process_env.buffer(int, 10, "raw"), process_env.buffer(int, 10, "squared")
        producer = runner.start(EndlessProducer(raw, item=3))
        squarer = runner.start(Squarer(raw, squared))
        sink = runner.start(Collector(squared, reraise=False), where)
        sink.wait_status("first", timeout=30)  # the whole pipeline is flowing
        runner.wait_until_running(squarer)  # runner.pid() is known once the Runner has the child's word
        pid = runner.pid(squarer)
        assert pid is not None and pid != os.getpid()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(puma.ChildDiedError) as info:
            runner.join(timeout=30)  # a liveness bound: the death is noticed, nothing hangs
        assert not runner.is_alive()
    died = info.value
    assert (died.runnable, died.pid, died.exitcode) == ("squarer", pid, -9)
    assert f"runnable 'squarer' (pid {pid})" in str(died) and "SIGKILL" in str(died)
    error_type, message, _text = sink.status("error")
    assert error_type == "ChildDiedError"
    assert f"runnable 'squarer' (pid {pid})" in message
    values = sink.status("values")
    assert values and set(values) == {9}
    assert not runner.is_alive(producer)
