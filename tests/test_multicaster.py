"""The multicaster (issue #5): fan-out in order, completion with the error, back-pressure from a slow output."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import puma

pytestmark = pytest.mark.timeout(60)


def make_gate(env: puma.Environment) -> Any:
    """A semaphore at 0 the child blocks on until the test releases it."""
    if isinstance(env, puma.ProcessEnvironment):
        return env.context.Semaphore(0)
    return threading.Semaphore(0)


# --- runnables (module level, so spawn and forkserver children can import them) -------------------
class Numbers(puma.Runnable):
    """Publishes 0..count-1 (then fails, if asked); reports each time it finds its output full."""

    def __init__(self, out: puma.Buffer[int], count: int, fail: bool = False) -> None:
        super().__init__("numbers", outputs=[out])
        self._out = out
        self._count = count
        self._fail = fail

    def execute(self) -> None:
        pub = self.publisher(self._out)
        for i in range(self._count):
            if not pub.try_publish(i):
                self.send_status("blocked", i)  # i values have left so far
                pub.publish(i)
        self.send_status("done", True)
        if self._fail:
            raise KeyError("the source broke")


class Sink(puma.SingleBufferServicingRunnable[Any]):
    """Keeps the values; optionally holds value 0 until a gate opens; reports how it ended."""

    def __init__(self, inp: puma.Buffer[Any], name: str, gate: Any = None) -> None:
        super().__init__(name, inp)
        self._gate = gate
        self._values: list[Any] = []

    def on_start(self) -> None:
        self.send_status("ready", True)

    def on_value(self, value: Any) -> None:
        if self._gate is not None and not self._values:
            self._gate.acquire()
        self._values.append(value)

    def on_complete(self, error: BaseException | None) -> None:
        self.send_status("result", (self._values, None if error is None else type(error).__name__))


# --- tests -------------------------------------------------------------------------------------------
def test_every_output_gets_every_value_in_order(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        source = env.buffer(int, 8, "source")
        outs = [env.buffer(int, 5, f"out-{i}") for i in range(3)]
        sinks = [runner.start(Sink(out, f"sink-{i}")) for i, out in enumerate(outs)]
        runner.start(puma.Multicaster(source, outs))
        runner.start(Numbers(source, 300))
        runner.join()
    for sink in sinks:
        assert sink.status("result") == (list(range(300)), None)


@pytest.mark.parametrize("kind", ["thread", "forkserver"])
def test_an_input_error_completes_every_output_with_it(kind: str) -> None:
    env = puma.ThreadEnvironment() if kind == "thread" else puma.ProcessEnvironment(kind)
    with pytest.raises(KeyError, match="the source broke"):
        with puma.Runner(env) as runner:
            source = env.buffer(int, 8, "source")
            outs = [env.buffer(int, 5, f"out-{i}") for i in range(2)]
            sinks = [runner.start(Sink(out, f"sink-{i}")) for i, out in enumerate(outs)]
            for sink in sinks:
                sink.wait_status("ready", timeout=30)  # subscribed: the Runner knows them as downstream
            runner.start(puma.Multicaster(source, outs, name="fan-out"))
            runner.start(Numbers(source, 20, fail=True))
            runner.join()
    for sink in sinks:
        assert sink.status("result") == (list(range(20)), "KeyError")


def test_a_slow_output_holds_back_the_input(env: puma.Environment) -> None:
    """While one consumer does not read, the source can run ahead by the buffers' room only."""
    c_in, c_fast, c_slow, batch, count = 4, 4, 3, 4, 200
    gate = make_gate(env)
    with puma.Runner(env) as runner:
        source = env.buffer(int, c_in, "source")
        fast, slow = env.buffer(int, c_fast, "fast"), env.buffer(int, c_slow, "slow")
        fast_sink = runner.start(Sink(fast, "fast-sink"))
        slow_sink = runner.start(Sink(slow, "slow-sink", gate))
        runner.start(puma.Multicaster(source, [fast, slow], "fan-out", batch_size=batch))
        numbers = runner.start(Numbers(source, count))
        # The source fills the input, the multicaster's hands and the slow buffer, then blocks.
        numbers.wait_status("blocked", lambda i: i >= c_in + c_slow, timeout=30)
        bound = c_in + batch + c_slow + 1  # + 1: the value the slow consumer holds
        assert numbers.status("done") is None
        assert numbers.status("blocked") <= bound
        gate.release()
        runner.join()
    assert fast_sink.status("result") == (list(range(count)), None)
    assert slow_sink.status("result") == (list(range(count)), None)


def test_threads_share_values_unless_asked_to_copy() -> None:
    env = puma.ThreadEnvironment()
    for copy_values in (False, True):
        with puma.Runner(env) as runner:
            source = env.buffer(list, 4, "source")
            outs = [env.buffer(list, 4, f"out-{i}") for i in range(2)]
            sinks = [runner.start(Sink(out, f"sink-{i}")) for i, out in enumerate(outs)]
            runner.start(puma.Multicaster(source, outs, copy_values=copy_values))
            runner.start(ListSource(source))
            runner.join()
        first, second = (sink.status("result")[0] for sink in sinks)
        assert first == second == [[0], [1], [2]]
        assert all((a is b) is not copy_values for a, b in zip(first, second, strict=True))


class ListSource(puma.Runnable):
    """Publishes [0], [1], [2]."""

    def __init__(self, out: puma.Buffer[list[int]]) -> None:
        super().__init__("lists", outputs=[out])
        self._out = out

    def execute(self) -> None:
        pub = self.publisher(self._out)
        for i in range(3):
            pub.publish([i])


def test_a_multicaster_needs_distinct_outputs() -> None:
    env = puma.ThreadEnvironment()
    source, out = env.buffer(int, 2, "source"), env.buffer(int, 2, "out")
    with pytest.raises(ValueError, match="at least one"):
        puma.Multicaster(source, [])
    with pytest.raises(ValueError, match="twice"):
        puma.Multicaster(source, [out, out])
    with pytest.raises(ValueError, match="input"):
        puma.Multicaster(source, [source])


def test_a_multicaster_and_a_runner_made_for_an_environment(env: puma.Environment) -> None:
    source, out = env.buffer(int, 2, "source"), env.buffer(int, 2, "out")
    multicaster = puma.Multicaster(source, [out], name="copy")
    assert isinstance(multicaster, puma.Multicaster) and multicaster.name == "copy"
    assert multicaster.input is source and multicaster.outputs == (out,)
    runner = puma.Runner(env, stop_timeout=5.0)
    assert isinstance(runner, puma.Runner) and runner.environment is env
    runner.close()
