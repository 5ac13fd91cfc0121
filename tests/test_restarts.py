"""Restart policies: strategies, kinds, intensity, back-off, per-exception decisions, inputs kept, visibility."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _stages import Counter, Middle, Opens, Sink, Source

import puma
from puma._buffers.journal import journal_dir
from puma.supervision import Crash, DeadLetter, Restart, RestartStatistics, TooManyRestartsError

COUNT = 40


def _pipeline(
    env: puma.Environment, policy: puma.RestartPolicy, marker: Path, fault: str = "raise", at: int = 20
) -> list[int]:
    """source -> middle (faults at ``at``) -> the main program; what the main program received."""
    with puma.Runner(env, on_failure=policy, stop_timeout=5) as runner:
        a = env.buffer(int, 8, "a")
        b = env.buffer(int, 8, "b")
        runner.start(Middle(a, b, fault, str(marker), at))
        runner.start(Source(a, COUNT))
        received = list(b.subscribe())
        runner.join()
    return received


def test_a_middle_stage_that_raises_is_restarted_and_the_stream_goes_on(env: puma.Environment, tmp_path: Path) -> None:
    policy = puma.RestartPolicy("one_for_one")
    received = _pipeline(env, policy, tmp_path / "marker")
    assert received == [v * 10 for v in range(COUNT) if v != 20]  # nothing lost, nothing twice, in order
    stats = policy.statistics()
    assert stats.restarts == 1 and stats.by_runnable == {"middle": 1}
    (letter,) = stats.dead_letters
    assert isinstance(letter, DeadLetter)
    assert (letter.runnable, letter.buffer, letter.value) == ("middle", "a", 20)
    assert isinstance(letter.error, ValueError)
    (crash,) = stats.crashes
    assert isinstance(crash, Crash)
    assert (crash.runnable, crash.incarnation, crash.action) == ("middle", 0, "restart")
    assert isinstance(crash.error, ValueError)


def test_at_least_once_gives_the_value_in_flight_again(env: puma.Environment, tmp_path: Path) -> None:
    policy = puma.RestartPolicy("one_for_one", redeliver=True)
    received = _pipeline(env, policy, tmp_path / "marker")
    assert received == [v * 10 for v in range(COUNT)]
    stats = policy.statistics()
    assert (stats.restarts, stats.redelivered, stats.dead_letters) == (1, 1, ())


@pytest.mark.parametrize("fault", ["sigkill", "sigsegv", "os_exit"])
@pytest.mark.parametrize("redeliver", [False, True], ids=["dead-letters", "at-least-once"])
def test_a_killed_stage_loses_nothing_queued_and_knows_its_value_in_flight(
    process_env: puma.ProcessEnvironment, tmp_path: Path, fault: str, redeliver: bool
) -> None:
    policy = puma.RestartPolicy("one_for_one", redeliver=redeliver)
    received = _pipeline(process_env, policy, tmp_path / "marker", fault=fault)
    stats = policy.statistics()
    if redeliver:
        assert received == [v * 10 for v in range(COUNT)]
        assert (stats.redelivered, stats.dead_letters) == (1, ())
    else:
        assert received == [v * 10 for v in range(COUNT) if v != 20]  # what it had read ahead came back
        assert [(d.value, type(d.error)) for d in stats.dead_letters] == [(20, puma.ChildDiedError)]
    assert not list(Path(journal_dir()).glob(f"puma-journal-{os.getpid()}-*")), "journals left behind"


def test_a_value_that_fails_again_after_its_redelivery_is_a_dead_letter(tmp_path: Path) -> None:
    env = puma.ProcessEnvironment("fork")
    policy = puma.RestartPolicy("one_for_one", redeliver=True, max_restarts=5)
    received = _pipeline(env, policy, tmp_path / "marker", fault="always")
    assert received == [v * 10 for v in range(COUNT) if v != 20]
    stats = policy.statistics()
    assert stats.restarts == 2 and stats.redelivered == 1
    assert [d.value for d in stats.dead_letters] == [20]


def test_too_many_restarts_stop_everything_and_carry_the_history(env: puma.Environment, tmp_path: Path) -> None:
    policy = puma.RestartPolicy("one_for_one", max_restarts=2, period=30, backoff=(0.01, 0.02))
    with pytest.raises(TooManyRestartsError) as caught:
        _pipeline(env, policy, tmp_path / "marker", fault="every")
    crashes = caught.value.crashes
    assert [c.action for c in crashes] == ["restart", "restart", "escalate"]
    assert [c.incarnation for c in crashes] == [0, 1, 2]
    assert all(isinstance(c.error, ValueError) for c in crashes)
    assert "more than 2 restarts within 30" in str(caught.value)
    assert policy.statistics().escalated


def test_the_back_off_grows_with_jitter(tmp_path: Path) -> None:
    env = puma.ThreadEnvironment()
    policy = puma.RestartPolicy("one_for_one", max_restarts=3, backoff=(0.02, 0.05), jitter=0.5, period=60)
    with pytest.raises(TooManyRestartsError):
        _pipeline(env, policy, tmp_path / "marker", fault="every")
    delays = [c.delay for c in policy.crashes if c.action == "restart"]
    assert delays[0] == 0.0  # the first restart is immediate
    assert 0.02 <= delays[1] <= 0.03
    assert 0.04 <= delays[2] <= 0.06  # doubled, capped at 0.05 (+ jitter)


def test_a_decision_per_exception_class(env: puma.Environment, tmp_path: Path) -> None:
    policy = puma.RestartPolicy("one_for_one", on_error={ValueError: "stop"})
    with pytest.raises(ValueError, match="middle failed on purpose"):
        _pipeline(env, policy, tmp_path / "marker")
    assert policy.statistics().restarts == 0
    assert [c.action for c in policy.crashes] == ["stop"]
    assert policy.decision_for(KeyError()) == "restart"
    assert puma.RestartPolicy(on_error={LookupError: "continue"}).decision_for(KeyError()) == "continue"


def test_a_temporary_runnable_is_not_restarted(tmp_path: Path) -> None:
    env = puma.ProcessEnvironment("fork")
    policy = puma.RestartPolicy("one_for_one", kinds={"middle": "temporary"})
    with pytest.raises(ValueError, match="middle failed on purpose"):
        _pipeline(env, policy, tmp_path / "marker")
    assert policy.statistics().restarts == 0
    assert policy.kind_of("middle") is Restart.TEMPORARY and policy.kind_of("source") is Restart.TRANSIENT


def test_a_permanent_runnable_comes_back_after_a_clean_end_each_time_a_fresh_object(env: puma.Environment) -> None:
    policy = puma.RestartPolicy("one_for_one", restart="permanent", max_restarts=2, backoff=(0.0, 0.0))
    counter = Counter()
    with pytest.raises(TooManyRestartsError), puma.Runner(env, on_failure=policy) as runner:
        runner.start(counter)
        runner.join()
    assert counter.status("calls") == 1  # each incarnation started from the original (calls = 0)
    assert [c.action for c in policy.crashes] == ["restart", "restart", "escalate"]
    assert all(c.error is None for c in policy.crashes)
    assert "ended" in str(policy.crashes[0])


def test_scoped_attributes_behave_in_each_incarnation_as_on_a_first_start(env: puma.Environment) -> None:
    policy = puma.RestartPolicy("one_for_one", restart="permanent", max_restarts=2, backoff=(0.0, 0.0))
    opens = Opens()
    with pytest.raises(TooManyRestartsError), puma.Runner(env, on_failure=policy) as runner:
        runner.start(opens)
        runner.join()
    assert opens.status("opened") == 1  # the child-only list was made anew, by its factory, each time
    assert policy.statistics().restarts == 2


def test_a_factory_makes_each_new_incarnation(tmp_path: Path) -> None:
    env = puma.ThreadEnvironment()
    made: list[Middle] = []
    a = env.buffer(int, 8, "a")
    b = env.buffer(int, 8, "b")

    def again() -> Middle:
        made.append(Middle(a, b))
        return made[-1]

    policy = puma.RestartPolicy("one_for_one", factories={"middle": again})
    with puma.Runner(env, on_failure=policy) as runner:
        runner.start(Middle(a, b, "raise", str(tmp_path / "marker"), 5))
        runner.start(Source(a, 10))
        received = list(b.subscribe())
    assert len(made) == 1
    assert received == [v * 10 for v in range(10) if v != 5]


@pytest.mark.parametrize(("kind", "fault"), [("thread", "raise"), ("fork", "raise"), ("fork", "sigkill")])
def test_a_factory_that_fails_is_reported_and_nothing_hangs(tmp_path: Path, kind: str, fault: str) -> None:
    # (a thread cannot be killed: no thread-sigkill case)
    env = puma.ThreadEnvironment() if kind == "thread" else puma.ProcessEnvironment(kind)

    def cannot() -> Middle:
        raise RuntimeError("cannot make a new middle")

    policy = puma.RestartPolicy("one_for_one", factories={"middle": cannot})
    with pytest.raises(BaseException) as caught:
        _pipeline_with(env, policy, tmp_path / "marker", fault)
    members = caught.value.exceptions if isinstance(caught.value, BaseExceptionGroup) else (caught.value,)
    assert any(isinstance(m, RuntimeError) and "cannot make" in str(m) for m in members)


def _pipeline_with(env: puma.Environment, policy: puma.RestartPolicy, marker: Path, fault: str) -> list[int]:
    return _pipeline(env, policy, marker, fault=fault)


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
def test_group_strategies_restart_the_others_too_and_nothing_queued_is_lost(strategy: str, tmp_path: Path) -> None:
    env = puma.ProcessEnvironment("fork")
    policy = puma.RestartPolicy(strategy)  # type: ignore[arg-type]
    with puma.Runner(env, on_failure=policy, stop_timeout=5) as runner:
        a = env.buffer(int, 8, "a")
        b = env.buffer(int, 8, "b")
        sink = runner.start(Sink(b))
        runner.start(Middle(a, b, "raise", str(tmp_path / "marker"), 20))
        runner.start(Source(a, COUNT))
        runner.join()
    stats = policy.statistics()
    expected = {"middle": 1, "sink": 1} | ({"source": 1} if strategy == "one_for_all" else {})
    assert stats.by_runnable == expected
    assert sink.status("last") == (COUNT - 1) * 10
    assert [d.value for d in stats.dead_letters] == [20]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_runnable_that_does_not_stop_to_restart_with_another_is_killed_and_restarted(
    tmp_path: Path, method: str
) -> None:
    # As an OTP supervisor does: a child that does not stop within its shutdown time is killed, and
    # under a group strategy it comes back with the others.  The sink hangs in its own code; the
    # middle is then killed from outside, so rest_for_one stops the sink to restart it with the
    # middle.  The main thread is not in join() (which would end it too): the policy does it.
    env = puma.ProcessEnvironment(method)
    policy = puma.RestartPolicy("rest_for_one")
    with puma.logging.capture(logging.WARNING, "puma.supervision") as logs:
        with puma.Runner(env, on_failure=policy, stop_timeout=0.5) as runner:
            a = env.buffer(int, 8, "a")
            b = env.buffer(int, 8, "b")
            sink = runner.start(Sink(b, "hang", str(tmp_path / "marker"), 5))
            middle = runner.start(Middle(a, b))
            runner.start(Source(a, COUNT))
            sink.wait_status("hung", timeout=30)
            pid = runner.pid(middle)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            stats = policy.wait_crashes(2, timeout=60)  # both new incarnations in place
            runner.join()
    assert stats.by_runnable == {"middle": 1, "sink": 1}
    assert sink.status("last") == (COUNT - 1) * 10  # the stream went on to its end
    assert len(stats.dead_letters) <= 1  # the middle's value in flight, if it held one; not the sink's
    assert all(d.runnable == "middle" for d in stats.dead_letters)
    assert "'sink' did not stop within 0.5 s to be restarted: terminated" in "\n".join(r.getMessage() for r in logs)


def test_restarts_show_in_the_snapshot_and_the_log(tmp_path: Path) -> None:
    env = puma.ThreadEnvironment()
    policy = puma.RestartPolicy("one_for_one")
    with puma.logging.capture(logging.WARNING, "puma.supervision") as logs:
        _pipeline(env, policy, tmp_path / "marker")
    text = "\n".join(r.getMessage() for r in logs)
    assert "'middle' #0" in text and "ValueError: middle failed on purpose -> restart" in text
    assert "dead letter" in text
    with puma.Runner(env, on_failure=puma.RestartPolicy()) as runner:
        snapshot = runner.snapshot()
    assert isinstance(snapshot.restarts, RestartStatistics)
    assert "restarts: 0" in str(snapshot)


def test_closing_while_a_restart_waits_out_its_back_off_ends_at_once(tmp_path: Path) -> None:
    env = puma.ThreadEnvironment()
    # The value 2 always fails: an immediate restart, its redelivery fails again, then a 120 s back-off
    # (longer than the test's timeout).  Closing at any point of that must not wait for it.
    policy = puma.RestartPolicy("one_for_one", backoff=(120.0, 120.0), redeliver=True, reset_after=1000)
    with puma.Runner(env, on_failure=policy, stop_timeout=5) as runner:
        a = env.buffer(int, 8, "a")
        b = env.buffer(int, 8, "b")
        middle = runner.start(Middle(a, b, "always", str(tmp_path / "marker"), 2))
        runner.start(Source(a, 10))
        reader = b.subscribe()
        assert [reader.receive(timeout=30) for _ in range(2)] == [0, 10]
        stats = policy.wait_crashes(2, timeout=30)
        assert [c.delay >= 120 for c in stats.crashes] == [False, True]
        (shown,) = [r for r in runner.snapshot().runnables if r.name == "middle"]
        assert shown.state == "restarting"  # waiting out its back-off
        with pytest.raises(puma.RunnableNotRunningError, match="being restarted"):
            middle._puma_send_command("anything", (), {})
    assert not runner.is_alive(middle)


def test_bad_options_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="strategy must be one of"):
        puma.RestartPolicy("one_for_some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="backoff"):
        puma.RestartPolicy(backoff=(2.0, 1.0))
    with pytest.raises(ValueError, match="on_error"):
        puma.RestartPolicy(on_error={ValueError: "retry"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="not a valid Restart"):
        puma.RestartPolicy(restart="sometimes")
    policy = puma.RestartPolicy()
    with puma.Runner(on_failure=policy):
        pass
    with pytest.raises(puma.PumaError, match="one Runner"), puma.Runner(on_failure=policy):
        pass
    assert "one_for_one" in repr(policy)


# --- the examples of docs/supervision.md ------------------------------------------------------------

_DOCS = Path(__file__).resolve().parent.parent / "docs" / "supervision.md"
_SWITCH = "puma.ThreadEnvironment()  # or puma.ProcessEnvironment()"


def _examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", _DOCS.read_text(encoding="utf-8"), re.S)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("where", ["threads", "processes"])
@pytest.mark.parametrize("index", range(len(_examples())))
def test_the_examples_of_the_supervision_page_run(tmp_path: Path, index: int, where: str) -> None:
    code = _examples()[index]
    assert _SWITCH in code
    if where == "processes":
        code = code.replace(_SWITCH, "puma.ProcessEnvironment()")
    script = tmp_path / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(_DOCS.parent.parent)}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100, check=False
    )
    assert done.returncode == 0, f"{code}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}"
    assert done.stdout.strip()
