"""A runnable with no inputs that reacts only to commands (and, optionally, ticks)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from puma._buffers.base import Buffer
from puma._ready.servicing import ServicingRunnable

__all__ = ["CommandDrivenRunnable"]


class CommandDrivenRunnable(ServicingRunnable):
    """Has no inputs: it waits for its commands, and its ticks if it has an interval.

    Give it :func:`~puma.run_in_child_scope` methods; each runs in the child
    when the parent calls it.  With ``tick_interval`` it also calls
    :meth:`on_tick` on schedule, whose non-``None`` result is published to
    every output: a paced source (e.g. a file played back at 50 Hz, with
    pause/resume/seek commands) is a handful of lines.  It ends when stopped,
    when its own code calls :meth:`finish`, or on an error.

    Args:
        name: the runnable's name.
        outputs: the buffers it publishes to.
        tick_interval: seconds between :meth:`on_tick` calls, or ``None``.
        ticks_paused: start with ticks paused (until :meth:`resume_ticks`).

    Example::

        class Playback(puma.CommandDrivenRunnable):
            def __init__(self, out: puma.Buffer[int]) -> None:
                super().__init__("playback", outputs=[out], tick_interval=0.02)
                self._position = 0

            def on_tick(self, timestamp: float) -> int:
                self._position += 1
                return self._position

            @puma.run_in_child_scope
            def seek(self, position: int) -> None:
                self._position = position
    """

    def __init__(
        self,
        name: str,
        outputs: Iterable[Buffer[Any]] = (),
        *,
        tick_interval: float | None = None,
        ticks_paused: bool = False,
    ) -> None:
        super().__init__(name, outputs, end_when="never", tick_interval=tick_interval, ticks_paused=ticks_paused)
