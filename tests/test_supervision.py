"""Supervision: dead children, stop, stuck children, Ctrl-C, parent death, misuse, and import hygiene."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from pathlib import Path

import psutil
import pytest
from _helpers import (
    Collector,
    Dies,
    DiesHoldingBufferLock,
    EndlessProducer,
    FloodsStatuses,
    HoldsLock,
    Noop,
    Producer,
    Raises,
    Squarer,
    Stuck,
    WaitForCommands,
)

import puma

pytestmark = pytest.mark.timeout(90)

HERE = Path(__file__).parent


@pytest.mark.parametrize(
    ("how", "exitcode", "words"),
    [("kill", -9, "SIGKILL(-9)"), ("exit", 3, "exited with code 3"), ("segv", -11, "SIGSEGV(-11)")],
)
def test_dead_child_is_reported_with_its_exit_code_or_signal(
    process_env: puma.ProcessEnvironment, how: str, exitcode: int, words: str
) -> None:
    with pytest.raises(puma.ChildDiedError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        with puma.Runner(process_env) as runner:
            runner.start(Dies(how))
            runner.join()
    assert info.value.exitcode == exitcode
    assert info.value.runnable == f"dies-{how}"


def test_kill_9_mid_stream_stops_the_pipeline_and_reports_it(process_env: puma.ProcessEnvironment) -> None:
    with pytest.raises(puma.ChildDiedError, match="SIGKILL") as info:
        with puma.Runner(process_env) as runner:
            raw, squared = process_env.buffer(int, 10, "raw"), process_env.buffer(int, 10, "squared")
            producer = runner.start(EndlessProducer(raw))
            runner.start(Squarer(raw, squared))
            sink = runner.start(Collector(squared, reraise=False))
            pid = producer.wait_status("pid", timeout=30)
            sink.wait_status("first", timeout=30)  # the whole pipeline is flowing
            os.kill(pid, signal.SIGKILL)
            runner.join()
    assert info.value.pid == pid
    assert not runner.is_alive()
    assert sink.status("values") is not None  # the consumer ended and reported


def test_child_that_dies_before_starting_does_not_hang_start_blocking(
    process_env: puma.ProcessEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start_blocking reports the death (not a timeout), and the Runner has seen it too.

    Under spawn and forkserver the runnable is unpickled in the child, and an
    unpickle that exits kills it before 'started'.  A forked child unpickles
    nothing, so there the child's first step is made to exit.
    """
    runnable: puma.Runnable = _ExitsOnArrival()
    if process_env.start_method == "fork":
        from puma._environments import process_child as _environment

        monkeypatch.setattr(_environment, "_set_signal", lambda signalnum, handler: os._exit(3))
        runnable = Noop()
    with pytest.raises(puma.ChildDiedError, match="exited with code 3") as info:
        with puma.Runner(process_env) as runner:
            try:
                runner.start_blocking(runnable, timeout=60)
            finally:
                monkeypatch.undo()
    assert info.value.exitcode == 3
    assert not runner.is_alive(runnable)


@pytest.mark.parametrize("method", ["forkserver", "spawn"])  # a forked child unpickles nothing
@pytest.mark.parametrize("consumer", ["process", "thread"])
def test_a_runnable_the_child_cannot_rebuild_fails_with_the_real_cause(method: str, consumer: str) -> None:
    """Not a bare exit code: the unpickling error itself, with its traceback, and downstream ends."""
    env = puma.ProcessEnvironment(method)
    with pytest.raises(RuntimeError, match="cannot be rebuilt in the child") as info:
        with puma.Runner(env) as runner:
            buffer = env.buffer(int, 4, "numbers")
            sink = runner.start(
                Collector(buffer, reraise=False), env if consumer == "process" else puma.ThreadEnvironment()
            )
            runner.start_blocking(_BrokenOnArrival(buffer), timeout=60)
    assert any("raised while rebuilding runnable 'broken-on-arrival'" in note for note in info.value.__notes__)
    assert "_explode" in "".join(traceback.format_exception(info.value))  # the child's own frames
    assert sink.status("error")[:2] == ("RuntimeError", "cannot be rebuilt in the child")  # it ended, told why


class _Exits:
    def __reduce__(self) -> tuple[object, ...]:
        return (os._exit, (3,))


class _ExitsOnArrival(puma.Runnable):
    def __init__(self) -> None:
        super().__init__("exits-on-arrival")
        self.part = _Exits()

    def execute(self) -> None:
        pass


class _Explodes:
    def __reduce__(self) -> tuple[object, ...]:
        return (_explode, ())


def _explode() -> None:
    raise RuntimeError("cannot be rebuilt in the child")


class _BrokenOnArrival(puma.Runnable):
    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("broken-on-arrival", outputs=[out])
        self.part = _Explodes()

    def execute(self) -> None:
        pass


def test_start_blocking_that_times_out_leaves_the_child_supervised(process_env: puma.ProcessEnvironment) -> None:
    """The STARTED that comes after the timeout still reaches the Runner, and the child works."""
    with puma.Runner(process_env) as runner:
        worker = WaitForCommands()
        with pytest.raises(TimeoutError, match="runnable 'worker' did not start within 0 s"):
            runner.start_blocking(worker, timeout=0)  # a process needs more than no time at all
        runner.wait_until_running(worker, timeout=60)
        assert worker.add(3) == 3
        pid = runner.pid(worker)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # and its death is seen
        with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
            runner.join(timeout=60)


def test_a_child_killed_right_after_start_blocking_is_reported(process_env: puma.ProcessEnvironment) -> None:
    with puma.Runner(process_env) as runner:
        worker = runner.start_blocking(WaitForCommands(), timeout=60)
        pid = runner.pid(worker)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(puma.ChildDiedError, match="SIGKILL") as info:
            runner.join(timeout=60)
    assert info.value.pid == pid


def test_ctrl_c_while_start_blocking_waits_leaves_the_child_supervised(
    process_env: puma.ProcessEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing while start_blocking waits for the child: the Runner still watches it, then stops it."""
    from puma._environments import process as _runner

    def interrupted(*args: object) -> list[object]:
        raise KeyboardInterrupt

    with puma.Runner(process_env) as runner:
        monkeypatch.setattr(_runner, "wait_for", interrupted)
        worker = WaitForCommands()
        with pytest.raises(KeyboardInterrupt):
            runner.start_blocking(worker)
        monkeypatch.undo()
        runner.wait_until_running(worker, timeout=60)
        assert worker.add(4) == 4
    assert not runner.is_alive(worker)


def test_stop_ends_a_running_pipeline_cleanly(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        raw = env.buffer(int, 4, "raw")
        producer = runner.start(EndlessProducer(raw))
        sink = runner.start(Collector(raw))
        producer.wait_status("pid", timeout=30)
        runner.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()
    assert sink.status("error") is None  # a stop is not an error


def test_stuck_child_is_terminated_and_reported(env: puma.Environment) -> None:
    Stuck.release.clear()
    runner = puma.Runner(env, stop_timeout=1.0)
    stuck = runner.start(Stuck())
    stuck.wait_status("pid", timeout=30)
    with pytest.raises(puma.StuckRunnableError, match="did not end within 1.0 s"):
        runner.close()
    Stuck.release.set()  # lets the abandoned thread end, for the leak check
    if env.is_process:
        assert not psutil.pid_exists(stuck.status("pid")) or psutil.Process(stuck.status("pid")).status() == "zombie"


class _IgnoresTerm(puma.Runnable):
    """Stuck, and deaf to SIGTERM: only SIGKILL ends it."""

    def __init__(self) -> None:
        super().__init__("deaf")

    def execute(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self.send_status("pid", os.getpid())
        threading.Event().wait()


def test_a_stuck_child_deaf_to_sigterm_is_killed_and_reported_so(process_env: puma.ProcessEnvironment) -> None:
    runner = puma.Runner(process_env, stop_timeout=0.5)
    deaf = runner.start(_IgnoresTerm())
    pid = deaf.wait_status("pid", timeout=60)
    with pytest.raises(puma.StuckRunnableError, match=r"it was killed \(SIGTERM did not end it"):
        runner.close()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


class _BigValues(puma.Runnable):
    """Publishes values far larger than a pipe holds, until stopped."""

    def __init__(self, out: puma.Buffer[bytes]) -> None:
        super().__init__("big-values", outputs=[out])
        self._out = out

    def execute(self) -> None:
        pub = self.publisher(self._out)
        for count in itertools.count():
            self.send_status("publishing", count)
            pub.publish(b"y" * 500_000)


def test_leaving_the_runner_while_the_main_program_stops_reading_is_clean(env: puma.Environment) -> None:
    """The publisher is blocked mid-way through writing a large value: the Runner frees it on close.

    (Not a StuckRunnableError after stop_timeout: nobody would read the rest of that value.)
    """
    with puma.Runner(env, stop_timeout=20) as runner:
        buffer = env.buffer(bytes, 4, "big")
        values = buffer.subscribe()
        producer = runner.start(_BigValues(buffer))
        assert len(values.receive(timeout=30)) == 500_000
        producer.wait_status("publishing", lambda count: count >= 1, timeout=30)  # writes more than a pipe holds
    assert not runner.is_alive()


class _LingersAfterItsEnd(puma.Runnable):
    """Returns from execute leaving a non-daemon thread behind: its process exits when the gate opens."""

    def __init__(self, gate: object) -> None:
        super().__init__("lingers")
        self._gate = gate

    @puma.run_in_child_scope
    def ping(self) -> int:
        return 1

    def execute(self) -> None:
        threading.Thread(target=self._gate.wait, args=(60,)).start()  # type: ignore[attr-defined]
        self.send_status("returning", True)


def test_a_process_that_exits_slowly_after_its_runnable_ends_is_waited_for(
    process_env: puma.ProcessEnvironment,
) -> None:
    """It counts as running until it has exited; supervision carries on meanwhile (not a crash)."""
    gate = process_env.context.Event()
    with puma.Runner(process_env) as runner:
        lingering = runner.start(_LingersAfterItsEnd(gate))
        lingering.wait_status("returning", timeout=30)
        with pytest.raises(TimeoutError):
            runner.join(timeout=3)  # longer than the Runner once waited for an exit before giving up
        with pytest.raises(puma.RunnableNotRunningError, match="has ended"):
            lingering.ping()
        assert runner.start_blocking(WaitForCommands(), timeout=60).add(1) == 1  # the supervisor works
        gate.set()
        runner.stop()
        runner.join(timeout=30)
    assert not runner.is_alive()


def test_a_process_that_never_exits_after_its_runnable_ends_is_terminated_and_reported(
    process_env: puma.ProcessEnvironment,
) -> None:
    gate = process_env.context.Event()
    runner = puma.Runner(process_env, stop_timeout=0.5)
    lingering = runner.start(_LingersAfterItsEnd(gate))
    lingering.wait_status("returning", timeout=30)
    with pytest.raises(puma.StuckRunnableError, match="finished, but its process did not exit within 0.5 s"):
        runner.close()
    assert not runner.is_alive()


def test_starting_the_same_runnable_twice_is_refused(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        noop = runner.start(Noop())
        with pytest.raises(puma.PumaError, match="already started"):
            runner.start(noop)


def test_closed_runner_refuses_new_starts(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        pass
    with pytest.raises(puma.PumaError, match="closed"):
        runner.start(Noop())


def test_unpicklable_attribute_is_named_before_the_child_starts(process_env: puma.ProcessEnvironment) -> None:
    with puma.Runner(process_env) as runner:
        with pytest.raises(puma.NotPicklableError, match=r"attribute holds-lock\.config\['device'\]\.handle"):
            runner.start(HoldsLock())
        assert runner.runnables == ()


def test_a_launch_interrupted_after_the_fork_leaves_no_orphan(
    process_env: puma.ProcessEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing just after the child was forked: start() raises it and kills that child."""
    from puma._environments import process_link as _channels

    def interrupted(self: _channels.ProcessLink) -> None:
        raise KeyboardInterrupt

    with puma.Runner(process_env) as runner:
        monkeypatch.setattr(_channels.ProcessLink, "close_child_end", interrupted)
        with pytest.raises(KeyboardInterrupt):
            runner.start(WaitForCommands())
        monkeypatch.undo()
        assert runner.runnables == ()
        worker = runner.start_blocking(WaitForCommands(), timeout=60)  # the Runner still works
        assert worker.add(2) == 2
    # the autouse leak check fails the test if the interrupted child were still alive


def test_runnables_started_from_another_thread_are_supervised(env: puma.Environment) -> None:
    """The main thread forks directly; any other thread hands the launch to the supervisor thread."""

    with puma.Runner(env) as runner:
        started: list[WaitForCommands] = []
        thread = threading.Thread(target=lambda: started.append(runner.start_blocking(WaitForCommands(), timeout=60)))
        thread.start()
        thread.join(60)
        assert started, "start_blocking from a thread did not return"
        worker = started[0]
        assert worker.add(5) == 5
        if env.is_process:  # its death is seen, as for a child forked by the main thread
            pid = runner.pid(worker)
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
                runner.join()
            assert not runner.is_alive(worker)


@pytest.mark.parametrize("how", ["write", "write-long", "meta", "gap", "meta-gap"])
@pytest.mark.parametrize("consumer", ["process", "thread"])
def test_a_publisher_killed_holding_a_buffer_lock_still_ends_its_subscriber(
    process_env: puma.ProcessEnvironment, how: str, consumer: str
) -> None:
    """The lock it held is freed and its error reaches the subscriber: no stuck consumer, no stop_timeout."""
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):  # alone: no StuckRunnableError beside it
        with puma.Runner(process_env) as runner:
            buffer = process_env.buffer(int, 10, "numbers")
            where = puma.ThreadEnvironment() if consumer == "thread" else process_env
            sink = runner.start(Collector(buffer, reraise=False), where)
            sink.wait_status("subscribed", timeout=30)  # so the Runner knows it is downstream
            runner.start(DiesHoldingBufferLock(buffer, how))
            runner.join()
    assert sink.status("values") == [0, 1, 2]  # every whole value before the death
    assert sink.status("error")[0] == "ChildDiedError"


@pytest.mark.parametrize("how", ["write", "write-long"])
def test_the_main_program_subscribed_to_a_publisher_that_dies_mid_value_gets_its_error(
    process_env: puma.ProcessEnvironment, how: str
) -> None:
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
        with puma.Runner(process_env) as runner:
            buffer = process_env.buffer(int, 10, "numbers")
            subscription = buffer.subscribe()
            runner.start(DiesHoldingBufferLock(buffer, how))
            received: list[int] = []
            with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
                for value in subscription:
                    received.append(value)
            assert received == [0, 1, 2]
            runner.join()


def test_a_child_flooding_statuses_does_not_hide_another_childs_death(process_env: puma.ProcessEnvironment) -> None:
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
        with puma.Runner(process_env) as runner:
            flood = runner.start(FloodsStatuses())
            flood.wait_status("count", lambda n: n > 1000, timeout=30)  # the supervisor is busy reading it
            runner.start(Dies("kill"))
            runner.join()
    assert flood.status("count") > 1000


def _passes_the_gate(gate: object) -> int:
    gate.wait(60)  # type: ignore[attr-defined]
    return 0


class _Gated:
    """Unpickles (in a spawn or forkserver child) only once the gate opens."""

    def __init__(self, gate: object) -> None:
        self.gate = gate

    def __reduce__(self) -> tuple[object, ...]:
        return (_passes_the_gate, (self.gate,))


class _ArrivesWhenTold(WaitForCommands):
    def __init__(self, gate: object) -> None:
        super().__init__()
        self.part = _Gated(gate)


def test_wait_until_running_times_out_with_a_clear_error(
    process_env: puma.ProcessEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child is held before it can start (while it is rebuilt; a forked child, at its first step)."""
    gate = process_env.context.Event()
    if process_env.start_method == "fork":
        from puma._environments import process_child as _environment

        monkeypatch.setattr(_environment, "_set_signal", lambda signalnum, handler: gate.wait(60))
    with puma.Runner(process_env) as runner:
        worker = runner.start(_ArrivesWhenTold(gate))
        monkeypatch.undo()
        with pytest.raises(TimeoutError, match="runnable 'worker' did not start within 0.2 s"):
            runner.wait_until_running(worker, timeout=0.2)
        gate.set()
        runner.wait_until_running(worker, timeout=60)
        assert runner.is_alive(worker)
        assert worker.add(1) == 1


def test_runner_rejects_bad_options() -> None:
    with pytest.raises(ValueError, match="on_failure"):
        puma.Runner(on_failure="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive"):
        puma.Runner(stop_timeout=0)
    with pytest.raises(ValueError, match="not available"):
        puma.ProcessEnvironment("teleport")


def test_default_start_method_is_safe_with_threads() -> None:
    assert puma.ProcessEnvironment().start_method in ("forkserver", "spawn")


def _run_script(body: str, **kwargs: object) -> subprocess.Popen[str]:
    script = textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=str(HERE),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        **kwargs,  # type: ignore[arg-type]
    )


_PIPELINE_SCRIPT = """
import sys, puma
from _helpers import EndlessProducer, Collector
if __name__ == "__main__":
    env = puma.ProcessEnvironment(sys.argv[1] if len(sys.argv) > 1 else "{method}")
    with puma.Runner(env) as runner:
        raw = env.buffer(int, 4, "raw")
        producer = runner.start(EndlessProducer(raw))
        runner.start(Collector(raw))
        pid = producer.wait_status("pid", timeout=60)
        print(pid, flush=True)
        runner.join()
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_ctrl_c_stops_everything_and_leaves_no_orphan(method: str) -> None:
    proc = _run_script(_PIPELINE_SCRIPT.format(method=method))
    assert proc.stdout is not None
    child_pid = int(proc.stdout.readline())
    grandchildren = psutil.Process(proc.pid).children(recursive=True)
    assert child_pid in [c.pid for c in grandchildren]
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert "KeyboardInterrupt" in err
    _gone, alive = psutil.wait_procs(grandchildren, timeout=10)
    assert not alive, f"orphans: {alive}"


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_children_die_with_their_parent(method: str) -> None:
    proc = _run_script(_PIPELINE_SCRIPT.format(method=method))
    assert proc.stdout is not None
    child_pid = int(proc.stdout.readline())
    grandchildren = [c for c in psutil.Process(proc.pid).children(recursive=True)]
    assert child_pid in [c.pid for c in grandchildren]
    proc.kill()
    proc.communicate(timeout=30)
    _gone, alive = psutil.wait_procs(grandchildren, timeout=10)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"orphans after the parent died: {alive}"


_EXITS_AT_ONCE_SCRIPT = """
import os, sys, puma
from _helpers import WaitForCommands
if __name__ == "__main__":
    runner = puma.Runner(puma.ProcessEnvironment(sys.argv[1]))
    worker = runner.start_blocking(WaitForCommands(), timeout=60)
    print(runner.pid(worker), flush=True)
    os._exit(0)  # at once: the child may not have tied itself to this process yet
"""


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_a_child_whose_parent_exits_right_after_start_blocking_ends_too(method: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXITS_AT_ONCE_SCRIPT, method],
        cwd=str(HERE),
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    out, _err = proc.communicate(timeout=60)
    child_pid = int(out)
    try:
        child = psutil.Process(child_pid)
    except psutil.NoSuchProcess:
        return  # already gone
    _gone, alive = psutil.wait_procs([child], timeout=10)
    for leftover in alive:
        leftover.kill()
    assert not alive, f"orphan after the parent exited: {child_pid}"


def test_importing_puma_changes_nothing_global() -> None:
    script = """
import copyreg, multiprocessing, threading, sys
before = dict(copyreg.dispatch_table)
import puma, puma.logging
assert multiprocessing.get_start_method(allow_none=True) is None, "start method was fixed"
assert threading.active_count() == 1, threading.enumerate()
assert dict(copyreg.dispatch_table) == before, "pickling hooks installed"
print("clean")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert result.stdout.strip() == "clean", result.stderr


def test_leaving_the_block_without_join_stops_and_joins(env: puma.Environment) -> None:
    started = time.monotonic()
    with puma.Runner(env) as runner:
        raw = env.buffer(int, 4, "raw")
        producer = runner.start(EndlessProducer(raw))
        runner.start(Collector(raw))
        producer.wait_status("pid", timeout=30)
    assert not runner.is_alive()
    assert time.monotonic() - started < 85  # bounded, not a speed claim


def test_a_finished_pipeline_leaves_nothing_running(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        raw, squared = env.buffer(int, 4, "raw"), env.buffer(int, 4, "squared")
        runner.start(Producer(raw, 20))
        runner.start(Squarer(raw, squared))
        runner.start(Collector(squared))
        runner.join(timeout=60)
        assert not runner.is_alive()


def test_stopping_a_busy_consumer_ends_it_and_its_publisher_learns_why(env: puma.Environment) -> None:
    with pytest.raises(puma.BufferClosedError, match="subscriber has ended"):
        with puma.Runner(env) as runner:
            raw = env.buffer(int, 4, "raw")
            runner.start(EndlessProducer(raw))
            sink = runner.start(Collector(raw))
            sink.wait_status("first", timeout=30)
            runner.stop(sink)
            runner.join(timeout=60)
    assert sink.status("values")  # it ended on the stop, reporting what it had
    assert sink.status("error") is None


def test_stop_frees_a_publisher_blocked_on_a_buffer_nobody_reads(env: puma.Environment) -> None:
    """Large values fill the pipe of a buffer with no subscriber; stopping must not leave it stuck."""
    runner = puma.Runner(env, stop_timeout=20)
    out = env.buffer(bytes, 3, "unread")
    producer = runner.start(EndlessProducer(out, b"y" * 500_000))
    producer.wait_status("pid", timeout=30)
    runner.close()  # raises if the producer had to be terminated as stuck
    assert not runner.is_alive()


def test_a_runnable_started_after_a_failure_is_stopped_too(env: puma.Environment) -> None:
    with pytest.raises(KeyError, match="first"):
        with puma.Runner(env) as runner:
            failing = runner.start(Raises(KeyError("first"), name="first"))
            with pytest.raises(puma.RunnableNotRunningError):
                failing.wait_status("never", timeout=30)
            late = runner.start(WaitForCommands("late"))
            runner.join(timeout=60)
    assert not runner.is_alive(late)


def test_pid_is_known_as_soon_as_start_returns(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        worker = runner.start(WaitForCommands())
        pid = runner.pid(worker)
        assert pid is not None
        assert worker.where() == pid  # the process it runs in
