"""The multicaster: fan-out of one buffer to several, with back-pressure."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from puma._buffers.base import Buffer
from puma._frames.frame import Frame, fan_out
from puma._ready.servicing import DEFAULT_BATCH_SIZE, SingleBufferServicingRunnable

__all__ = ["Multicaster"]

T = TypeVar("T")


class Multicaster(SingleBufferServicingRunnable[T]):
    """Copies every value of one input buffer to each of several output buffers, in order.

    Each output gets every value, in input order.  A full output blocks the
    multicaster, which then stops reading its input, which fills and blocks its
    publishers: the slowest consumer sets the pace (back-pressure), nothing is
    dropped and nothing queues without bound.  When the input completes every
    output is completed, with the input's error if it had one.

    In a :class:`~puma.ThreadEnvironment` the outputs receive the same object
    (treat values as read-only, or pass ``copy_values=True``); across
    processes each output always gets its own copy.

    Make one with :meth:`Environment.multicaster` and start it with the Runner.

    Args:
        input: the buffer to copy from.
        outputs: the buffers to copy to (at least one, each once).
        name: the runnable's name.
        copy_values: give each output after the first its own
            ``copy.deepcopy`` of the value (only matters in threads: a
            process buffer copies anyway).
        batch_size: most values moved per hand-over.
    """

    def __init__(
        self,
        input: Buffer[T],
        outputs: Sequence[Buffer[T]],
        name: str = "multicaster",
        *,
        copy_values: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        outs = list(outputs)
        if not outs:
            raise ValueError(f"multicaster {name!r} needs at least one output buffer")
        for i, out in enumerate(outs):
            if any(out is other for other in outs[:i]):
                raise ValueError(f"multicaster {name!r}: buffer {getattr(out, 'name', out)!r} is given twice")
            if out is input:
                raise ValueError(f"multicaster {name!r}: its input cannot also be an output")
        super().__init__(name, input, outputs=outs, batch_size=batch_size)
        self._copy_values = copy_values

    def _puma_deliver(self, handler: Callable[[Any], Any], values: list[Any]) -> None:
        first = True
        publishers = self._puma_publishers
        # A frame goes to every output as a read-only share of the same chunk (returned when the last
        # reader releases it); other values as they are.
        for pub, column in zip(publishers, fan_out(values, len(publishers)), strict=True):
            # a process buffer pickles each value anyway: every output already gets its own copy
            if first or not self._copy_values or pub.buffer._crossable():
                pub.publish_many(column)
            else:
                pub.publish_many([v if type(v) is Frame else copy.deepcopy(v) for v in column])
            first = False

    def on_value(self, value: T) -> Any:
        """Not used: values are copied in batches (see the class)."""
        return None
