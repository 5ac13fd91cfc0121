"""No silent hangs, no misleading errors: each test is a reproduction of what once went wrong."""

from __future__ import annotations

import threading

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
