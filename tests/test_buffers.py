"""Buffers: order, back-pressure, typing, completion, batching, arrays, and misuse."""

from __future__ import annotations

import os

import numpy as np
import pytest
from _helpers import (
    ArrayChecker,
    ArrayProducer,
    Collector,
    EndlessProducer,
    FillUp,
    Poisoner,
    Producer,
    PublishToForeign,
    Squarer,
    SubscribesTooEarly,
    TakeOne,
)

import puma

pytestmark = pytest.mark.timeout(60)


def test_three_stage_pipeline_gives_the_same_results_everywhere(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        raw, squared = env.buffer(int, 10, "raw"), env.buffer(int, 10, "squared")
        runner.start(Producer(raw, 500))
        runner.start(Squarer(raw, squared))
        sink = runner.start(Collector(squared))
        runner.join()
    assert sink.status("values") == [i * i for i in range(500)]


def test_batched_publish_and_receive_keep_order(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        raw, squared = env.buffer(int, 16, "raw"), env.buffer(int, 16, "squared")
        runner.start(Producer(raw, 1000, batch=37))
        runner.start(Squarer(raw, squared))
        sink = runner.start(Collector(squared))
        runner.join()
    assert sink.status("values") == [i * i for i in range(1000)]


def test_several_publishers_one_subscriber_ends_when_all_complete(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        shared = env.buffer(int, 5, "shared")
        for k in range(3):
            runner.start(Producer(shared, 100, name=f"producer-{k}"))
        sink = runner.start(Collector(shared))
        runner.join()
    assert sorted(sink.status("values")) == sorted(list(range(100)) * 3)


def test_full_buffer_refuses_then_times_out_then_closes(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        out = env.buffer(int, 4, "small")
        filler = runner.start(FillUp(out))
        accepted, timed_out, closed = filler.wait_status("result", timeout=30)
        runner.stop()
    assert accepted == 4
    assert timed_out
    assert all("already completed" in words for words in closed), closed  # publish, publish_many, try_publish


def test_a_batch_published_after_completion_is_refused_while_there_is_room(env: puma.Environment) -> None:
    with puma.Runner(env):
        roomy = env.buffer(int, 10, "roomy")
        pub = roomy.publisher()
        pub.publish_many([1, 2])
        pub.complete()
        with pytest.raises(puma.BufferClosedError, match="already completed"):
            pub.publish_many([3, 4])
        with pytest.raises(puma.BufferClosedError, match="already completed"):
            pub.publish(5)
        with pytest.raises(puma.BufferClosedError, match="already completed"):
            pub.publish_many([])  # an empty one too, everywhere
        assert list(roomy.subscribe()) == [1, 2]  # nothing after the completion went in


def test_wrong_type_is_a_clear_type_error(env: puma.Environment) -> None:
    with pytest.raises(TypeError, match="buffer 'ints' carries int, got str"):
        with puma.Runner(env) as runner:
            out = env.buffer(int, 4, "ints")
            runner.start(Poisoner(out))
            runner.start(Collector(out, reraise=False))
            runner.join()


def test_publishing_to_a_buffer_that_is_not_an_output_is_refused(env: puma.Environment) -> None:
    with pytest.raises(puma.UsageError, match="not one of its outputs"):
        with puma.Runner(env) as runner:
            runner.start(PublishToForeign(env.buffer(int, 4, "other")))
            runner.join()


def test_subscriber_that_ends_early_frees_a_blocked_publisher(env: puma.Environment) -> None:
    """A publisher blocked on a full buffer whose reader is gone gets an error, never a hang."""
    with pytest.raises(puma.BufferClosedError, match="subscriber has ended"):
        with puma.Runner(env) as runner:
            out = env.buffer(bytes, 2, "big")
            runner.start(EndlessProducer(out, b"x" * 200_000))
            first = runner.start(TakeOne(out))
            assert first.wait_status("first", timeout=30) == b"x" * 200_000
            runner.join()


def test_numpy_arrays_arrive_intact_and_writable(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        frames = env.buffer(np.ndarray, 3, "frames")
        runner.start(ArrayProducer(frames, 20, (256, 256)))
        checker = runner.start(ArrayChecker(frames))
        runner.join()
    assert checker.status("result") == (20, True)


@pytest.mark.parametrize("size", [0, -1])
def test_non_positive_size_is_refused(env: puma.Environment, size: int) -> None:
    with pytest.raises(ValueError, match="size must be at least 1"):
        env.buffer(int, size, "bad")


def test_size_must_be_an_int(env: puma.Environment) -> None:
    with pytest.raises(TypeError, match="size must be an int"):
        env.buffer(int, 2.5, "bad")  # type: ignore[arg-type]


def test_subscribing_twice_gives_two_subscriptions(env: puma.Environment) -> None:
    buffer = env.buffer(int, 2, "twice")
    first, second = buffer.subscribe(), buffer.subscribe()
    assert first is not second
    assert buffer.statistics().subscribers == 2
    assert buffer.supervision.readers() == frozenset({0})  # both in the main program


def test_publishing_outside_a_running_runnable_is_refused(env: puma.Environment) -> None:
    buffer = env.buffer(int, 2, "outside")
    producer = Producer(buffer, 1)
    with pytest.raises(puma.PumaError, match="inside its own execute"):
        producer.publisher(buffer)


def test_receive_timeout_raises_buffer_empty(env: puma.Environment) -> None:
    buffer = env.buffer(int, 2, "empty")
    subscription = buffer.subscribe()
    with pytest.raises(puma.BufferEmpty):
        subscription.receive(timeout=0.01)
    assert not subscription.ready()


def test_main_program_can_subscribe(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        raw = env.buffer(int, 3, "raw")
        subscription = raw.subscribe()
        runner.start(Producer(raw, 50))
        assert list(subscription) == list(range(50))
        assert subscription.ended
        runner.join()


def test_union_and_tuple_item_types(env: puma.Environment) -> None:
    assert env.buffer(int | str, 1, "u").item_type == int | str
    env.buffer((int, float), 1, "t")
    with pytest.raises(TypeError, match="must be a class"):
        env.buffer("int", 1, "bad")


def test_statistics(env: puma.Environment) -> None:
    buffer = env.buffer(int, 7, "stats")
    stats = buffer.statistics()
    assert (stats.name, stats.capacity, stats.size) == ("stats", 7, 0)


def test_thread_buffer_cannot_feed_a_process(process_env: puma.ProcessEnvironment) -> None:
    thread_buffer = puma.ThreadEnvironment().buffer(int, 2, "local")
    with puma.Runner(process_env) as runner:
        with pytest.raises(puma.NotPicklableError, match="thread buffer 'local' cannot be sent to a process"):
            runner.start(Producer(thread_buffer, 3))


def test_process_buffer_joins_a_process_producer_and_a_thread_consumer(
    process_env: puma.ProcessEnvironment,
) -> None:
    """Threads and processes mixed under one Runner, through a process buffer."""
    with puma.Runner(process_env) as runner:
        raw = process_env.buffer(int, 4, "raw")
        runner.start(Producer(raw, 200))
        sink = runner.start(Collector(raw), environment=puma.ThreadEnvironment())
        runner.join()
    assert sink.status("values") == list(range(200))


def test_subscribing_outside_execute_is_a_clear_error(env: puma.Environment) -> None:
    """A subscription made in the parent cannot hear the runnable's commands; puma says so."""
    expected = puma.NotPicklableError if env.is_process else puma.PumaError
    with pytest.raises(expected, match=r"call subscribe\(\) inside execute\(\)"):
        with puma.Runner(env) as runner:
            runner.start(SubscribesTooEarly(env.buffer(int, 2, "early")))
            runner.join()


def _holds_the_write_lock(buffer: puma.Buffer[int], taken: object, named: object, done: object) -> None:
    """Take the buffer's write lock, name itself only when told, hold it until told (a live writer)."""
    from puma._buffers.process import _WRITER

    buffer._lock.acquire()  # type: ignore[attr-defined]
    taken.set()  # type: ignore[attr-defined]
    named.wait(30)  # type: ignore[attr-defined]
    buffer._shared[_WRITER] = os.getpid()  # type: ignore[attr-defined]
    done.wait(30)  # type: ignore[attr-defined]
    buffer._shared[_WRITER] = 0  # type: ignore[attr-defined]
    buffer._lock.release()  # raises if someone else let it go meanwhile  # type: ignore[attr-defined]


def test_another_childs_death_never_frees_a_live_writers_lock() -> None:
    """When any child dies the Runner frees the locks the dead one held, and only those.

    A live writer caught between taking the lock and naming itself keeps it.
    """
    import threading

    env = puma.ProcessEnvironment("fork")
    buffer = env.buffer(int, 4, "numbers")
    taken, named, done = env.context.Event(), env.context.Event(), env.context.Event()
    writer = env.context.Process(target=_holds_the_write_lock, args=(buffer, taken, named, done))
    writer.start()
    try:
        assert taken.wait(30)
        freeing = threading.Thread(target=buffer._free_locks_of, args=(2**22 + 1,))  # type: ignore[attr-defined]
        freeing.start()
        named.set()  # names itself while the Runner looks at the lock
        freeing.join(30)
        assert not buffer._lock.acquire(False), "the live writer's lock was freed"  # type: ignore[attr-defined]
    finally:
        done.set()
        writer.join(30)
    assert writer.exitcode == 0  # its own release worked
