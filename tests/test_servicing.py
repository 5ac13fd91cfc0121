"""Servicing runnables (issue #5): ordering per input, completion rules, error routing, command latency.

Every behaviour runs in a thread and in processes (fork, forkserver, spawn).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from _helpers import Collector, Producer, Squarer

import puma

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["thread", "forkserver"])
def thread_or_process(request: pytest.FixtureRequest) -> puma.Environment:
    """A thread, and a process (puma's default start method): for the tests that start many runnables."""
    kind: str = request.param
    return puma.ThreadEnvironment() if kind == "thread" else puma.ProcessEnvironment(kind)


def make_gate(env: puma.Environment) -> Any:
    """A semaphore at 0 the child blocks on until the test releases it."""
    if isinstance(env, puma.ProcessEnvironment):
        return env.context.Semaphore(0)
    return threading.Semaphore(0)


# --- runnables (module level, so spawn and forkserver children can import them) -------------------
class Double(puma.SingleBufferServicingRunnable[int]):
    """Publishes each value doubled, by returning it; optionally fails on one value."""

    def __init__(self, inp: puma.Buffer[int], out: puma.Buffer[int], name: str = "double", fail_on: int = -1) -> None:
        super().__init__(name, inp, outputs=[out])
        self._fail_on = fail_on

    def on_value(self, value: int) -> int:
        if value == self._fail_on:
            raise ValueError(f"cannot double {value}")
        return value * 2


class Relay(puma.SingleBufferServicingRunnable[int]):
    """Passes values on with publish(); reports how its input ended."""

    def __init__(self, inp: puma.Buffer[int], out: puma.Buffer[int], name: str) -> None:
        super().__init__(name, inp, outputs=[out])

    def on_start(self) -> None:
        self.send_status("ready", True)

    def on_value(self, value: int) -> None:
        self.publish(value)

    def on_complete(self, error: BaseException | None) -> None:
        self.send_status("ended", None if error is None else type(error).__name__)


class Sink(puma.SingleBufferServicingRunnable[int]):
    """Keeps the values; reports them and how the input ended."""

    def __init__(self, inp: puma.Buffer[int], name: str = "sink") -> None:
        super().__init__(name, inp)
        self._values: list[int] = []

    def on_start(self) -> None:
        self.send_status("ready", True)

    def on_value(self, value: int) -> None:
        self._values.append(value)

    def on_complete(self, error: BaseException | None) -> None:
        self.send_status("values", self._values)
        self.send_status("ended", None if error is None else (type(error).__name__, str(error)))


class Recorder:
    """A subscriber object: keeps what it receives, tagged, and how each input ended."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self.completions: list[str | None] = []

    def on_value(self, value: Any) -> None:
        self.values.append(value)

    def on_complete(self, error: BaseException | None) -> None:
        self.completions.append(None if error is None else type(error).__name__)


class Merge(puma.MultiBufferServicingRunnable):
    """Inputs a and b share one Recorder; input c goes to a bound method (a callable subscriber)."""

    def __init__(self, a: puma.Buffer[Any], b: puma.Buffer[Any], c: puma.Buffer[Any], end_when: str = "all") -> None:
        super().__init__("merge", end_when=end_when)  # type: ignore[arg-type]
        self.shared = Recorder()
        self.c_values: list[Any] = []
        self.add_input(a, self.shared)
        self.add_input(b, self.shared)
        self.add_input(c, self.on_c)

    def on_c(self, value: Any) -> None:
        self.c_values.append(value)

    def on_end(self) -> None:
        self.send_status("result", (self.shared.values, self.shared.completions, self.c_values))


class TwoInputs(puma.MultiBufferServicingRunnable):
    """Input a goes to the runnable itself (a subscriber object), input b to a Recorder."""

    def __init__(self, a: puma.Buffer[int], b: puma.Buffer[int], end_when: str = "all") -> None:
        super().__init__("two", end_when=end_when)  # type: ignore[arg-type]
        self.a_values: list[int] = []
        self.b = Recorder()
        self.add_input(a, self)
        self.add_input(b, self.b)

    def on_value(self, value: int) -> None:
        self.a_values.append(value)

    def on_complete(self, error: BaseException | None) -> None:
        self.send_status("a-complete", True)

    def on_end(self) -> None:
        self.send_status("result", (self.a_values, self.b.values, self.b.completions))


class Emitter(puma.CommandDrivenRunnable):
    """Publishes what it is told to, when it is told to; ends on done()."""

    def __init__(self, out: puma.Buffer[int], name: str = "emitter") -> None:
        super().__init__(name, outputs=[out])

    @puma.run_in_child_scope
    def emit(self, values: list[int]) -> None:
        for value in values:
            self.publish(value)

    @puma.run_in_child_scope
    def done(self) -> None:
        self.finish()


class Filler(puma.Runnable):
    """Publishes 0..count-1; reports "full" the first time the buffer is full."""

    def __init__(self, out: puma.Buffer[int], count: int) -> None:
        super().__init__("filler", outputs=[out])
        self._out = out
        self._count = count

    def execute(self) -> None:
        pub = self.publisher(self._out)
        reported = False
        for i in range(self._count):
            if not pub.try_publish(i):
                if not reported:
                    reported = True
                    self.send_status("full", i)
                pub.publish(i)


class Gated(puma.SingleBufferServicingRunnable[int]):
    """Blocks on the gate at value 0; counts values; the command reports the count."""

    def __init__(self, inp: puma.Buffer[int], gate: Any, batch_size: int) -> None:
        super().__init__("gated", inp, batch_size=batch_size)
        self._gate = gate
        self._count = 0

    def on_value(self, value: int) -> None:
        if value == 0:
            self.send_status("holding", True)
            self._gate.acquire()
        self._count += 1

    @puma.run_in_child_scope
    def processed(self) -> int:
        return self._count


class Counter(puma.SingleBufferServicingRunnable[int]):
    """Counts values, checks they come in order, ticks; commands read the count."""

    def __init__(self, inp: puma.Buffer[int]) -> None:
        super().__init__("counter", inp, tick_interval=0.01, batch_size=16)
        self._count = 0
        self._out_of_order = 0
        self._last = -1
        self._ticks = 0

    def on_value(self, value: int) -> None:
        if self._count == 0:
            self.send_status("flowing", True)
        if value != self._last + 1:
            self._out_of_order += 1
        self._last = value
        self._count += 1

    def on_tick(self, timestamp: float) -> None:
        self._ticks += 1
        self.send_status("ticks", self._ticks)

    @puma.run_in_child_scope
    def count(self) -> tuple[int, int]:
        return self._count, self._out_of_order


class Counting(puma.Runnable):
    """Publishes 0, 1, 2, ... until stopped."""

    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("counting", outputs=[out])
        self._out = out

    def execute(self) -> None:
        pub = self.publisher(self._out)
        i = 0
        while True:
            pub.publish_many(range(i, i + 50))
            i += 50


# --- single input ----------------------------------------------------------------------------------
def test_single_publishes_what_on_value_returns_in_order(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        raw, doubled = env.buffer(int, 8, "raw"), env.buffer(int, 8, "doubled")
        runner.start(Producer(raw, 300))
        runner.start(Double(raw, doubled))
        sink = runner.start(Sink(doubled))
        runner.join()
    assert sink.status("values") == [2 * i for i in range(300)]
    assert sink.status("ended") is None


# --- several inputs --------------------------------------------------------------------------------
def test_multi_keeps_each_inputs_order_and_routes_to_its_subscriber(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        a, b, c = (env.buffer(object, 4, name) for name in ("a", "b", "c"))
        runner.start(TaggedProducer(a, "a", 200))
        runner.start(TaggedProducer(b, "b", 150))
        runner.start(TaggedProducer(c, "c", 100))
        merge = runner.start(Merge(a, b, c))
        runner.join()
    shared, completions, c_values = merge.status("result")
    assert [i for tag, i in shared if tag == "a"] == list(range(200))
    assert [i for tag, i in shared if tag == "b"] == list(range(150))
    assert c_values == [("c", i) for i in range(100)]
    assert completions == [None, None]  # the shared subscriber heard both of its inputs end


class TaggedProducer(puma.Runnable):
    """Publishes (tag, i) for i in 0..count-1."""

    def __init__(self, out: puma.Buffer[Any], tag: str, count: int) -> None:
        super().__init__(f"producer-{tag}", outputs=[out])
        self._out = out
        self._tag = tag
        self._count = count

    def execute(self) -> None:
        pub = self.publisher(self._out)
        for i in range(self._count):
            pub.publish((self._tag, i))


def test_multi_ends_when_all_inputs_have_completed_by_default(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        a, b = env.buffer(int, 4, "a"), env.buffer(int, 4, "b")
        runner.start(Producer(a, 3, name="producer-a"))
        emitter = runner.start(Emitter(b))
        two = runner.start(TwoInputs(a, b))
        two.wait_status("a-complete", timeout=30)
        emitter.emit([10, 11, 12])  # input a has ended, but b is still read
        emitter.done()
        runner.join()
    assert two.status("result") == ([0, 1, 2], [10, 11, 12], [None])


def test_multi_can_end_when_any_input_completes(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        a, b = env.buffer(int, 4, "a"), env.buffer(int, 4, "b")
        runner.start(Producer(a, 3, name="producer-a"))
        runner.start(Emitter(b))  # publishes nothing, never completes
        two = runner.start(TwoInputs(a, b, end_when="any"))
        assert two.wait_status("result", timeout=30) == ([0, 1, 2], [], [])  # b never completed
        runner.stop()
        runner.join()


def test_subscriber_must_be_usable() -> None:
    env = puma.ThreadEnvironment()
    with pytest.raises(TypeError, match="on_value"):
        puma.MultiBufferServicingRunnable("m", {env.buffer(int, 1, "x"): 42})  # type: ignore[dict-item]
    buffer = env.buffer(int, 1, "x")
    with pytest.raises(ValueError, match="already an input"):
        puma.MultiBufferServicingRunnable("m", [(buffer, print), (buffer, print)])
    with pytest.raises(ValueError, match="end_when"):
        puma.MultiBufferServicingRunnable("m", end_when="some")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="batch_size"):
        puma.MultiBufferServicingRunnable("m", batch_size=0)


def test_a_multi_with_no_inputs_fails_clearly() -> None:
    with pytest.raises(puma.PumaError, match="no inputs"):
        with puma.Runner() as runner:
            runner.start(puma.MultiBufferServicingRunnable("empty"))
            runner.join()


# --- errors ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("origin", ["upstream", "servicing"])
def test_an_error_travels_down_a_chain_and_reaches_the_parent_once(
    thread_or_process: puma.Environment, origin: str
) -> None:
    """Producer -> first -> relay-1 -> relay-2 -> sink; the first stage fails on value 5."""
    env = thread_or_process
    with pytest.raises(ValueError) as info:
        with puma.Runner(env) as runner:
            raw, one, two, three = (env.buffer(int, 4, name) for name in ("raw", "one", "two", "three"))
            # Downstream first, subscribed before anything fails: the Runner knows them as downstream.
            sink = runner.start(Sink(three))
            relay2 = runner.start(Relay(two, three, "relay-2"))
            relay1 = runner.start(Relay(one, two, "relay-1"))
            for stage in (sink, relay2, relay1):
                stage.wait_status("ready", timeout=30)
            if origin == "upstream":  # a plain Runnable fails; the error arrives on relay-1's input
                runner.start(Squarer(raw, one, fail_on=5))
                expected = [i * i for i in range(5)]
            else:  # the user code of a servicing runnable fails
                runner.start(Double(raw, one, name="first", fail_on=5))
                expected = [2 * i for i in range(5)]
            runner.start(Producer(raw, 50))
            runner.join()
    assert "cannot" in str(info.value) and "5" in str(info.value)
    failed = "squarer" if origin == "upstream" else "first"
    notes = getattr(info.value, "__notes__", [])
    assert any(f"raised in runnable {failed!r}" in note for note in notes), notes
    assert relay1.status("ended") == "ValueError"
    assert relay2.status("ended") == "ValueError"
    assert sink.status("ended")[0] == "ValueError"
    assert sink.status("values") == expected


def test_an_error_in_a_subscriber_ends_the_multi_and_is_passed_on(thread_or_process: puma.Environment) -> None:
    env = thread_or_process
    with pytest.raises(ZeroDivisionError):
        with puma.Runner(env) as runner:
            a, b, out = env.buffer(int, 4, "a"), env.buffer(int, 4, "b"), env.buffer(int, 4, "out")
            sink = runner.start(Sink(out))
            sink.wait_status("ready", timeout=30)
            # Both producers run before the failure can happen (a runnable started after it would
            # not be stopped, and would block on a buffer nobody reads).
            runner.start(Producer(a, 5, name="producer-a"))
            runner.start(Producer(b, 5, name="producer-b"))
            runner.start(Inverter(a, b, out))
            runner.join()
    assert sink.status("ended")[0] == "ZeroDivisionError"


class Inverter(puma.MultiBufferServicingRunnable):
    """Publishes 100 // value for both inputs: fails on 0."""

    def __init__(self, a: puma.Buffer[int], b: puma.Buffer[int], out: puma.Buffer[int]) -> None:
        super().__init__("inverter", [(a, self.invert), (b, self.invert)], outputs=[out])

    def invert(self, value: int) -> int:
        return 100 // (value - 2)


# --- commands against heavy input traffic ----------------------------------------------------------
def test_a_command_does_not_wait_behind_an_input_backlog(env: puma.Environment) -> None:
    """With a full backlog queued, a command runs after at most batch_size values, not the backlog."""
    batch = 8
    backlog = 400
    gate = make_gate(env)
    with puma.Runner(env) as runner:
        inp = env.buffer(int, backlog, "backlog")
        filler = runner.start(Filler(inp, 3 * backlog))
        gated = runner.start(Gated(inp, gate, batch_size=batch))
        filler.wait_status("full", timeout=30)  # the backlog is queued (and the filler is blocked)
        gated.wait_status("holding", timeout=30)  # the consumer is inside on_value(0)
        future = gated.processed.submit()  # the command is queued now, behind the whole backlog
        gate.release()
        processed = future.result(timeout=30)
        assert 1 <= processed <= batch, f"the command ran after {processed} values (batch {batch})"
        runner.join()


def test_commands_and_ticks_interleave_with_heavy_traffic(thread_or_process: puma.Environment) -> None:
    env = thread_or_process
    with puma.Runner(env) as runner:
        inp = env.buffer(int, 256, "traffic")
        runner.start(Counting(inp))
        counter = runner.start(Counter(inp))
        counter.wait_status("flowing", timeout=30)
        seen = [counter.count() for _ in range(20)]
        ticks = counter.wait_status("ticks", timeout=30)
        counter.wait_status("ticks", lambda n: n >= ticks + 3, timeout=30)  # ticks keep coming under traffic
        seen.append(counter.count())
        runner.stop()
        runner.join()
    counts = [count for count, _ in seen]
    assert counts == sorted(counts) and counts[-1] > counts[0] > 0
    assert all(out_of_order == 0 for _, out_of_order in seen)


def test_finish_ends_a_command_driven_runnable_normally(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        out = env.buffer(int, 8, "out")
        emitter = runner.start(Emitter(out))
        collector = runner.start(Collector(out))
        emitter.emit([1, 2, 3])
        emitter.done()
        runner.join()
    assert collector.status("values") == [1, 2, 3]
