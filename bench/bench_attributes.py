"""Scoped attributes (issue #4): what reading one costs, against reading a plain attribute.

Run from the repository root::

    python bench/bench_attributes.py            # 7 runs per row (about a minute)
    python bench/bench_attributes.py --runs 5   # fewer runs
    python bench/bench_attributes.py --quick    # fewer reads per run, for a smoke test

Each row times reads of one attribute, ``obj.name``, 100 per statement (so the
loop costs little), and reports nanoseconds per read: the best of 3 repeats per
run, the median and spread over the runs.  The baseline is the same read of a
plain attribute of a plain object (a class with an ``__init__`` and nothing
else), timed alternately with ours.  The ratio is the median of the per-run
ratios; the target is ``<= 1.5x``.

Rows, by where the read happens:

* parent: the runnable as constructed (what the parent's code reads);
* parent, after launch: the same runnable once it has been started, against a
  plain attribute of the same object; and its plain attribute against the
  plain object (no target): to build the child's attributes puma reads the
  object's, which moves CPython 3.11's inline instance values into a dict
  (puma then gives the object a fresh dict, the fastest there is), so every
  read on that object, plain or scoped, goes from about 6 ns to about 8.7 ns.
  ``vars(obj)``, ``copy.copy(obj)`` or pickling do the same to any object;
* thread child: the clone a thread child runs (``puma._attributes.for_thread``);
* process child: the clone a process child runs, pickled and unpickled as
  spawn and forkserver do (fork keeps the clone as built, like a thread's);
* in a running child: timed inside ``execute()`` of a started runnable, in a
  thread and in a forkserver process, against a plain object made there.

Two reference rows (no target) show what the declarations avoid: a read that
an instance value shadows from a non-data descriptor on the class (CPython
3.11 does not specialise it) and a ``property``.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import timeit
from collections.abc import Callable
from typing import Any

from _util import Comparison, compare, print_table, stat

import puma
from puma import _attributes
from puma.attributes import (
    ProcessAction,
    ThreadAction,
    child_only,
    copied,
    factory,
    manually_managed,
    parent_only,
    unmanaged,
)

UNROLL = 100
NUMBER = 20_000


class Plain:
    """The baseline: a plain object with plain attributes."""

    def __init__(self) -> None:
        self.a = 1
        self.b = [1]
        self.value = 1


class Scoped(puma.Runnable):
    """One attribute of each kind, plus a plain one."""

    copied_value = copied[int]()
    child_value = child_only[int]()
    parent_value = parent_only[int]()
    shared_value = unmanaged[int]()
    manual_value = manually_managed[int](thread=ThreadAction.SHARED, process=ProcessAction.COPIED)
    made_value = copied[list[int]]()

    def __init__(self, reads: int = NUMBER) -> None:
        super().__init__("scoped")
        self.copied_value = 1
        self.child_value = 1
        self.parent_value = 1
        self.shared_value = 1
        self.manual_value = 1
        self.made_value = factory(list)
        self.plain_value = 1
        self.reads = reads

    def execute(self) -> None:
        plain = Plain()  # made here, in the child, like the runnable's own values
        self.send_status(
            "ns",
            {
                "plain": ns_per_read(plain, "value", self.reads),
                "copied": ns_per_read(self, "copied_value", self.reads),
                "child_only": ns_per_read(self, "child_value", self.reads),
            },
        )


class NonData:
    """A non-data descriptor, as a naive declaration would be."""

    def __get__(self, obj: object, owner: type | None = None) -> int:
        return 0


class Naive:
    value = NonData()

    def __init__(self) -> None:
        self.value = 1  # type: ignore[assignment]


class WithProperty:
    def __init__(self) -> None:
        self._value = 1

    @property
    def value(self) -> int:
        return self._value


def ns_per_read(obj: object, name: str, number: int = NUMBER) -> float:
    """Nanoseconds per ``obj.name`` read: the best of 3 repeats of ``number`` x 100 reads."""
    statement = ";".join([f"o.{name}"] * UNROLL)
    timer = timeit.Timer(statement, setup="o = _o", globals={"_o": obj})
    return min(timer.repeat(3, number)) / (number * UNROLL) * 1e9


def launched(runnable: Scoped) -> Scoped:
    """``runnable`` as the parent holds it after a launch (its attributes were read to build the child's)."""
    _attributes.for_thread(runnable)
    return runnable


def process_clone() -> Any:
    """The clone a spawn or forkserver child runs: built, pickled, unpickled."""
    clone = pickle.loads(pickle.dumps(_attributes.for_process(Scoped())))
    _attributes.enter_child(clone)
    return clone


def thread_clone() -> Any:
    clone = _attributes.for_thread(Scoped())
    _attributes.enter_child(clone)
    return clone


def in_child(env: puma.Environment, number: int) -> dict[str, float]:
    with puma.Runner(env) as runner:
        runnable = runner.start(Scoped(number))
        runner.join()
    result: dict[str, float] = runnable.status("ns")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="runs per row (at least 5 for the report)")
    parser.add_argument("--quick", action="store_true", help="fewer reads per run")
    args = parser.parse_args(argv)
    number = NUMBER // 10 if args.quick else NUMBER
    runs: int = args.runs
    target = ("<=", 1.5)

    def read(make: Callable[[], Any], name: str) -> Callable[[], float]:
        """One run: a fresh object (no run depends on one object's place in memory), then the timing."""
        return lambda: ns_per_read(make(), name, number)

    baseline = read(Plain, "value")
    cases: list[tuple[str, Callable[[], Any], str]] = [
        ("parent: copied", Scoped, "copied_value"),
        ("parent: parent_only", Scoped, "parent_value"),
        ("parent: unmanaged", Scoped, "shared_value"),
        ("parent: manually_managed", Scoped, "manual_value"),
        ("parent: copied from a factory", Scoped, "made_value"),
        ("parent: unannotated", Scoped, "plain_value"),
        ("thread child: copied", thread_clone, "copied_value"),
        ("thread child: child_only", thread_clone, "child_value"),
        ("thread child: copied from a factory", thread_clone, "made_value"),
        ("thread child: unannotated", thread_clone, "plain_value"),
        ("process child: copied", process_clone, "copied_value"),
        ("process child: child_only", process_clone, "child_value"),
        ("process child: unannotated", process_clone, "plain_value"),
    ]
    rows: list[Comparison] = []
    for name, make, attribute in cases:
        row = compare(
            name, unit="ns", ours=read(make, attribute), theirs=baseline, baseline="plain attribute", runs=runs
        )
        row.target = target
        rows.append(row)

    def after_launch() -> tuple[float, float]:
        after = launched(Scoped())
        return ns_per_read(after, "copied_value", number), ns_per_read(after, "plain_value", number)

    pairs = [after_launch() for _ in range(runs)]
    rows.append(
        Comparison(
            "parent, after launch: copied",
            "ns",
            ours=stat([scoped for scoped, _ in pairs]),
            theirs=stat([plain for _, plain in pairs]),
            baseline="plain attribute, same object",
            target=target,
            ratios=stat([scoped / plain for scoped, plain in pairs]),
        )
    )
    row = compare(
        "parent, after launch: unannotated",
        unit="ns",
        ours=read(lambda: launched(Scoped()), "plain_value"),
        theirs=baseline,
        baseline="plain attribute",
        runs=runs,
    )
    row.notes.append("every attribute of a launched runnable, in the parent: see the note below the table")
    rows.append(row)
    for label, env in (("thread", puma.ThreadEnvironment()), ("process", puma.ProcessEnvironment("forkserver"))):
        samples = [in_child(env, number) for _ in range(runs)]
        for kind in ("copied", "child_only"):
            rows.append(
                Comparison(
                    f"in a running {label} child: {kind}",
                    "ns",
                    ours=stat([s[kind] for s in samples]),
                    theirs=stat([s["plain"] for s in samples]),
                    baseline="plain attribute, same child",
                    target=target,
                    ratios=stat([s[kind] / s["plain"] for s in samples]),
                )
            )
        print(f". in a running {label} child", file=sys.stderr)
    references: list[tuple[str, Callable[[], Any]]] = [
        ("reference: non-data descriptor shadowed", Naive),
        ("reference: property", WithProperty),
    ]
    for name, make in references:
        rows.append(
            compare(name, unit="ns", ours=read(make, "value"), theirs=baseline, baseline="plain attribute", runs=runs)
        )
    print_table(rows)
    print(f"\nPython {sys.version.split()[0]}, {runs} runs per row, {number} x {UNROLL} reads per repeat")


if __name__ == "__main__":
    main()
