"""``birdops predict``: detect species in audio files with an exported ONNX model, one row per window
and detected species.

    birdops predict recordings/ extra.mp3 "field/**/*.flac" --model models/export/model.onnx \\
        --output predictions.csv [--format csv|raven] [--min-score 0.5 | --thresholds FILE | --all]
        [--top-k 3] [--hop-seconds 2] [--embeddings embeddings.csv]

Inputs are files, folders (searched recursively for audio extensions, hidden files left out) and glob
patterns; audio of a type the decoder does not read (``.m4a``, ``.wma``, ...) is refused by name, with
how to convert it. Each file is
streamed (:meth:`Classifier.predict_file`): decoded, resampled and classified block by block, so memory
does not grow with its length (an hour of 44.1 kHz audio as well as a minute).

Which rows are written (:mod:`birdops.serve.detect`): by default each window's species whose calibrated
score reaches that species' threshold from the model's metadata, all of them (no cap), best first;
a window or a file where nothing reaches its threshold has no row. ``--min-score X`` puts every
species' threshold at X; ``--thresholds FILE`` (CSV ``species,threshold`` or a JSON object) sets
the thresholds of the species it lists, over the model's or ``--min-score``'s; ``--top-k N`` keeps
at most N rows per window. ``--all`` writes every window's top species (1, or ``--top-k``) whatever
the scores. A model without thresholds (an export from before calibration) cannot tell a detection
from its absence: it is read as ``--all`` would (threshold 0.0, the top 1 species of each window,
its former output), with one warning.

The summary at the end lists, per file, the species detected (windows, best score) or ``no
detections``. Formats:

- ``csv``: ``file, start_s, end_s, species, score``, one row per window and reported species.
- ``raven``: a Raven Pro selection table (tab-separated ``Selection, View, Channel, Begin Time (s),
  End Time (s), Low Freq (Hz), High Freq (Hz), Species, Score``, plus ``Begin Path`` naming the file
  when the table spans several files). The frequency band is the model's feature band.

``--embeddings FILE`` also writes every window's embedding (the model's second output, the pooled
vector its final linear layer reads), whatever was detected: a CSV ``file, start_s, end_s, e0, ...,
e<D-1>``, one row per window, each value the float32 in the fewest digits that read back to it
exactly; a name ending in ``.gz`` is gzip-compressed. ``pandas.read_csv`` reads either, and writing
it takes nothing beyond numpy and the standard library. A file's rows are written once it is
classified (a refused file has none). A model without an embedding output (an export from before
embeddings) is refused before any audio is read.

A file that is refused (empty, not audio, truncated, an unsupported sample rate, too many channels, too
long, too short, NaN/Inf samples, silent: :mod:`birdops.audio`'s :class:`~birdops.audio.AudioError`
subclasses) or that fails in any other way is logged, skipped and listed in the summary at the end,
which also counts refusals by cause; the other files are still classified whatever one file does. A
file damaged part way (a corrupt stretch of an SD card, a copy cut off) is classified up to the
damage, and named with where and why in a warning and in the summary.
Exit status: 0 when at least one file was classified (refusals are warnings), 1 when none was (every
file was refused, nothing matched, or the model cannot be loaded), 2 for bad arguments (a thresholds
file that names an unknown species or a value outside [0, 1] included), 130 when interrupted (Ctrl-C
or SIGTERM): the run stops at the file it is classifying and its tables hold the files done before
it, complete, and the summary names where it stopped. A file without detections is a success.
"""

from __future__ import annotations

import argparse
import csv
import glob
import gzip
import io
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from birdops.audio import AudioError, audio_files, is_audio_name
from birdops.contracts import EXPORTED_MODEL
from birdops.files import NAME_ERRORS, atomic_path
from birdops.serve.arguments import positive_float, positive_int, unit_float
from birdops.serve.detect import (
    Selection,
    SpeciesFound,
    ThresholdsError,
    describe_found,
    read_thresholds,
    select,
    species_found,
)
from birdops.serve.inference import Classifier, ModelError, SpeciesScore, WindowScores, open_classifier

log = logging.getLogger(__name__)

# windows per onnxruntime call. Against 16, on 2 cores and an hour of 44.1 kHz FLAC: phase2b 1.15x
# (1 thread) and 1.08x (2), full 1.04x and 1.16x as fast, peak RSS 165-174 MiB against 252-265 MiB;
# 4 is as fast on 1 thread but slower on 2 (README, "Benchmarks")
BATCH_SIZE = 8
# the largest --batch-size: its buffer of windows (1024 of 4 s at 22,050 Hz: 361 MB) is held at once
MAX_BATCH_SIZE = 1024
INTERRUPTED = 130  # the exit status of a run stopped by Ctrl-C or SIGTERM (128 + SIGINT, as shells give)
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
EMBEDDING_KEY_COLUMNS = ("file", "start_s", "end_s")  # then one column a dimension: e0, e1, ...


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
    """What a run did: files classified, their audio length and windows, the species found in each,
    and the files that failed."""

    files: int = 0
    audio_seconds: float = 0.0
    windows: int = 0
    rows: int = 0
    embedding_rows: int = 0  # windows written to --embeddings
    found: list[tuple[str, list[SpeciesFound]]] = field(default_factory=list)  # per classified file
    thresholded: bool = True  # rows are detections (not --all)
    failures: list[str] = field(default_factory=list)  # one message per input, naming it
    refused: Counter[str] = field(default_factory=Counter)  # refusals by cause (AudioError.kind)
    damaged: list[str] = field(default_factory=list)  # files classified up to damaged data, why
    interrupted_at: str | None = None  # the file being classified when the run was interrupted
    not_classified: int = 0  # files left when interrupted: that one and those after it


# ------------------------------------------------------------------------------------------ inputs
def find_audio(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Expand files, folders (recursive: :func:`birdops.audio.audio_files`) and globs into a list of
    files (each input's files sorted, duplicates dropped); an input that names nothing gives a message
    instead. Audio of a type the decoder does not read (``.m4a``, ``.wma``, ...) is listed too: it
    is refused by name, with how to convert it, rather than passed over."""
    found: dict[Path, None] = {}
    missing: list[str] = []
    for text in inputs:
        path = Path(text)
        if path.is_file():  # named explicitly: taken whatever its extension
            found[path] = None
        elif path.is_dir():
            files = audio_files(path)
            if not files:
                missing.append(f"{text}: the folder holds no audio file (hidden ones left out)")
            found.update(dict.fromkeys(files))
        elif glob.has_magic(text):
            matches = [Path(m) for m in sorted(glob.glob(text, recursive=True))]
            files = [m for m in matches if m.is_file() and is_audio_name(m)]
            files += [f for m in matches if m.is_dir() for f in audio_files(m)]
            if not files:
                missing.append(f"{text}: the pattern matches no audio file")
            found.update(dict.fromkeys(files))
        else:
            missing.append(f"{text}: no such file or folder")
    return list(found), missing


# ----------------------------------------------------------------------------------------- results
def detections(
    name: str, result: WindowScores, picked: Sequence[Sequence[SpeciesScore]]
) -> Iterator[Detection]:
    """The rows of one file: each window's reported species (``picked``: :meth:`Selection.pick`)."""
    for start_s, end_s, items in zip(result.starts_s, result.ends_s, picked, strict=True):
        for item in items:
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


def embedding_columns(dim: int) -> list[str]:
    """The embeddings table's header: the window (as the detections table gives it), then ``e0`` ..
    ``e<dim-1>``."""
    return [*EMBEDDING_KEY_COLUMNS, *(f"e{k}" for k in range(dim))]


class EmbeddingWriter:
    """Writes each window's embedding as one CSV row (see the module docstring), a file at a time."""

    def __init__(self, stream: TextIO, dim: int) -> None:
        self.stream = stream
        self.writer = csv.writer(stream, lineterminator="\n")
        self.writer.writerow(embedding_columns(dim))

    def write(self, name: str, result: WindowScores) -> int:
        """Write the rows of ``result.embeddings`` ``(N, D)``; returns N."""
        if result.embeddings is None:
            raise ValueError(f"{name}: classified without embeddings")
        # numpy writes a float32 in the fewest digits that parse back to the same float32
        values = result.embeddings.astype(str).tolist()  # (N, D)
        for start_s, end_s, row in zip(result.starts_s, result.ends_s, values, strict=True):
            self.writer.writerow([name, f"{start_s:.3f}", f"{end_s:.3f}", *row])
        self.stream.flush()
        return len(values)


def feature_band_hz(classifier: Classifier) -> tuple[float, float]:
    """The frequency band the model listens to, from its feature metadata."""
    features = classifier.metadata.features
    return features.f_min_hz, features.f_max_hz


# --------------------------------------------------------------------------------------------- run
def predict_files(
    classifier: Classifier,
    paths: Sequence[Path],
    writer: TableWriter,
    selection: Selection,
    hop_seconds: float | None = None,
    batch_size: int = BATCH_SIZE,
    embeddings: EmbeddingWriter | None = None,
) -> Summary:
    """Classify ``paths`` one by one, writing each file's reported rows (``selection``), and with
    ``embeddings`` its windows' embeddings, as soon as it is done; an undecodable file is logged,
    recorded in the summary and skipped. Interrupted (Ctrl-C, or SIGTERM in :func:`main`), it stops
    at the file it is classifying, whose rows are not written, and returns what was done before."""
    summary = Summary(thresholded=selection.thresholds is not None)
    with logging_redirect_tqdm():
        for index, path in enumerate(tqdm(paths, desc="predict", unit="file", disable=None)):
            try:
                result = classifier.predict_file(path, hop_seconds, batch_size, embeddings is not None)
            except KeyboardInterrupt:
                summary.interrupted_at, summary.not_classified = str(path), len(paths) - index
                break
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
            if result.damage is not None:
                seconds, why = result.duration_s, result.damage
                message = f"{path}: classified up to {seconds:.1f} s, where it is damaged: {why}"
                log.warning("%s", message)
                summary.damaged.append(message)
            picked = selection.pick(result.scores, result.labels)
            summary.rows += writer.write(detections(str(path), result, picked))
            if embeddings is not None:
                summary.embedding_rows += embeddings.write(str(path), result)
            summary.files += 1
            summary.windows += len(result.starts_s)
            summary.audio_seconds += result.duration_s
            summary.found.append((str(path), species_found(result, picked)))
            log.debug("%s: %d windows: %s", path, len(result.starts_s), describe_found(summary.found[-1][1]))
    return summary


@contextmanager
def open_output(target: str) -> Iterator[TextIO]:
    """``-`` is standard output; anything else a file, its folder created if needed, that appears
    complete or not at all (``birdops.files.atomic_path``)."""
    if target == "-":
        if isinstance(sys.stdout, io.TextIOWrapper):
            sys.stdout.reconfigure(errors=NAME_ERRORS)
        yield sys.stdout
        return
    with (
        atomic_path(target) as temp,
        temp.open("w", newline="", encoding="utf-8", errors=NAME_ERRORS) as stream,
    ):
        yield stream


@contextmanager
def open_embeddings(target: str) -> Iterator[TextIO]:
    """:func:`open_output` for the embeddings table, gzip-compressed when ``target`` ends in ``.gz``
    (no name or time in the gzip header: the same rows give the same bytes)."""
    if target == "-" or not target.endswith(".gz"):
        with open_output(target) as stream:
            yield stream
        return
    with ExitStack() as stack:
        temp = stack.enter_context(atomic_path(target))
        raw = stack.enter_context(temp.open("wb"))
        packed = stack.enter_context(gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0))
        yield stack.enter_context(io.TextIOWrapper(packed, encoding="utf-8", errors=NAME_ERRORS, newline=""))


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="birdops predict", description="Classify audio files with an exported birdops ONNX model."
    )
    parser.add_argument("inputs", nargs="+", metavar="PATH", help="audio files, folders or glob patterns")
    parser.add_argument("--model", default=EXPORTED_MODEL, help="exported model (.onnx)")
    parser.add_argument("--output", "-o", default="-", help="output table ('-': standard output)")
    parser.add_argument("--format", choices=("csv", "raven"), default="csv", help="table format")
    parser.add_argument(
        "--min-score",
        type=unit_float,
        default=None,
        help="one threshold in [0, 1] for every species, in place of the model's",
    )
    parser.add_argument(
        "--thresholds",
        metavar="FILE",
        default=None,
        help="per-species thresholds (CSV species,threshold or a JSON object), over the model's "
        "or --min-score's; species it does not list keep theirs",
    )
    parser.add_argument(
        "--top-k",
        type=positive_int,
        default=None,
        help="at most N species per window, best first (default: no cap; 1 with --all or a model "
        "without thresholds)",
    )
    parser.add_argument(
        "--all",
        dest="report_all",
        action="store_true",
        help="every window's top species (1, or --top-k) whatever the thresholds",
    )
    parser.add_argument(
        "--hop-seconds",
        type=positive_float,
        default=None,
        help="window step (default: the model's window, no overlap)",
    )
    parser.add_argument(
        "--batch-size",
        type=batch_size,
        default=BATCH_SIZE,
        help=f"windows per model call (default {BATCH_SIZE}: on CPU faster than 16 or 32, with less memory)",
    )
    parser.add_argument(
        "--embeddings",
        metavar="FILE",
        default=None,
        help="also write every window's embedding: CSV file,start_s,end_s,e0..e<D-1> (gzip for a .gz name)",
    )
    parser.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        help="onnxruntime intra-op threads (default: one per core); the decoder runs beside them, so on "
        "few cores a light model is faster with one thread fewer",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA when it can run here, else the CPU; cuda: CUDA or exit 1",
    )
    args = parser.parse_args(argv)
    if args.report_all and (args.min_score is not None or args.thresholds is not None):
        parser.error("--all reports every window whatever the thresholds: drop --min-score / --thresholds")
    if args.embeddings == "-" and args.output == "-":
        parser.error("the detections go to standard output: give --embeddings a file, or --output one")
    for option, target in (("--output", args.output), ("--embeddings", args.embeddings)):
        if target is not None and target != "-" and Path(target).is_dir():  # found before, not after, the run
            parser.error(f"{option} {target} is a folder: name the file to write in it")
    files = [Path(t).resolve() for t in (args.output, args.embeddings) if t not in (None, "-")]
    if len(files) == 2 and files[0] == files[1]:
        parser.error(f"--output and --embeddings both name {args.output}: give each its own file")
    return args


def batch_size(text: str) -> int:
    value = positive_int(text)
    if value > MAX_BATCH_SIZE:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_BATCH_SIZE} windows, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        # its threads sleep between batches: the decoder shares the cores (Classifier.load)
        classifier = open_classifier(args.model, args.device, args.threads, spinning=False)
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
    try:
        selection = choose_selection(classifier, args)
        dim = classifier.require_embedding().dim if args.embeddings is not None else 0
    except (ThresholdsError, ModelError) as err:
        log.error("%s", err)
        return 2
    try:
        classifier.check_hop(args.hop_seconds)
    except ValueError as err:
        log.error("--hop-seconds: %s", err)
        return 2
    paths, missing = find_audio(args.inputs)
    started = time.perf_counter()
    try:
        with ExitStack() as outputs:
            outputs.enter_context(terminate_as_interrupt())
            table = _open_writable(outputs, args.output, open_output)
            embeddings = None
            if args.embeddings is not None:
                embeddings = EmbeddingWriter(_open_writable(outputs, args.embeddings, open_embeddings), dim)
            writer = TableWriter(table, args.format, feature_band_hz(classifier))
            summary = predict_files(
                classifier, paths, writer, selection, args.hop_seconds, args.batch_size, embeddings
            )
    except _UnwritableError as err:  # found before any audio is read; neither table is left behind
        log.error("%s", err)
        return 2
    summary.failures = missing + summary.failures
    return report(summary, time.perf_counter() - started, args.output, args.embeddings)


class _UnwritableError(OSError):
    """An output that cannot be created where it is asked for."""


def _open_writable(
    outputs: ExitStack, target: str, opener: Callable[[str], AbstractContextManager[TextIO]]
) -> TextIO:
    """``opener(target)`` entered on ``outputs``; its failure to create the file an
    :class:`_UnwritableError` naming ``target`` (not the temporary file's name, which the user never
    gave), which unwinds ``outputs``: an output opened before it is not left behind."""
    try:
        return outputs.enter_context(opener(target))
    except OSError as err:
        raise _UnwritableError(f"{target}: cannot write there: {err.strerror or err}") from None


def choose_selection(classifier: Classifier, args: argparse.Namespace) -> Selection:
    """The rows to write, from the model's thresholds and the options (module docstring); logs one
    warning when the model has no thresholds to fall back on."""
    scoring, labels = classifier.metadata.scoring, classifier.labels
    overrides = read_thresholds(args.thresholds, labels) if args.thresholds is not None else None
    # no cap on detections; one species a window where scores are not thresholded (--all, or a
    # model without thresholds: its former output)
    default_top_k = 1 if args.report_all or scoring.thresholds is None else None
    top_k = args.top_k or default_top_k
    selection, warning = select(scoring, labels, top_k, args.min_score, overrides, args.report_all)
    if warning is not None:
        log.warning("%s: %s", args.model, warning)
    return selection


def report(summary: Summary, elapsed_s: float, output: str, embeddings: str | None = None) -> int:
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
    if embeddings is not None:
        log.info("wrote the embeddings of %d windows -> %s", summary.embedding_rows, embeddings)
    log_found(summary.found, summary.thresholded)
    if summary.damaged:
        log.warning("%d file(s) were classified up to damaged data, not to their end:", len(summary.damaged))
        for message in summary.damaged:
            log.warning("  %s", message)
    if summary.failures:
        causes = ", ".join(f"{kind} {n}" for kind, n in sorted(summary.refused.items()))
        missing = len(summary.failures) - sum(summary.refused.values())
        if missing:
            causes = ", ".join(filter(None, [causes, f"not found {missing}"]))
        log.warning("%d input(s) could not be classified (%s):", len(summary.failures), causes)
        for message in summary.failures:
            log.warning("  %s", message)
    if summary.interrupted_at is not None:
        log.warning(
            "interrupted while classifying %s: the tables hold the %d file(s) classified before it; "
            "%d file(s) were not classified (it and those after it)",
            summary.interrupted_at,
            summary.files,
            summary.not_classified,
        )
        return INTERRUPTED
    if summary.files == 0:
        log.error("no file was classified")
        return 1
    return 0


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a job scheduler's stop, ``kill``) is taken as Ctrl-C while this block runs: the run
    ends at the file it is classifying and keeps the tables of those done before it (where signals
    can be handled: the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def log_found(found: Sequence[tuple[str, Sequence[SpeciesFound]]], thresholded: bool = True) -> None:
    """The species detected in each classified file, or ``no detections``: one line a file (with
    ``--all``, not ``thresholded``, the species of the rows, whatever their scores)."""
    if not found:
        return
    with_rows = sum(1 for _, species in found if species)
    all_species = len({f.species for _, species in found for f in species})
    if thresholded:
        log.info("detections in %d of %d files, %d species:", with_rows, len(found), all_species)
    else:
        log.info("top species of every window (--all, whatever their scores), %d species:", all_species)
    for name, species in found:
        log.info("  %s: %s", name, describe_found(species))
