"""``birdops segments``: cut the audio of detections into short clips for a person to check.

    birdops segments predictions.csv --out review/ [--species "Turdus merula" ...] [--min-score 0.5]
        [--max-score 0.9] [--max-per-species 20] [--padding-seconds 1.5] [--audio-root recordings/]
        [--format wav|flac]

Reads a ``birdops predict`` table -- CSV (``file, start_s, end_s, species, score``) or a Raven
selection table (``Begin Path``, ``Begin Time (s)``, ``End Time (s)``, ``Species``, ``Score``), told
apart by the header -- keeps the rows of the chosen species whose score lies in ``[min-score,
max-score]``, at most ``max-per-species`` of each species (the highest scores first; ties: file, then
start), and writes each one's audio to ``<out>/<species>/<file-stem>_<start>-<end>_<score>.<format>``
(the window's start and end in seconds and its score, three decimals; a second clip of the same name
from another folder's file gets ``_2``, ...). A clip holds the window and ``padding-seconds`` on each
side, cut short at the recording's ends.

Audio is decoded by :mod:`birdops.audio` (:func:`~birdops.audio.stream_audio`, the decoder the model
heard) at the recording's own sample rate, mixed down to mono, block by block: memory holds one block
and the clips, whatever the recording's length. WAV clips are float32, so they hold the decoded
samples exactly; FLAC clips are 24-bit (exact for 16- and 24-bit sources). A relative path in the
table is resolved under ``--audio-root`` (default: the current folder, where ``birdops predict`` was
run). A file that cannot be found or decoded is skipped with a message naming it; the other files are
still cut.

Exit status, as ``birdops predict``'s: 0 when at least one clip was written (a skipped file is a
warning, listed at the end) or nothing was selected (a table without detections is no error), 1 when
clips were selected but none could be written or the table cannot be read, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import math
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from birdops.audio import HEADERLESS_RATE_HZ, MAX_STREAM_SECONDS, AudioError, header_frames, stream_audio
from birdops.files import NAME_ERRORS, atomic_path
from birdops.serve.arguments import non_negative_float, positive_int, unit_float
from birdops.windows import seconds_to_samples

log = logging.getLogger(__name__)

CSV_COLUMNS = {"file": "file", "start_s": "start_s", "end_s": "end_s", "species": "species", "score": "score"}
RAVEN_COLUMNS = {
    "file": "Begin Path",
    "start_s": "Begin Time (s)",
    "end_s": "End Time (s)",
    "species": "Species",
    "score": "Score",
}
FORMATS = {"wav": ("WAV", "FLOAT"), "flac": ("FLAC", "PCM_24")}  # soundfile format and subtype
UNSAFE_CHARS = set('/\\:*?"<>|')


class TableError(ValueError):
    """A predictions table that cannot be read: unknown header, a malformed row."""


@dataclass(frozen=True)
class Row:
    """One detection of a predictions table."""

    file: str  # as the table writes it
    start_s: float
    end_s: float
    species: str
    score: float
    line: int  # in the table, for messages


# ------------------------------------------------------------------------------------------- table
def read_table(path: str | Path, skipped: list[str] | None = None) -> list[Row]:
    """The rows of a ``birdops predict`` table, CSV or Raven (by its header); :class:`TableError` names
    the table and the line of a malformed row, or, with a ``skipped`` list, that row is left out and
    the message appended to it (a table that is not one, or cannot be read, is raised either way)."""
    path = Path(path)
    try:
        # a table saved by a spreadsheet may start with a BOM; a file name that is not UTF-8 keeps its
        # bytes (NAME_ERRORS)
        text = path.read_text(encoding="utf-8-sig", errors=NAME_ERRORS)
    except (OSError, UnicodeDecodeError) as err:
        raise TableError(f"{path}: cannot read the table: {err}") from None
    raven = "\t" in text.split("\n", 1)[0]
    columns = RAVEN_COLUMNS if raven else CSV_COLUMNS
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if raven else ",")
    missing = [name for name in columns.values() if name not in (reader.fieldnames or ())]
    if missing:
        kind = "Raven selection table" if raven else "predictions CSV"
        raise TableError(f"{path}: not a birdops predict table: the {kind} lacks {', '.join(missing)}")
    rows = []
    for record in reader:
        try:
            rows.append(_row(path, record, columns, reader.line_num))
        except TableError as err:
            if skipped is None:
                raise
            skipped.append(str(err))
    return rows


def _row(path: Path, record: dict[str, str], columns: dict[str, str], line: int) -> Row:
    where = f"{path}, line {line}"
    try:
        start_s, end_s, score = (float(record[columns[key]]) for key in ("start_s", "end_s", "score"))
    except (TypeError, ValueError):
        raise TableError(f"{where}: start, end and score must be numbers") from None
    if not (0 <= start_s < end_s <= MAX_STREAM_SECONDS):  # NaN and inf too
        raise TableError(f"{where}: the window {start_s}-{end_s} s is not a span of the recording")
    if not math.isfinite(score):
        raise TableError(f"{where}: the score {score} is not a number")
    file, species = record[columns["file"]], record[columns["species"]]
    if not file or not species:
        raise TableError(f"{where}: the file and species must not be empty")
    return Row(file, start_s, end_s, species, score, line)


def choose(
    rows: Iterable[Row],
    species: Sequence[str] | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    max_per_species: int | None = None,
) -> list[Row]:
    """The rows to cut: of ``species`` (all when None), scores in ``[min_score, max_score]``, at most
    ``max_per_species`` per species, the highest scores first (ties: file, then start); species in
    name order. The same rows in any order give the same list."""
    by_species: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        low = min_score is None or row.score >= min_score
        high = max_score is None or row.score <= max_score
        if (species is None or row.species in species) and low and high:
            by_species[row.species].append(row)
    chosen: list[Row] = []
    for _, group in sorted(by_species.items()):
        ranked = sorted(group, key=lambda row: (-row.score, row.file, row.start_s, row.line))
        chosen += ranked[:max_per_species]
    return chosen


# -------------------------------------------------------------------------------------------- clips
def cut_spans(blocks: Iterable[np.ndarray], spans: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """The samples ``[start, end)`` of each span of the recording whose consecutive pieces ``blocks``
    are; a span past the recording's end is cut short there (maybe to nothing)."""
    clips = [np.zeros(end - start, dtype=np.float32) for start, end in spans]
    offset = 0
    for block in blocks:
        block_end = offset + len(block)
        for clip, (start, end) in zip(clips, spans, strict=True):
            low, high = max(start, offset), min(end, block_end)
            if low < high:
                clip[low - start : high - start] = block[low - offset : high - offset]
        offset = block_end
    return [clip[: max(0, min(end, offset) - start)] for clip, (start, end) in zip(clips, spans, strict=True)]


def safe_name(text: str) -> str:
    """``text`` as one file or folder name: no path separators, control or reserved characters, no
    leading dots (never ``..``)."""
    cleaned = "".join("_" if ch in UNSAFE_CHARS or not ch.isprintable() else ch for ch in text)
    return cleaned.strip().lstrip(".") or "_"


def clip_name(row: Row, suffix: str) -> str:
    stem = safe_name(Path(row.file.replace("\\", "/")).stem)
    return f"{stem}_{row.start_s:.3f}-{row.end_s:.3f}_{row.score:.3f}.{suffix}"


@dataclass
class Outcome:
    """What a run wrote, and what it could not."""

    clips: Counter[str]  # clips written per species
    failures: list[str]  # one message per file or row that could not be cut

    def skip(self, message: str) -> None:
        log.warning("%s", message)
        self.failures.append(message)


def write_segments(
    rows: Sequence[Row],
    out_dir: str | Path,
    audio_root: str | Path = ".",
    padding_seconds: float = 0.0,
    fmt: str = "wav",
) -> Outcome:
    """Write the clip of every row (module docstring), one recording at a time, in the order of the
    files' paths."""
    out_dir, audio_root = Path(out_dir), Path(audio_root)
    by_file: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        by_file[row.file].append(row)
    outcome = Outcome(Counter(), [])
    used: set[Path] = set()
    with logging_redirect_tqdm():
        for file in tqdm(sorted(by_file), desc="segments", unit="file", disable=None):
            path = Path(file) if Path(file).is_absolute() else audio_root / file
            try:
                rate_hz, clips = _cut_file(path, by_file[file], padding_seconds)
            except (AudioError, OSError) as err:  # an AudioError names the file, an OSError its path
                outcome.skip(f"skipped: {err}" if isinstance(err, AudioError) else f"skipped: {path}: {err}")
                continue
            for row, clip in zip(by_file[file], clips, strict=True):
                if len(clip) == 0:
                    outcome.skip(f"{path}: table line {row.line} starts after the recording's end")
                    continue
                target = _unique(out_dir / safe_name(row.species) / clip_name(row, fmt), used)
                _write_clip(target, clip, rate_hz, fmt)
                outcome.clips[row.species] += 1
    return outcome


def _cut_file(path: Path, rows: Sequence[Row], padding_seconds: float) -> tuple[int, list[np.ndarray]]:
    """``(sample rate, the clips of rows)`` of one recording, at its own rate."""
    if not path.is_file():
        raise FileNotFoundError("no such audio file")
    rate_hz, last = _header(path)
    spans = [
        (
            min(seconds_to_samples(max(row.start_s - padding_seconds, 0.0), rate_hz), last),
            min(seconds_to_samples(row.end_s + padding_seconds, rate_hz), last),
        )
        for row in rows
    ]
    return rate_hz, cut_spans(stream_audio(path, rate_hz), spans)


def _header(path: Path) -> tuple[int, int]:
    """``(sample rate, frames)`` the file's header announces, to decode it at its own rate; the decoder
    then checks the header against its limits and the data as it reads it. (Not
    :func:`birdops.audio.probe`: it holds a file to the whole-file limits, a stream to a day only.)"""
    try:
        with path.open("rb") as handle:  # opened by the name's own bytes: it need not be UTF-8
            return header_frames(handle, str(path))  # a chained Ogg file's links all counted
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError, TypeError) as err:
        next(iter(stream_audio(path, HEADERLESS_RATE_HZ)), None)  # the decoder's refusal says why
        raise AudioError(str(path), f"cannot decode audio: {err}") from err


def _unique(path: Path, used: set[Path]) -> Path:
    """``path``, or ``<stem>_2<suffix>``, ``_3``... when this run already wrote a clip there."""
    candidate, n = path, 1
    while candidate in used:
        n += 1
        candidate = path.with_name(f"{path.stem}_{n}{path.suffix}")
    used.add(candidate)
    return candidate


def _write_clip(path: Path, clip: np.ndarray, rate_hz: int, fmt: str) -> None:
    file_format, subtype = FORMATS[fmt]
    with atomic_path(path) as temp:  # the temporary name has no suffix: name the format
        sf.write(temp, clip, rate_hz, format=file_format, subtype=subtype)


# ---------------------------------------------------------------------------------------------- cli
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="birdops segments",
        description="Cut the audio of detections from a birdops predict table into short clips to review.",
    )
    parser.add_argument("table", help="a birdops predict table (CSV or Raven selection table)")
    parser.add_argument("--out", "-o", required=True, help="folder for the clips (<out>/<species>/...)")
    parser.add_argument(
        "--audio-root", default=".", help="where the table's relative paths resolve (default: here)"
    )
    parser.add_argument("--species", nargs="+", default=None, help="only these species (default: all)")
    parser.add_argument("--min-score", type=unit_float, default=None, help="only rows scoring at least this")
    parser.add_argument("--max-score", type=unit_float, default=None, help="only rows scoring at most this")
    parser.add_argument(
        "--max-per-species",
        type=positive_int,
        default=None,
        help="at most N clips per species, the highest scores first (default: all)",
    )
    parser.add_argument(
        "--padding-seconds",
        type=non_negative_float,
        default=0.0,
        help="audio kept before and after the window (default 0)",
    )
    parser.add_argument("--format", choices=sorted(FORMATS), default="wav", help="clip format")
    args = parser.parse_args(argv)
    if args.min_score is not None and args.max_score is not None and args.min_score > args.max_score:
        parser.error(f"--min-score {args.min_score} is above --max-score {args.max_score}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file: name a folder for the clips")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    bad_rows: list[str] = []
    try:
        rows = read_table(args.table, bad_rows)
    except TableError as err:
        log.error("%s", err)
        return 1
    if bad_rows:  # one malformed row (a hand edit, a cut-off copy) leaves the others to cut
        log.warning("%d row(s) of %s skipped:", len(bad_rows), args.table)
        for message in bad_rows:
            log.warning("  %s", message)
        if not rows:
            log.error("%s: no row is a detection: nothing to cut", args.table)
            return 1
    chosen = choose(rows, args.species, args.min_score, args.max_score, args.max_per_species)
    for name in sorted(set(args.species or ()) - {row.species for row in rows}):
        log.warning("%s: no detection of %r in the table", args.table, name)
    if not chosen:
        log.info("%s: no detection among its %d rows matches: nothing to cut", args.table, len(rows))
        return 0
    outcome = write_segments(chosen, args.out, args.audio_root, args.padding_seconds, args.format)
    per_species = ", ".join(f"{species} {n}" for species, n in outcome.clips.items())
    log.info(
        "wrote %d clips of %d species to %s%s",
        sum(outcome.clips.values()),
        len(outcome.clips),
        args.out,
        f": {per_species}" if per_species else "",
    )
    if outcome.failures:
        log.warning("%d file(s) or row(s) could not be cut:", len(outcome.failures))
        for message in outcome.failures:
            log.warning("  %s", message)
    if not outcome.clips:
        log.error("no clip was written")
        return 1
    return 0
