"""Edge cases a user meets: one error reported once, clean exits, bounded joins after a stop, clear hints."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _helpers import Collector, Producer, Squarer, Stuck, WaitForCommands

import puma

pytestmark = pytest.mark.timeout(90)

HERE = Path(__file__).parent


class _FailsInsideItsPublisher(puma.Runnable):
    """Publishes 0..4 inside ``with self.publisher(...)`` (the README's pattern), then raises."""

    def __init__(self, out: puma.Buffer[int]) -> None:
        super().__init__("producer", outputs=[out])
        self._out = out

    def execute(self) -> None:
        with self.publisher(self._out) as pub:
            for i in range(10):
                if i == 5:
                    raise ValueError("sensor broke at 5")
                pub.publish(i)


def test_an_error_raised_inside_a_publisher_block_is_reported_once_as_its_own(env: puma.Environment) -> None:
    """Not twice, and not as the downstream stage's error: one ValueError, noted with the producer."""
    with pytest.raises(ValueError, match="sensor broke at 5") as info:
        with puma.Runner(env) as runner:
            raw, squared = env.buffer(int, 4, "raw"), env.buffer(int, 4, "squared")
            runner.start(_FailsInsideItsPublisher(raw))
            runner.start(Squarer(raw, squared))
            sink = runner.start(Collector(squared))
            runner.join()
    notes = [note for note in info.value.__notes__ if note.startswith("raised in runnable")]
    assert len(notes) == 1
    assert "'producer'" in notes[0]
    assert sink.status("values") == [i * i for i in range(5)]


def test_the_main_program_reading_a_failing_stream_gets_the_one_error(env: puma.Environment) -> None:
    """The error it receives from the buffer and the producer's own are one failure, not a group."""
    values: list[int] = []
    with pytest.raises(ValueError, match="sensor broke at 5"):
        with puma.Runner(env) as runner:
            raw = env.buffer(int, 4, "raw")
            runner.start(_FailsInsideItsPublisher(raw))
            for value in raw.subscribe():
                values.append(value)
    assert values == [0, 1, 2, 3, 4]


def test_join_after_stop_is_bounded_by_the_stop_timeout(env: puma.Environment) -> None:
    """A runnable that ignores its stop is terminated (a thread: reported) once stop_timeout has passed."""
    Stuck.release.clear()
    runner = puma.Runner(env, stop_timeout=0.5)
    stuck = runner.start(Stuck())
    stuck.wait_status("pid", timeout=60)
    runner.stop()
    with pytest.raises(puma.StuckRunnableError, match=r"did not end within 0.5 s of being asked to stop"):
        runner.join()  # no timeout given: bounded all the same
    Stuck.release.set()  # lets the abandoned thread end, for the leak check
    runner.close()
    assert not runner.is_alive()


class _Exits(puma.Runnable):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"exits-{code}")
        self._code = code

    def execute(self) -> None:
        sys.exit(self._code)


def test_a_main_program_whose_stderr_is_no_file_still_runs_process_runnables(
    env: puma.Environment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A notebook's or a test capture's ``sys.stderr`` has no file descriptor: a forked child inherits it."""
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    buffer = env.buffer(int, 4, "numbers")
    with puma.Runner(env) as runner:
        runner.start(Producer(buffer, 5))
        collector = runner.start(Collector(buffer))
        runner.join(timeout=60)
    assert collector.status("values") == list(range(5))


@pytest.mark.parametrize("code", [None, 0])
def test_sys_exit_with_success_in_execute_is_a_clean_end(env: puma.Environment, code: int | None) -> None:
    with puma.Runner(env) as runner:
        runner.start(_Exits(code))
        runner.join(timeout=60)


def test_sys_exit_with_a_failure_code_in_execute_is_an_error(env: puma.Environment) -> None:
    """An error naming the runnable, chained from the SystemExit: it does not end the main program."""
    with pytest.raises(puma.PumaError, match=r"runnable 'exits-3' raised sys.exit\(3\)") as info:
        with puma.Runner(env) as runner:
            runner.start(_Exits(3))
            runner.join(timeout=60)
    assert isinstance(info.value.__cause__, SystemExit) and info.value.__cause__.code == 3


class _CommandExits(WaitForCommands):
    @puma.run_in_child_scope
    def leave(self, code: int) -> None:
        sys.exit(code)


def test_a_command_raising_system_exit_returns_it_and_the_runnable_goes_on(env: puma.Environment) -> None:
    with puma.Runner(env) as runner:
        worker = runner.start_blocking(_CommandExits())
        with pytest.raises(puma.PumaError, match=r"command 'leave' of runnable .* raised sys.exit\(5\)") as info:
            worker.leave(5)
        assert isinstance(info.value.__cause__, SystemExit) and info.value.__cause__.code == 5
        assert worker.add(2) == 2  # still serving


def _run(script: str, method: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), method],
        cwd=str(HERE),
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(HERE)},
        check=False,
    )


def test_errors_of_a_runner_left_open_until_exit_are_written_to_stderr() -> None:
    result = _run(
        """
        import sys, puma
        from _helpers import Raises
        if __name__ == "__main__":
            runner = puma.Runner(puma.ProcessEnvironment(sys.argv[1]))
            raises = runner.start(Raises(ValueError("nobody closed me")))
            try:
                raises.wait_status("never sent", timeout=60)  # returns (raising) once it has failed
            except puma.RunnableNotRunningError:
                pass
        """,
        "fork",
    )
    assert "puma: a Runner was left open until exit" in result.stderr
    assert "ValueError: nobody closed me" in result.stderr


@pytest.mark.parametrize("method", ["forkserver", "spawn"])
def test_a_child_that_dies_importing_the_main_script_gets_a_hint(tmp_path: Path, method: str) -> None:
    """The classic spawn mistake: no ``if __name__ == "__main__":`` guard around the Runner."""
    script = tmp_path / "no_guard.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(HERE)!r})
            import puma
            from _helpers import Noop
            with puma.Runner(puma.ProcessEnvironment({method!r})) as runner:
                runner.start(Noop())
                runner.join(timeout=60)
            """
        )
    )
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False)
    assert "before it started" in result.stderr
    assert 'if __name__ == "__main__":' in result.stderr
