"""A Ctrl-C that another thread notes still wakes the main thread asleep in puma.

CPython runs the Python handler of a signal (the ``KeyboardInterrupt`` of a
Ctrl-C) only in the main thread.  Before puma's waits watched the signal
wake-up pipe, a main thread asleep in ``Runner.join`` stayed asleep when the
kernel delivered the Ctrl-C to another thread (a busy thread runnable, the
supervisor): the thread demo ignored its first Ctrl-C about once in 300.
These tests deliver SIGINT to a thread that is not the main one
(``signal.pthread_kill``) while the main thread waits.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading

import pytest
from _helpers import WaitForCommands

import puma
from puma._core.condition import Condition, Event
from puma._core.waiting import Waker

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill")


def _ctrl_c_in_this_thread() -> None:
    """Deliver SIGINT to the calling thread: its C handler runs here, its Python handler in the main thread."""
    signal.pthread_kill(threading.get_ident(), signal.SIGINT)


@pytest.mark.timeout(20)
def test_a_condition_wait_on_the_main_thread_wakes_for_a_ctrl_c_another_thread_received() -> None:
    cond = Condition()

    def other() -> None:
        with cond:  # taken once the main thread's wait has given the lock back to sleep
            _ctrl_c_in_this_thread()

    thread = threading.Thread(target=other)
    with cond:
        thread.start()
        with pytest.raises(KeyboardInterrupt):
            cond.wait()  # without the wake-up pipe: asleep for ever
    thread.join(10)
    assert not thread.is_alive()
    assert not cond._is_owned()


@pytest.mark.timeout(20)
def test_a_signal_handler_that_only_sets_a_flag_still_ends_a_main_thread_wait() -> None:
    """The wait returns (a spurious wake-up), so the waiter's loop sees what the handler did."""
    cond = Condition()
    seen: list[int] = []

    def other() -> None:
        with cond:
            _ctrl_c_in_this_thread()

    old = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        thread = threading.Thread(target=other)
        with cond:
            thread.start()
            while not seen:
                cond.wait()  # without the wake-up: asleep for ever, the flag set
        thread.join(10)
    finally:
        signal.signal(signal.SIGINT, old)
    assert seen == [signal.SIGINT]


@pytest.mark.timeout(20)
def test_a_wait_on_descriptors_on_the_main_thread_wakes_for_a_ctrl_c_another_thread_received() -> None:
    read_end, write_end = os.pipe()
    waker = Waker()
    go = Event()

    def other() -> None:
        go.wait()
        _ctrl_c_in_this_thread()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            go.set()  # (the signal may come before the sleep or during it: a KeyboardInterrupt either way)
            while True:
                waker.clear()
                waker.wait((read_end,), None)
    finally:
        thread.join(10)
        waker.close()
        os.close(read_end)
        os.close(write_end)
    assert not thread.is_alive()


@pytest.mark.timeout(60)
def test_join_ends_with_the_ctrl_c_the_supervisor_thread_received(
    env: puma.Environment, capsys: pytest.CaptureFixture[str]
) -> None:
    worker = WaitForCommands()
    runner = puma.Runner(env)
    with pytest.raises(KeyboardInterrupt), runner:
        runner.start_blocking(worker)
        assert runner._supervisor is not None
        runner._supervisor.wait_started(10)  # (start_blocking returns once the child runs, perhaps before)
        supervisor = next(t for t in threading.enumerate() if t.name == "puma-supervisor")
        threading.Timer(0.05, signal.pthread_kill, (supervisor.ident, signal.SIGINT)).start()
        runner.join()
    assert not runner.is_alive(worker)
    assert "puma: Ctrl-C; stopping every runnable." in capsys.readouterr().err


class _PressesCtrlC(puma.Runnable):
    """A thread runnable that receives the Ctrl-C itself, then waits for its stop."""

    def __init__(self) -> None:
        super().__init__("presses")

    def execute(self) -> None:
        self.send_status("go", 1)
        self.wait_for_stop(0.05)
        _ctrl_c_in_this_thread()
        self.wait_for_stop()


@pytest.mark.timeout(60)
def test_a_main_program_reading_a_buffer_ends_with_the_ctrl_c_a_thread_runnable_received() -> None:
    env = puma.ThreadEnvironment()
    buffer = env.buffer(int, 4, "numbers")
    presses = _PressesCtrlC()
    runner = puma.Runner(env)
    with pytest.raises(KeyboardInterrupt), runner:
        subscription = buffer.subscribe()
        runner.start_blocking(presses)
        for _ in subscription:
            pass  # nothing is ever published: the Ctrl-C alone ends this
    assert not runner.is_alive(presses)


@pytest.mark.timeout(20)
def test_a_wake_up_descriptor_the_program_set_itself_stays_its_own(env: puma.Environment) -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    old = signal.set_wakeup_fd(write_end)
    try:
        worker = WaitForCommands()
        with puma.Runner(env) as runner:
            runner.start_blocking(worker)
            assert worker.add.submit(2).result(10) == 2  # main-thread waits on a future and on join
            runner.stop()
            runner.join()
    finally:
        mine = signal.set_wakeup_fd(old)
        os.close(read_end)
        os.close(write_end)
    assert mine == write_end


class _ReportsWakeup(puma.Runnable):
    def __init__(self) -> None:
        super().__init__("reports")

    def execute(self) -> None:
        was = signal.set_wakeup_fd(-1)
        self.send_status("wakeup", was)


@pytest.mark.timeout(30)
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork here")
def test_a_forked_child_does_not_write_signals_into_its_parents_pipe() -> None:
    reports = _ReportsWakeup()
    with puma.Runner(puma.ProcessEnvironment("fork")) as runner:
        runner.start(reports)
        assert reports.wait_status("wakeup", timeout=20) == -1
        runner.join()
