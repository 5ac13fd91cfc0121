"""Frame pools: borrow, hand-over through buffers, ownership, fan-out, drop-oldest, memory, deaths."""

from __future__ import annotations

import errno
import gc
import os
import re
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from _frames_helpers import (
    FrameConsumer,
    FrameHolder,
    FrameProducer,
    MixedFrameProducer,
    PoolMaker,
    RegionWriter,
    ReleasesSoon,
    WaitingBorrower,
)

import puma
from puma._frames import memory as _memory
from puma.frames import Frame, FrameOwnershipError, FramePool, SharedMemoryTooSmall

pytestmark = pytest.mark.timeout(60)

SHAPE = (64, 128)


def _links() -> dict[str, str]:
    """This process's descriptors and what each is."""
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            pass  # the listing's own descriptor
    return out


def _shm() -> set[str]:
    """What puma named in /dev/shm (other programs on the machine use it too)."""
    return {name for name in os.listdir("/dev/shm") if re.match(r"puma-\d+-[0-9a-f]{12}$", name)}


def _fds() -> set[str]:
    return set(_links())


@pytest.fixture(autouse=True)
def descriptors_back_to_baseline() -> Iterator[None]:
    """Every pool a test made is gone with its descriptors once the test lets go of it."""
    before = _fds()
    yield
    gc.collect()
    leaked = {fd: link for fd, link in _links().items() if fd not in before}
    assert not [t for t in leaked.values() if "puma-frames" in t], f"frame pool descriptors left open: {leaked}"


def _free(pool: FramePool) -> int:
    return pool.statistics().free


# --- one process ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["thread", "process"])
def test_borrow_release_and_the_array_of_a_released_frame(kind: str) -> None:
    env = puma.ThreadEnvironment() if kind == "thread" else puma.ProcessEnvironment("fork")
    pool = env.frame_pool(SHAPE, np.uint16, 2, "cams")
    assert pool.shared is (kind == "process")
    frame = pool.borrow(timeout=5)
    array = frame.array
    assert array.shape == SHAPE and array.dtype == np.uint16 and array.flags.writeable
    array[...] = 7
    doubled = array * 2  # arithmetic gives plain arrays
    assert type(doubled) is np.ndarray and int(doubled[0, 0]) == 14
    stats = pool.statistics()
    assert (stats.free, stats.borrowed, stats.borrows) == (1, 1, 1)
    frame.release()
    frame.release()  # idempotent
    assert _free(pool) == 2
    with pytest.raises(FrameOwnershipError, match="frame 0 of pool 'cams' was released"):
        array[0, 0] = 1
    with pytest.raises(FrameOwnershipError, match="released"):
        array += 1
    with pytest.raises(FrameOwnershipError):
        _ = frame.array
    assert not frame.held
    pool.close()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_an_empty_pool_times_out_and_has_a_non_blocking_form(kind: str) -> None:
    env = puma.ThreadEnvironment() if kind == "thread" else puma.ProcessEnvironment("fork")
    with env.frame_pool(16, "f8", 1, "one") as pool:
        with pool.borrow() as frame:
            assert pool.try_borrow() is None
            with pytest.raises(puma.BufferEmpty, match="no chunk came free within 0.05 s"):
                pool.borrow(timeout=0.05)
            assert isinstance(frame.array, np.ndarray)
        again = pool.try_borrow()
        assert again is not None and again.index == 0
        again.release()


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_frame_dropped_without_release_returns_even_when_collected_under_the_pools_lock(kind: str) -> None:
    env = puma.ThreadEnvironment() if kind == "thread" else puma.ProcessEnvironment("fork")
    pool = env.frame_pool(16, np.uint8, 2, "collected")
    frame = pool.borrow()
    array = frame.array  # the frame and its array refer to each other: only the cyclic collector frees them
    del frame, array
    with pool._lock:  # the collector may run at any allocation, lock held or not
        gc.collect()
    assert _free(pool) == 2
    pool.close()


def test_bad_pool_arguments_are_clear_errors() -> None:
    env = puma.ThreadEnvironment()
    with pytest.raises(ValueError, match="count must be between 1"):
        FramePool(env, 4, count=0)
    with pytest.raises(TypeError, match="holds Python objects"):
        FramePool(env, 4, object)
    with pytest.raises(ValueError, match="negative"):
        FramePool(env, (3, -1))


def test_a_thread_pool_refuses_to_cross_into_a_process() -> None:
    import pickle

    pool = FramePool(puma.ThreadEnvironment(), 4)
    with pytest.raises(puma.PumaError, match="made for threads"):
        pickle.dumps(pool)


def test_the_pool_is_anonymous_memory_nothing_in_dev_shm() -> None:
    pool = FramePool(puma.ProcessEnvironment("fork"), (1024, 1024), np.uint8, 3, "anon")
    links = list(_links().values())
    # One memory file per pool, whatever its count (the mapping holds a duplicate of the descriptor).
    assert 1 <= sum("memfd:puma-frames-anon" in link for link in links) <= 2
    with open("/proc/self/maps") as maps:
        mapped = [line for line in maps if "puma-frames-anon" in line]
    assert mapped and all("/memfd:" in line and "/dev/shm" not in line for line in mapped)
    assert not _shm()
    pool.close()


def test_named_segments_elsewhere_are_unlinked_by_their_maker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "_FORCE_NAMED", True)
    before = _shm()
    pool = FramePool(puma.ProcessEnvironment("fork"), 4096, np.uint8, 2, "named")
    made = _shm() - before
    assert len(made) == 1 and next(iter(made)).startswith(f"puma-{os.getpid()}-")
    with pool.borrow() as frame:
        frame.array[:] = 3
    pool.close()
    assert _shm() == before


def test_named_segments_a_killed_child_made_are_unlinked_by_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "_FORCE_NAMED", True)  # a forked child inherits it
    env = puma.ProcessEnvironment("fork")
    before = _shm()
    mine = FramePool(env, 4096, np.uint8, 1, "mine")  # the main program's own: left to its close
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
        with puma.Runner(env) as runner:
            maker = runner.start(PoolMaker(env))
            pid, name = maker.wait_status("made", timeout=30)
            assert name.startswith(f"puma-{os.getpid()}-")  # named for the Runner's process, not the child
            assert name in _shm()
            os.kill(pid, signal.SIGKILL)
            runner.join()
    assert name not in _shm()  # the Runner unlinked it when it closed
    assert mine._shared_memory is not None and mine._shared_memory.name in _shm()
    with mine.borrow(timeout=5) as frame:
        frame.array[:] = 1
    mine.close()
    assert _shm() == before


def test_too_little_shared_memory_is_a_clear_error_at_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "free_shared_memory", lambda anonymous: (48 << 20, "/dev/shm"))
    with pytest.raises(SharedMemoryTooSmall) as info:
        FramePool(puma.ProcessEnvironment("fork"), (1024, 1024), np.uint8, 64, "big")
    message = str(info.value)
    assert "needs 64.0 MiB" in message and "only 48.0 MiB is free in /dev/shm" in message
    assert "--shm-size=" in message
    assert info.value.needed > 64 << 20 - 1 and info.value.free == 48 << 20


def test_an_anonymous_pool_over_the_containers_memory_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_memory, "_cgroup_room", lambda: 8 << 20)
    with pytest.raises(SharedMemoryTooSmall, match="only 8.0 MiB is free in this container's memory limit"):
        FramePool(puma.ProcessEnvironment("fork"), (1 << 20,), np.uint8, 16, "capped")


def test_a_refused_reservation_is_a_clear_error_not_a_bus_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", refuse)
    before = _fds()
    with pytest.raises(SharedMemoryTooSmall, match="frame pool 'full' needs 4.0 MiB"):
        FramePool(puma.ProcessEnvironment("fork"), (1 << 20,), np.float32, 1, "full")
    assert _fds() == before  # nothing left open


def test_a_dead_holders_chunks_return_and_rebuild_the_free_list() -> None:
    pool = FramePool(puma.ProcessEnvironment("fork"), 8, np.uint8, 3, "crash")
    held = pool.borrow()
    header = pool._header
    # Another process (pid 1 << 22, never ours) holds two chunks, one of them taken from the free
    # list before it died without the header saying so: both come back.
    stolen = pool._take_token()
    other = pool._take_token()
    assert stolen is not None and other is not None
    header[8 + 13 * other] = 1 << 22
    assert pool.statistics().free == 1  # the stolen one is "free" in the header, but in nobody's list
    assert puma._frames.registry.free_frames_held_by(1 << 22) == 1
    stats = pool.statistics()
    assert (stats.free, stats.borrowed, stats.returned) == (2, 1, 1)
    got = sorted(f.index for f in (pool.try_borrow(), pool.try_borrow()) if f is not None)
    assert got == sorted((stolen, other))
    held.release()
    pool.close()


# --- through buffers, in every environment -------------------------------------------------------
def test_frames_are_handed_over_through_a_buffer_in_place(env: puma.Environment) -> None:
    pool = env.frame_pool(SHAPE, np.int32, 3, "handover")
    with puma.Runner(env) as runner:
        raw = env.buffer(object, 2, "raw")
        producer = runner.start(FrameProducer(pool, raw, 12))
        consumer = runner.start(FrameConsumer(raw))
        runner.join()
    assert consumer.status("result") == (12, sum(range(12)), 0, 0, 0)
    assert producer.status("refused") == 36  # the array, a view, and frame.array, after each hand-over
    stats = pool.statistics()
    assert (stats.free, stats.borrows, stats.in_flight) == (3, 12, 0)
    pool.close()


def test_frames_alone_and_inside_values_arrive_in_order_and_in_place(env: puma.Environment) -> None:
    """A frame published alone travels as a small handle of its own; one inside a value, in the value's pickle.

    Both kinds, mixed in one buffer, arrive in the order published, writable and in place.
    """
    pool = env.frame_pool(SHAPE, np.int32, 4, "mixed")
    with puma.Runner(env) as runner:
        raw = env.buffer(object, 3, "raw")
        runner.start(MixedFrameProducer(pool, raw, 10))
        seen = []
        for value in raw.subscribe():
            frame, label = (value, "alone") if isinstance(value, Frame) else value
            with frame:
                assert frame.array.flags.writeable
                frame.array[...] += 1
                seen.append((label, int(frame.array[0, 0]), int(frame.array[-1, -1])))
        runner.join()
    assert seen == [("alone" if i % 2 == 0 else "inside", i + 1, i + 1) for i in range(10)]
    assert _free(pool) == 4
    pool.close()


def test_a_frame_whose_handle_takes_more_than_one_atomic_pipe_write_crosses_whole(
    process_env: puma.ProcessEnvironment,
) -> None:
    """A handle names its pool: a pool named with more than ``PIPE_BUF`` bytes makes a handle written in parts."""
    pool = process_env.frame_pool(SHAPE, np.int32, 2, "camera-" + "x" * 5000)
    with puma.Runner(process_env) as runner:
        raw = process_env.buffer(object, 2, "raw")
        runner.start(FrameProducer(pool, raw, 6))
        consumer = runner.start(FrameConsumer(raw))
        runner.join()
    assert consumer.status("result") == (6, sum(range(6)), 0, 0, 0)
    assert _free(pool) == 2
    pool.close()


def test_the_main_program_receives_frames_it_may_write(env: puma.Environment) -> None:
    pool = env.frame_pool(SHAPE, np.int32, 2, "to-main")
    with puma.Runner(env) as runner:
        raw = env.buffer(object, 4, "raw")
        runner.start(FrameProducer(pool, raw, 6))
        seen = []
        for frame in raw.subscribe():
            with frame:
                frame.array[...] += 100
                seen.append(int(frame.array[1, 2]))
        runner.join()
    assert seen == [100 + i for i in range(6)]
    assert _free(pool) == 2
    pool.close()


def test_fan_out_hands_read_only_shares_and_returns_the_chunk_after_the_last(env: puma.Environment) -> None:
    pool = env.frame_pool(SHAPE, np.int32, 2, "fan")
    with puma.Runner(env) as runner:
        raw = env.buffer(object, 2, "raw")
        left, right = env.buffer(object, 2, "left"), env.buffer(object, 2, "right")
        runner.start(FrameProducer(pool, raw, 8))
        runner.start(puma.Multicaster(raw, [left, right]))
        a = runner.start(FrameConsumer(left, "left-reader"))
        b = runner.start(FrameConsumer(right, "right-reader"))
        runner.join()
    for reader in (a, b):
        assert reader.status("result") == (8, sum(range(8)), 0, 8, 8)  # read-only, writes refused
    assert _free(pool) == 2
    pool.close()


def test_drop_oldest_counts_and_the_receiver_sees_the_drops(env: puma.Environment) -> None:
    pool = env.frame_pool(4, np.int64, 2, "live", drop_oldest=True)
    with puma.Runner(env) as runner:
        raw = env.buffer(object, 10, "raw")
        runner.start(FrameProducer(pool, raw, 5))  # nobody reads yet: three frames are dropped
        runner.join()
        received = [f for f in raw.subscribe() if not f.dropped]
        values = [int(f.array[0]) for f in received]
        for f in received:
            f.release()
    assert values == [3, 4]
    stats = pool.statistics()
    assert (stats.drops, stats.free) == (3, 2)
    pool.close()


def test_an_empty_pool_holds_the_borrower_and_a_stop_still_reaches_it(env: puma.Environment) -> None:
    pool = env.frame_pool(4, np.uint8, 1, "stop")
    frame = pool.borrow()
    with puma.Runner(env) as runner:
        borrower = runner.start(WaitingBorrower(pool))
        borrower.wait_status("waiting", timeout=30)
        runner.stop()
        runner.join()
    assert borrower.status("got") is None
    frame.release()
    pool.close()


def test_a_frame_released_in_a_child_wakes_a_borrower_waiting_in_the_main_program(env: puma.Environment) -> None:
    pool = env.frame_pool(4, np.uint8, 1, "wake")
    with puma.Runner(env) as runner:
        holder = runner.start(ReleasesSoon(pool))
        holder.wait_status("held", timeout=30)
        frame = pool.borrow(timeout=30)  # free once the child released it
        runner.stop()
        runner.join()
    frame.release()
    pool.close()


# --- deaths ----------------------------------------------------------------------------------
def test_a_killed_holders_frames_return_and_wake_a_waiting_borrower(process_env: puma.ProcessEnvironment) -> None:
    shm = _shm()
    pool = process_env.frame_pool((256, 256), np.float32, 2, "killed")
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
        with puma.Runner(process_env) as runner:
            holder = runner.start(FrameHolder(pool, 2))
            pid, count = holder.wait_status("held", timeout=30)
            assert count == 2 and pool.statistics().borrowed == 2
            os.kill(pid, signal.SIGKILL)
            frame = pool.borrow(timeout=30)  # wakes when the supervisor returns the dead one's chunks
            frame.release()
            runner.join()
    stats = pool.statistics()
    assert (stats.free, stats.returned) == (2, 2)
    pool.close()
    assert _shm() <= shm


def test_a_killed_consumers_frames_return(process_env: puma.ProcessEnvironment) -> None:
    pool = process_env.frame_pool(SHAPE, np.int32, 2, "consumer-killed")
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
        with puma.Runner(process_env) as runner:
            raw = process_env.buffer(object, 2, "raw")
            runner.start(FrameProducer(pool, raw, 1))
            consumer = runner.start(FrameConsumer(raw, hold=True))
            consumer.wait_status("holding", timeout=30)
            assert pool.statistics().borrowed == 1
            os.kill(consumer.wait_status("pid"), signal.SIGKILL)
            runner.join()
    assert _free(pool) == 2
    pool.close()


def test_a_killed_lone_readers_frames_come_back_with_those_it_had_read_ahead(
    process_env: puma.ProcessEnvironment,
) -> None:
    pool = process_env.frame_pool(SHAPE, np.int32, 4, "read-ahead")
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
        with puma.Runner(process_env) as runner:
            raw = process_env.buffer(object, 4, "raw")
            producer = runner.start(FrameProducer(pool, raw, 4))
            producer.wait_status("refused", timeout=30)  # all four handed over
            consumer = runner.start(FrameConsumer(raw, hold=True))
            consumer.wait_status("holding", timeout=30)
            os.kill(consumer.wait_status("pid"), signal.SIGKILL)
            runner.join()
    # The one it held returns at its death; those it read ahead (or left in the pipe) when the
    # supervisor closes the buffer it was the only reader of.
    assert _free(pool) == 4
    pool.close()


def test_a_killed_producer_leaves_nothing_behind(process_env: puma.ProcessEnvironment) -> None:
    shm = _shm()
    pool = process_env.frame_pool(SHAPE, np.int32, 2, "producer-killed")
    with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
        with puma.Runner(process_env) as runner:
            raw = process_env.buffer(object, 1, "raw")
            producer = runner.start(FrameProducer(pool, raw, 100))  # blocks: nobody reads
            pid = producer.wait_status("pid", timeout=30)
            os.kill(pid, signal.SIGKILL)
            runner.join()
    stats = pool.statistics()
    assert stats.borrowed == 0  # what it held came back; frames it handed over are in flight
    assert pool.reclaim_in_flight() == stats.in_flight  # nobody will receive them now
    assert _free(pool) == 2
    pool.close()
    assert _shm() <= shm


# --- the shared output region ------------------------------------------------------------------
def test_workers_write_disjoint_parts_and_the_parent_reads_the_whole(env: puma.Environment) -> None:
    region = env.shared_region((10, 3), np.int32, parts=4, name="out")
    assert [region.bounds(k) for k in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    with puma.Runner(env) as runner:
        runner.start(RegionWriter("even", region, [0, 2]))
        runner.start(RegionWriter("odd", region, [1, 3]))
        whole = region.wait(timeout=30)
        runner.join()
    assert whole[:, 0].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 3, 3]
    assert region.completed == 4
    region.reset()
    with pytest.raises(puma.BufferEmpty, match="0 of 4 parts were done within 0.01 s"):
        region.wait(timeout=0.01)
    with pytest.raises(IndexError, match="parts 0 to 3"):
        region.part(4)


# --- the pool's owner killed ----------------------------------------------------------------------
OWNER_SCRIPT = """
import os, sys, numpy as np, puma
from puma._frames import memory
memory._FORCE_NAMED = sys.argv[1] == "named"

class Holder(puma.Runnable):
    def __init__(self, pool):
        super().__init__("holder")
        self._pool = pool

    def execute(self):
        frame = self._pool.borrow()
        frame.array[:] = 1
        self.send_status("pid", os.getpid())
        self.wait_for_stop()

if __name__ == "__main__":
    env = puma.ProcessEnvironment("forkserver")
    pool = env.frame_pool(1 << 20, np.uint8, 2, "owner")
    with puma.Runner(env) as runner:
        holder = runner.start(Holder(pool))
        print(holder.wait_status("pid", timeout=30), flush=True)
        runner.join()
"""


@pytest.mark.timeout(90)
@pytest.mark.parametrize("backing", ["anonymous", "named"])
def test_killing_the_pools_owner_leaves_nothing_behind(tmp_path: Path, backing: str) -> None:
    script = tmp_path / "owner.py"
    script.write_text(OWNER_SCRIPT)
    root = str(Path(__file__).resolve().parent.parent)
    owner = subprocess.Popen(
        [sys.executable, str(script), backing],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": root},
    )
    try:
        assert owner.stdout is not None
        child = int(owner.stdout.readline())
        named = {n for n in _shm() if n.startswith(f"puma-{owner.pid}-")}
        assert len(named) == (1 if backing == "named" else 0)
        owner.kill()
        owner.wait(30)
        psutil.wait_procs([psutil.Process(child)], timeout=30)  # the child follows its parent
        assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE
    finally:
        owner.kill()
        owner.wait(30)
    if backing == "named":  # the owner could not unlink it: the next pool made sweeps it away
        assert named <= _shm()
        _memory.sweep_dead_owners()
    assert not {n for n in _shm() if n.startswith(f"puma-{owner.pid}-")}


def test_a_token_written_twice_does_not_lend_a_chunk_twice(process_env: puma.ProcessEnvironment) -> None:
    # A release writes its token without the pool's lock; a rebuild of the free list (a death) at the
    # same moment may write the same token: a borrower skips a token whose chunk is not free.
    pool = process_env.frame_pool(8, np.uint8, 1, "twice")
    pool.borrow(timeout=5).release()
    os.write(pool._tokens_w, struct.pack("=i", 0))  # type: ignore[attr-defined]  # the duplicate
    first = pool.try_borrow()
    assert first is not None and first.index == 0
    assert pool.try_borrow() is None
    first.release()
    again = pool.try_borrow()
    assert again is not None and pool.try_borrow() is None
    again.release()
    pool.close()
