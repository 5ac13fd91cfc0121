"""The fault matrix: each fault, in each environment, at each stage of a pipeline, under two policies.

Faults: an exception, SIGKILL, SIGSEGV, ``os._exit``, and a hang past the stop
timeout.  Environments: a thread (where the fault can happen to a thread: an
exception, a hang) and the three process start methods.  Stages: the source,
the middle and the sink of source -> middle -> sink.

* The default policy: the fault is detected and reported with its cause, the
  rest is stopped; no child, thread or buffer is left behind (the conftest's
  checks after each test).
* ``one_for_one``: the stage is restarted and the stream goes on to its end.

A hang is no crash: it is found when the Runner closes, terminated after the
stop timeout and reported as a :class:`~puma.StuckRunnableError` under either
policy.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from _stages import FAULTS, THREAD_HANG_RELEASE, Middle, Sink, Source
from conftest import ENVIRONMENTS, make_env

import puma

COUNT = 20
AT = 5
STAGES = ("source", "middle", "sink")
CASES = [(fault, kind) for kind in ENVIRONMENTS for fault in FAULTS if kind != "thread" or fault in ("raise", "hang")]
STOP_TIMEOUT = 0.5


@pytest.fixture(autouse=True)
def _hung_threads_end() -> Iterator[None]:
    THREAD_HANG_RELEASE.clear()
    yield
    THREAD_HANG_RELEASE.set()  # a hung thread (reported, left running) may end now


def _members(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [m for e in error.exceptions for m in _members(e)]
    return [error]


def _run(kind: str, fault: str, stage: str, marker: Path, policy: puma.RestartPolicy | None) -> puma.Runnable:
    """Run the pipeline with ``fault`` at ``stage``; return the sink (its statuses tell what it saw)."""
    env = make_env(kind)
    on_failure: puma.RestartPolicy | str = policy if policy is not None else "stop"
    plan = {name: ((fault, str(marker), AT) if name == stage else ()) for name in STAGES}
    with puma.Runner(env, on_failure=on_failure, stop_timeout=STOP_TIMEOUT) as runner:  # type: ignore[arg-type]
        a = env.buffer(int, 8, "a")
        b = env.buffer(int, 8, "b")
        sink = runner.start(Sink(b, *plan["sink"]))
        middle = runner.start(Middle(a, b, *plan["middle"]))
        source = runner.start(Source(a, COUNT, *plan["source"]))
        if fault == "hang":
            hung = {"source": source, "middle": middle, "sink": sink}[stage]
            hung.wait_status("hung", timeout=30)
        else:
            runner.join()
    return sink


def _expect_cause(fault: str, error: BaseException) -> None:
    if fault == "raise":
        assert isinstance(error, ValueError) and "failed on purpose" in str(error)
    elif fault == "hang":
        assert isinstance(error, puma.StuckRunnableError)
    else:
        assert isinstance(error, puma.ChildDiedError)
        expected = {"sigkill": -signal.SIGKILL, "sigsegv": -signal.SIGSEGV, "os_exit": 3}[fault]
        assert error.exitcode == expected
        assert ("SIGKILL" if fault == "sigkill" else "SIGSEGV" if fault == "sigsegv" else "3") in str(error)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("fault", "kind"), CASES)
def test_the_default_policy_reports_the_fault_and_stops_the_rest(
    fault: str, kind: str, stage: str, tmp_path: Path
) -> None:
    with pytest.raises(BaseException) as caught:
        _run(kind, fault, stage, tmp_path / "marker", None)
    errors = _members(caught.value)
    stuck = [e for e in errors if isinstance(e, puma.StuckRunnableError)]
    first = stuck[0] if fault == "hang" else errors[0]
    _expect_cause(fault, first)
    assert stage in str(first)


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("fault", "kind"), CASES)
def test_one_for_one_restarts_the_stage_and_the_stream_goes_on(
    fault: str, kind: str, stage: str, tmp_path: Path
) -> None:
    policy = puma.RestartPolicy("one_for_one")
    if fault == "hang":  # not a crash: found at close, not restarted
        with pytest.raises(BaseException) as caught:
            _run(kind, fault, stage, tmp_path / "marker", policy)
        assert any(isinstance(e, puma.StuckRunnableError) for e in _members(caught.value))
        assert policy.statistics().restarts == 0
        return
    sink = _run(kind, fault, stage, tmp_path / "marker", policy)
    stats = policy.statistics()
    assert stats.by_runnable == {stage: 1}
    (crash,) = stats.crashes
    assert crash.incarnation == 0 and crash.action == "restart"
    assert crash.error is not None
    _expect_cause(fault, crash.error)
    assert sink.status("last") == (COUNT - 1) * 10  # the stream went on to its end
