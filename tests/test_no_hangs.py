"""No silent hangs, no misleading errors: each test is a reproduction of what once went wrong."""

from __future__ import annotations

import multiprocessing
import threading
from typing import Any

import pytest

import puma


class _LeavesAThread(puma.Runnable):
    """Returns from execute leaving a non-daemon thread named 'uploader' behind (its process cannot exit)."""

    def __init__(self) -> None:
        super().__init__("leaves-a-thread")

    def execute(self) -> None:
        threading.Thread(target=threading.Event().wait, args=(60,), name="uploader").start()


def test_join_is_bounded_when_a_finished_process_cannot_exit_and_names_what_keeps_it(
    process_env: puma.ProcessEnvironment,
) -> None:
    with pytest.raises(puma.StuckRunnableError, match=r"within 1.0 s \(non-daemon threads still running: uploader\)"):
        with puma.Runner(process_env, stop_timeout=1.0) as runner:
            runner.start(_LeavesAThread())
            runner.join()  # no timeout given: bounded all the same
    assert not runner.is_alive()


class _ForgotSuper(puma.Runnable):
    def __init__(self) -> None:  # no super().__init__()
        self.value = 1

    def execute(self) -> None:
        pass


def test_a_runnable_that_forgot_super_init_is_told_how_to_fix_it(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        with pytest.raises(puma.PumaError, match=r"_ForgotSuper was never initialised.*super\(\).__init__\(name"):
            runner.start(_ForgotSuper())


class _Feeder(puma.Runnable):
    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("feeder", outputs=[out])

    def execute(self) -> None:
        pass


def test_a_thread_buffer_given_to_a_process_is_named_as_the_user_wrote_it(process_env: puma.ProcessEnvironment) -> None:
    with puma.Runner(process_env) as runner:
        with pytest.raises(puma.NotPicklableError, match=r"attribute feeder\.outputs\[0\]") as info:
            runner.start(_Feeder(puma.ThreadEnvironment().buffer(int, 2, "local")))
    assert "_puma" not in str(info.value)


class _Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)  # cannot be rebuilt from its args
        self.b = b


class _RaisesUnpicklable(puma.Runnable):
    def execute(self) -> None:
        raise _Unpicklable(1, 2)


def test_a_remote_error_prints_its_remote_traceback_once(process_env: puma.ProcessEnvironment) -> None:
    import traceback

    with pytest.raises((puma.RemoteError, _Unpicklable)) as info:
        with puma.Runner(process_env) as runner:
            runner.start(_RaisesUnpicklable("raiser"))
            runner.join(timeout=60)
    if isinstance(info.value, puma.RemoteError):
        printed = "".join(traceback.format_exception(info.value))
        assert "Traceback" not in str(info.value)
        assert printed.count("raise _Unpicklable(1, 2)") == 1


class _Waits(puma.Runnable):
    def execute(self) -> None:
        self.wait_for_stop()


@pytest.mark.skipif("forkserver" not in multiprocessing.get_all_start_methods(), reason="no fork server here")
def test_the_fork_server_dying_is_named_as_the_cause() -> None:
    import os
    import signal
    from multiprocessing import forkserver

    env = puma.ProcessEnvironment("forkserver")
    with pytest.raises(puma.ChildDiedError, match=r"the fork server \(pid \d+\) that started it died") as info:
        with puma.Runner(env) as runner:
            runner.start_blocking(_Waits("waits"), timeout=60)
            server = forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
            os.kill(server, signal.SIGKILL)  # multiprocessing starts a new one for later starts
            runner.join(timeout=60)
    assert info.value.exitcode == 255


def test_start_all_launches_many_and_returns_once_all_run(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        waiting = runner.start_all([_Waits(f"waits-{i}") for i in range(6)], timeout=120)
        assert [w.name for w in waiting] == [f"waits-{i}" for i in range(6)]
        assert all(runner.is_alive(w) for w in waiting)
        assert len({runner.pid(w) for w in waiting}) == (6 if env.is_process else 1)
        runner.stop()


def test_the_fork_server_starts_children_with_puma_and_the_preloaded_modules_loaded() -> None:
    from multiprocessing import forkserver

    puma.ProcessEnvironment("forkserver", preload=["json"])
    from puma._environments.process import CHILD_MODULES

    modules = forkserver._forkserver._preload_modules  # type: ignore[attr-defined]
    assert set(CHILD_MODULES) <= set(modules) and "json" in modules  # what a child runs, imported once
    with pytest.raises(TypeError, match="sequence of module names"):
        puma.ProcessEnvironment("forkserver", preload="numpy")  # type: ignore[arg-type]


class _ForgotOutputs(puma.Runnable):
    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("forgot-outputs")  # no outputs=[out]
        self._out = out

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            pub.publish(1)


def test_a_reader_of_a_stream_nobody_can_publish_to_ends_with_the_error_that_caused_it(env: puma.Environment) -> None:
    with pytest.raises(puma.PumaError, match="not one of its outputs"):
        with puma.Runner(env) as runner:
            out = env.buffer(int, 4, "out")
            values = out.subscribe()
            runner.start(_ForgotOutputs(out))
            for _ in values:  # would wait for ever
                pass


class _PutsIntoAFullBuffer(puma.Runnable):
    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("puts", outputs=[out])
        self._out = out

    @puma.run_in_child_scope
    def put(self, value: int) -> None:
        self.publisher(self._out).publish(value)  # the buffer holds one value: the second waits

    def execute(self) -> None:
        self.wait_for_stop()


class _BusyInItsOwnCode(puma.Runnable):
    def __init__(self, gate: Any) -> None:
        super().__init__("busy")
        self._gate = gate

    def execute(self) -> None:
        self.send_status("busy", True)
        self._gate.wait(60)  # not a wait in puma: it cannot say where it is


def _event(env: puma.Environment) -> Any:
    return env.context.Event() if isinstance(env, puma.ProcessEnvironment) else threading.Event()


def test_a_snapshot_says_where_each_runnable_is_blocked(env: puma.Environment) -> None:
    gate = _event(env)
    with puma.Runner(env) as runner:
        out = env.buffer(int, 1, "full")
        puts = runner.start_blocking(_PutsIntoAFullBuffer(out), timeout=60)
        busy = runner.start(_BusyInItsOwnCode(gate))
        busy.wait_status("busy", timeout=60)
        puts.put(1)
        blocked = puts.put.submit(2)  # waits for room, inside the command
        try:
            snapshot = runner.snapshot(timeout=1.0)
            where = {r.name: r.activity for r in snapshot.runnables}
            assert where["puts"].startswith("in command 'put', waiting for"), where
            assert where["busy"].startswith("in its own code"), where
            assert any(b.name == "full" and b.size == 1 and b.capacity == 1 for b in snapshot.buffers)
            assert "runnable 'puts'" in str(snapshot) and "buffer 'full'" in str(snapshot)
            with pytest.raises(TimeoutError, match="still running after 0.1 s") as info:
                runner.join(timeout=0.1)
            assert "in command 'put'" in str(info.value)  # a join that times out shows the snapshot
        finally:
            gate.set()
        runner.stop()
    assert blocked.exception(timeout=60) is not None  # it was stopped waiting


class _RaisesInAnExpression(puma.Runnable):
    def execute(self) -> None:
        values = {"a": 1}
        print(values["a"] + values["missing"])


def test_a_child_traceback_puts_no_markers_under_the_wrong_columns(process_env: puma.ProcessEnvironment) -> None:
    """The child's frames are rebuilt (they ran a stub, not the code): lines, and no ``^^^^`` from the stub."""
    import traceback

    with pytest.raises(KeyError) as info:
        with puma.Runner(process_env) as runner:
            runner.start(_RaisesInAnExpression("raiser"))
            runner.join(timeout=60)
    lines = "".join(traceback.format_exception(info.value)).splitlines()
    at = next(i for i, line in enumerate(lines) if 'print(values["a"] + values["missing"])' in line)
    assert "^" not in lines[at + 1], "\n".join(lines)
