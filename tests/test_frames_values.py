"""Frames inside values (tuples, lists, dicts) and dropped frames, the same in threads and processes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from _frames_helpers import FrameConsumer, FrameProducer, Holder, ValueProducer, frames_of

import puma
from puma.frames import FrameOwnershipError

pytestmark = pytest.mark.timeout(60)


def _read(sub: puma.Subscription[Any], how: str) -> list[Any]:
    """Everything a subscription gives until its stream completes, read by ``how``."""
    if how == "iterate":
        return list(sub)
    out: list[Any] = []
    try:
        while True:
            if how == "receive":
                out.append(sub.receive(timeout=30))
            else:
                out.extend(sub.receive_many(3, timeout=30))
    except puma.BufferCompleted:
        return out


@pytest.mark.parametrize("how", ["iterate", "receive", "receive_many"])
def test_dropped_frames_are_never_delivered_and_are_counted(env: puma.Environment, how: str) -> None:
    pool = env.frame_pool(4, np.int64, 2, "live", drop_oldest=True)
    with puma.Runner(env) as runner:
        raw = env.buffer(object, 10, "raw")
        runner.start(FrameProducer(pool, raw, 5))  # nobody reads yet: three frames are dropped
        runner.join()
        received = _read(raw.subscribe(), how)
        values = [int(f.array[0]) for f in received]
        assert not any(f.dropped for f in received)
        for f in received:
            f.release()
    assert values == [3, 4]
    stats = pool.statistics()
    assert (stats.drops, stats.free) == (3, 2)
    pool.close()


@pytest.mark.parametrize("shape", ["alone", "tuple", "list", "dict"])
@pytest.mark.parametrize("batch", [False, True], ids=["one-by-one", "batch"])
def test_values_holding_dropped_frames_are_skipped(env: puma.Environment, shape: str, batch: bool) -> None:
    per = 2 if shape == "list" else 1
    group = 2 if batch else 1  # values per publish_many (their frames are borrowed first, then published)
    count = 2 * group * per  # the pool holds two groups: of five, the last two are kept
    pool = env.frame_pool(4, np.int64, count, "live", drop_oldest=True)
    with puma.Runner(env) as runner:
        raw = env.buffer(object, 16, "raw")
        produced = 5 * group
        runner.start(ValueProducer(pool, raw, produced, shape, group if batch else 0))
        runner.join()
        received = list(raw.subscribe())
        seen = []
        for value in received:
            frames = frames_of(value)
            assert all(f.held and not f.dropped for f in frames)
            seen.append([int(f.array[0]) for f in frames])
            for f in frames:
                f.release()
    kept = 2 * group
    assert seen == [[i] * per for i in range(produced - kept, produced)]
    stats = pool.statistics()
    assert (stats.drops, stats.free) == ((produced - kept) * per, count)
    pool.close()


@pytest.mark.parametrize("shape", ["tuple", "list", "dict"])
@pytest.mark.parametrize("batch", [False, True], ids=["one-by-one", "batch"])
def test_frames_inside_values_are_handed_over(env: puma.Environment, shape: str, batch: bool) -> None:
    count = 6
    per = 2 if shape == "list" else 1
    pool = env.frame_pool((8, 8), np.int32, count * per, "inside")
    with puma.Runner(env) as runner:
        raw = env.buffer(object, count, "raw")
        producer = runner.start(ValueProducer(pool, raw, count, shape, 3 if batch else 0))
        seen = []
        for value in raw.subscribe():
            frames = frames_of(value)
            if shape == "tuple":
                assert value[1] == {"t": int(frames[0].array[0, 0])}
            for frame in frames:
                assert frame.held and not frame.readonly
                with frame:
                    frame.array[...] += 100  # the reader's frame is writable
                    seen.append(int(frame.array[7, 7]))
        runner.join()
    assert seen == sorted(seen) and seen == [100 + i for i in range(count) for _ in range(per)]
    assert producer.status("refused") == count * per  # every old holder's write refused
    stats = pool.statistics()
    assert (stats.free, stats.in_flight, stats.borrows) == (count * per, 0, count * per)
    pool.close()


@pytest.mark.parametrize("batch", [False, True], ids=["one-by-one", "batch"])
def test_a_restartable_reader_is_never_given_a_dropped_frame(env: puma.Environment, batch: bool) -> None:
    """A reader its Runner may restart (it keeps a read journal in a process) skips dropped frames too.

    Inside a batch the dropped values keep their places for the journal, which
    counts a batch's values by place, and are passed without being delivered.
    """
    pool = env.frame_pool(4, np.int64, 4, "live", drop_oldest=True)
    with puma.Runner(env, on_failure=puma.RestartPolicy("one_for_one")) as runner:
        raw = env.buffer(object, 16, "raw")
        producer = runner.start(ValueProducer(pool, raw, 10, "alone", 2 if batch else 0))
        producer.wait_status("refused", timeout=30)  # all ten published: six of them dropped
        reader = runner.start(FrameConsumer(raw, "restartable-reader"))
        runner.join()
    received, total, dropped, _, _ = reader.status("result")
    assert (received, dropped) == (4, 0)
    assert total == 6 + 7 + 8 + 9  # the four kept frames, each once
    stats = pool.statistics()
    assert (stats.drops, stats.free) == (6, 4)
    pool.close()


def test_the_multicaster_never_delivers_a_dropped_frame(env: puma.Environment) -> None:
    pool = env.frame_pool(4, np.int64, 3, "live-fan", drop_oldest=True)
    total = 30
    with puma.Runner(env) as runner:
        raw = env.buffer(object, 8, "raw")
        left, right = env.buffer(object, 8, "left"), env.buffer(object, 8, "right")
        runner.start(FrameProducer(pool, raw, total))
        runner.start(puma.Multicaster(raw, [left, right]))
        a = runner.start(FrameConsumer(left, "left-reader"))
        b = runner.start(FrameConsumer(right, "right-reader"))
        runner.join()
    results = [reader.status("result") for reader in (a, b)]
    received, _, dropped, readonly, _ = results[0]
    assert results[0] == results[1]  # both readers got the same frames
    assert dropped == 0 and readonly == received  # none of them dropped; every one a read-only share
    assert received + pool.statistics().drops == total
    assert pool.statistics().free == 3
    pool.close()


def test_a_plain_value_in_a_thread_buffer_is_passed_as_it_is_while_a_pool_is_open() -> None:
    env = puma.ThreadEnvironment()
    pool = env.frame_pool(4, np.int64, 1, "open")
    with puma.Runner(env):
        raw = env.buffer(object, 4, "raw")
        sub = raw.subscribe()
        plain = ([1, 2], {"a": 3})
        lock = __import__("threading").Lock()  # cannot be pickled: passed as it is
        with raw.publisher() as pub:
            pub.publish(plain)
            pub.publish(lock)
        assert sub.receive(timeout=5) is plain
        assert sub.receive(timeout=5) is lock
    pool.close()


def test_frames_deep_inside_values_and_objects_are_handed_over(env: puma.Environment) -> None:
    pool = env.frame_pool(4, np.int64, 3, "deep")
    with puma.Runner(env):
        raw = env.buffer(object, 4, "raw")
        sub = raw.subscribe()
        a, b, c = (pool.borrow(timeout=5) for _ in range(3))
        for k, frame in enumerate((a, b, c)):
            frame.array[:] = k
        value = [Holder(a, {"more": (b, [c])}), "label"]
        with raw.publisher() as pub:
            pub.publish(value)
        for old in (a, b, c):
            with pytest.raises(FrameOwnershipError):
                old.array[0] = 9
        got = sub.receive(timeout=5)
        assert got is not value and got[1] == "label"
        frames = [got[0].frame, got[0].nested["more"][0], got[0].nested["more"][1][0]]
        assert [int(f.array[0]) for f in frames] == [0, 1, 2]
        for frame in frames:
            assert frame.held
            frame.array[:] += 10  # writable
            frame.release()
    assert pool.statistics().free == 3
    pool.close()


def test_a_multicaster_refuses_a_value_holding_a_frame_at_its_second_output(env: puma.Environment) -> None:
    pool = env.frame_pool(4, np.int64, 4, "mc")
    with pytest.raises(FrameOwnershipError, match="handed over"), puma.Runner(env) as runner:
        raw = env.buffer(object, 4, "raw")
        left, right = env.buffer(object, 4, "left"), env.buffer(object, 4, "right")
        runner.start(ValueProducer(pool, raw, 2, "tuple"))
        runner.start(puma.Multicaster(raw, [left, right]))
        subs = left.subscribe(), right.subscribe()
        runner.join()
    del subs
    pool.close()
