"""Batch calibration: a task chain over 200 generated images, some of them bad, in worker processes.

Each image goes through the same chain of tasks, carried on a clipboard (a
dict): load -> dark subtraction -> flat fielding -> bad-pixel masking ->
statistics.  Three of the images are corrupt (a task raises) and one kills
the worker that runs it (as a segfault in a C extension or the OOM killer
would).  The map goes on: it reports each failing image with the task that
failed and the clipboard as it was, and the image that killed its worker
with the signal, having tried it in a second worker first (so it is a
poison pill).

Run it::

    python demos/batch_calibration/main.py
    python demos/batch_calibration/main.py --start-method spawn --workers 4
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # run from a checkout

import puma
from puma import batch

SIZE = 16  # pixels per side
IMAGES = 200
CORRUPT = {41: "truncated", 97: "wrong shape", 160: "not a number"}
KILLER = 123  # decoding this one crashes the process


def _pixels(seed: int) -> list[float]:
    rng = random.Random(seed)
    return [1000.0 + rng.gauss(0, 5) for _ in range(SIZE * SIZE)]


DARK = [100.0] * (SIZE * SIZE)
FLAT = [1.0 + 0.001 * (i % SIZE) for i in range(SIZE * SIZE)]


def load(clip: dict) -> dict:
    """Decode the image (here: generate it; a few are broken on purpose)."""
    index = clip["input"]
    if index == KILLER:
        os.kill(os.getpid(), signal.SIGKILL)  # a decoder crash takes the process with it
    pixels = _pixels(index)
    damage = CORRUPT.get(index)
    if damage == "truncated":
        pixels = pixels[: SIZE * 3]
    elif damage == "wrong shape":
        pixels = pixels + pixels[:SIZE]
    elif damage == "not a number":
        pixels[17] = float("nan")
    return {"name": f"frame-{index:03d}.raw", "pixels": pixels}


def subtract_dark(clip: dict) -> None:
    pixels = clip["pixels"]
    if len(pixels) != len(DARK):
        raise ValueError(f"{clip['name']}: {len(pixels)} pixels, the dark frame has {len(DARK)}")
    clip["pixels"] = [p - d for p, d in zip(pixels, DARK, strict=True)]


def flat_field(clip: dict) -> None:
    clip["pixels"] = [p / f for p, f in zip(clip["pixels"], FLAT, strict=True)]


def mask_bad_pixels(clip: dict) -> None:
    pixels = clip["pixels"]
    if any(p != p for p in pixels):  # NaN
        raise ArithmeticError(f"{clip['name']}: a pixel is not a number after flat fielding")
    mean = sum(pixels) / len(pixels)
    clip["masked"] = sum(1 for p in pixels if abs(p - mean) > 12)
    clip["pixels"] = [mean if abs(p - mean) > 12 else p for p in pixels]


def statistics(clip: dict) -> dict:
    pixels = clip.pop("pixels")  # the results carry the figures, not the image
    return {"mean": round(sum(pixels) / len(pixels), 2)}


TASKS = [load, subtract_dark, flat_field, mask_bad_pixels, statistics]


def main() -> int:
    parser = argparse.ArgumentParser(description="Calibrate 200 images with a task chain over a clipboard.")
    parser.add_argument("--start-method", choices=["fork", "forkserver", "spawn"], default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    env = puma.ProcessEnvironment(args.start_method)
    began = time.perf_counter()
    results = batch.chain(TASKS, range(IMAGES), workers=args.workers, environment=env)
    elapsed = time.perf_counter() - began
    failures = [r for r in results if isinstance(r, batch.Failure)]
    good = [r for r in results if not isinstance(r, batch.Failure)]
    killed = [f for f in failures if f.signal]
    print(
        f"{IMAGES} images in {elapsed:.2f} s with {args.workers} workers ({env.start_method}): "
        f"{len(good)} calibrated, {len(failures)} failed "
        f"({len(failures) - len(killed)} raised, {len(killed)} killed its worker)"
    )
    print(
        f"mean level {sum(r['mean'] for r in good) / len(good):.2f}, {sum(r['masked'] for r in good)} bad pixels masked"
    )
    print("\nfailure report:")
    for failure in failures:
        print(failure.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
