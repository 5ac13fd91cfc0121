"""Commands (run_in_child_scope) and statuses, in threads and processes."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest
from _helpers import Blocks, Dies, Noop, ReportsWhere, WaitForCommands

import puma

pytestmark = pytest.mark.timeout(60)


def test_command_runs_in_the_child_and_returns_its_result(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        worker = runner.start_blocking(WaitForCommands())
        assert worker.add(2) == 2
        assert worker.add(3) == 5
        child_pid = worker.where()
        assert (child_pid != os.getpid()) == env.is_process


def test_a_failing_command_raises_in_the_caller_and_does_not_poison_the_runnable(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        worker = runner.start_blocking(WaitForCommands())
        with pytest.raises(KeyError, match="nope") as info:
            worker.fail("nope")
        assert any("raised in runnable 'worker'" in note for note in info.value.__notes__)
        assert worker.add(1) == 1  # still serving


def test_submit_returns_a_future(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        worker = runner.start_blocking(WaitForCommands())
        futures = [worker.add.submit(1) for _ in range(20)]
        assert [f.result(timeout=30) for f in futures] == list(range(1, 21))
        assert worker.add.call(5, timeout=30) == 25


def test_command_to_a_runnable_not_started_is_refused() -> None:
    worker = WaitForCommands()
    with pytest.raises(puma.RunnableNotRunningError, match="has not been started"):
        worker.add(1)


def test_command_to_an_ended_runnable_is_a_clear_error(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        worker = runner.start_blocking(WaitForCommands())
        runner.stop(worker)
        runner.join(timeout=30)
        with pytest.raises(puma.RunnableNotRunningError, match="has ended"):
            worker.add(1)


def test_unpicklable_command_result_is_an_error_not_a_hang(process_env: puma.ProcessEnvironment) -> None:
    with puma.Runner(process_env) as runner:
        worker = runner.start_blocking(WaitForCommands())
        with pytest.raises(puma.NotPicklableError, match="cannot be pickled"):
            worker.unpicklable_result()
        assert worker.add(1) == 1


def test_command_arguments_that_cannot_be_sent_are_a_clear_error(process_env: puma.ProcessEnvironment) -> None:
    import threading

    with puma.Runner(process_env) as runner:
        worker = runner.start_blocking(WaitForCommands())
        with pytest.raises(puma.CommandError, match="command 'add' to runnable 'worker': its arguments cannot be sent"):
            worker.add(threading.Lock())  # type: ignore[arg-type]
        with pytest.raises(puma.CommandError, match="its arguments cannot be sent"):
            worker.add.submit(threading.Lock())  # type: ignore[arg-type]
        assert worker.add(1) == 1  # nothing half-sent: the runnable still serves


class _HeldBack(puma.Runnable):
    """Publishes until its buffer is full (nobody reads it), then is held there by back-pressure."""

    def __init__(self, out: puma.Buffer[int], batch: bool) -> None:
        super().__init__("held-back", outputs=[out])
        self._out = out
        self._batch = batch
        self.rate = 1

    @puma.run_in_child_scope
    def set_rate(self, rate: int) -> int:
        self.rate = rate
        return rate

    def execute(self) -> None:
        pub = self.publisher(self._out)
        pub.publish_many(range(4))  # the buffer holds 4: full now
        self.send_status("full", True)
        while True:
            if self._batch:
                pub.publish_many([self.rate] * 3)
            else:
                pub.publish(self.rate)


class _NeverReads(puma.Runnable):
    def __init__(self, inp: puma.Buffer[int]) -> None:
        super().__init__("never-reads")
        self._in = inp

    def execute(self) -> None:
        self._in.subscribe()
        self.send_status("subscribed", True)
        self.wait_for_stop()


@pytest.mark.parametrize("batch", [False, True], ids=["publish", "publish_many"])
def test_a_producer_held_back_by_a_full_buffer_still_runs_its_commands(env: puma.Environment, batch: bool) -> None:
    """Its wait for room is its one wait: commands run there, and a stop ends it cleanly."""
    with puma.Runner(env) as runner:
        buffer = env.buffer(int, 4, "numbers")
        runner.start(_NeverReads(buffer)).wait_status("subscribed", timeout=30)
        producer = runner.start(_HeldBack(buffer, batch))
        producer.wait_status("full", timeout=30)
        assert producer.set_rate.call(5, timeout=30) == 5
        assert producer.set_rate.submit(7).result(timeout=30) == 7
        runner.stop()
        runner.join(timeout=30)  # a stop, not an error: neither fails
    assert not runner.is_alive()


class _DeafUntilTold(puma.Runnable):
    """Takes no commands until its gate opens (busy in its own work), then serves them until stopped."""

    def __init__(self, gate: Any) -> None:
        super().__init__("deaf")
        self._gate = gate
        self.taken = 0

    @puma.run_in_child_scope
    def take(self, data: bytes) -> int:
        self.taken += 1
        return len(data)

    @puma.run_in_child_scope
    def taken_so_far(self) -> int:
        return self.taken

    @puma.run_in_child_scope
    def give(self, size: int) -> bytes:
        return b"z" * size

    def execute(self) -> None:
        self.send_status("busy", True)
        self._gate.wait(60)
        self.wait_for_stop()


def _gate(env: puma.Environment) -> Any:
    return env.context.Event() if isinstance(env, puma.ProcessEnvironment) else threading.Event()


_BIG = b"x" * 2_000_000  # far more than a pipe holds


def test_a_command_to_a_runnable_that_takes_none_times_out_and_is_delivered_later(env: puma.Environment) -> None:
    """Its timeout holds even while the command is too big for the pipe; nothing is lost or torn."""
    gate = _gate(env)
    with puma.Runner(env) as runner:
        deaf = runner.start_blocking(_DeafUntilTold(gate))
        deaf.wait_status("busy", timeout=30)
        with pytest.raises(TimeoutError, match="runnable 'deaf' did not"):
            deaf.take.call(_BIG, timeout=0.2)
        later = deaf.take.submit(_BIG)  # queued, not blocking
        assert not later.done()
        gate.set()
        assert later.result(timeout=30) == len(_BIG)
        assert deaf.take(b"ok") == 2  # the stream of commands is intact


def test_a_call_that_times_out_before_any_of_it_was_sent_is_withdrawn(process_env: puma.ProcessEnvironment) -> None:
    """Queued behind a jam and never begun: it never runs (a call that was begun may still run)."""
    gate = _gate(process_env)
    with puma.Runner(process_env) as runner:
        deaf = runner.start_blocking(_DeafUntilTold(gate))
        deaf.wait_status("busy", timeout=30)
        jam = deaf.take.submit(_BIG)
        with pytest.raises(TimeoutError, match="did not take the command"):
            deaf.take.call(b"small", timeout=0.2)
        gate.set()
        assert jam.result(timeout=30) == len(_BIG)
        assert deaf.taken_so_far() == 1  # the jam only
        assert deaf.take(b"ok") == 2


def test_commands_work_whatever_the_default_socket_timeout(
    process_env: puma.ProcessEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program's socket.setdefaulttimeout() does not leak into puma's pipes."""
    import socket

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(0.5)
    try:
        gate = _gate(process_env)
        gate.set()
        with puma.Runner(process_env) as runner:
            worker = runner.start_blocking(_DeafUntilTold(gate))
            assert worker.take(_BIG) == len(_BIG)
            assert len(worker.give.submit(1_000_000).result(timeout=30)) == 1_000_000  # a big answer, read whole
    finally:
        socket.setdefaulttimeout(previous)


def test_a_child_jammed_with_commands_does_not_stall_supervision(process_env: puma.ProcessEnvironment) -> None:
    """Another child's death is reported at once; the stop to the jammed one waits its turn, not the Runner."""
    gate = _gate(process_env)
    with puma.Runner(process_env) as runner:
        deaf = runner.start_blocking(_DeafUntilTold(gate))
        deaf.wait_status("busy", timeout=30)
        jam = [deaf.take.submit(_BIG) for _ in range(3)]
        dies = runner.start(Dies("exit"))
        with pytest.raises(puma.RunnableNotRunningError):
            dies.wait_status("never sent", timeout=60)  # returns (raising) once its death is handled
        with pytest.raises(puma.ChildDiedError, match="exited with code 3"):
            runner.check_for_exceptions()
        gate.set()  # now it reads its commands, the stop the failure sent it among them
        assert [f.result(timeout=30) for f in jam] == [len(_BIG)] * 3
        runner.join(timeout=30)
    assert not runner.is_alive()


def test_a_thread_producer_held_back_by_a_full_process_buffer_still_runs_its_commands(
    process_env: puma.ProcessEnvironment,
) -> None:
    """The mixed case: the thread runnable's commands come through its Waker, the room through a pipe."""
    with puma.Runner(process_env) as runner:
        buffer = process_env.buffer(int, 4, "numbers")
        runner.start(_NeverReads(buffer)).wait_status("subscribed", timeout=30)
        producer = runner.start(_HeldBack(buffer, batch=False), puma.ThreadEnvironment())
        producer.wait_status("full", timeout=30)
        for rate in range(20):  # each one must wake it where it waits
            assert producer.set_rate.call(rate, timeout=30) == rate
        runner.stop()
        runner.join(timeout=30)


def test_statuses_latest_and_waited_for(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        reporter = runner.start(ReportsWhere())
        assert reporter.wait_status("progress", lambda v: v == 4, timeout=30) == 4
        runner.join()
    assert reporter.status("progress") == 4
    assert reporter.status("missing", "default") == "default"
    assert (reporter.status("pid") != os.getpid()) == env.is_process


def test_waiting_for_a_status_that_never_comes_ends_when_the_runnable_ends(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        noop = runner.start(Noop())
        with pytest.raises(puma.RunnableNotRunningError, match="ended before reporting"):
            noop.wait_status("never", timeout=30)


def test_command_runs_while_the_runnable_waits(env: puma.Environment) -> None:
    """The runnable blocks in one wait; the command wakes it at once and it goes back to waiting."""
    with puma.Runner(env) as runner:
        worker = runner.start_blocking(WaitForCommands())
        for i in range(50):
            assert worker.add(1) == i + 1
        runner.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()


def test_a_timed_out_call_does_not_confuse_later_calls(process_env: puma.ProcessEnvironment) -> None:
    """The runnable holds a multiprocessing Event (it crosses); a call times out, later calls still match."""
    gate = process_env.context.Event()
    with puma.Runner(process_env) as runner:
        worker = runner.start_blocking(Blocks(gate))
        with pytest.raises(TimeoutError):
            worker.block.call(timeout=0.2)
        gate.set()
        assert worker.add(1) == 1
        assert worker.add(2) == 3
        assert worker.block() is True


def test_a_timed_out_call_says_which_runnable_did_not_answer(env: puma.Environment) -> None:
    import threading

    gate = env.context.Event() if isinstance(env, puma.ProcessEnvironment) else threading.Event()
    with puma.Runner(env) as runner:
        worker = runner.start_blocking(Blocks(gate))
        with pytest.raises(TimeoutError, match=r"runnable 'blocks' did not answer within 0\.2 s"):
            worker.block.call(timeout=0.2)
        gate.set()
        assert worker.add(1) == 1


def test_many_threads_calling_at_once_each_get_their_own_answer(env: puma.Environment) -> None:
    import threading

    results: list[int] = []
    lock = threading.Lock()
    with puma.Runner(env) as runner:
        worker = runner.start_blocking(WaitForCommands())

        def call_many() -> None:
            for _ in range(25):
                value = worker.add(1)
                with lock:
                    results.append(value)

        threads = [threading.Thread(target=call_many) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert sorted(results) == list(range(1, 101))


def test_a_child_dying_during_a_call_fails_the_call_not_hangs(process_env: puma.ProcessEnvironment) -> None:
    gate = process_env.context.Event()
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
        with puma.Runner(process_env) as runner:
            worker = runner.start_blocking(Blocks(gate))
            with pytest.raises(puma.PumaError):
                worker.die()
            runner.join()
