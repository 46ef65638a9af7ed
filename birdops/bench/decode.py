"""Decode-only, the floor the feature-cache stage is compared with: every file decoded with
``birdops.audio.load_audio`` at each rate, in as many worker processes as the stage uses.

    python -m birdops.bench.decode --files LIST --rates 22050 --workers 2

``LIST`` holds one audio path a line; the number of refused decodes is printed. It runs as a process
of its own, as the stage does, so both figures include start-up, and it imports nothing but
``birdops.audio`` (numpy, scipy, soundfile): the benchmark's other modules would bring torch along.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from birdops.audio import AudioError, load_audio


def decode(task: tuple[Path, int]) -> bool:
    """Decode one file at one rate; False when ``birdops.audio`` refuses it."""
    try:
        load_audio(task[0], task[1])
    except AudioError:
        return False
    return True


def decode_all(paths: list[Path], rates_hz: list[int], workers: int) -> int:
    """Decode every file at every rate with ``workers`` processes forked from this one (as the cache
    stage forks its one-thread workers; this process imports nothing but ``birdops.audio``, and its
    reaped workers' CPU time is counted in its own); returns how many decodes were refused."""
    context = multiprocessing.get_context("fork")
    tasks = [(path, rate) for path in paths for rate in rates_hz]
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = list(pool.map(decode, tasks, chunksize=max(1, len(tasks) // (4 * workers))))
    return results.count(False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=Path, required=True, help="text file: one audio path a line")
    parser.add_argument("--rates", required=True, help="sample rates in Hz, comma-separated")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    paths = [Path(line) for line in args.files.read_text().splitlines() if line]
    print(decode_all(paths, [int(rate) for rate in args.rates.split(",")], args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
