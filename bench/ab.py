"""Compare two checkouts of puma with one benchmark script, run alternately on the same machine.

Run from the repository root::

    python bench/ab.py /path/to/old/checkout                       # bench_core.py, 3 rounds
    python bench/ab.py /path/to/old --script bench/bench_buffers.py --rounds 5 --only fan

Each round runs the script (this checkout's copy, so both sides run exactly the
same rows) once against the other checkout's ``puma`` and once against this
one, alternately (``PYTHONPATH`` picks the package; spawn and forkserver
children inherit it).  Every row of the script's table already holds the ratio
of puma to its baseline measured side by side in that run, which takes out
most of what the rest of the machine is doing; this prints, per row, the median
over rounds of that ratio on each side, and their quotient: "this / other",
above 1 where this checkout does better on a higher-is-better row (items/s,
MB/s) and below 1 on a lower-is-better one (us, ms).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOWER_IS_BETTER = ("us", "ms", "s", "MiB")


def _table(output: str) -> dict[str, tuple[str, float]]:
    """Rows of a Markdown table printed by a bench script: "name, against baseline" -> (unit, ratio)."""
    rows: dict[str, tuple[str, float]] = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 6 or cells[0] in ("benchmark", "---") or not cells[5].endswith(")"):
            continue
        ratio = cells[5].split("x")[0]
        try:
            rows[f"{cells[0]}, against {cells[3]}"] = (cells[1], float(ratio))
        except ValueError:
            continue
    return rows


def _check_side(checkout: str) -> None:
    """Make sure ``PYTHONPATH`` really picks ``checkout``'s puma (an editable install's finder would win)."""
    env = dict(os.environ, PYTHONPATH=checkout)
    found = subprocess.run(
        [sys.executable, "-c", "import puma; print(puma.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd="/",  # not a checkout: the current folder comes first in sys.path
    ).stdout.strip()
    if not os.path.abspath(found).startswith(os.path.join(checkout, "")):
        raise SystemExit(
            f"PYTHONPATH={checkout} imports puma from {found or 'nowhere'}: run ab.py with a Python that has "
            "puma's dependencies but not puma itself installed (an editable install takes precedence)"
        )


def _run(script: str, checkout: str, extra: list[str]) -> dict[str, tuple[str, float]]:
    env = dict(os.environ, PYTHONPATH=checkout)
    done = subprocess.run(
        [sys.executable, script, *extra], capture_output=True, text=True, env=env, check=False, timeout=3600
    )
    if done.returncode != 0:
        raise RuntimeError(f"{script} against {checkout} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return _table(done.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("other", help="the other checkout (its root: the folder holding puma/)")
    parser.add_argument("--this", default=ROOT, help="this side's checkout (default: the one holding this script)")
    parser.add_argument("--script", default=os.path.join(HERE, "bench_core.py"))
    parser.add_argument("--rounds", type=int, default=3)
    args, extra = parser.parse_known_args(argv)  # the rest goes to the script
    extra = [a for a in extra if a != "--"]
    sides: dict[str, list[dict[str, tuple[str, float]]]] = {"other": [], "this": []}
    for checkout in (args.other, args.this):
        _check_side(os.path.abspath(checkout))
    for round_ in range(args.rounds):
        for side, checkout in (("other", os.path.abspath(args.other)), ("this", os.path.abspath(args.this))):
            print(f"round {round_ + 1}/{args.rounds}: {side} ({checkout})", file=sys.stderr, flush=True)
            sides[side].append(_run(args.script, checkout, extra))
    names = [n for n in sides["this"][0] if all(n in run for run in sides["other"] + sides["this"])]
    print(f"| benchmark | unit | ratio to baseline: other | ratio: this | this / other ({args.rounds} rounds) |")
    print("| --- | --- | --- | --- | --- |")
    for name in names:
        unit = sides["this"][0][name][0]
        other = statistics.median(run[name][1] for run in sides["other"])
        this = statistics.median(run[name][1] for run in sides["this"])
        better = "lower is better" if unit in LOWER_IS_BETTER else "higher is better"
        print(f"| {name} | {unit} ({better}) | {other:.2f}x | {this:.2f}x | {this / other:.2f} |")


if __name__ == "__main__":
    main()
