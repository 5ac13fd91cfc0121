"""Ready-made runnables that service input buffers: the user writes only the per-value code.

* :class:`MultiBufferServicingRunnable`: several inputs, each routed to a
  subscriber (an object with ``on_value``/``on_complete``, or a callable).
* :class:`SingleBufferServicingRunnable`: one input; override ``on_value``.

Both block in one wait over all their inputs, their commands and their next
tick deadline (see :mod:`puma._ready.ticking`), so an idle runnable costs nothing
and never polls.  Values are taken in batches of at most ``batch_size`` per
input, round-robin between inputs; pending commands and due ticks are handled
between batches, so a command never waits behind a backlog: at most
``batch_size`` values are processed between its arrival and its run.

Errors: an error arriving on an input (a publisher completed with it) is
given to that input's subscriber (``on_complete(error)``), then ends the
runnable with it; an error raised by the user's code ends it too.  Either
way puma completes every output with the error, so it travels downstream
through the chain, and the Runner reports it to the parent once, where it
arose: the copies re-raised by the stages downstream are recognised and not
reported again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, Literal, Protocol, TypeVar, runtime_checkable

from puma._buffers.base import Buffer, Publisher, Subscription
from puma._core.errors import BufferCompleted, BufferEmpty, PumaError
from puma._ready.ticking import TickingRunnable, TickSchedule, tick_clock
from puma._runnable import context as _context

__all__ = ["BufferSubscriber", "MultiBufferServicingRunnable", "ServicingRunnable", "SingleBufferServicingRunnable"]

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)

DEFAULT_BATCH_SIZE = 32


@runtime_checkable
class BufferSubscriber(Protocol[T_contra]):
    """What receives one input's values in a :class:`MultiBufferServicingRunnable`.

    Any object with these two methods will do; a plain callable taking the
    value can stand in for one (its completion is then ignored).
    """

    def on_value(self, value: T_contra) -> Any:
        """Handle one value. A result other than ``None`` is published to every output."""

    def on_complete(self, error: BaseException | None) -> None:
        """The input has ended: ``error`` is ``None`` when it completed normally."""


SubscriberLike = BufferSubscriber[Any] | Callable[[Any], Any]
"""A :class:`BufferSubscriber`, or a callable taking each value."""


def _handlers(subscriber: Any) -> tuple[Callable[[Any], Any], Callable[[BaseException | None], None] | None]:
    on_value = getattr(subscriber, "on_value", None)
    if callable(on_value):
        on_complete = getattr(subscriber, "on_complete", None)
        return on_value, on_complete if callable(on_complete) else None
    if callable(subscriber):
        return subscriber, None
    raise TypeError(f"a subscriber must have an on_value(value) method or be callable, not {type(subscriber).__name__}")


class _OwnMethod:
    """Stands for a bound method of the runnable itself, resolved on the object that runs.

    The child runs on a copy of the runnable (pickled, or cloned for a thread),
    so a bound method kept from the parent would call the parent's object.
    """

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getstate__(self) -> str:
        return self.name

    def __setstate__(self, state: str) -> None:
        self.name = state


class _Input:
    """One serviced input while the runnable runs."""

    __slots__ = ("buffer", "on_complete", "on_value", "subscription")

    def __init__(self, buffer: Buffer[Any], subscriber: Any) -> None:
        self.buffer = buffer
        self.on_value, self.on_complete = _handlers(subscriber)
        self.subscription: Subscription[Any] = buffer.subscribe()


class ServicingRunnable(TickingRunnable):
    """The servicing loop shared by the ready-made runnables (inputs, commands, ticks).

    Subclass :class:`MultiBufferServicingRunnable`,
    :class:`SingleBufferServicingRunnable` or
    :class:`~puma.CommandDrivenRunnable` rather than this.

    Args:
        name: the runnable's name.
        outputs: the buffers it publishes to.
        end_when: ``"all"`` (end once every input has ended), ``"any"`` (once
            one has), or ``"never"`` (only when stopped or :meth:`finish` is
            called).
        tick_interval: seconds between :meth:`on_tick` calls, or ``None``.
        ticks_paused: start with ticks paused.
        batch_size: most values taken from one input before commands and
            ticks are looked at again.
    """

    def __init__(
        self,
        name: str,
        outputs: Iterable[Buffer[Any]] = (),
        *,
        end_when: Literal["all", "any", "never"] = "all",
        tick_interval: float | None = None,
        ticks_paused: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        super().__init__(name, outputs, tick_interval=tick_interval, ticks_paused=ticks_paused)
        if end_when not in ("all", "any", "never"):
            raise ValueError(f"end_when must be 'all', 'any' or 'never', not {end_when!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self._puma_end_when = end_when
        self._puma_batch = batch_size
        self._puma_inputs: list[tuple[Buffer[Any], Any]] = []
        self._puma_finishing = False
        self._puma_publishers: list[Publisher[Any]] = []

    # --- hooks ---------------------------------------------------------------------
    def on_start(self) -> None:
        """Called in the child before servicing begins (inputs are subscribed already)."""

    def on_end(self) -> None:
        """Called in the child once servicing has ended, whatever the reason, before outputs complete."""

    # --- for the user's code, in the child -------------------------------------------
    def finish(self) -> None:
        """End servicing normally after the current call returns (outputs then complete)."""
        self._puma_finishing = True

    def publish(self, value: Any, output: Buffer[Any] | None = None) -> None:
        """Publish ``value`` to ``output``, or to every output when it is ``None``."""
        if output is not None:
            self.publisher(output).publish(value)
            return
        for pub in self._puma_publishers or [self.publisher(out) for out in self.outputs]:
            pub.publish(value)

    @property
    def batch_size(self) -> int:
        """Most values taken from one input between two looks at commands and ticks."""
        return self._puma_batch

    # --- the loop ------------------------------------------------------------------
    def _puma_add_input(self, buffer: Buffer[Any], subscriber: Any) -> None:
        if not isinstance(buffer, Buffer):
            raise TypeError(f"runnable {self.name!r}: an input must be a puma buffer, not {type(buffer).__name__}")
        if any(buffer is existing for existing, _ in self._puma_inputs):
            raise ValueError(f"runnable {self.name!r}: buffer {buffer.name!r} is already an input")
        if subscriber is not None:
            _handlers(subscriber)  # fail now, in the caller, on a wrong subscriber
        if subscriber is self:
            subscriber = None
        elif inspect.ismethod(subscriber) and subscriber.__self__ is self:
            subscriber = _OwnMethod(subscriber.__name__)
        self._puma_inputs.append((buffer, subscriber))

    def _puma_deliver(self, handler: Callable[[Any], Any], values: list[Any]) -> None:
        """Hand ``values`` to ``handler`` one by one, publishing what it returns."""
        publishers = self._puma_publishers
        for value in values:
            result = handler(value)
            if result is not None and publishers:
                for pub in publishers:
                    pub.publish(result)
            if self._puma_finishing:
                return

    def _puma_resolve(self, subscriber: Any) -> Any:
        if subscriber is None:
            return self
        if isinstance(subscriber, _OwnMethod):
            return getattr(self, subscriber.name)
        return subscriber

    def execute(self) -> None:
        """Service inputs, commands and ticks until the end rule is met, a stop, or an error."""
        ctx = self._puma_context("execute()")
        if self._puma_end_when != "never" and not self._puma_inputs:
            raise PumaError(f"runnable {self.name!r} has no inputs to service")
        inputs = [_Input(buffer, self._puma_resolve(sub)) for buffer, sub in self._puma_inputs]
        self._puma_publishers = [self.publisher(out) for out in self.outputs]
        self._puma_live_schedule().start(tick_clock())
        ctx.enter_step()  # on_start completes before any command runs
        try:
            self.on_start()
        finally:
            ctx.leave_step()
        try:
            self._puma_serve(ctx, inputs)
        finally:
            self.on_end()

    def _puma_tick_if_due(self, schedule: TickSchedule, ctx: _context.ChildContext) -> None:
        """Deliver the tick if it is due, publishing what on_tick returned (a step: no command runs inside it)."""
        now = tick_clock()
        if schedule.due(now):
            ctx.enter_step()
            try:
                result = self._puma_fire_tick(now)
                if result is not None:
                    for pub in self._puma_publishers:
                        pub.publish(result)
            finally:
                ctx.leave_step()

    def _puma_take_inputs(self, ctx: _context.ChildContext, open_inputs: list[_Input], schedule: TickSchedule) -> int:
        """One round-robin round: a batch from each ready input. 1: worked, 0: idle, -1: the end rule is met."""
        worked = 0
        batch = self._puma_batch
        for inp in list(open_inputs):
            if self._puma_finishing:
                return -1
            sub = inp.subscription
            if not sub.ready():
                continue
            try:
                values = sub.receive_many(batch, 0)
            except BufferEmpty:  # a completion that did not end the stream
                continue
            except BufferCompleted:
                open_inputs.remove(inp)
                if inp.on_complete is not None:
                    inp.on_complete(None)
                end_when = self._puma_end_when
                if end_when == "any" or (end_when == "all" and not open_inputs):
                    return -1
                continue
            except Exception as error:  # the input's publisher completed with it
                if inp.on_complete is not None:
                    inp.on_complete(error)
                raise
            worked = 1
            ctx.enter_step()  # a value's handler runs no command inside it (a stop is still seen)
            try:
                self._puma_deliver(inp.on_value, values)
            finally:
                ctx.leave_step()
            ctx.check_stop()  # runs pending commands between batches: none waits behind a backlog
            if schedule.running:
                self._puma_tick_if_due(schedule, ctx)
        return worked

    def _puma_serve(self, ctx: _context.ChildContext, inputs: list[_Input]) -> None:
        schedule = self._puma_live_schedule()
        open_inputs = list(inputs)
        clock = tick_clock
        waker = ctx.waker
        control = ctx.fds  # a process runnable's command pipe; () for a thread runnable
        all_fds = control + tuple(fd for inp in inputs for fd in inp.subscription._fds())
        service = True
        while not self._puma_finishing:
            # After a wake-up the due tick comes first: the shortest path from the deadline to on_tick.
            self._puma_tick_if_due(schedule, ctx)
            worked = self._puma_take_inputs(ctx, open_inputs, schedule)
            if worked < 0:
                return
            if worked or self._puma_finishing:
                continue
            # Nothing to do now: the one wait, over commands, inputs and the next tick's deadline.
            # Level-triggered: clear, look at every source, then sleep unless one was ready.
            waker.clear()
            if service:
                ctx.check_stop()  # runs pending commands: they may change the schedule, or finish
            if self._puma_finishing or any(inp.subscription.ready() for inp in open_inputs):
                service = True
                continue
            deadline = schedule.next_deadline
            remaining = None if deadline is None else deadline - clock()
            if remaining is not None and remaining <= 0:
                continue  # due: the top of the loop delivers it
            readable = waker.wait(all_fds, remaining)
            # A process runnable's commands come only through its command pipe: when only data
            # woke us, there is nothing to service (and no poll to pay).
            service = not readable or not control or control[0] in readable


class MultiBufferServicingRunnable(ServicingRunnable):
    """Services several input buffers, each routed to a subscriber; you write the subscribers.

    A subscriber is an object with ``on_value(value)`` and
    ``on_complete(error)`` (see :class:`BufferSubscriber`), or a callable
    taking each value.  Several inputs may share one subscriber.  Values of
    each input reach its subscriber in order; inputs are taken round-robin.
    A subscriber's ``on_value`` returning something other than ``None``
    publishes it to every output.

    The runnable ends when it is stopped, when :meth:`finish` is called, on an
    error (an input's, or raised by a subscriber or :meth:`on_tick`), or when
    its inputs have ended: all of them by default (``end_when="all"``), or the
    first one (``end_when="any"``).  Publishers still writing to an input it
    no longer reads then get :class:`~puma.BufferClosedError`, as with any
    subscriber that ends early.

    Args:
        name: the runnable's name.
        inputs: ``{buffer: subscriber}``, or ``(buffer, subscriber)`` pairs;
            more can be added with :meth:`add_input` before it starts.
        outputs: the buffers it publishes to.
        end_when: ``"all"`` (default) or ``"any"``.
        tick_interval: seconds between :meth:`on_tick` calls; ``None`` for
            none until :meth:`set_tick_interval`.
        ticks_paused: start with ticks paused.
        batch_size: most values taken from one input before pending commands
            and ticks are handled (bounds a command's latency in values).

    Example::

        merge = puma.MultiBufferServicingRunnable(
            "merge", {left: left_handler, right: right_handler}, outputs=[merged]
        )
    """

    def __init__(
        self,
        name: str,
        inputs: Mapping[Buffer[Any], SubscriberLike] | Iterable[tuple[Buffer[Any], SubscriberLike]] = (),
        outputs: Iterable[Buffer[Any]] = (),
        *,
        end_when: Literal["all", "any"] = "all",
        tick_interval: float | None = None,
        ticks_paused: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if end_when not in ("all", "any"):
            raise ValueError(f"end_when must be 'all' or 'any', not {end_when!r}")
        super().__init__(
            name,
            outputs,
            end_when=end_when,
            tick_interval=tick_interval,
            ticks_paused=ticks_paused,
            batch_size=batch_size,
        )
        pairs = inputs.items() if isinstance(inputs, Mapping) else inputs
        for buffer, subscriber in pairs:
            self.add_input(buffer, subscriber)

    def add_input(self, buffer: Buffer[T], subscriber: BufferSubscriber[T] | Callable[[T], Any]) -> None:
        """Route ``buffer``'s values to ``subscriber`` (before the runnable starts)."""
        if self._puma_record is not None:
            raise PumaError(f"runnable {self.name!r} has started; add inputs before starting it")
        self._puma_add_input(buffer, subscriber)

    @property
    def inputs(self) -> tuple[Buffer[Any], ...]:
        """The input buffers, in the order they were added."""
        return tuple(buffer for buffer, _ in self._puma_inputs)


class SingleBufferServicingRunnable(ServicingRunnable, Generic[T]):
    """Services one input buffer: override :meth:`on_value`, and that is the whole runnable.

    Return a result from :meth:`on_value` to publish it to every output (or
    call :meth:`publish`, or use :meth:`publisher` for full control).  The
    runnable ends when the input completes (after :meth:`on_complete`), when
    stopped, when :meth:`finish` is called, or on an error, which is passed on
    to the outputs.  Optional ticking: see ``tick_interval``.

    Args:
        name: the runnable's name.
        input: the buffer it reads.
        outputs: the buffers it publishes to.
        tick_interval: seconds between :meth:`on_tick` calls, or ``None``.
        ticks_paused: start with ticks paused.
        batch_size: most values handled before pending commands and ticks are.

    Examples:
        >>> import puma
        >>> class Numbers(puma.Runnable):
        ...     def __init__(self, out: puma.Buffer[float]) -> None:
        ...         super().__init__("numbers", outputs=[out])
        ...         self._out = out
        ...     def execute(self) -> None:
        ...         self.publisher(self._out).publish_many([1.0, 2.0, 3.0])
        >>> class Scale(puma.SingleBufferServicingRunnable[float]):
        ...     def __init__(self, inp: puma.Buffer[float], out: puma.Buffer[float]) -> None:
        ...         super().__init__("scale", inp, outputs=[out])
        ...     def on_value(self, value: float) -> float:
        ...         return value * 2.0  # published to every output
        >>> env = puma.ThreadEnvironment()
        >>> with puma.Runner(env) as runner:
        ...     raw, scaled = env.buffer(float, 4, "raw"), env.buffer(float, 4, "scaled")
        ...     scale = runner.start(Scale(raw, scaled))
        ...     numbers = runner.start(Numbers(raw))
        ...     print(list(scaled.subscribe()))
        [2.0, 4.0, 6.0]
    """

    def __init__(
        self,
        name: str,
        input: Buffer[T],
        outputs: Iterable[Buffer[Any]] = (),
        *,
        tick_interval: float | None = None,
        ticks_paused: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        super().__init__(
            name,
            outputs,
            end_when="all",
            tick_interval=tick_interval,
            ticks_paused=ticks_paused,
            batch_size=batch_size,
        )
        self._puma_add_input(input, None)  # None: this runnable is the subscriber

    @property
    def input(self) -> Buffer[T]:
        """The buffer this runnable reads."""
        buffer: Buffer[T] = self._puma_inputs[0][0]
        return buffer

    def on_value(self, value: T) -> Any:
        """Handle one value (override it). A result other than ``None`` goes to every output."""
        raise NotImplementedError(f"{type(self).__qualname__} must override on_value(value)")

    def on_complete(self, error: BaseException | None) -> None:
        """The input has ended (``error`` is ``None`` if normally). Override to flush or report."""
