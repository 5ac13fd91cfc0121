"""The read journal: a restartable reader killed outright loses nothing, whatever the values it was reading.

A process reader under a restart policy keeps a journal of what it read
from the pipe (see :mod:`puma._buffers.journal`).  Killed while it holds a
value, the value is given again (at-least-once) or listed as a dead letter
with its error, for every kind of value a process buffer carries: small
ones, big ones (a frame larger than a read), NumPy arrays small and big
(their buffers out of band; a big one's in the buffer's shared-memory
arena, only handles in the pipe), batches.  Killed in the middle of reading a
frame, the Runner finishes that frame for it and the stream goes on.  Each
stage kills itself at a known point (no timing involved).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from _stages import VALUE_KINDS, Indices, Values, index_of

import puma
from puma._buffers.journal import journal_dir

COUNT = 12
AT = 5


def _run(env: puma.Environment, policy: puma.RestartPolicy, kind: str, how: str, marker: Path, at: int) -> list[int]:
    """values -> indices (dies once, ``how``, at value ``at``) -> the main program; the indices received."""
    with puma.Runner(env, on_failure=policy, stop_timeout=5) as runner:
        a = env.buffer(object, 4, "a")
        b = env.buffer(int, 4, "b")
        runner.start(Indices(a, b, how, str(marker), at))
        runner.start(Values(a, kind, COUNT))
        received = list(b.subscribe())
        runner.join()
    return received


def _no_journal_left() -> None:
    assert not list(Path(journal_dir()).glob(f"puma-journal-{os.getpid()}-*")), "journals left behind"


@pytest.mark.timeout(120)
@pytest.mark.parametrize("redeliver", [False, True], ids=["dead-letters", "at-least-once"])
@pytest.mark.parametrize("kind", VALUE_KINDS)
def test_the_value_in_flight_at_a_kill_survives_whatever_its_kind(
    process_env: puma.ProcessEnvironment, tmp_path: Path, kind: str, redeliver: bool
) -> None:
    policy = puma.RestartPolicy("one_for_one", redeliver=redeliver)
    received = _run(process_env, policy, kind, "holding", tmp_path / "marker", AT)
    stats = policy.statistics()
    assert stats.restarts == 1
    if redeliver:
        assert received == list(range(COUNT))  # nothing lost; the one in flight given again
        assert (stats.redelivered, stats.dead_letters) == (1, ())
    else:
        assert received == [i for i in range(COUNT) if i != AT]  # what it had read ahead came back
        (letter,) = stats.dead_letters
        assert index_of(letter.value) == AT
        assert isinstance(letter.error, puma.ChildDiedError)
    _no_journal_left()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("redeliver", [False, True], ids=["dead-letters", "at-least-once"])
@pytest.mark.parametrize("kind", ["inline", "small-array", "batch"])
def test_the_values_of_a_receive_many_in_flight_at_a_kill_survive(tmp_path: Path, kind: str, redeliver: bool) -> None:
    env = puma.ProcessEnvironment("fork")
    policy = puma.RestartPolicy("one_for_one", redeliver=redeliver)
    received = _run(env, policy, kind, "holding-many", tmp_path / "marker", AT)
    stats = policy.statistics()
    if redeliver:
        assert received == list(range(COUNT))
        assert stats.dead_letters == () and stats.redelivered >= 1
    else:
        lost = [index_of(d.value) for d in stats.dead_letters]
        assert AT in lost and lost == list(range(lost[0], lost[0] + len(lost)))  # the call's values, in order
        assert received == [i for i in range(COUNT) if i not in lost]
    _no_journal_left()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", ["big-bytes", "split-array"])
def test_a_reader_killed_in_the_middle_of_a_frame_is_finished_for_and_the_stream_goes_on(
    process_env: puma.ProcessEnvironment, tmp_path: Path, kind: str
) -> None:
    # Killed while it reads the frame after value 1 (holding the read lock, the pipe mid-frame):
    # the Runner reads the rest of that frame for it, the next incarnation receives it first.
    # (A big array is a small frame of handles to the buffer's arena: the pipe carries the raw
    # buffers of arrays under the arena's threshold, here many of them in one value.)
    policy = puma.RestartPolicy("one_for_one")
    received = _run(process_env, policy, kind, "mid-frame", tmp_path / "marker", 1)
    assert received == list(range(COUNT))
    stats = policy.statistics()
    assert stats.restarts == 1 and stats.dead_letters == ()  # the frame it died reading was not handed out
    assert isinstance(stats.crashes[0].error, puma.ChildDiedError)
    _no_journal_left()


@pytest.mark.timeout(120)
def test_a_killed_readers_large_values_are_given_again_and_their_shared_memory_freed(
    process_env: puma.ProcessEnvironment, tmp_path: Path
) -> None:
    # Its journal holds only handles to arena blocks: the Runner keeps those blocks when the
    # reader dies (before it frees what the dead process held), copies the values out for the
    # next incarnation, and frees them: nothing lost, nothing left held.
    policy = puma.RestartPolicy("one_for_one", redeliver=True)
    with puma.Runner(process_env, on_failure=policy, stop_timeout=5) as runner:
        a = process_env.buffer(object, 4, "a")
        b = process_env.buffer(int, 4, "b")
        runner.start(Indices(a, b, "holding", str(tmp_path / "marker"), AT))
        runner.start(Values(a, "big-array", COUNT))
        received = list(b.subscribe())
        runner.join()
        carved, busy, _ = a._arena.usage()  # type: ignore[attr-defined]
    assert received == list(range(COUNT))
    assert policy.statistics().redelivered == 1
    assert carved > 0 and busy == 0
    _no_journal_left()


@pytest.mark.timeout(120)
def test_a_read_that_cannot_be_recovered_breaks_the_stream_and_says_so(tmp_path: Path) -> None:
    # Killed while a read of the pipe is under way: what it took is unknown.  The stream is broken,
    # as without a journal: the error says so, the log says why, and nothing hangs.
    env = puma.ProcessEnvironment("fork")
    policy = puma.RestartPolicy("one_for_one")
    with puma.logging.capture(logging.ERROR, "puma.supervision") as logs, pytest.raises(BaseException) as caught:
        _run(env, policy, "small-array", "mid-read", tmp_path / "marker", 2)
    errors = caught.value.exceptions if isinstance(caught.value, BaseExceptionGroup) else (caught.value,)
    assert any(isinstance(e, puma.ChildDiedError) for e in errors), errors
    text = "\n".join(r.getMessage() for r in logs)
    assert "died in the middle of reading a value from buffer 'a'" in text
    assert policy.statistics().restarts == 0
    _no_journal_left()


def test_a_journal_that_cannot_grow_says_its_fill_is_lost_instead_of_crashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A full /dev/shm: the room for a big value is refused up front (no SIGBUS on the copy later);
    # the fill is marked lost, so a death now loses it, as the docs say, and the pipe is not
    # deemed at a frame boundary.
    from puma._buffers import journal as _journal

    path = str(tmp_path / "journal")
    journal = _journal.Journal(path)
    try:

        def no_room(fd: int, offset: int, length: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(_journal.os, "posix_fallocate", no_room)
        journal.begin()
        journal.wrote(0, memoryview(b"x" * 100))
        with puma.logging.capture(logging.WARNING, "puma.supervision") as logs:
            journal.expect(_journal.DATA * 4)
            journal.wrote(100, memoryview(bytes(_journal.DATA)))
        found = _journal.read(path)
        assert found is not None
        words, data = found
        assert words[_journal.VALID] == 2 and data == b""
        assert any("could not grow" in r.getMessage() for r in logs)
        journal.begin()  # the next fill is kept again
        journal.wrote(0, memoryview(b"y" * 10))
        found = _journal.read(path)
        assert found is not None and found[1] == b"y" * 10
    finally:
        journal.close()
