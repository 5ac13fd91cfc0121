"""Errors: original type and traceback in the parent, unpicklable errors, errors down a pipeline, groups."""

from __future__ import annotations

import traceback

import pytest
from _helpers import Collector, Producer, Raises, RaisesStrict, RaisesUnpicklable, Squarer, StrictInitError

import puma

pytestmark = pytest.mark.timeout(60)


def test_child_error_arrives_with_its_type_traceback_and_a_note(env: puma.Environment) -> None:
    with pytest.raises(ZeroDivisionError, match="the message") as info:
        with puma.Runner(env) as runner:
            runner.start(Raises(ZeroDivisionError("the message"), name="divider"))
            runner.join()
    text = "".join(traceback.format_exception(info.value))
    assert "in execute" in text  # the child's own frame
    assert "_helpers.py" in text
    notes = info.value.__notes__
    assert len(notes) == 1 and "raised in runnable 'divider'" in notes[0]
    assert ("process" in notes[0]) and ("thread" in notes[0])


def test_unpicklable_error_arrives_as_remote_error(env: puma.Environment) -> None:
    with pytest.raises((puma.RemoteError, Exception)) as info:
        with puma.Runner(env) as runner:
            runner.start(RaisesUnpicklable())
            runner.join()
    error = info.value
    if env.is_process:
        assert isinstance(error, puma.RemoteError)
        assert error.type_name.endswith("UnpicklableError")
        assert error.message == "holds a lock"
        assert "in execute" in error.remote_traceback
        assert "raised in runnable 'raises-unpicklable'" in error.__notes__[0]
    else:
        assert type(error).__name__ == "UnpicklableError"


def test_error_whose_constructor_cannot_be_rerun_still_arrives(env: puma.Environment) -> None:
    with pytest.raises((puma.RemoteError, StrictInitError)) as info:
        with puma.Runner(env) as runner:
            runner.start(RaisesStrict())
            runner.join()
    assert "code 7: bad detail" in str(info.value)


def test_error_travels_down_a_three_stage_pipeline_to_the_final_consumer(env: puma.Environment) -> None:
    with pytest.raises(ValueError, match="cannot square 50") as info:
        with puma.Runner(env) as runner:
            raw, squared = env.buffer(int, 10, "raw"), env.buffer(int, 10, "squared")
            runner.start(Producer(raw, 1000))
            runner.start(Squarer(raw, squared, fail_on=50))
            sink = runner.start(Collector(squared))
            runner.join()
    # reported once, from the stage that raised it
    assert "raised in runnable 'squarer'" in info.value.__notes__[0]
    error_type, message, text = sink.status("error")
    assert (error_type, message) == ("ValueError", "cannot square 50")
    assert 'raise ValueError(f"cannot square {value}")' in text  # the line of Squarer that raised
    assert sink.status("values") == [i * i for i in range(50)]


def test_error_reaches_a_consumer_that_has_not_subscribed_yet(env: puma.Environment) -> None:
    """The Runner finds downstream runnables by the buffers they hold, not only once they subscribe."""
    with pytest.raises(ValueError, match="cannot square 0"):
        with puma.Runner(env) as runner:
            raw, squared = env.buffer(int, 10, "raw"), env.buffer(int, 10, "squared")
            runner.start(Producer(raw, 10))
            runner.start(Squarer(raw, squared, fail_on=0))  # fails at once, likely before the sink subscribes
            sink = runner.start(Collector(squared, reraise=False))
            runner.join()
    assert sink.status("error")[:2] == ("ValueError", "cannot square 0")  # not stopped: it got the error
    assert sink.status("values") == []


def test_a_consumer_started_after_a_failure_still_receives_it(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        raw, squared = env.buffer(int, 10, "raw"), env.buffer(int, 10, "squared")
        runner.start(Producer(raw, 10))
        runner.start(Squarer(raw, squared, fail_on=0))
        with pytest.raises(ValueError, match="cannot square 0"):
            runner.join()
        sink = runner.start(Collector(squared, reraise=False))  # downstream of the failure: not stopped
        unrelated = runner.start(Producer(env.buffer(int, 10, "other"), 10**9, name="unrelated"))
        runner.join()
    assert sink.status("error")[:2] == ("ValueError", "cannot square 0")
    assert not runner.is_alive(unrelated)  # a runnable started after a failure is stopped


def test_several_failures_come_out_as_one_exception_group(env: puma.Environment) -> None:
    with pytest.raises(ExceptionGroup) as info:
        with puma.Runner(env, on_failure="continue") as runner:
            runner.start(Raises(KeyError("a"), name="first"))
            runner.start(Raises(IndexError("b"), name="second"))
            runner.join()
    kinds = sorted(type(e).__name__ for e in info.value.exceptions)
    assert kinds == ["IndexError", "KeyError"]


def test_check_for_exceptions_raises_once_while_running(env: puma.Environment) -> None:
    with puma.Runner(env, on_failure="continue") as runner:
        failing = runner.start(Raises(KeyError("early"), name="early"))
        with pytest.raises(puma.RunnableNotRunningError):
            failing.wait_status("never", timeout=30)
        with pytest.raises(KeyError, match="early"):
            runner.check_for_exceptions()
        runner.check_for_exceptions()  # already reported: nothing more


def test_body_error_and_child_error_are_grouped(env: puma.Environment) -> None:
    with pytest.raises(ExceptionGroup) as info:
        with puma.Runner(env) as runner:
            failing = runner.start(Raises(KeyError("child"), name="child"))
            with pytest.raises(puma.RunnableNotRunningError):
                failing.wait_status("never", timeout=30)
            raise RuntimeError("body")
    assert sorted(type(e).__name__ for e in info.value.exceptions) == ["KeyError", "RuntimeError"]
