"""A Ctrl-C while the main program writes a value into a process buffer never leaves half of it.

A value of more than ``PIPE_BUF`` bytes may take several writes into the pipe
(the pipe is full: the write waits for the reader).  A ``KeyboardInterrupt``
between two of them used to leave half a frame in the pipe, unmarked: the
reader then waited for the rest for ever, or read the next frame as its tail.
Now a first Ctrl-C takes effect once the value is whole, and a second one ends
the write at once and marks the stream broken, so the reader gets a clear
error.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import puma
from puma._core.signals import CtrlCDeferred

SIZE = 60_000  # one value fills most of a 64 KiB pipe: the second one waits for the reader


class LateReader(puma.Runnable):
    """Reads nothing until told (a value on ``go``), then reports what it read (or the error)."""

    def __init__(self, data: puma.Buffer[bytes], go: puma.Buffer[int]) -> None:
        super().__init__("late-reader")
        self._data, self._go = data, go

    def execute(self) -> None:
        values = self._data.subscribe()
        self._go.subscribe().receive()
        got: list[Any] = []
        try:
            for value in values:
                got.append((value[0], len(value), value == bytes([value[0]]) * SIZE))
        except puma.BufferClosedError as exc:
            got.append(("error", str(exc)))
        self.send_status("got", got)
        self.wait_for_stop()


def _later(delay: float, action: Any, *args: Any) -> threading.Thread:
    """Run ``action(*args)`` in a thread after ``delay`` s (a wait on an event nobody sets)."""

    def run() -> None:
        threading.Event().wait(delay)
        action(*args)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _ctrl_c_to_main() -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)


@contextlib.contextmanager
def _one_value_in_the_pipe(
    env: puma.ProcessEnvironment,
) -> Iterator[tuple[puma.Publisher[bytes], puma.Buffer[int], LateReader]]:
    """A Runner with a late reader, and a first value written into its pipe: the next one will wait."""
    data = env.buffer(bytes, 4, "data")
    go = env.buffer(int, 1, "go")
    reader = LateReader(data, go)
    with puma.Runner(env) as runner:
        runner.start_blocking(reader)
        pub = data.publisher()
        pub.publish(bytes([1]) * SIZE)  # fits in the pipe
        yield pub, go, reader


@pytest.mark.timeout(60)
def test_a_ctrl_c_in_the_middle_of_a_write_takes_effect_once_the_value_is_whole(
    process_env: puma.ProcessEnvironment,
) -> None:
    with _one_value_in_the_pipe(process_env) as (pub, go, reader):
        go_pub = go.publisher()

        def press_then_let_it_read() -> None:
            _ctrl_c_to_main()  # the main thread waits in the second write by now (or is about to)
            threading.Event().wait(0.2)
            go_pub.publish(1)

        helper = _later(0.3, press_then_let_it_read)
        with pytest.raises(KeyboardInterrupt):
            pub.publish(bytes([2]) * SIZE)  # waits, part-written, until the reader reads
        helper.join(10)
        pub.complete()
        got = reader.wait_status("got", timeout=30)
    # The second value is there whole, or (the Ctrl-C came before its write began) not at all.
    assert got in ([(1, SIZE, True), (2, SIZE, True)], [(1, SIZE, True)])


@pytest.mark.timeout(60)
def test_a_second_ctrl_c_ends_a_stuck_write_at_once_and_breaks_the_stream(
    process_env: puma.ProcessEnvironment,
) -> None:
    with _one_value_in_the_pipe(process_env) as (pub, go, reader):
        presses = _later(0.3, lambda: [_ctrl_c_to_main(), threading.Event().wait(0.2), _ctrl_c_to_main()])
        with pytest.raises(KeyboardInterrupt):
            pub.publish(bytes([2]) * SIZE)  # nobody reads: only the second Ctrl-C ends it
        presses.join(10)
        go.publisher().publish(1)
        got = reader.wait_status("got", timeout=30)
        with pytest.raises(puma.BufferClosedError, match="broken"):
            pub.publish(bytes([3]))
    assert got[0] == (1, SIZE, True)
    assert got[-1][0] == "error" and "broken" in got[-1][1]


# --- the deferral itself, on the main thread ---------------------------------------------------
@pytest.mark.timeout(10)
def test_a_first_ctrl_c_in_a_deferred_block_is_raised_as_the_block_ends() -> None:
    done: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with CtrlCDeferred():
            signal.raise_signal(signal.SIGINT)  # the handler runs here, at once, and only notes it
            done.append("the rest of the block ran")
    assert done == ["the rest of the block ran"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.timeout(10)
def test_a_second_ctrl_c_in_a_deferred_block_is_raised_at_once() -> None:
    done: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        with CtrlCDeferred():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            done.append("not reached")
    assert done == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.timeout(10)
def test_the_programs_own_handler_is_called_when_the_deferred_block_ends() -> None:
    calls: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(signum))
    try:
        with CtrlCDeferred():
            signal.raise_signal(signal.SIGINT)
            assert calls == []
        assert calls == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.timeout(10)
def test_a_deferred_ctrl_c_still_comes_when_the_block_fails() -> None:
    with pytest.raises(KeyboardInterrupt) as caught:
        with CtrlCDeferred():
            signal.raise_signal(signal.SIGINT)
            raise BrokenPipeError("the reader went away")
    assert isinstance(caught.value.__context__, BrokenPipeError)
