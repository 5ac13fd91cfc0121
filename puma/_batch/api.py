"""The public functions of :mod:`puma.batch`: map, imap, imap_unordered, chain, replay."""

from __future__ import annotations

import sys
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from typing import Any, Literal, TypeVar

from puma._batch.engine import Engine
from puma._batch.options import Options, check_workers, crosses
from puma._batch.records import BatchError, Failure, Interrupted, ItemTimeout, WorkerDied, short_repr
from puma._batch.worker import Chain, TaskFailed
from puma._core.errors import UsageError
from puma._environments.base import Environment
from puma._environments.process import ProcessEnvironment
from puma._environments.thread import ThreadEnvironment

__all__ = ["chain", "imap", "imap_unordered", "map", "replay"]

T = TypeVar("T")
R = TypeVar("R")

EnvironmentChoice = Environment | Literal["process", "thread", "inline"]


def _options(
    environment: EnvironmentChoice,
    *,
    workers: int | None = 1,
    chunk_size: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    poison_after: int = 2,
    max_items_per_worker: int | None = None,
    max_rss_per_worker: int | None = None,
    max_in_flight: int | None = None,
    max_failures: int | None = None,
    progress: bool | None = False,
    ordered: bool = True,
) -> Options:
    if isinstance(environment, str):
        if environment == "process":
            env: Environment = ProcessEnvironment()
        elif environment == "thread":
            env = ThreadEnvironment()
        else:
            raise UsageError(
                f"environment must be 'process', 'thread', 'inline' or an Environment, not {environment!r}"
            )
    elif isinstance(environment, Environment):
        env = environment
    else:
        raise UsageError(f"environment must be 'process', 'thread', 'inline' or an Environment, not {environment!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise UsageError(f"chunk_size must be a positive int or None (self-tuning), not {chunk_size!r}")
    if timeout is not None:
        if timeout <= 0:
            raise UsageError(f"timeout must be positive, not {timeout!r}")
        if not crosses(env):
            raise UsageError("a per-item timeout needs process workers (a thread cannot be stopped mid-input)")
    if retries < 0 or poison_after < 1:
        raise UsageError("retries must be >= 0 and poison_after >= 1")
    retry_types = retry_on if isinstance(retry_on, tuple) else (retry_on,)
    for limit, name in (
        (max_items_per_worker, "max_items_per_worker"),
        (max_rss_per_worker, "max_rss_per_worker"),
        (max_in_flight, "max_in_flight"),
        (max_failures, "max_failures"),
    ):
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise UsageError(f"{name} must be a positive int or None, not {limit!r}")
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    return Options(
        environment=env,
        workers=check_workers(workers),
        chunk_size=chunk_size,
        timeout=timeout,
        retries=retries if retry_types else 0,
        retry_on=retry_types,
        poison_after=poison_after,
        max_items=max_items_per_worker,
        max_rss=max_rss_per_worker,
        max_in_flight=max_in_flight,
        max_failures=max_failures,
        progress=progress,
        ordered=ordered,
    )


def _inline(
    call: Callable[[Any], Any], items: Iterable[Any], options: Options | None, debug: bool
) -> Iterator[tuple[int, Any]]:
    """Run every input in the caller, one after the other (the same records; ``debug``: exceptions raise)."""
    retry_on = options.retry_on if options is not None else ()
    retries = options.retries if options is not None else 0
    failures = 0
    for index, arg in enumerate(items):
        attempts = 1
        while True:
            if debug:
                yield index, call(arg)
                break
            try:
                value = call(arg)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 - every failure is a record
                if retry_on and isinstance(exc, retry_on) and attempts <= retries:
                    attempts += 1
                    continue
                task, clipboard = None, None
                error_: BaseException = exc
                if isinstance(exc, TaskFailed):
                    task, clipboard, error_ = exc.task, dict(exc.clipboard), exc.error
                failures += 1
                value = Failure(index, short_repr(arg), error_, "inline", attempts, None, task, clipboard, input=arg)
                if options is not None and options.max_failures is not None and failures >= options.max_failures:
                    yield index, value
                    return
            yield index, value
            break


_MISSING = object()


class _Collected:
    """The results of map(), put in place as chunks come back (a slice assignment per whole chunk)."""

    def __init__(self, items: Iterable[Any]) -> None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = 0
        self._list: list[Any] = [_MISSING] * total
        self._more: dict[int, Any] = {}

    def put(self, indices: Sequence[int], values: list[Any]) -> None:
        out = self._list
        if isinstance(indices, range) and indices.stop <= len(out):
            out[indices.start : indices.stop] = values
            return
        for index, value in zip(indices, values, strict=True):
            if index < len(out):
                out[index] = value
            else:
                self._more[index] = value

    def as_list(self) -> list[Any]:
        if self._more:
            start = len(self._list)
            self._list.extend(self._more[i] for i in range(start, start + len(self._more)))
        return self._list

    def as_dict(self) -> dict[int, Any]:
        found = {i: v for i, v in enumerate(self._list) if v is not _MISSING}
        found.update(self._more)
        return found


def _ordered(engine: Engine) -> Generator[Any, None, None]:
    waiting: dict[int, Any] = {}
    next_index = 0
    for batch in engine.run():
        for indices, values in batch:
            waiting.update(zip(indices, values, strict=True))
        start = next_index
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1
        engine.release(next_index - start)


def _unordered(engine: Engine) -> Generator[Any, None, None]:
    for batch in engine.run():
        for _indices, values in batch:
            engine.release(len(values))
            yield from values


def imap(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    environment: EnvironmentChoice = "process",
    chunk_size: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    poison_after: int = 2,
    max_items_per_worker: int | None = None,
    max_rss_per_worker: int | None = None,
    max_in_flight: int | None = None,
    max_failures: int | None = None,
    progress: bool | None = None,
    debug: bool = False,
) -> Generator[R | Failure, None, None]:
    """Map ``fn`` over ``items`` lazily, in input order: a value per good input, a :class:`Failure` per failing one.

    Inputs are taken from ``items`` as workers need them, never more than
    ``max_in_flight`` ahead of what the caller has taken (an infinite
    generator is fine).  Arguments are those of :func:`map`.  Closing the
    iterator (or leaving a ``for`` loop over it early and dropping it) ends
    the workers at once.  On Ctrl-C it raises :class:`Interrupted`, whose
    ``results`` hold what had finished and was not yielded yet.
    """
    if debug or environment == "inline":
        options = (
            None
            if debug
            else _options(
                "thread",
                chunk_size=chunk_size,
                retries=retries,
                retry_on=retry_on,
                poison_after=poison_after,
                max_failures=max_failures,
            )
        )
        return (value for _i, value in _inline(fn, items, options, debug))
    options = _options(
        environment,
        workers=workers,
        chunk_size=chunk_size,
        timeout=timeout,
        retries=retries,
        retry_on=retry_on,
        poison_after=poison_after,
        max_items_per_worker=max_items_per_worker,
        max_rss_per_worker=max_rss_per_worker,
        max_in_flight=max_in_flight,
        max_failures=max_failures,
        progress=progress,
        ordered=True,
    )
    return _ordered(Engine(fn, items, options))


def imap_unordered(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    environment: EnvironmentChoice = "process",
    chunk_size: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    poison_after: int = 2,
    max_items_per_worker: int | None = None,
    max_rss_per_worker: int | None = None,
    max_in_flight: int | None = None,
    max_failures: int | None = None,
    progress: bool | None = None,
    debug: bool = False,
) -> Generator[R | Failure, None, None]:
    """Like :func:`imap`, but each result as soon as it is ready (a :class:`Failure` knows its ``index``)."""
    if debug or environment == "inline":
        return imap(
            fn, items, debug=debug, environment="inline", retries=retries, retry_on=retry_on, max_failures=max_failures
        )
    options = _options(
        environment,
        workers=workers,
        chunk_size=chunk_size,
        timeout=timeout,
        retries=retries,
        retry_on=retry_on,
        poison_after=poison_after,
        max_items_per_worker=max_items_per_worker,
        max_rss_per_worker=max_rss_per_worker,
        max_in_flight=max_in_flight,
        max_failures=max_failures,
        progress=progress,
        ordered=False,
    )
    return _unordered(Engine(fn, items, options))


def map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    workers: int | None = None,
    environment: EnvironmentChoice = "process",
    chunk_size: int | None = None,
    timeout: float | None = None,
    retries: int = 0,
    retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    poison_after: int = 2,
    max_items_per_worker: int | None = None,
    max_rss_per_worker: int | None = None,
    max_in_flight: int | None = None,
    max_failures: int | None = None,
    progress: bool | None = None,
    errors: Literal["return", "raise"] = "return",
    debug: bool = False,
    post_mortem: bool = False,
) -> list[R | Failure]:
    """Map ``fn`` over ``items`` in worker runnables; a list in input order, a :class:`Failure` where one failed.

    Args:
        fn: a function of one input (it must pickle for process workers: a module-level function).
        items: any iterable; its length, if it has one, helps size the chunks.
        workers: how many workers (default: the number of CPUs).
        environment: ``"process"`` (default), ``"thread"``, ``"inline"`` (in the
            caller, one input after another), or a puma Environment
            (``puma.ProcessEnvironment("spawn")``).
        chunk_size: inputs per chunk; None tunes it (chunks of tens of milliseconds).
        timeout: seconds an input may run; the worker running an overdue input is
            replaced and the input fails with :class:`ItemTimeout` (processes only).
        retries: how many more times an input whose error is one of ``retry_on`` is tried.
        retry_on: the exception types that are retried (:class:`ItemTimeout` may be one).
        poison_after: an input whose worker died is tried again in a new worker,
            until it has killed this many; then it fails with :class:`WorkerDied`
            (1: fail at the first death).
        max_items_per_worker: replace a worker after it has run this many inputs.
        max_rss_per_worker: replace a worker whose resident memory passed this many bytes (checked between chunks).
        max_in_flight: at most this many inputs taken from ``items`` and not yet returned.
        max_failures: stop at the K-th failure and raise :class:`BatchError`.
        progress: a tqdm progress bar (default: when stderr is a terminal and tqdm is installed).
        errors: ``"return"`` (default) puts failures in the list; ``"raise"``
            raises one :class:`BatchError` at the end if any input failed.
        debug: run inline and let the first exception raise where it happened.
        post_mortem: after the run, re-run the first failing input here under ``pdb.post_mortem``.

    Raises:
        BatchError: ``errors="raise"`` and an input failed, or ``max_failures`` was reached.
        Interrupted: Ctrl-C; the results so far are in ``.results``.
        UsageError: a bad argument.
    """
    if debug or environment == "inline":
        options = _options(
            "thread",
            chunk_size=chunk_size,
            retries=retries,
            retry_on=retry_on,
            poison_after=poison_after,
            max_failures=max_failures,
        )
        pairs = list(_inline(fn, items, None if debug else options, debug))
        results: list[Any] = [value for _i, value in pairs]
        failures = [r for r in results if isinstance(r, Failure)]
    else:
        options = _options(
            environment,
            workers=workers,
            chunk_size=chunk_size,
            timeout=timeout,
            retries=retries,
            retry_on=retry_on,
            poison_after=poison_after,
            max_items_per_worker=max_items_per_worker,
            max_rss_per_worker=max_rss_per_worker,
            max_in_flight=max_in_flight,
            max_failures=max_failures,
            progress=progress,
            ordered=True,
        )
        engine = Engine(fn, items, options)
        collected = _Collected(items)
        try:
            for batch in engine.run():
                for indices, values in batch:
                    collected.put(indices, values)
                    engine.release(len(values))
        except Interrupted as interrupted:
            interrupted.results.update(collected.as_dict())
            interrupted.done = len(interrupted.results)
            raise
        except BatchError as error:
            error.results.update(collected.as_dict())
            raise
        results = collected.as_list()
        failures = sorted(engine.failures, key=lambda f: f.index)
    if failures and post_mortem:
        replay(fn, failures[0])
    if failures and (errors == "raise" or (options.max_failures is not None and len(failures) >= options.max_failures)):
        raise BatchError(
            f"{len(failures)} of {len(results)} inputs failed",
            failures,
            dict(enumerate(results)),
            stopped_early=errors != "raise",
        )
    return results


def chain(
    tasks: Sequence[Callable[[dict[str, Any]], Any]],
    items: Iterable[Any],
    **options: Any,
) -> list[dict[str, Any] | Failure]:
    """Carry a clipboard (a dict) through ``tasks``, in order, for each input; :func:`map`'s options apply.

    An input that is a dict is its clipboard's start; any other input starts
    the clipboard ``{"input": item}``.  A task changes the clipboard in place
    or returns a dict of updates.  The result of an input is its final
    clipboard; a failure names the task that raised (``Failure.task``) and
    holds the clipboard as that task left it (``Failure.clipboard``).
    """
    if not tasks:
        raise UsageError("chain() needs at least one task")
    return map(Chain(tasks), items, **options)


def replay(fn: Callable[[Any], Any] | Sequence[Callable[[dict[str, Any]], Any]], failed: Any) -> BaseException | None:
    """Re-run the first failing input here, in the caller, and open ``pdb.post_mortem`` on its real frames.

    ``failed``: a :class:`Failure`, a list of results (the first Failure in it
    that raised is taken: a death or a timeout would kill or hang the caller),
    a :class:`BatchError` or an :class:`Interrupted`.  ``fn`` is the function (or the list
    of tasks of a chain) that failed.  Returns the exception the replay raised
    (None if the input passes here: the failure needed the worker's conditions).
    """
    failure = _first_failure(failed)
    call: Callable[[Any], Any] = Chain(fn) if isinstance(fn, list | tuple) else fn  # type: ignore[assignment]
    print(f"puma.batch.replay: {failure}", file=sys.stderr)
    try:
        call(failure.input)
    except TaskFailed as exc:
        return _post_mortem(exc.error)
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the point is to look at it
        return _post_mortem(exc)
    print("puma.batch.replay: the input did not fail when run here", file=sys.stderr)
    return None


def _post_mortem(exc: BaseException) -> BaseException:
    import pdb

    pdb.post_mortem(exc.__traceback__)
    return exc


def _first_failure(failed: Any) -> Failure:
    """The first failure that raised (a death or a timeout would kill or hang the caller if re-run here)."""
    if isinstance(failed, Failure):
        candidates = [failed]
    elif isinstance(failed, BatchError):
        candidates = list(failed.failures)
    elif isinstance(failed, Interrupted):
        candidates = [v for _i, v in sorted(failed.results.items()) if isinstance(v, Failure)]
    else:
        candidates = [v for v in failed if isinstance(v, Failure)]
    if not candidates:
        raise UsageError("replay() needs a Failure, a BatchError or results with a Failure in them")
    for failure in candidates:
        if not isinstance(failure.error, WorkerDied | ItemTimeout):
            return failure
    raise UsageError(
        f"the failures are deaths or timeouts ({candidates[0]}): re-running one here would kill or hang this "
        "process; run it alone with debug=True under a debugger, or look at failure.report()"
    )
