"""Buffers shared: several subscribers as a work queue, holds, the end of a shared stream, fan-in, release.

Every test runs in threads and under fork, forkserver and spawn (``env``),
except those about processes dying or about operating-system resources.
No test waits by sleeping, and none depends on which of two racing readers
gets a value: they check multisets, per-publisher order and that every
reader ends.
"""

from __future__ import annotations

import gc
import os
import re
import select
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from _helpers import Collector, DiesHoldingBufferLock

import puma
from puma._buffers.shared import WAITING

pytestmark = pytest.mark.timeout(90)


# --- runnables (module level, so spawn and forkserver children import them) -------------------
class Numbers(puma.Runnable):
    """Publishes ``first .. first+count-1`` (in batches of ``batch`` if set), then reports "done"."""

    def __init__(
        self,
        out: puma.Buffer[int],
        count: int,
        name: str = "numbers",
        first: int = 0,
        batch: int = 0,
        fail: bool = False,
    ) -> None:
        super().__init__(name, outputs=[out])
        self._out = out
        self._count = count
        self._first = first
        self._batch = batch
        self._fail = fail

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            values = range(self._first, self._first + self._count)
            if self._batch:
                for start in range(0, self._count, self._batch):
                    pub.publish_many(values[start : start + self._batch])
            else:
                for value in values:
                    pub.publish(value)
            if self._fail:
                raise ValueError(f"{self.name} failed after {self._count} values")
        self.send_status("done", True)


class ReportsStatistics(puma.Runnable):
    """Reports the statistics of a buffer it holds (not as an input or output), as read in its own process."""

    def __init__(self, buffer: puma.Buffer[Any]) -> None:
        super().__init__("statistics")
        self.buffer = buffer

    def execute(self) -> None:
        self.send_status("statistics", self.buffer.statistics())


class HoldsOpen(puma.Runnable):
    """Holds a buffer's stream open from inside a runnable until told to let go."""

    def __init__(self, buffer: puma.Buffer[Any]) -> None:
        super().__init__("holds-open")
        self.buffer = buffer

    @puma.run_in_child_scope
    def let_go(self) -> bool:
        self._hold.release()
        return True

    def execute(self) -> None:
        with self.buffer.hold_open() as hold:
            self._hold = hold
            self.send_status("held", True)
            self.wait_for_stop()


def _all_values(sinks: list[Collector]) -> list[Any]:
    return sorted(v for sink in sinks for v in sink.status("values"))


# --- work sharing ------------------------------------------------------------------------------
@pytest.mark.parametrize("readers", [2, 4])
@pytest.mark.parametrize("batch", [0, 25], ids=["single", "batched"])
def test_runnables_sharing_one_input_receive_each_value_once(env: puma.Environment, readers: int, batch: int) -> None:
    with puma.Runner(env) as runner:
        work = env.buffer(int, 16, "work")
        sinks = [runner.start(Collector(work, name=f"reader-{k}")) for k in range(readers)]
        for sink in sinks:
            sink.wait_status("subscribed", timeout=60)
        runner.start(Numbers(work, 600, batch=batch))
        runner.join()  # every reader ended
    assert _all_values(sinks) == list(range(600))
    assert work.statistics().subscribers == readers


def test_the_main_program_and_a_runnable_share_one_input(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        work = env.buffer(int, 8, "work")
        mine = work.subscribe()
        other = runner.start(Collector(work, name="other-reader"))
        other.wait_status("subscribed", timeout=60)
        runner.start(Numbers(work, 300))
        received = list(mine)  # ends when the stream does
        runner.join()
        assert mine.ended
    assert sorted(received + other.status("values")) == list(range(300))
    assert work.supervision.readers() == frozenset({0, other._puma_record.token})  # type: ignore[union-attr]


def test_the_main_program_publishes_into_a_runnable(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        feed = env.buffer(int, 4, "feed")
        sink = runner.start(Collector(feed))
        with feed.publisher() as pub:  # the stream ends when the block does
            for i in range(100):
                pub.publish(i)
            pub.publish_many(range(100, 200))
        runner.join()
    assert sink.status("values") == list(range(200))


def test_an_error_in_the_main_programs_publishing_block_ends_the_stream_with_it(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        feed = env.buffer(int, 4, "feed")
        sink = runner.start(Collector(feed, reraise=False))
        with pytest.raises(ValueError, match="the feed failed"), feed.publisher() as pub:
            pub.publish(1)
            raise ValueError("the feed failed")
        runner.join()
    assert sink.status("error")[:2] == ("ValueError", "the feed failed")
    assert sink.status("values") == [1]


@pytest.mark.parametrize("reader", ["same", "thread"])
def test_a_stream_that_ended_with_an_error_before_its_readers_stop_is_told_not_masked(
    env: puma.Environment, reader: str
) -> None:
    """The end came first: the stop that follows does not hide why the reader's stream ended."""
    with puma.Runner(env) as runner:
        feed = env.buffer(int, 4, "feed")
        sink = runner.start(Collector(feed, reraise=False), env if reader == "same" else puma.ThreadEnvironment())
        sink.wait_status("subscribed", timeout=60)
        with pytest.raises(ValueError, match="the feed failed"), feed.publisher():
            raise ValueError("the feed failed")
        runner.stop()  # right after the end: it reaches the reader with the end, or after it
    assert sink.status("error")[:2] == ("ValueError", "the feed failed")
    assert sink.status("values") == []


def test_a_frame_whose_publish_finds_no_room_stays_its_holders(env: puma.Environment) -> None:
    """A value is pickled (a frame in it handed over) only once its place is taken: a timeout sends nothing."""
    import numpy as np

    pool = env.frame_pool(16, np.uint8, count=2, name="held")
    buffer = env.buffer(object, 1, "full")
    try:
        with buffer.publisher() as pub:
            first, second = pool.borrow(timeout=10), pool.borrow(timeout=10)
            pub.publish(first)  # the only place
            with pytest.raises(puma.BufferFull):
                pub.publish(second, timeout=0.05)
            second.array[:] = 7  # still ours: writable, not handed over
            with pytest.raises(puma.BufferFull):
                pub.publish((second, "meta"), timeout=0.05)  # nor inside a container
            second.array[0] = 8
            second.release()
        with next(iter(buffer.subscribe())) as got:
            assert got.array.shape == (16,)
        assert pool.statistics().free == 2
    finally:
        buffer.supervision.release()
        pool.close()


def test_a_publish_whose_pickling_fails_gives_its_place_back_to_a_waiting_publisher() -> None:
    """The place taken for a value that will not pickle goes back as a reader's would: a sleeper wakes for it."""
    import numpy as np

    from puma._buffers.shared import WAITING

    env = puma.ProcessEnvironment("fork")
    pool = env.frame_pool(4, np.uint8, count=1, name="open")  # a pool open here: values pickle under the lock
    buffer = env.buffer(object, 1, "one-place")
    in_reduce, fail, asleep = threading.Event(), threading.Event(), threading.Event()

    class Unpicklable:
        def __reduce__(self) -> Any:
            in_reduce.set()  # it holds the only place now
            fail.wait(30)
            raise RuntimeError("cannot pickle this")

    guard = buffer._meta_guard  # type: ignore[attr-defined]

    class Watching:  # tells when the second publisher has counted itself as waiting
        def __enter__(self) -> None:
            guard.__enter__()

        def __exit__(self, *exc: object) -> None:
            if buffer._shared[WAITING]:  # type: ignore[attr-defined]
                asleep.set()
            guard.__exit__(*exc)

    buffer._meta_guard = Watching()  # type: ignore[attr-defined]
    outcomes: list[str] = []
    try:
        with buffer.publisher() as first, buffer.publisher() as second:

            def failing() -> None:
                try:
                    first.publish(Unpicklable())
                except RuntimeError:
                    outcomes.append("refused")

            a = threading.Thread(target=failing)
            b = threading.Thread(target=lambda: (second.publish(1, timeout=60), outcomes.append("published")))
            a.start()
            assert in_reduce.wait(30)
            b.start()
            assert asleep.wait(30)  # it found no room and sleeps
            fail.set()
            a.join(30)
            b.join(30)  # with the place lost it would sleep until its timeout
            assert not b.is_alive()
        assert sorted(outcomes) == ["published", "refused"]
        assert list(buffer.subscribe()) == [1]
    finally:
        fail.set()
        buffer.supervision.release()
        pool.close()


def test_a_full_buffer_is_told_at_once_while_another_publisher_holds_the_write_lock() -> None:
    """``try_publish`` never waits, and a timed ``publish`` times out, even behind a long write."""
    import numpy as np

    env = puma.ProcessEnvironment("fork")
    pool = env.frame_pool(4, np.uint8, count=1, name="open")  # a pool open here: values pickle under the lock
    buffer = env.buffer(object, 1, "one-place")
    in_reduce, go = threading.Event(), threading.Event()

    class Slow:
        def __reduce__(self) -> Any:
            in_reduce.set()  # it holds the only place, and the write lock, until told to go on
            go.wait(30)
            return (int, (5,))

    outcomes: list[object] = []
    try:
        with buffer.publisher() as first, buffer.publisher() as second:
            a = threading.Thread(target=lambda: first.publish(Slow()))
            a.start()
            assert in_reduce.wait(30)

            def full() -> None:
                outcomes.append(second.try_publish(1))
                try:
                    second.publish(2, timeout=0.05)
                except puma.BufferFull:
                    outcomes.append("full")

            b = threading.Thread(target=full)
            b.start()
            b.join(30)  # waiting for the lock, it would still be blocked
            assert not b.is_alive()
            assert outcomes == [False, "full"]
            go.set()
            a.join(30)
        assert list(buffer.subscribe()) == [5]
    finally:
        go.set()
        buffer.supervision.release()
        pool.close()


class _PublishesOutsideItsOutputs(puma.Runnable):
    def __init__(self, buffer: puma.Buffer[int]) -> None:
        super().__init__("misuses")
        self._buffer = buffer

    def execute(self) -> None:
        try:
            self._buffer.publisher()
        except puma.UsageError as exc:
            self.send_status("error", str(exc))


def test_a_buffer_publisher_is_refused_inside_a_runnable_and_after_the_end(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        feed = env.buffer(int, 4, "feed")
        misuses = runner.start(_PublishesOutsideItsOutputs(feed))
        runner.join()
        assert "self.publisher(buffer)" in misuses.status("error")
        with feed.publisher() as pub:
            pub.publish(7)
        assert list(feed.subscribe()) == [7]
        with pytest.raises(puma.BufferClosedError, match="ended"):
            feed.publisher()  # the stream has ended: nobody joins it any more


def test_an_error_completion_reaches_every_reader(env: puma.Environment) -> None:
    with pytest.raises(ValueError, match="failed after 10 values"):
        with puma.Runner(env) as runner:
            work = env.buffer(int, 4, "work")
            sinks = [runner.start(Collector(work, name=f"reader-{k}", reraise=False)) for k in range(3)]
            for sink in sinks:
                sink.wait_status("subscribed", timeout=60)
            runner.start(Numbers(work, 10, fail=True))
            runner.join()
    for sink in sinks:
        assert sink.status("error")[:2] == ("ValueError", "numbers failed after 10 values")
    assert _all_values(sinks) == list(range(10))  # every value before the error, each once


def test_a_broken_stream_ends_every_reader(process_env: puma.ProcessEnvironment) -> None:
    """A publisher killed in the middle of a value: every reader ends with its error, after the whole values."""
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
        with puma.Runner(process_env) as runner:
            work = process_env.buffer(int, 10, "work")
            sinks = [runner.start(Collector(work, name=f"reader-{k}", reraise=False)) for k in range(2)]
            for sink in sinks:
                sink.wait_status("subscribed", timeout=60)
            runner.start(DiesHoldingBufferLock(work, "write-long"))
            runner.join()
    for sink in sinks:
        assert sink.status("error")[0] == "ChildDiedError"
    assert _all_values(sinks) == [0, 1, 2]


def test_readers_waiting_on_an_empty_stream_end_when_another_reads_the_last_completion(
    env: puma.Environment,
) -> None:
    """Nothing is published: one reader reads the only completion, the others wait on nothing; all end."""
    with puma.Runner(env) as runner:
        work = env.buffer(int, 4, "work")
        sinks = [runner.start(Collector(work, name=f"reader-{k}")) for k in range(3)]
        mine = work.subscribe()
        for sink in sinks:
            sink.wait_status("subscribed", timeout=60)
        runner.start(Numbers(work, 0))
        assert list(mine) == []
        runner.join()
    assert all(sink.status("values") == [] for sink in sinks)
    assert work.statistics().ended


# --- holds: publishers join and leave ----------------------------------------------------------
def test_a_hold_keeps_the_stream_open_from_one_publisher_to_the_next(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        stage = env.buffer(int, 8, "stage")
        sink = runner.start(Collector(stage))
        hold = stage.hold_open()
        first = runner.start(Numbers(stage, 50, name="first"))
        first.wait_status("done", timeout=60)
        second = runner.start(Numbers(stage, 50, name="second", first=100))  # 1 -> 0 -> 1 publishers
        second.wait_status("done", timeout=60)
        assert not stage.statistics().ended  # both completed, the hold is out
        hold.release()
        hold.release()  # idempotent
        runner.join()  # the sink ended: releasing the last hold ended the stream
        stats = stage.statistics()
        assert (stats.publishers, stats.completed, stats.holds, stats.ended) == (2, 2, 0, True)
        with pytest.raises(puma.BufferClosedError, match="its stream has ended"):
            stage.supervision.join()
        with pytest.raises(puma.BufferClosedError, match="its stream has ended"):
            stage.hold_open()
    assert sink.status("values") == list(range(50)) + list(range(100, 150))


def test_a_publisher_started_after_the_stream_ended_fails_clearly(env: puma.Environment) -> None:
    with pytest.raises(puma.BufferClosedError, match="buffer 'stage': its stream has ended"):
        with puma.Runner(env) as runner:
            stage = env.buffer(int, 8, "stage")
            sink = runner.start(Collector(stage))
            runner.start(Numbers(stage, 5, name="first")).wait_status("done", timeout=60)
            sink.wait_status("values", timeout=60)  # the stream ended
            runner.start(Numbers(stage, 5, name="late"))
            runner.join()
    assert sink.status("values") == list(range(5))
    assert stage.statistics().publishers == 1


def test_readers_waiting_on_a_held_stream_end_when_the_hold_is_released(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        work = env.buffer(int, 4, "work")
        with work.hold_open():
            sinks = [runner.start(Collector(work, name=f"reader-{k}")) for k in range(2)]
            for sink in sinks:
                sink.wait_status("subscribed", timeout=60)
            runner.start(Numbers(work, 20)).wait_status("done", timeout=60)
            assert not work.statistics().ended
        runner.join()
    assert _all_values(sinks) == list(range(20))


def test_a_runnable_can_hold_a_stream_open(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        work = env.buffer(int, 4, "work")
        holder = runner.start(HoldsOpen(work))
        holder.wait_status("held", timeout=60)
        sink = runner.start(Collector(work))
        runner.start(Numbers(work, 10)).wait_status("done", timeout=60)
        assert work.statistics().holds == 1
        assert not work.statistics().ended
        assert holder.let_go()  # type: ignore[attr-defined]
        sink.wait_status("values", timeout=60)  # the stream ended
        runner.stop(holder)
        runner.join()
    assert sink.status("values") == list(range(10))


# --- fan-in ----------------------------------------------------------------------------------
@pytest.mark.timeout(240)
@pytest.mark.parametrize("batch", [0, 20], ids=["single", "batched"])
def test_sixteen_publishers_into_one_buffer_lose_nothing_and_keep_their_order(
    env: puma.Environment, batch: int
) -> None:
    count = 200
    with puma.Runner(env) as runner:
        fan_in = env.buffer(int, 32, "fan-in")
        sink = runner.start(Collector(fan_in))
        with fan_in.hold_open():  # the first may complete before the last is started
            for k in range(16):
                runner.start(Numbers(fan_in, count, name=f"publisher-{k}", first=k * 10_000, batch=batch))
        runner.join()
    values = sink.status("values")
    assert Counter(values) == Counter(k * 10_000 + i for k in range(16) for i in range(count))
    for k in range(16):
        mine = [v for v in values if v // 10_000 == k]
        assert mine == sorted(mine), f"publisher {k}'s values arrived out of order"


# --- statistics --------------------------------------------------------------------------------
def test_statistics_are_complete_in_the_child_and_the_parent(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        work = env.buffer(int, 8, "work")
        sinks = [runner.start(Collector(work, name=f"reader-{k}")) for k in range(2)]
        for sink in sinks:
            sink.wait_status("subscribed", timeout=60)
        hold = work.hold_open()
        runner.start(Numbers(work, 30)).wait_status("done", timeout=60)
        there = runner.start(ReportsStatistics(work)).wait_status("statistics", timeout=60)
        here = work.statistics()
        hold.release()
        runner.join()
    for stats in (there, here):
        assert (stats.name, stats.capacity, stats.publishers, stats.completed) == ("work", 8, 1, 1)
        assert (stats.subscribers, stats.holds, stats.ended) == (2, 1, False)
        assert 0 <= stats.size <= 8
    final = work.statistics()
    assert (final.publishers, final.completed, final.holds, final.ended) == (1, 1, 0, True)


def test_size_counts_the_values_waiting(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        work = env.buffer(int, 8, "work")
        runner.start(Numbers(work, 5)).wait_status("done", timeout=60)  # all fit: nobody reads yet
        stats = work.statistics()
        assert (stats.size, stats.publishers, stats.completed, stats.subscribers) == (5, 1, 1, 0)
        assert list(work.subscribe()) == list(range(5))
        runner.join()
    assert work.statistics().ended


# --- release -----------------------------------------------------------------------------------
def _semaphore_files(buffer: puma.Buffer[Any]) -> list[str]:
    names = []
    for attribute in ("_lock", "_read_lock", "_meta"):
        name = getattr(getattr(buffer, attribute)._semlock, "name", None)
        if name is not None:
            names.append("/dev/shm/sem." + name.lstrip("/"))
    return names


@pytest.fixture
def no_collection() -> Iterator[None]:
    """Resources must go back at release, not when the collector runs."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_release_gives_back_every_descriptor_and_semaphore_at_once(
    process_env: puma.ProcessEnvironment, no_collection: None
) -> None:
    me = psutil.Process()
    warm = process_env.buffer(int, 4, "warm-up")  # the first one may make multiprocessing's shared heap
    warm.supervision.release()
    baseline = me.num_fds()
    buffer = process_env.buffer(int, 4, "released")
    files = _semaphore_files(buffer)
    pub = buffer._open_publisher("main")
    sub = buffer.subscribe()
    pub.publish(7)
    assert sub.receive(timeout=10) == 7
    hold = buffer.hold_open()
    assert me.num_fds() > baseline
    buffer.supervision.release()
    buffer.supervision.release()  # idempotent
    assert me.num_fds() == baseline
    assert not [f for f in files if os.path.exists(f)]
    stats = buffer.statistics()  # still answers
    assert (stats.name, stats.publishers, stats.subscribers, stats.holds) == ("released", 0, 1, 1)
    message = "buffer 'released' was released when its Runner closed"
    with pytest.raises(puma.BufferClosedError, match=message):
        pub.publish(8)
    with pytest.raises(puma.BufferClosedError, match=message):
        buffer.subscribe()
    with pytest.raises(puma.BufferClosedError, match=message):
        sub.receive(timeout=1)
    with pytest.raises(puma.BufferClosedError, match=message):
        buffer.hold_open()
    hold.release()  # after release: nothing to do, no error
    del pub, sub, buffer, warm, hold


def test_a_released_thread_buffer_refuses_clearly(no_collection: None) -> None:
    buffer = puma.ThreadEnvironment().buffer(int, 4, "released")
    sub = buffer.subscribe()
    buffer.supervision.release()
    message = "buffer 'released' was released when its Runner closed"
    with pytest.raises(puma.BufferClosedError, match=message):
        sub.receive(timeout=1)
    with pytest.raises(puma.BufferClosedError, match=message):
        buffer.subscribe()
    with pytest.raises(puma.BufferClosedError, match=message):
        buffer._open_publisher("main")
    assert buffer.statistics().subscribers == 1


# --- docs/buffers.md: every example runs as written --------------------------------------------
_DOC = Path(__file__).resolve().parent.parent / "docs" / "buffers.md"


_SWITCH = "puma.ThreadEnvironment()  # or puma.ProcessEnvironment()"  # promises the one-line switch


def _doc_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", _DOC.read_text(), re.S)


def _doc_cases() -> list[tuple[int, str]]:
    """Each example as written, and switched to processes where it says it works there too."""
    return [
        (index, where)
        for index, block in enumerate(_doc_blocks())
        for where in ("as written", "processes")
        if where == "as written" or _SWITCH in block
    ]


def test_the_buffers_doc_has_examples() -> None:
    assert len(_doc_blocks()) >= 4


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("index", "where"), _doc_cases())
def test_buffers_doc_example_runs(tmp_path: Path, index: int, where: str) -> None:
    code = _doc_blocks()[index]
    if where == "processes":
        code = code.replace(_SWITCH, "puma.ProcessEnvironment()")
    script = tmp_path / f"buffers_{index}.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=100, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip()


def test_room_wakes_only_the_blocked_publishers_it_can_serve() -> None:
    """Four batches of 4 wait on a full buffer of 8: room for one batch wakes one publisher, once.

    (In one process: the start method makes no difference to the wake-ups.)
    A publisher woken for too little room would go back to sleep: on a busy
    machine with 16 publishers that is what made batched fan-in collapse.
    """
    buffer = puma.ProcessEnvironment("fork").buffer(int, 8, "fan-in")
    tokens: list[int] = []
    write_tokens, want_room = buffer._write_tokens, buffer._want_room  # type: ignore[attr-defined]
    all_waiting = threading.Event()

    def counting_write(count: int) -> None:
        tokens.append(count)
        write_tokens(count)

    def counting_want(useful: int, delta: int) -> None:
        want_room(useful, delta)
        if buffer._shared[WAITING] == 4:  # type: ignore[attr-defined]
            all_waiting.set()

    buffer._write_tokens, buffer._want_room = counting_write, counting_want  # type: ignore[attr-defined]
    buffer._register_publisher(5)
    filler = buffer._open_publisher("filler")
    for i in range(8):
        filler.publish(i)  # full, with one frame per value: each value read gives its permit back
    sub = buffer.subscribe()

    def batch(i: int) -> None:
        buffer._open_publisher(f"batch-{i}").publish_many([100 + i] * 4, timeout=60)

    threads = [threading.Thread(target=batch, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert all_waiting.wait(60)
        got = [sub.receive(timeout=60) for _ in range(4)]  # room for one batch, one permit at a time
        assert got == [0, 1, 2, 3]
        assert tokens == [1]  # one publisher woken, when its whole batch fitted
        got += [sub.receive(timeout=60) for _ in range(20)]
        assert sorted(got[:8]) == list(range(8))
        batches = got[8:]
        assert sorted(batches) == sorted([100, 101, 102, 103] * 4)
        assert all(len(set(batches[k : k + 4])) == 1 for k in range(0, 16, 4)), batches  # each batch whole
    finally:
        for thread in threads:
            thread.join(60)
        buffer.supervision.release()


def _when_waiting(buffer: Any, count: int) -> threading.Event:
    """An event set once ``count`` publishers wait for room in ``buffer`` (its want counts wrapped)."""
    reached = threading.Event()
    want_room = buffer._want_room

    def counting_want(useful: int, delta: int) -> None:
        want_room(useful, delta)
        if buffer._shared[WAITING] == count:
            reached.set()

    buffer._want_room = counting_want
    return reached


def _epolls() -> int:
    """Epoll descriptors open in this process."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}") == "anon_inode:[eventpoll]"
        except OSError:
            pass  # the listing's own descriptor, closed meanwhile
    return count


@pytest.mark.skipif(not hasattr(select, "EPOLLEXCLUSIVE"), reason="EPOLLEXCLUSIVE is Linux's")
def test_publishers_sleeping_one_at_a_time_keep_no_epoll_once_their_wait_ends() -> None:
    """Crowded waiters for room sleep in an epoll kept for the length of their wait, then closed.

    A woken publisher that finds its room taken sleeps again in the same epoll
    instead of making one per sleep; when the wait ends nothing is left open.
    """
    before = _epolls()
    buffer = puma.ProcessEnvironment("fork").buffer(int, 8, "crowded")
    all_waiting = _when_waiting(buffer, 4)
    buffer._register_publisher(5)
    filler = buffer._open_publisher("filler")
    for i in range(8):
        filler.publish(i)
    sub = buffer.subscribe()
    published = threading.Semaphore(0)
    leave = threading.Event()

    def publish(i: int) -> None:
        buffer._open_publisher(f"b-{i}").publish_many([i] * 4, timeout=60)
        published.release()
        leave.wait(60)  # alive, its wait's state kept, while the epolls are counted

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        assert all_waiting.wait(60)
        got = [sub.receive(timeout=60) for _ in range(24)]
        assert sorted(got) == sorted([*range(8), *[i for i in range(4) for _ in range(4)]])
        for _ in threads:
            assert published.acquire(timeout=60)
        assert _epolls() == before
    finally:
        leave.set()
        for thread in threads:
            thread.join(60)
        buffer.supervision.release()


def test_a_batch_whose_write_fails_after_its_wait_gives_its_places_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the write that ends a wait for room: the places go back and the waiter is counted out."""
    from puma._buffers import process_room

    buffer = puma.ProcessEnvironment("fork").buffer(int, 4, "interrupted")
    buffer._register_publisher(2)  # type: ignore[attr-defined]
    filler = buffer._open_publisher("filler")  # type: ignore[attr-defined]
    filler.publish_many([0, 1, 2, 3])  # full
    sub = buffer.subscribe()
    waiting = _when_waiting(buffer, 1)
    real_write = process_room.write_whole

    def interrupted_write(*args: Any) -> None:
        raise KeyboardInterrupt  # as a Ctrl-C before the first byte is written

    monkeypatch.setattr(process_room, "write_whole", interrupted_write)
    raised: list[BaseException] = []

    def publish() -> None:
        try:
            buffer._open_publisher("batch").publish_many([7, 7], timeout=60)  # type: ignore[attr-defined]
        except BaseException as exc:
            raised.append(exc)

    thread = threading.Thread(target=publish)
    thread.start()
    try:
        assert waiting.wait(60)
        assert [sub.receive(timeout=60) for _ in range(2)] == [0, 1]  # room for the batch: its wait ends
        thread.join(60)
        assert len(raised) == 1 and isinstance(raised[0], KeyboardInterrupt)
        monkeypatch.setattr(process_room, "write_whole", real_write)
        assert buffer._shared[WAITING] == 0  # type: ignore[attr-defined]
        assert buffer.statistics().size == 0  # every place free: its two came back (the reader took the rest)
        filler.publish_many([8, 9], timeout=5)  # and can be taken
        assert [sub.receive(timeout=60) for _ in range(4)] == [2, 3, 8, 9]
    finally:
        thread.join(60)
        buffer.supervision.release()


def test_room_given_back_twice_before_the_woken_publisher_runs_wakes_it_once() -> None:
    """A token on its way counts: on two cores the woken publisher may not have run yet.

    Without that count every give-back would write another token for the same
    sleeper, tokens would pile up in the room pipe, and each publisher that
    went to sleep later would spin through them, finding too little room.
    """
    buffer = puma.ProcessEnvironment("fork").buffer(int, 8, "fan-in")
    tokens: list[int] = []
    write_tokens = buffer._write_tokens  # type: ignore[attr-defined]

    def counting_write(count: int) -> None:
        tokens.append(count)
        write_tokens(count)

    buffer._write_tokens = counting_write  # type: ignore[attr-defined]
    try:
        pid = os.getpid()
        assert buffer._take_or_wait(8, 8, pid) == 8  # type: ignore[attr-defined]  # all the room
        assert buffer._take_or_wait(4, 4, pid) == 0  # type: ignore[attr-defined]  # none: now counted as waiting
        buffer._give_back(4)  # type: ignore[attr-defined]  # room for it: one token
        buffer._give_back(4)  # type: ignore[attr-defined]  # it has not run yet: no second token
        assert tokens == [1]
        assert buffer._read_token()  # type: ignore[attr-defined]
        assert buffer._look_for_room(4, 4, True, pid) == (4, 0, False)  # type: ignore[attr-defined]  # nobody else waits
        assert not buffer._read_token()  # type: ignore[attr-defined]  # no token left behind
        assert buffer.statistics().size == 4
    finally:
        buffer.supervision.release()


def test_a_wait_for_room_wakes_after_a_released_buffers_descriptor_numbers_are_used_again() -> None:
    """The main program's wait is kept between waits: a room pipe closed and its number reused must still wake it."""
    env = puma.ProcessEnvironment("fork")
    numbers = set()
    for _ in range(3):
        buffer = env.buffer(int, 1, "reused")
        numbers.add(buffer._room_reader.fileno())  # type: ignore[attr-defined]
        sub = buffer.subscribe()
        got: list[int] = []
        reader = threading.Thread(target=lambda sub=sub: got.extend(sub.receive(timeout=60) for _ in range(3)))
        with buffer.publisher() as pub:
            pub.publish(0)
            reader.start()
            pub.publish(1, timeout=60)  # full: waits for room, woken by the reader in the thread
            pub.publish(2, timeout=60)
        reader.join(60)
        assert got == [0, 1, 2]
        buffer.supervision.release()
    assert len(numbers) == 1  # the same descriptor numbers each time: the case this is about
