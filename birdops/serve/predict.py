"""``birdops predict``: classify audio files with an exported ONNX model, one row per window and species.

    birdops predict recordings/ extra.mp3 "field/**/*.flac" --model models/export/model.onnx \\
        --output predictions.csv [--format csv|raven] [--top-k 3] [--min-score 0.1] [--hop-seconds 2]

Inputs are files, folders (searched recursively for audio extensions) and glob patterns. Each file is
streamed (:meth:`Classifier.predict_file`): decoded, resampled and classified block by block, so memory
does not grow with its length (an hour of 44.1 kHz audio as well as a minute). Formats:

- ``csv``: ``file, start_s, end_s, species, score``; one row per window and each of its ``top-k``
  species whose probability is at least ``min-score``.
- ``raven``: a Raven Pro selection table (tab-separated ``Selection, View, Channel, Begin Time (s),
  End Time (s), Low Freq (Hz), High Freq (Hz), Species, Score``, plus ``Begin Path`` naming the file
  when the table spans several files). The frequency band is the model's feature band.

A file that is refused (empty, not audio, truncated, an unsupported sample rate, too many channels, too
long, too short, NaN/Inf samples, silent: :mod:`birdops.audio`'s :class:`~birdops.audio.AudioError`
subclasses) or that fails in any other way is logged, skipped and listed in the summary at the end,
which also counts refusals by cause; the other files are still classified whatever one file does.
Exit status: 0 when at least one file was classified (refusals are warnings), 1 when none was (every
file was refused, nothing matched, or the model cannot be loaded), 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import glob
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from birdops.audio import AudioError
from birdops.contracts import EXPORTED_MODEL
from birdops.files import atomic_path
from birdops.providers import providers_for
from birdops.serve.inference import Classifier, ModelError, WindowScores

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = frozenset({".wav", ".mp3", ".flac", ".ogg", ".oga", ".opus", ".aif", ".aiff"})
CSV_COLUMNS = ("file", "start_s", "end_s", "species", "score")
RAVEN_COLUMNS = (
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Species",
    "Score",
    "Begin Path",
)


@dataclass(frozen=True)
class Detection:
    """One window's score for one species."""

    file: str
    start_s: float
    end_s: float
    species: str
    score: float


@dataclass
class Summary:
    """What a run did: files classified, their audio length and windows, and the files that failed."""

    files: int = 0
    audio_seconds: float = 0.0
    windows: int = 0
    rows: int = 0
    failures: list[str] = field(default_factory=list)  # one message per input, naming it
    refused: Counter[str] = field(default_factory=Counter)  # refusals by cause (AudioError.kind)


# ------------------------------------------------------------------------------------------ inputs
def find_audio(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (recursive, audio extensions only) and globs into a list of files (each
    input's files sorted, duplicates dropped); an input that names nothing gives a message instead."""
    found: dict[Path, None] = {}
    missing: list[str] = []
    for text in inputs:
        path = Path(text)
        if path.is_file():  # named explicitly: taken whatever its extension
            found[path] = None
        elif path.is_dir():
            found.update(dict.fromkeys(_audio_under(path)))
        elif glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            files = [m for m in matches if m.is_file() and m.suffix.lower() in AUDIO_EXTENSIONS]
            files += [f for m in matches if m.is_dir() for f in _audio_under(m)]
            if not files:
                missing.append(f"{text}: the pattern matches no audio file")
            found.update(dict.fromkeys(files))
        else:
            missing.append(f"{text}: no such file or folder")
    return list(found), missing


def _audio_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)


# ----------------------------------------------------------------------------------------- results
def detections(name: str, result: WindowScores, top_k: int, min_score: float) -> Iterator[Detection]:
    """The rows of one file: each window's ``top_k`` species with a score >= ``min_score``."""
    for start_s, end_s, top in zip(
        result.starts_s, result.ends_s, result.window_top(top_k, min_score), strict=True
    ):
        for item in top:
            yield Detection(name, float(start_s), float(end_s), item.species, item.score)


class TableWriter:
    """Writes detections as CSV or as a Raven selection table (see the module docstring)."""

    def __init__(self, stream: TextIO, fmt: str, band_hz: tuple[float, float]) -> None:
        self.fmt = fmt
        self.band_hz = band_hz
        delimiter = "\t" if fmt == "raven" else ","
        self.writer = csv.writer(stream, delimiter=delimiter, lineterminator="\n")
        self.stream = stream
        self.selection = 0
        self.writer.writerow(RAVEN_COLUMNS if fmt == "raven" else CSV_COLUMNS)

    def write(self, rows: Iterable[Detection]) -> int:
        count = 0
        for row in rows:
            self.writer.writerow(self._cells(row))
            count += 1
        self.stream.flush()
        return count

    def _cells(self, row: Detection) -> list[str]:
        times = [f"{row.start_s:.3f}", f"{row.end_s:.3f}"]
        if self.fmt != "raven":
            return [row.file, *times, row.species, f"{row.score:.6f}"]
        self.selection += 1
        low_hz, high_hz = self.band_hz
        return [
            str(self.selection),
            "Spectrogram 1",
            "1",
            *times,
            f"{low_hz:.1f}",
            f"{high_hz:.1f}",
            row.species,
            f"{row.score:.6f}",
            row.file,
        ]


def feature_band_hz(classifier: Classifier) -> tuple[float, float]:
    """The frequency band the model listens to, from its feature metadata (else 0 to Nyquist)."""
    features = classifier.metadata.features
    nyquist = classifier.sample_rate_hz / 2
    low = features.get("f_min_hz", 0.0)
    high = features.get("f_max_hz", nyquist)
    return float(low or 0.0), float(high or nyquist)


# --------------------------------------------------------------------------------------------- run
def predict_files(
    classifier: Classifier,
    paths: Sequence[Path],
    writer: TableWriter,
    top_k: int = 1,
    min_score: float = 0.0,
    hop_seconds: float | None = None,
    batch_size: int = 16,
) -> Summary:
    """Classify ``paths`` one by one, writing each file's rows as soon as it is done; an undecodable
    file is logged, recorded in the summary and skipped."""
    summary = Summary()
    with logging_redirect_tqdm():
        for path in tqdm(paths, desc="predict", unit="file", disable=None):
            try:
                result = classifier.predict_file(path, hop_seconds, batch_size)
            except AudioError as err:
                log.warning("refused: %s", err)
                summary.failures.append(str(err))
                summary.refused[err.kind] += 1
                continue
            except Exception as err:  # one odd file must not end the run: report it and go on
                log.warning("%s: unexpected error", path, exc_info=True)
                summary.failures.append(f"{path}: unexpected error: {type(err).__name__}: {err}")
                summary.refused["error"] += 1
                continue
            summary.rows += writer.write(detections(str(path), result, top_k, min_score))
            summary.files += 1
            summary.windows += len(result.starts_s)
            summary.audio_seconds += result.duration_s
            best = result.file_top(1)[0]
            log.debug(
                "%s: %d windows, mostly %s (%.3f)", path, len(result.starts_s), best.species, best.score
            )
    return summary


@contextmanager
def open_output(target: str) -> Iterator[TextIO]:
    """``-`` is standard output; anything else a file, its folder created if needed, that appears
    complete or not at all (``birdops.files.atomic_path``)."""
    if target == "-":
        yield sys.stdout
        return
    with atomic_path(target) as temp, temp.open("w", newline="", encoding="utf-8") as stream:
        yield stream


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="birdops predict", description="Classify audio files with an exported birdops ONNX model."
    )
    parser.add_argument("inputs", nargs="+", metavar="PATH", help="audio files, folders or glob patterns")
    parser.add_argument("--model", default=EXPORTED_MODEL, help="exported model (.onnx)")
    parser.add_argument("--output", "-o", default="-", help="output table ('-': standard output)")
    parser.add_argument("--format", choices=("csv", "raven"), default="csv", help="table format")
    parser.add_argument("--top-k", type=positive_int, default=1, help="species per window (default 1)")
    parser.add_argument("--min-score", type=float, default=0.0, help="drop rows below this probability")
    parser.add_argument(
        "--hop-seconds",
        type=positive_float,
        default=None,
        help="window step (default: the model's window, no overlap)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="windows per model call (16: as fast as 32 on CPU, with half the memory)",
    )
    parser.add_argument("--threads", type=positive_int, default=None, help="onnxruntime intra-op threads")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when available, else CPU",
    )
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        classifier = Classifier.load(args.model, providers_for(args.device), args.threads)
    except ModelError as err:
        log.error("%s", err)
        return 1
    log.info(
        "model %s (%s): %d species, %s s windows at %d Hz on %s",
        args.model,
        classifier.metadata.variant,
        len(classifier.labels),
        classifier.window_seconds,
        classifier.sample_rate_hz,
        ", ".join(classifier.providers),
    )
    paths, missing = find_audio(args.inputs)
    started = time.perf_counter()
    with open_output(args.output) as stream:
        writer = TableWriter(stream, args.format, feature_band_hz(classifier))
        summary = predict_files(
            classifier, paths, writer, args.top_k, args.min_score, args.hop_seconds, args.batch_size
        )
    summary.failures = missing + summary.failures
    return report(summary, time.perf_counter() - started, args.output)


def report(summary: Summary, elapsed_s: float, output: str) -> int:
    """Log the run's summary and every failure; the exit status (see the module docstring)."""
    speed = summary.audio_seconds / elapsed_s if elapsed_s > 0 else float("inf")
    log.info(
        "classified %d files (%.1f s of audio, %d windows, %d rows -> %s) in %.1f s: %.1f audio s/s",
        summary.files,
        summary.audio_seconds,
        summary.windows,
        summary.rows,
        output,
        elapsed_s,
        speed,
    )
    if summary.failures:
        causes = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.refused.items()))
        missing = len(summary.failures) - sum(summary.refused.values())
        if missing:
            causes = ", ".join(filter(None, [causes, f"not found {missing}"]))
        log.warning("%d input(s) could not be classified (%s):", len(summary.failures), causes)
        for message in summary.failures:
            log.warning("  %s", message)
    if summary.files == 0:
        log.error("no file was classified")
        return 1
    return 0
