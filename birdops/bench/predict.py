"""The ``predict`` section of ``birdops bench``: ``birdops predict`` on a long generated recording,
as a subprocess (start-up included): x real time and peak RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from birdops.bench.common import TAIL_CHARS, BenchError, Section, Table, fmt
from birdops.bench.inputs import long_recording
from birdops.bench.timing import interleaved, median

PREDICT_RATE_HZ = 44100  # field recorders' usual rate: predict pays for resampling as on real files

# `python -c PEAK_WRAPPER PEAK_FILE ARGS...`: runs `birdops ARGS...`, then writes its own peak RSS (KiB)
PEAK_WRAPPER = """
import re, sys
from birdops.cli import main
try:
    code = main(sys.argv[2:])
finally:
    status = open("/proc/self/status").read()
    open(sys.argv[1], "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
sys.exit(code)
"""


def run_predict(command: list[str], log_path: Path) -> tuple[float, float]:
    """Run ``birdops predict`` (``command``: its arguments after ``predict``); returns its wall seconds
    and its peak RSS in MiB.

    The peak is the child's own ``VmHWM`` (``/proc/self/status``), which it writes as it exits
    (:data:`PEAK_WRAPPER`). ``ru_maxrss`` cannot tell it: Linux carries the peak of the memory a
    process had before ``exec`` into it, and a child forked from this process (torch loaded) starts
    with this process's pages.
    """
    peak_file = log_path.with_suffix(".peak")
    wrapped = [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), "predict", *command]
    with log_path.open("w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(wrapped, stdout=subprocess.DEVNULL, stderr=log)
        _, status, _ = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        # the reason: predict's refusal and error lines (each once; its summary repeats the refusals)
        warnings = list(
            dict.fromkeys(
                line.split(": ", 1)[-1].strip()
                for line in log_path.read_text().splitlines()
                if line.startswith(("WARNING", "ERROR"))
            )
        )
        raise BenchError(
            f"birdops predict exited with {process.returncode}: {' | '.join(warnings)[-TAIL_CHARS:]}"
        )
    return seconds, int(peak_file.read_text()) / 1024  # VmHWM is in KiB


def predict_section(
    onnx_path: Path, work_dir: Path, seconds: float, batch_size: int, threads: int, device: str, repeats: int
) -> Section:
    """``birdops predict`` (a subprocess, start-up included) on a generated ``seconds``-long 44.1 kHz
    FLAC: audio seconds per wall second (x real time) and peak RSS."""
    recording = long_recording(work_dir / "long.flac", seconds, PREDICT_RATE_HZ)
    output = work_dir / "predict.csv"
    command = [
        str(recording),
        "--model",
        str(onnx_path),
        "--output",
        str(output),
        "--batch-size",
        str(batch_size),
        "--threads",
        str(threads),
        "--device",
        device,
    ]
    runs = interleaved({"predict": lambda: run_predict(command, work_dir / "predict.log")}, repeats)[
        "predict"
    ]
    walls, peaks = [wall for wall, _ in runs], [peak for _, peak in runs]
    with output.open() as handle:
        rows = sum(1 for _ in handle) - 1
    result: dict[str, Any] = {
        "recording_seconds": seconds,
        "sample_rate_hz": PREDICT_RATE_HZ,
        "format": "FLAC PCM_16",
        "recording_mib": recording.stat().st_size / 2**20,
        "batch_size": batch_size,
        "threads": threads,
        "device": device,
        "seconds": [round(s, 3) for s in walls],
        "wall_s": median(walls),
        "x_real_time": seconds / median(walls),
        "peak_rss_mib": [round(p, 1) for p in peaks],
        "peak_rss_mib_max": max(peaks),
        "rows": rows,
    }
    table = Table(
        f"birdops predict: {seconds / 60:g} min of 44.1 kHz FLAC, batch {batch_size}, {threads} threads, "
        f"{device}",
        ("", "value"),
        [
            ("x real time (audio s / wall s)", fmt(result["x_real_time"])),
            ("wall s (median)", fmt(result["wall_s"], 2)),
            ("peak RSS MiB (max)", fmt(result["peak_rss_mib_max"])),
        ],
    )
    return Section(result, (table,))
