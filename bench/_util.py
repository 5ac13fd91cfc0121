"""Helpers shared by the bench scripts: repeated, interleaved timing and a plain table.

Any bench script may reuse them (``bench/`` is the script's directory, so a
plain ``from _util import ...`` works when run as ``python bench/bench_x.py``)::

    from _util import Comparison, compare, print_table

    row = compare(
        "thread buffer, single items",
        unit="items/s",
        ours=lambda: run_puma(),        # each call returns one figure
        theirs=lambda: run_baseline(),
        baseline="queue.Queue",
        runs=5,
        target=(">=", 0.8),            # on the ratio ours/theirs
    )
    print_table([row])

``compare`` runs the two sides alternately (ours, theirs, ours, ...), so slow
drifts of a shared machine hit both alike, and reports for each side the median
and the spread (min-max) of the runs.  The ratio is the median of the per-pair
ratios ``ours_i / theirs_i``, which is steadier on a noisy machine than the
ratio of the two medians.  Lower-is-better figures (latencies, start times)
say so with ``target=("<=", x)``; the ratio is always ours / theirs.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

__all__ = ["Comparison", "Stat", "compare", "format_figure", "print_table", "stat"]


@dataclass(frozen=True)
class Stat:
    """The runs of one side: every sample, its median and its spread."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)


def stat(samples: Sequence[float]) -> Stat:
    """A :class:`Stat` of ``samples`` (at least one)."""
    if not samples:
        raise ValueError("no samples")
    return Stat(tuple(samples))


@dataclass
class Comparison:
    """One row of the table: our figure, the baseline's, their ratio and the target."""

    name: str
    unit: str
    ours: Stat
    theirs: Stat | None = None
    baseline: str = ""
    target: tuple[str, float] | None = None
    ratios: Stat | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        return None if self.ratios is None else self.ratios.median

    @property
    def met(self) -> bool | None:
        if self.target is None or self.ratio is None:
            return None
        op, bound = self.target
        return self.ratio >= bound if op == ">=" else self.ratio <= bound


def compare(
    name: str,
    *,
    unit: str,
    ours: Callable[[], float],
    theirs: Callable[[], float] | None = None,
    baseline: str = "",
    runs: int = 5,
    target: tuple[str, float] | None = None,
    warmup: bool = False,
    progress: bool = True,
) -> Comparison:
    """Run ``ours`` and ``theirs`` alternately ``runs`` times each; one table row.

    ``warmup`` runs each side once first, unrecorded (first-time costs such as
    starting a forkserver).  Progress dots go to stderr.
    """
    if warmup:
        ours()
        if theirs is not None:
            theirs()
    mine: list[float] = []
    other: list[float] = []
    for _ in range(runs):
        mine.append(ours())
        if theirs is not None:
            other.append(theirs())
        if progress:
            print(".", end="", file=sys.stderr, flush=True)
    if progress:
        print(f" {name}", file=sys.stderr, flush=True)
    row = Comparison(name, unit, stat(mine), baseline=baseline, target=target)
    if theirs is not None:
        row.theirs = stat(other)
        row.ratios = stat([a / b for a, b in zip(mine, other, strict=True) if b > 0] or [0.0])
    return row


def format_figure(value: float, unit: str) -> str:
    """A short human figure: 1.23M, 45.6k, 789; time units get 3 significant digits."""
    if unit in ("us", "ms", "s"):
        return f"{value:.3g}"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


def _cell(s: Stat | None, unit: str) -> str:
    if s is None:
        return ""
    if len(s.samples) == 1:
        return format_figure(s.median, unit)
    return f"{format_figure(s.median, unit)} ({format_figure(s.low, unit)}-{format_figure(s.high, unit)})"


def print_table(rows: Sequence[Comparison], *, file: TextIO | None = None) -> None:
    """Print the rows as a Markdown table (paste it into docs/benchmarks.md as is)."""
    out = sys.stdout if file is None else file
    header = ["benchmark", "unit", "puma: median (min-max)", "baseline", "baseline: median (min-max)"]
    header += ["ratio", "target"]
    lines = [header, ["---"] * len(header)]
    for row in rows:
        ratio = "" if row.ratios is None else f"{row.ratio:.2f}x ({row.ratios.low:.2f}-{row.ratios.high:.2f})"
        if row.target is None:
            target = ""
        else:
            target = f"{row.target[0]} {row.target[1]:g}x: " + ("met" if row.met else "NOT met")
        lines.append(
            [row.name, row.unit, _cell(row.ours, row.unit), row.baseline, _cell(row.theirs, row.unit), ratio, target]
        )
        for note in row.notes:
            lines.append([f"  {note}", "", "", "", "", "", ""])
    for cells in lines:
        print("| " + " | ".join(cells) + " |", file=out)
