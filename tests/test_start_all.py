"""Runner.start_all prepares every runnable before it launches any: what one that cannot start does is unchanged."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator

import pytest

import puma
from puma._core import logs


class _Waits(puma.Runnable):
    def execute(self) -> None:
        self.wait_for_stop()


class _ForgotSuper(puma.Runnable):
    def __init__(self) -> None:  # no super().__init__(): refused before it is filed
        self.value = 1

    def execute(self) -> None:
        pass


class _HoldsALock(puma.Runnable):
    def __init__(self) -> None:
        super().__init__("holds-a-lock")
        self.lock = threading.Lock()  # cannot cross into a process

    def execute(self) -> None:
        pass


@pytest.mark.timeout(120)
def test_a_runnable_that_cannot_start_leaves_those_before_it_running_and_those_after_unstarted(
    env: puma.Environment,
) -> None:
    before = [_Waits(f"before-{i}") for i in range(2)]
    after = _Waits("after")
    with puma.Runner(env) as runner:
        with pytest.raises(puma.PumaError, match="never initialised"):
            runner.start_all([*before, _ForgotSuper(), after], timeout=60)
        for runnable in before:
            runner.wait_until_running(runnable, timeout=60)
            assert runner.is_alive(runnable)
        assert [r.name for r in runner.runnables] == ["before-0", "before-1"]
        with pytest.raises(puma.RunnableNotRunningError):
            runner.pid(after)
        assert runner.start_all([after], timeout=60) == [after]  # it was never filed: it starts now
        runner.stop()


@pytest.mark.timeout(120)
def test_an_unpicklable_runnable_for_a_process_leaves_those_before_it_running(
    process_env: puma.ProcessEnvironment,
) -> None:
    with puma.Runner(process_env) as runner:
        first = _Waits("first")
        with pytest.raises(puma.NotPicklableError, match="lock"):
            runner.start_all([first, _HoldsALock(), _Waits("never")], timeout=60)
        runner.wait_until_running(first, timeout=60)
        assert [r.name for r in runner.runnables] == ["first"]
        runner.stop()


@pytest.mark.timeout(120)
def test_an_iterable_that_raises_leaves_what_it_gave_before_running(env: puma.Environment) -> None:
    def some() -> Iterator[puma.Runnable]:
        yield _Waits("given-0")
        yield _Waits("given-1")
        raise LookupError("no more")

    with puma.Runner(env) as runner:
        with pytest.raises(LookupError, match="no more"):
            runner.start_all(some(), timeout=60)
        assert [r.name for r in runner.runnables] == ["given-0", "given-1"]
        for runnable in runner.runnables:
            runner.wait_until_running(runnable, timeout=60)
        runner.stop()


@pytest.mark.timeout(120)
def test_start_all_returns_every_runnable_running_in_order(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        started = runner.start_all([_Waits(f"w-{i}") for i in range(5)], timeout=60)
        assert [w.name for w in started] == [f"w-{i}" for i in range(5)]
        assert all(runner.is_alive(w) for w in started)
        assert runner.start_all([], timeout=60) == []
        runner.stop()


@pytest.mark.timeout(60)
def test_a_supervisor_that_cannot_start_is_an_error_at_the_first_wait_not_a_hang(
    env: puma.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor thread is started without waiting for it; if it cannot start, the start says so.

    And leaving the ``with`` block ends the child all the same (the leak fixture checks that no
    process or thread is left), within the stop timeout: nothing hangs for want of a supervisor.
    """
    from puma._runner.supervisor import Supervisor

    def cannot_start(self: Supervisor) -> None:
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(Supervisor, "start", cannot_start)
    with pytest.raises(RuntimeError, match="can't start new thread"):
        with puma.Runner(env, stop_timeout=1) as runner:
            idle = _Waits("idle")
            runner.start_blocking(idle)
    # Nobody supervised the child: the Runner closed its handle itself (pipes, log listener).
    assert not logs.listener_running()


@pytest.mark.timeout(120)
def test_a_ctrl_c_while_start_all_forks_takes_effect_after_the_last_start(
    env: puma.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first Ctrl-C while the children start is raised once every start is done and accounted
    for: each one started runs under its Runner (which ends it), none is left half-started."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    launch = type(env).launch
    handles: list[object] = []

    def ctrl_c_at_the_second_start(self: puma.Environment, *args: object) -> object:
        handle = launch(self, *args)  # type: ignore[arg-type]
        handles.append(handle)
        if len(handles) == 2:
            start = handle.start

            def pressed_then_start() -> None:
                os.kill(os.getpid(), signal.SIGINT)
                start()

            handle.start = pressed_then_start  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr(type(env), "launch", ctrl_c_at_the_second_start)
    runnables = [_Waits(f"w-{i}") for i in range(4)]
    try:
        with puma.Runner(env) as runner:
            with pytest.raises(KeyboardInterrupt):
                runner.start_all(runnables, timeout=60)
            assert [r.name for r in runner.runnables] == [r.name for r in runnables]
            for runnable in runnables:
                runner.wait_until_running(runnable, timeout=60)
            runner.stop()
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.timeout(120)
def test_a_launch_that_fails_half_way_through_start_all_starts_those_before_and_files_none_after(
    env: puma.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every handle is made before any child starts: one that cannot be made (out of file
    descriptors, say) still leaves the runnables before it running, and nothing of those after."""
    made = []
    launch = type(env).launch

    def third_fails(self: puma.Environment, child: puma.Runnable, *args: object) -> object:
        if len(made) == 2:
            raise OSError(24, "Too many open files")
        made.append(child.name)
        return launch(self, child, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(type(env), "launch", third_fails)
    runnables = [_Waits(f"w-{i}") for i in range(5)]
    with puma.Runner(env) as runner:
        with pytest.raises(OSError, match="Too many open files"):
            runner.start_all(runnables, timeout=60)
        assert [r.name for r in runner.runnables] == ["w-0", "w-1"]
        for runnable in runnables[:2]:
            runner.wait_until_running(runnable, timeout=60)
        monkeypatch.setattr(type(env), "launch", launch)
        assert runner.start_all(runnables[2:], timeout=60) == runnables[2:]  # never filed: they start now
        runner.stop()


@pytest.mark.timeout(120)
def test_a_start_that_fails_half_way_through_start_all_closes_the_handles_made_after_it(
    env: puma.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A child that cannot start (the fork refused) takes back itself and the handles made for
    those after it: their pipes are closed (the leak fixture counts descriptors), none is filed."""
    launch = type(env).launch
    handles: list[object] = []

    def third_cannot_start(self: puma.Environment, *args: object) -> object:
        handle = launch(self, *args)  # type: ignore[arg-type]
        handles.append(handle)
        if len(handles) == 3:

            def refuse() -> None:
                raise OSError(11, "Resource temporarily unavailable")

            handle.start = refuse  # type: ignore[method-assign]
        return handle

    monkeypatch.setattr(type(env), "launch", third_cannot_start)
    runnables = [_Waits(f"w-{i}") for i in range(5)]
    with puma.Runner(env) as runner:
        with pytest.raises(OSError, match="Resource temporarily unavailable"):
            runner.start_all(runnables, timeout=60)
        assert len(handles) == 5  # every handle was made before the first start
        assert [r.name for r in runner.runnables] == ["w-0", "w-1"]
        for runnable in runnables[:2]:
            runner.wait_until_running(runnable, timeout=60)
        runner.stop()
    for handle in handles[2:]:
        handle.close()  # (closed already: closing again is harmless)
