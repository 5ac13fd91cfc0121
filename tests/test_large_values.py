"""Large arrays through ordinary process buffers: shared memory above a size threshold (issue 14, item 5)."""

from __future__ import annotations

import errno
import gc
import os
import signal
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
from _large_helpers import BIG, BigHolder, BigPublisher, big, is_big
from conftest import START_METHODS

import puma
from puma._frames import arena as _arena
from puma._frames import registry as _registry

pytestmark = pytest.mark.timeout(90)


def _arena_files() -> set[str]:
    """Descriptors and mappings of this process that are a buffer's arena."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "puma-buffer" in link:
            out.add(f"fd {fd}: {link}")
    with open("/proc/self/maps") as maps:
        out |= {line.split(None, 5)[-1].strip() for line in maps if "puma-buffer" in line}
    return out


def _busy(buffer: puma.Buffer[Any]) -> int:
    """Blocks of the buffer's arena not free (0 for a thread buffer)."""
    arena = getattr(buffer, "_arena", None)
    return 0 if arena is None else arena.usage()[1]


def test_publish_of_a_big_array_returns_while_nobody_reads(env: puma.Environment) -> None:
    before = _arena_files()
    with puma.Runner(env) as runner:
        frames = env.buffer(np.ndarray, 2, "frames")
        sub = frames.subscribe()  # the main program reads, but only once both publishes returned
        producer = runner.start(BigPublisher(frames, 2))
        # Both returned though nothing was read, and the third found the buffer full: capacity
        # counts values of any size.
        assert producer.wait_status("published", timeout=60) == (2, False)
        got = [sub.receive(timeout=30) for _ in range(2)]
        assert [is_big(a, i) for i, a in enumerate(got)] == [True, True]
        got[0] += 1  # writable, in place
        runner.join()
        with pytest.raises(puma.BufferCompleted):
            sub.receive(timeout=30)
        del got
        gc.collect()
        assert _busy(frames) == 0  # the blocks came back when the arrays went
    gc.collect()
    assert _arena_files() <= before


def test_values_of_every_size_arrive_intact(env: puma.Environment) -> None:
    sizes = [8, _arena.THRESHOLD - 8, _arena.THRESHOLD, 3 * _arena.THRESHOLD + 24, 1 << 21]
    with puma.Runner(env) as runner:
        values = env.buffer(object, 3, "values")
        sub = values.subscribe()
        runner.start(_Mixed(values, sizes))
        for n in sizes:
            value = sub.receive(timeout=30)
            assert value["n"] == n and is_big(value["big"], n, n) and value["small"].tolist() == [n, n]
        batch: list[Any] = []
        while len(batch) < len(sizes):  # the batch takes one permit a value: it comes in parts
            batch += sub.receive_many(len(sizes) - len(batch), timeout=30)
        assert [is_big(a, n, n) for a, n in zip(batch, sizes, strict=True)] == [True] * len(sizes)
        runner.join()
        del value, batch
        gc.collect()
        assert _busy(values) == 0


class _Mixed(puma.Runnable):
    def __init__(self, out: puma.Buffer[Any], sizes: list[int]) -> None:
        super().__init__("mixed", outputs=[out])
        self._out, self._sizes = out, sizes

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for n in self._sizes:  # a large buffer and a small one in one value
                pub.publish({"n": n, "big": big(n, n), "small": np.array([n, n])})
            pub.publish_many([big(n, n) for n in self._sizes])


def test_blocks_are_recycled(process_env: puma.ProcessEnvironment) -> None:
    with puma.Runner(process_env) as runner:
        frames = process_env.buffer(np.ndarray, 2, "recycled")
        sub = frames.subscribe()
        producer = runner.start(BigPublisher(frames, 2, more=20, nbytes=1 << 20))
        count = 0
        for value in sub:  # 22 or 23: the try_publish may have found room
            assert is_big(value, count, 1 << 20)
            count += 1
        assert count >= 22
        del value
        producer.wait_status("done", timeout=30)
        runner.join()
        carved, busy, _ = frames._arena.usage()  # type: ignore[attr-defined]
        assert busy == 0 and carved <= 4  # two in the buffer, one in each hand: not one per value


def test_a_killed_readers_arrays_come_back(process_env: puma.ProcessEnvironment) -> None:
    before = _arena_files()
    with puma.Runner(process_env) as runner:
        frames = process_env.buffer(np.ndarray, 2, "reader-killed")
        runner.start(BigPublisher(frames, 2, try_one=False))
        holder = runner.start(BigHolder(frames, 2))
        assert holder.wait_status("holding", timeout=60) == [True, True]
        assert _busy(frames) == 2
        os.kill(holder.wait_status("pid"), signal.SIGKILL)
        with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
            runner.join()
        assert _busy(frames) == 0
    gc.collect()
    assert _arena_files() <= before


def test_a_killed_publishers_values_still_arrive_and_nothing_is_left(process_env: puma.ProcessEnvironment) -> None:
    before = _arena_files()
    with puma.Runner(process_env) as runner:
        frames = process_env.buffer(np.ndarray, 2, "publisher-killed")
        sub = frames.subscribe()
        producer = runner.start(BigPublisher(frames, 2, more=1))  # the third waits for room
        assert producer.wait_status("published", timeout=60) == (2, False)
        os.kill(producer.wait_status("pid"), signal.SIGKILL)
        with pytest.raises(puma.ChildDiedError, match="SIGKILL"):
            runner.join()
        got = []
        with pytest.raises(puma.ChildDiedError):
            while True:
                got.append(sub.receive(timeout=30))
        assert [is_big(a, i) for i, a in enumerate(got)] == [True, True]
        del got
        gc.collect()
        assert _busy(frames) == 0
    gc.collect()
    assert _arena_files() <= before


def test_a_closed_buffers_values_in_flight_come_back(process_env: puma.ProcessEnvironment) -> None:
    buffer = process_env.buffer(np.ndarray, 2, "in-flight")
    arena = buffer._arena  # type: ignore[attr-defined]
    ref = arena.put(memoryview(big(0, 1 << 20)).cast("B"))
    assert ref is not None and arena.usage()[1] == 1
    _registry.free_frames_sent_to(buffer.supervision.key)  # what the Runner does when nobody reads it any more
    assert arena.usage()[1] == 0
    buffer.supervision.release()


@pytest.mark.parametrize("then", ["recover", "forget"])
def test_a_dead_readers_journal_keeps_its_blocks_until_it_is_read(tmp_path: Any, then: str) -> None:
    # A restartable reader died right after it read a large value's frame (its handle in the journal,
    # the block not claimed yet): the Runner keeps the block over the freeing of what the dead
    # process held, copies the value out for the next incarnation, then frees it (or frees it when
    # the journal is forgotten).
    import pickle

    from puma._buffers import process_large as _large
    from puma._buffers.journal import Journal
    from puma._buffers.process_publisher import ITEM
    from puma._core import codec

    buffer = puma.ProcessEnvironment().buffer(np.ndarray, 2, "journal")
    arena = buffer._arena  # type: ignore[attr-defined]
    stream = buffer.supervision
    try:
        assert buffer._take_free(1, os.getpid()) == 1  # type: ignore[attr-defined]  # the value's place
        oob: list[pickle.PickleBuffer] = []
        data = pickle.dumps(big(7, 1 << 20), 5, buffer_callback=oob.append)
        packed = _large.pack(arena, [b.raw() for b in oob], ITEM, data)
        assert packed is not None
        frame = codec.frame(_large.SHARED, b"".join(packed[0]))
        path = str(tmp_path / "journal")
        journal = Journal(path)
        journal.begin()
        journal.wrote(0, memoryview(frame))
        journal.close(unlink=False)
        dead = os.getpid() + 1  # (no process needed: only its pid is asked for)
        assert stream.finish_read(path, dead)
        _registry.free_frames_held_by(dead)  # what the Runner frees of a dead process next
        assert arena.usage()[1] == 1  # kept for the journal
        if then == "recover":
            found = stream.recover(path)
            assert found is not None
            _, _, in_flight, rest = found
            assert in_flight == [] and len(rest) == 1 and is_big(rest[0], 7, 1 << 20)
            assert buffer._free() == 2  # type: ignore[attr-defined]  # its place was given back too
        else:
            stream.forget(path)
        assert arena.usage()[1] == 0
    finally:
        stream.release()


def _no_memory(fd: int, offset: int, length: int) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.skipif("fork" not in START_METHODS, reason="the child must inherit the patched module")
@pytest.mark.parametrize("short", ["blocks", "memory"])
def test_a_full_arena_sends_values_through_the_pipe(monkeypatch: pytest.MonkeyPatch, short: str) -> None:
    # No block can be carved, or reserved (a forked child inherits the patch).
    if short == "blocks":
        monkeypatch.setattr(_arena, "_MAX_BLOCKS", 0)
    else:
        monkeypatch.setattr(os, "posix_fallocate", _no_memory)
    env = puma.ProcessEnvironment("fork")
    with puma.Runner(env) as runner:
        frames = env.buffer(np.ndarray, 2, "pipe")
        runner.start(BigPublisher(frames, 2, nbytes=1 << 20))
        holder = runner.start(BigHolder(frames, 2, 1 << 20))
        assert holder.wait_status("holding", timeout=60) == [True, True]
        assert frames._arena.usage()[0] == 0  # type: ignore[attr-defined]
        runner.stop()
        runner.join()


def test_size_classes_hold_their_values() -> None:
    last = 0
    for n in [1, _arena.THRESHOLD, _arena.THRESHOLD + 1, 100_000, 1 << 20, (1 << 20) + 1, BIG, 10**9]:
        c, size = _arena.size_class(n)
        assert size >= n and size < max(2 * n, 2 * _arena.THRESHOLD) and c >= last
        assert size % 4096 == 0
        last = c


def test_a_process_buffer_does_not_load_numpy() -> None:
    code = (
        "import sys, puma\n"
        "buffer = puma.ProcessEnvironment('fork').buffer(int, 2, 'ints')\n"
        "buffer.supervision.release()\n"
        "print('numpy' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "False"
