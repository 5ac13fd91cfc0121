"""puma.batch: results and failure records, in threads and every start method; deaths, timeouts, retries."""

from __future__ import annotations

import ctypes
import itertools
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import puma
from puma import batch
from tests.conftest import make_env

# --- what the workers run (module level: they cross to spawn and forkserver children) ---------------


def square_or_raise(x: int) -> int:
    if x == 15:
        raise ValueError(f"bad input {x}")
    return x * x


def kill_self_at_15(x: int) -> int:
    if x == 15:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * x


def segfault_at_15(x: int) -> int:
    if x == 15:
        ctypes.string_at(0)
    return x * x


def hang_at_5(x: int) -> int:
    if x == 5:
        time.sleep(60)  # a hang: the timeout replaces the worker long before this returns
    return x * x


def kill_once(arg: tuple[int, str]) -> int:
    x, marker = arg
    if x == 3 and not os.path.exists(marker):
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def flaky(arg: tuple[int, str]) -> int:
    """Raises OSError the first time it sees an input; input 0 always fails."""
    x, folder = arg
    marker = Path(folder) / str(x)
    if x == 0 or not marker.exists():
        marker.touch()
        raise OSError(f"flaky {x}")
    return x


def whoami(x: int) -> int:
    return os.getpid()


def load(clip: dict) -> dict:
    return {"pixels": [clip["input"]] * 3}


def subtract_dark(clip: dict) -> None:
    clip["pixels"] = [p - 1 for p in clip["pixels"]]


def check(clip: dict) -> None:
    if clip["input"] == 4:
        raise RuntimeError("corrupt image")
    clip["ok"] = True


def identity(x: int) -> int:
    return x


# --- results and raised errors ---------------------------------------------------------------------


def test_map_ordered_with_a_raise_mid_chunk(env: puma.Environment) -> None:
    results = batch.map(square_or_raise, range(40), workers=2, environment=env, chunk_size=10)
    assert len(results) == 40
    failure = results[15]
    assert isinstance(failure, batch.Failure)
    assert (failure.index, failure.input_repr, failure.attempts, failure.signal) == (15, "15", 1, None)
    assert isinstance(failure.error, ValueError) and "bad input 15" in str(failure.error)
    assert "square_or_raise" in failure.report()  # the worker's traceback
    assert failure.worker.startswith("batch-worker-")
    assert [r for i, r in enumerate(results) if i != 15] == [i * i for i in range(40) if i != 15]


def test_imap_unordered_gives_every_result_once(env: puma.Environment) -> None:
    out = list(batch.imap_unordered(square_or_raise, range(60), workers=2, environment=env))
    values = sorted(r for r in out if not isinstance(r, batch.Failure))
    failures = [r for r in out if isinstance(r, batch.Failure)]
    assert values == sorted(i * i for i in range(60) if i != 15)
    assert [f.index for f in failures] == [15]


def test_imap_is_ordered_and_lazy_over_an_infinite_generator(env: puma.Environment) -> None:
    pulled = [0]
    taken = 0

    def source():  # counts what the map took from it
        for i in itertools.count():
            pulled[0] = i + 1
            yield i

    results = batch.imap(identity, source(), workers=2, environment=env, max_in_flight=64)
    for expected, value in zip(range(3000), results, strict=False):
        assert value == expected
        taken += 1
        assert pulled[0] - taken <= 64  # never more than max_in_flight ahead of the caller
    results.close()  # stops the workers
    assert taken == 3000


def slow_after_3(x: int) -> int:
    if x >= 3:
        time.sleep(60)  # the caller stops iterating long before this returns
    return x


def test_leaving_an_imap_early_ends_its_workers(process_env: puma.ProcessEnvironment) -> None:
    results = batch.imap(slow_after_3, range(100), workers=2, environment=process_env, chunk_size=1)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()  # the workers in their long inputs are ended now
    # (the leak check after the test fails it if any worker process is left)


def test_errors_raise_groups_the_failures(env: puma.Environment) -> None:
    with pytest.raises(batch.BatchError) as caught:
        batch.map(square_or_raise, range(20), workers=2, environment=env, errors="raise")
    error = caught.value
    assert [f.index for f in error.failures] == [15] and isinstance(error.exceptions[0], ValueError)
    assert error.results[3] == 9 and not error.stopped_early


def test_max_failures_stops_early() -> None:
    def bad(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(batch.BatchError) as caught:
        batch.map(bad, range(10_000), workers=2, environment="thread", max_failures=3, chunk_size=1)
    assert caught.value.stopped_early and len(caught.value.failures) >= 3
    assert len(caught.value.results) < 10_000


def test_chain_reports_the_task_and_the_clipboard(env: puma.Environment) -> None:
    results = batch.chain([load, subtract_dark, check], range(6), workers=2, environment=env)
    assert results[2] == {"input": 2, "pixels": [1, 1, 1], "ok": True}
    failure = results[4]
    assert isinstance(failure, batch.Failure)
    assert failure.task == "check" and isinstance(failure.error, RuntimeError)
    assert failure.clipboard == {"input": 4, "pixels": [3, 3, 3]}
    assert "clipboard" in failure.report() and "[3, 3, 3]" in failure.report()


# --- deaths, poison pills, timeouts, retries, recycling -------------------------------------------


@pytest.mark.parametrize("fn, signame", [(kill_self_at_15, "SIGKILL"), (segfault_at_15, "SIGSEGV")])
def test_a_death_mid_chunk_costs_exactly_that_input(process_env: puma.ProcessEnvironment, fn, signame) -> None:
    results = batch.map(fn, range(40), workers=2, environment=process_env, chunk_size=10, poison_after=1)
    failures = [r for r in results if isinstance(r, batch.Failure)]
    assert [f.index for f in failures] == [15]
    assert failures[0].signal == signame and isinstance(failures[0].error, batch.WorkerDied)
    assert signame in str(failures[0].error)
    assert [r for i, r in enumerate(results) if i != 15] == [i * i for i in range(40) if i != 15]


def test_an_input_that_kills_two_workers_is_a_poison_pill(process_env: puma.ProcessEnvironment) -> None:
    results = batch.map(kill_self_at_15, range(30), workers=2, environment=process_env, chunk_size=10)
    failure = results[15]
    assert isinstance(failure, batch.Failure) and failure.attempts == 2
    assert isinstance(failure.error, batch.WorkerDied) and failure.error.poison
    assert "poison pill" in str(failure.error)
    assert sum(isinstance(r, batch.Failure) for r in results) == 1


def test_a_death_is_retried_in_a_new_worker(process_env: puma.ProcessEnvironment, tmp_path: Path) -> None:
    marker = str(tmp_path / "killed")
    results = batch.map(kill_once, [(i, marker) for i in range(12)], workers=2, environment=process_env, chunk_size=4)
    assert results == list(range(12))


def block_at_5_once(arg: tuple[int, str]) -> int:
    """Input 5, the first time, tells the test its pid through a FIFO, then waits to be killed."""
    x, fifo = arg
    marker = fifo + ".seen"
    if x == 5 and not os.path.exists(marker):
        Path(marker).touch()
        with open(fifo, "w") as out:
            out.write(f"{os.getpid()}\n")
        time.sleep(60)
    return x


def test_a_worker_killed_from_outside_mid_chunk_costs_nothing_but_a_retry(
    process_env: puma.ProcessEnvironment, tmp_path: Path
) -> None:
    import threading

    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    got: list[object] = []
    items = [(i, fifo) for i in range(20)]
    mapper = threading.Thread(
        target=lambda: got.append(batch.map(block_at_5_once, items, workers=2, environment=process_env, chunk_size=10))
    )
    mapper.start()
    with open(fifo) as inp:
        pid = int(inp.readline())
    os.kill(pid, signal.SIGKILL)  # as the OOM killer would, in the middle of a chunk
    mapper.join(30)
    assert not mapper.is_alive()
    assert got == [list(range(20))]  # input 5 was tried again in a new worker; nothing else was lost


def test_a_hang_times_out_and_costs_that_input(process_env: puma.ProcessEnvironment) -> None:
    results = batch.map(hang_at_5, range(20), workers=2, environment=process_env, chunk_size=10, timeout=0.5)
    failure = results[5]
    assert isinstance(failure, batch.Failure) and isinstance(failure.error, batch.ItemTimeout)
    assert [r for i, r in enumerate(results) if i != 5] == [i * i for i in range(20) if i != 5]


def test_a_timeout_can_be_retried() -> None:
    env = puma.ProcessEnvironment("fork")
    results = batch.map(
        hang_at_5, range(8), workers=2, environment=env, timeout=0.3, retries=1, retry_on=batch.ItemTimeout
    )
    assert isinstance(results[5], batch.Failure) and results[5].attempts == 2  # tried twice, hung twice
    assert isinstance(results[5].error, batch.ItemTimeout)


def test_retries_for_chosen_exception_types(env: puma.Environment, tmp_path: Path) -> None:
    items = [(i, str(tmp_path)) for i in range(8)]
    results = batch.map(flaky, items, workers=2, environment=env, retries=2, retry_on=OSError, chunk_size=3)
    assert results[1:] == list(range(1, 8))
    assert isinstance(results[0], batch.Failure) and results[0].attempts == 3
    not_retried = batch.map(flaky, [(0, str(tmp_path))], workers=1, environment=env, retry_on=KeyError, retries=3)
    assert isinstance(not_retried[0], batch.Failure) and not_retried[0].attempts == 1


def test_max_items_replaces_the_worker(process_env: puma.ProcessEnvironment) -> None:
    pids = batch.map(whoami, range(60), workers=2, environment=process_env, chunk_size=5, max_items_per_worker=10)
    assert len(pids) == 60 and len(set(pids)) >= 6
    assert max(pids.count(pid) for pid in set(pids)) <= 10


def test_max_rss_replaces_the_worker() -> None:
    env = puma.ProcessEnvironment("fork")
    pids = batch.map(whoami, range(20), workers=1, environment=env, chunk_size=5, max_rss_per_worker=1)
    # every worker is over the limit at its first chunk: it runs the one queued behind it, then ends
    assert len(set(pids)) >= 2 and max(pids.count(pid) for pid in set(pids)) <= 10


def lock_at_3(x: int) -> object:
    import threading

    return threading.Lock() if x == 3 else x


def test_what_will_not_pickle_is_that_input_s_failure(process_env: puma.ProcessEnvironment) -> None:
    import threading

    results = batch.map(lock_at_3, range(6), workers=2, environment=process_env)
    assert isinstance(results[3], batch.Failure) and "cannot be sent to the parent" in str(results[3].error)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 1, 2, 4, 5]
    sent = batch.map(identity, [1, threading.Lock(), 3], workers=2, environment=process_env)
    assert sent[0] == 1 and sent[2] == 3
    assert isinstance(sent[1], batch.Failure) and "cannot be sent to a worker" in str(sent[1].error)


def test_empty_and_unsized_inputs(env: puma.Environment) -> None:
    assert batch.map(identity, [], environment=env) == []
    assert list(batch.imap_unordered(identity, iter([]), environment=env)) == []
    assert batch.map(identity, (i for i in range(5)), workers=3, environment=env) == list(range(5))


def test_the_progress_bar_shows_done_and_failed(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("tqdm")  # the test extra installs it (puma[batch])
    batch.map(square_or_raise, range(40), workers=2, environment="thread", chunk_size=5, progress=True)
    shown = capsys.readouterr().err
    assert "40/40" in shown and "failed=1" in shown


def sleep_10ms(x: int) -> int:
    time.sleep(0.01)
    return x


def test_a_chunk_s_indices_cross_as_a_range_only_when_they_follow_each_other() -> None:
    from puma._batch.seats import contiguous

    assert contiguous([3, 4, 5]) == range(3, 6)
    assert contiguous([3, 9, 5]) == [3, 9, 5] and contiguous([5, 3, 4]) == [5, 3, 4]


def test_chunks_tune_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    from puma._batch import engine

    sizes: list[int] = []
    send = engine.Engine._send

    def record(self, seat, indices, args):  # type: ignore[no-untyped-def]
        sizes.append(len(indices))
        send(self, seat, indices, args)

    monkeypatch.setattr(engine.Engine, "_send", record)
    assert batch.map(identity, range(20_000), workers=2, environment="thread") == list(range(20_000))
    assert sizes[0] == 1 and max(sizes) > 1000 and len(sizes) < 200  # small at first, then large
    sizes.clear()
    assert batch.map(sleep_10ms, range(40), workers=2, environment="thread") == list(range(40))
    assert max(sizes) <= 8  # inputs of 10 ms: chunks of a few tens of ms
    sizes.clear()
    batch.map(identity, range(100), workers=2, environment="thread", chunk_size=7)
    assert set(sizes[:-1]) == {7}  # fixed on request


# --- inline, debug, replay, bad input ---------------------------------------------------------------


def test_inline_gives_the_same_records_with_real_frames() -> None:
    results = batch.map(square_or_raise, range(20), environment="inline")
    failure = results[15]
    assert isinstance(failure, batch.Failure) and failure.worker == "inline"
    assert failure.error.__traceback__ is not None
    with pytest.raises(ValueError, match="bad input 15"):
        batch.map(square_or_raise, range(20), debug=True)


REPLAY_SCRIPT = """
import sys
from puma import batch

def parse(line):
    fields = line.split(",")
    return int(fields[1])

if __name__ == "__main__":
    lines = ["a,1", "b,2", "c,x"]
    if sys.argv[2] == "replay":
        results = batch.map(parse, lines, workers=2, environment=sys.argv[1])
        print("FAILED", [f.index for f in results if isinstance(f, batch.Failure)], flush=True)
        batch.replay(parse, results)
    else:
        results = batch.map(parse, lines, workers=2, environment=sys.argv[1], post_mortem=True)
        print("FAILED", [f.index for f in results if isinstance(f, batch.Failure)], flush=True)
    print("REPLAYED", flush=True)
"""


@pytest.mark.parametrize("how", ["replay", "post_mortem"])
@pytest.mark.parametrize("kind", ["thread", "process"])
def test_replay_opens_pdb_on_the_first_failure(tmp_path: Path, kind: str, how: str) -> None:
    import subprocess

    script = tmp_path / "replay_me.py"
    script.write_text(REPLAY_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), kind, how],
        input="p fields\nq\n",
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "FAILED [2]" in done.stdout
    assert "['c', 'x']" in done.stdout  # pdb printed a local of the failing frame
    assert "REPLAYED" in done.stdout


def test_replay_refuses_a_death() -> None:
    died = batch.Failure(3, "3", batch.WorkerDied(3, 123, -9, 2, True), signal="SIGKILL")
    with pytest.raises(puma.UsageError, match="kill or hang this process"):
        batch.replay(kill_self_at_15, [0, died])


def test_bad_arguments_say_what_is_wrong() -> None:
    with pytest.raises(puma.UsageError, match="process workers"):
        batch.map(identity, range(3), environment="thread", timeout=1.0)
    with pytest.raises(puma.UsageError, match="chunk_size"):
        batch.map(identity, range(3), environment="thread", chunk_size=0)
    with pytest.raises(puma.UsageError, match="workers"):
        batch.map(identity, range(3), environment="thread", workers=0)
    with pytest.raises(puma.NotPicklableError):
        batch.map(lambda x: x, range(3), environment=make_env("fork"), workers=1)


def _descriptors() -> set[str]:
    """Open descriptors, except multiprocessing's shared heap arenas (it keeps and reuses them)."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if not target.startswith("/dev/shm/pym-"):
            found.add(f"{fd} {target}")
    return found


def test_many_maps_leave_no_descriptor_behind() -> None:
    env = puma.ProcessEnvironment("fork")
    batch.map(identity, range(10), workers=2, environment=env)
    before = _descriptors()
    for _ in range(15):
        assert batch.map(identity, range(50), workers=2, environment=env) == list(range(50))
    assert _descriptors() <= before
