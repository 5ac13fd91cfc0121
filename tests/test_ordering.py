"""Commands run one at a time, in the order sent, the same in threads and processes.

A runnable blocked inside a command, a value or ``on_start`` still sees a
stop, but starts no other command until the current one returns.  And what a
child raises never ends the main program by itself: ``sys.exit(3)`` or a
``KeyboardInterrupt`` in a child comes back as a :class:`puma.PumaError`.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

import puma


class Source(puma.CommandDrivenRunnable):
    """Publishes what each command gives it; a publish may have to wait for room."""

    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("source", outputs=[out])
        self._depth = 0
        self._deepest = 0

    @puma.run_in_child_scope
    def put(self, i: int) -> int:
        self._depth += 1
        self._deepest = max(self._deepest, self._depth)
        try:
            self.publish(i)  # may wait for room: no other command may run inside this one
        finally:
            self._depth -= 1
        return i

    @puma.run_in_child_scope
    def deepest(self) -> int:
        return self._deepest


class Collect(puma.Runnable):
    """Collects its input; with a gate, starts reading only once the gate has a value."""

    def __init__(self, inp: puma.Buffer[int], gate: puma.Buffer[int] | None = None) -> None:
        super().__init__("collect")
        self._in = inp
        self._gate = gate

    def execute(self) -> None:
        values = self._in.subscribe()
        if self._gate is not None:
            self._gate.subscribe().receive(timeout=60)
        self.send_status("values", list(values))


def test_commands_that_wait_for_room_run_one_at_a_time_in_order(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        out = env.buffer(int, 10, "out")
        collect = runner.start(Collect(out))
        source = runner.start_blocking(Source(out), timeout=60)
        futures = [source.put.submit(i) for i in range(200)]
        assert [f.result(timeout=60) for f in futures] == list(range(200))
        assert source.deepest() == 1  # never nested
        runner.stop(source)
        assert collect.wait_status("values", timeout=60) == list(range(200))


class Doubler(puma.SingleBufferServicingRunnable[int]):
    """Publishes every value twice: a value's handler may wait for room."""

    def __init__(self, inp: puma.Buffer[int], out: puma.Buffer[int]) -> None:
        super().__init__("doubler", inp, outputs=[out])
        self._in_value = False
        self.inside: list[bool] = []

    def on_value(self, value: int) -> None:
        self._in_value = True
        try:
            self.publish(value)
            self.publish(value)
        finally:
            self._in_value = False

    @puma.run_in_child_scope
    def probe(self) -> bool:
        self.inside.append(self._in_value)
        return self._in_value


class Counter(puma.Runnable):
    def __init__(self, out: puma.Buffer[int], count: int) -> None:
        super().__init__("counter", outputs=[out])
        self._out, self._count = out, count

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for i in range(self._count):
                pub.publish(i)


def test_no_command_runs_inside_a_value_handler_that_waits_for_room(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        numbers, doubled, gate = (
            env.buffer(int, 4, "numbers"),
            env.buffer(int, 2, "doubled"),
            env.buffer(int, 1, "gate"),
        )
        opener = runner.start_blocking(Gate(gate), timeout=60)
        collect = runner.start(Collect(doubled, gate))  # reads nothing until the gate opens
        doubler = runner.start_blocking(Doubler(numbers, doubled), timeout=60)
        runner.start(Counter(numbers, 50))
        probes = [doubler.probe.submit() for _ in range(20)]  # while on_value waits for room
        opener.open()
        assert [p.result(timeout=60) for p in probes] == [False] * 20
        expected = [v for i in range(50) for v in (i, i)]
        assert collect.wait_status("values", timeout=60) == expected
        runner.stop(opener)
        runner.join(timeout=60)


class WaitsInOnStart(puma.SingleBufferServicingRunnable[int]):
    """on_start waits (in puma) for a value of ``gate``: commands that arrive meanwhile wait for it."""

    def __init__(self, inp: puma.Buffer[int], gate: puma.Buffer[int]) -> None:
        super().__init__("waits-in-on-start", inp)
        self._gate = gate
        self._started = False

    def on_start(self) -> None:
        self._gate.subscribe().receive(timeout=60)
        self._started = True

    def on_value(self, value: int) -> None:
        pass

    @puma.run_in_child_scope
    def started(self) -> bool:
        return self._started


class Gate(puma.Runnable):
    """Publishes one value into ``gate`` when told to."""

    def __init__(self, gate: puma.Buffer[int]) -> None:
        super().__init__("gate", outputs=[gate])
        self._gate = gate

    @puma.run_in_child_scope
    def open(self) -> None:
        self.publisher(self._gate).publish(1)

    def execute(self) -> None:
        self.wait_for_stop()


def test_on_start_completes_before_any_command_runs(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        inp, gate = env.buffer(int, 2, "inp"), env.buffer(int, 2, "gate")
        opener = runner.start_blocking(Gate(gate), timeout=60)
        waiter = runner.start_blocking(WaitsInOnStart(inp, gate), timeout=60)
        answer = waiter.started.submit()  # in its command pipe before the gate opens
        opener.open()
        assert answer.result(timeout=60) is True
        runner.stop()


class Exits(puma.Runnable):
    def __init__(self, how: str) -> None:
        super().__init__(f"exits-{how}")
        self._how = how

    def execute(self) -> None:
        if self._how == "sys.exit":
            sys.exit(3)
        raise KeyboardInterrupt

    @puma.run_in_child_scope
    def leave(self) -> None:
        sys.exit(2)


@pytest.mark.parametrize("how", ["sys.exit", "KeyboardInterrupt"])
def test_a_child_exiting_or_interrupted_is_a_visible_error_not_the_end_of_the_main_program(
    env: puma.Environment, how: str
) -> None:
    with pytest.raises(puma.PumaError, match=f"runnable 'exits-{how}' raised") as info:
        with puma.Runner(env) as runner:
            runner.start(Exits(how))
            runner.join(timeout=60)
    cause: Any = info.value.__cause__
    assert isinstance(cause, SystemExit if how == "sys.exit" else KeyboardInterrupt)
    if how == "sys.exit":
        assert cause.code == 3


class Leaves(puma.Runnable):
    @puma.run_in_child_scope
    def leave(self) -> None:
        sys.exit(2)

    def execute(self) -> None:
        self.wait_for_stop()


def test_a_command_calling_sys_exit_is_an_error_for_its_caller_and_the_runnable_goes_on(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        leaves = runner.start_blocking(Leaves("leaves"), timeout=60)
        with pytest.raises(puma.PumaError, match=r"command 'leave' of runnable 'leaves' raised sys.exit\(2\)"):
            leaves.leave()
        assert runner.is_alive(leaves)
        runner.stop()
