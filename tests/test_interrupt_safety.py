"""A Ctrl-C landing anywhere in puma's waits leaves nothing locked.

Python raises ``KeyboardInterrupt`` in the main thread between two bytecodes;
landing between ``threading.Condition``'s taking of its lock and the ``with``
block (or between its ``wait`` giving the lock back and its ``try``) it leaves
the lock held, and the next thread to notify blocks for ever: the demo hung
on Ctrl-C that way.  These tests raise a ``KeyboardInterrupt`` at every
point of each wait where CPython may run a signal handler, in turn (a tracer stands in for the signal) and check
that the lock is free for another thread afterwards.
"""

from __future__ import annotations

import contextlib
import dis
import pathlib
import sys
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _helpers import Collector, Producer

import puma
from puma._core import condition as _condition
from puma._core import signals as _signals
from puma._core.condition import Condition, Event, new_future

_TRACED = {__file__, _condition.__file__, _signals.__file__, sys.modules["concurrent.futures._base"].__file__}
_PUMA = str(pathlib.Path(puma.__file__).parent)


#: The bytecodes after which CPython runs a pending signal handler: calls, a loop's jump back, a
#: function's start.  A Ctrl-C's KeyboardInterrupt appears right after one of them.
_CHECKS = {"CALL", "CALL_FUNCTION_EX", "CALL_KW", "JUMP_BACKWARD", "RESUME"}


def _interrupt_at(
    step: int, scenario: Callable[[], Any], traced: set[str] = _TRACED, armed: list[bool] | None = None
) -> tuple[bool, int]:
    """Run ``scenario``, raising KeyboardInterrupt at its ``step``-th signal check point; (raised, points seen).

    Only frames of the ``traced`` files count (the waits, not the thread machinery they use),
    and only once ``armed[0]`` is true, if ``armed`` is given.
    """
    seen = 0
    last: dict[int, int] = {}  # id(frame) -> offset of its previous bytecode

    def local(frame: types.FrameType, event: str, arg: Any) -> Any:
        nonlocal seen
        if event == "opcode":
            previous = last.get(id(frame))
            last[id(frame)] = frame.f_lasti
            if armed is not None and not armed[0]:
                return local
            if previous is None or dis.opname[frame.f_code.co_code[previous]] in _CHECKS:
                seen += 1
                if seen == step:
                    raise KeyboardInterrupt
        return local

    def global_trace(frame: types.FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename not in traced:
            return None
        frame.f_trace_opcodes = True
        last.pop(id(frame), None)  # a new frame (or a generator resumed) may reuse an old one's id
        return local

    raised = False
    sys.settrace(global_trace)
    try:
        scenario()
    except KeyboardInterrupt:
        raised = True
    finally:
        sys.settrace(None)
    return raised, seen


def _free_for_others(lock: Any) -> bool:
    """True if another thread can take ``lock`` now (it was not left held)."""
    taken: list[bool] = []

    def take() -> None:
        ok = lock.acquire(timeout=5)
        if ok:
            lock.release()
        taken.append(ok)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(10)
    return taken == [True]


def _in_a_thread(step: int, scenario: Callable[[], Any], traced: set[str] = _TRACED) -> tuple[bool, int]:
    """:func:`_interrupt_at` in a thread of its own.

    An exception raised by a trace function inside an ``except`` block can leave
    CPython's "exception being handled" set in that thread for good (every later
    exception there would show it as its context): not the test process's main thread.
    """
    result: list[tuple[bool, int]] = []
    thread = threading.Thread(target=lambda: result.append(_interrupt_at(step, scenario, traced)))
    thread.start()
    thread.join(30)
    assert result, f"the scenario did not end at step {step}"
    return result[0]


def _every_step(make: Callable[[], tuple[Callable[[], Any], Callable[[], None]]]) -> int:
    """Interrupt a fresh scenario at each of its bytecodes in turn; ``check`` after each. Returns the steps tried."""
    scenario, check = make()
    _raised, steps = _in_a_thread(0, scenario)  # a dry run counts the bytecodes
    assert steps > 5
    for step in range(1, steps + 1):
        scenario, check = make()
        _in_a_thread(step, scenario)
        check()
    return steps


def _notify_soon(cond: Condition) -> None:
    def notify() -> None:
        with cond:
            cond.notify_all()

    threading.Timer(0.001, notify).start()


@pytest.fixture(params=["other-thread", "main-thread"])
def waiter(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Where a Condition's waiter sleeps: another thread, or the main thread (a signal may release it).

    The scenarios run in a thread of their own (see :func:`_in_a_thread`): for "main-thread",
    that thread is treated as the main thread, which names its waiter for the signal watcher.
    """
    if request.param == "main-thread":
        monkeypatch.setattr(_signals, "main_thread", lambda: True)
        monkeypatch.setattr(_signals, "watching", lambda: True)
    yield request.param
    monkeypatch.undo()
    _signals.on_signal(None)  # (what an interrupt at the first bytecode of on_signal(None) leaves: harmless)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("notified", [False, True], ids=["timed-out", "notified"])
def test_a_ctrl_c_anywhere_in_a_condition_wait_leaves_it_unlocked(notified: bool, waiter: str) -> None:
    def make() -> tuple[Callable[[], Any], Callable[[], None]]:
        cond = Condition()

        def scenario() -> None:
            with cond:
                if notified:
                    _notify_soon(cond)
                cond.wait(0.5 if notified else 0.001)

        def check() -> None:
            assert not cond._is_owned()
            assert _free_for_others(cond)
            with cond:
                cond.notify_all()  # a waiter a Ctrl-C left behind is harmless

        return scenario, check

    _every_step(make)


@pytest.mark.timeout(120)
def test_a_ctrl_c_anywhere_in_an_event_wait_leaves_its_setter_free(waiter: str) -> None:
    def make() -> tuple[Callable[[], Any], Callable[[], None]]:
        event = Event()

        def scenario() -> None:
            threading.Timer(0.001, event.set).start()
            event.wait(0.5)

        def check() -> None:
            assert _free_for_others(event._cond)
            setter = threading.Thread(target=event.set)
            setter.start()
            setter.join(10)
            assert not setter.is_alive()
            assert event.wait(0)

        return scenario, check

    _every_step(make)


@pytest.mark.timeout(120)
def test_a_ctrl_c_anywhere_in_a_command_future_result_leaves_its_answer_deliverable(waiter: str) -> None:
    def make() -> tuple[Callable[[], Any], Callable[[], None]]:
        future = new_future()

        def scenario() -> None:
            try:
                future.result(0.001)
            except TimeoutError:
                pass

        def check() -> None:
            assert _free_for_others(future._condition)  # type: ignore[attr-defined]
            answer = threading.Thread(target=future.set_result, args=(7,))  # the supervisor's side
            answer.start()
            answer.join(10)
            assert not answer.is_alive()
            assert future.result(0) == 7

        return scenario, check

    _every_step(make)


@pytest.mark.timeout(60)
def test_the_harness_finds_where_the_stdlib_condition_is_left_locked() -> None:
    """The check points reached include the window that leaves ``threading.Condition`` held.

    (So the tests above mean something; the stdlib also raises ``RuntimeError``
    instead of the KeyboardInterrupt in its other window.)
    """
    leaked = 0
    step = 0
    while True:
        step += 1
        cond = threading.Condition(threading.Lock())

        def scenario(cond: threading.Condition = cond) -> None:
            try:
                with cond:
                    cond.wait(0.001)
            except RuntimeError:
                pass  # "release unlocked lock": the interrupt came after wait gave the lock back

        raised, seen = _in_a_thread(step, scenario, {__file__, threading.__file__})
        if not raised and seen < step:
            break
        if cond.acquire(timeout=0.01):
            cond.release()
        else:
            leaked += 1
    assert leaked > 0


# --- the Runner: a Ctrl-C anywhere in the main program's wait ends with everything stopped ----------
_RUNNER_FILES = {str(f) for f in pathlib.Path(_PUMA).rglob("*.py")} | {_condition.__file__}


def _runs(steps: int, env: puma.Environment) -> range:
    """The steps to interrupt at: every one in threads; a dozen spread over them for processes (slow starts).

    (The waits are the same code in both; processes add their handles' and links' steps.)
    """
    if isinstance(env, puma.ThreadEnvironment):
        return range(1, steps + 1)
    return range(1, steps + 1, max(1, steps // 12))


def _interrupted_main_program(
    env: puma.Environment, main: Callable[[puma.Runner, puma.Buffer[int]], None], collect: bool
) -> None:
    """``main`` (the part after the starts) interrupted at each of its check points in puma in turn.

    Each time the ``with`` block must end (the test's timeout stands for a
    hang), with the producer (and the collector, if ``collect``) stopped.
    """

    def attempt(step: int) -> tuple[bool, int]:
        buffer = env.buffer(int, 4, "numbers")
        runnables: list[puma.Runnable] = [Producer(buffer, 30)]
        if collect:
            runnables.append(Collector(buffer))
        runner = puma.Runner(env)
        armed = [False]

        def scenario() -> None:
            with runner:
                runner.start_all(runnables)
                armed[0] = True  # from here on: a Ctrl-C in the main program's wait
                main(runner, buffer)

        result = _interrupt_at(step, scenario, _RUNNER_FILES, armed)
        if not runner._closed:
            # The Ctrl-C landed on the first bytecode of ``__exit__`` or ``close``, where no
            # code can catch it; the program ends then, and puma's exit hook closes the Runner.
            with contextlib.suppress(Exception):
                runner.close()
        assert not any(runner.is_alive(r) for r in runnables)
        for thread in threading.enumerate():
            if thread.name == "puma-supervisor":
                thread.join(10)
                assert not thread.is_alive(), f"the supervisor did not end after a Ctrl-C at step {step}"
        return result

    _raised, steps = attempt(0)
    for step in _runs(steps, env):
        attempt(step)


# A KeyboardInterrupt raised in a ``__del__`` (a wake-up pipe collected mid-scenario) is printed and
# dropped by Python itself: that step is then a run without a Ctrl-C.
_DROPPED_IN_DEL = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@_DROPPED_IN_DEL
@pytest.mark.timeout(300)
def test_a_ctrl_c_anywhere_in_join_stops_every_runnable(
    env: puma.Environment, capsys: pytest.CaptureFixture[str]
) -> None:
    _interrupted_main_program(env, lambda runner, _buffer: runner.join(), collect=True)
    assert "puma: Ctrl-C; stopping every runnable." in capsys.readouterr().err


@_DROPPED_IN_DEL
@pytest.mark.timeout(300)
def test_a_ctrl_c_anywhere_while_the_main_program_reads_a_buffer_stops_every_runnable(
    env: puma.Environment,
) -> None:
    def read(runner: puma.Runner, buffer: puma.Buffer[int]) -> None:
        assert sum(buffer.subscribe()) == sum(range(30))
        runner.join()

    _interrupted_main_program(env, read, collect=False)
