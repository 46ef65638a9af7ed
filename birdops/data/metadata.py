"""The raw corpus's ``metadata.csv``: xeno-canto API v3 field names plus one local column.

One row per recording. Columns are the fields of a xeno-canto API v3 recording object (:data:`XC_FIELDS`)
followed by ``local_path``, the audio file's path relative to the raw folder. All values are kept as
text, exactly as the API returns them; list values (``also``) are joined with ``"; "`` and object
values (``sono``, ``osci``) are written as JSON. The label of a recording is its scientific name
``"{gen} {sp}"``; ``length`` is ``m:ss`` (or ``h:mm:ss``); ``q`` is the quality grade ``A``..``E``
(best to worst) or ``"no score"``.

Validation never raises on a bad row: :func:`validate_rows` returns one :class:`Problem` per row that
cannot be used, so a stage can reject that row with a reason and go on. A file that is not a usable
metadata table at all (missing, unreadable, required columns missing) raises :class:`MetadataError`.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from birdops.contracts import is_inside
from birdops.files import write_csv_atomic

METADATA_FILE = "metadata.csv"
AUDIO_DIR = "audio"  # recordings live in <raw>/audio/, referred to as audio/<file> by local_path

# the recording object of the xeno-canto API v3, in the API's order
XC_FIELDS: tuple[str, ...] = (
    "id",
    "gen",
    "sp",
    "ssp",
    "group",
    "en",
    "rec",
    "cnt",
    "loc",
    "lat",
    "lon",
    "alt",
    "type",
    "sex",
    "stage",
    "method",
    "url",
    "file",
    "file-name",
    "sono",
    "osci",
    "lic",
    "q",
    "length",
    "time",
    "date",
    "uploaded",
    "also",
    "rmk",
    "animal-seen",
    "playback-used",
    "temp",
    "regnr",
    "auto",
    "dvc",
    "mic",
    "smp",
)
LOCAL_PATH = "local_path"
COLUMNS: tuple[str, ...] = (*XC_FIELDS, LOCAL_PATH)
# what prepare needs from every row; the other columns may be absent (an older export, a hand-made table)
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "gen", "sp", "rec", "q", "length", LOCAL_PATH)

QUALITY_GRADES: tuple[str, ...] = ("A", "B", "C", "D", "E")
NO_SCORE = "no score"
# scientific names xeno-canto uses for recordings without a species identity
UNKNOWN_LABELS = frozenset({"mystery mystery", "sonus naturalis", "identity unknown"})
_UNKNOWN_EPITHETS = frozenset({"sp", "sp.", "spp", "spp.", "mystery", "unknown", "?"})
_LENGTH_PATTERN = re.compile(r"^(?:(\d+):)?(\d+):(\d{1,2})$")
ALSO_SEPARATOR = "; "


class DataError(ValueError):
    """Input data cannot be used; the message names the file and the reason."""


class MetadataError(DataError):
    """A metadata table is missing, unreadable or lacks required columns."""


@dataclass(frozen=True)
class Rejection:
    """A recording that is not used, and why.

    ``kind`` is a short code (``duplicate_id``, ``missing_file``, ``small_class``...) for counting;
    ``detail`` is the human-readable explanation.
    """

    id: str
    local_path: str
    kind: str
    detail: str

    @property
    def reason(self) -> str:
        """``"<kind>: <detail>"``, the ``reason`` column of ``rejected.csv``."""
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class Problem(Rejection):
    """Why one metadata row cannot be used: a rejection tied to its row of the table."""

    row: int  # 0-based index of the row in the table


# ------------------------------------------------------------------------------------------ values
def label_of(row: Mapping[str, str]) -> str:
    """The class label of a row: its scientific name ``"{gen} {sp}"``, whitespace-normalised."""
    genus = row.get("gen", "").strip()
    epithet = row.get("sp", "").strip()
    return " ".join(f"{genus} {epithet}".split())


def is_known_label(label: str) -> bool:
    """False for empty, incomplete or placeholder names (``Mystery mystery``, ``Turdus sp.``)."""
    parts = label.split()
    if len(parts) != 2:
        return False
    return label.lower() not in UNKNOWN_LABELS and parts[1].lower() not in _UNKNOWN_EPITHETS


def parse_length_seconds(text: str) -> float:
    """Seconds of a xeno-canto ``length``: ``"m:ss"`` or ``"h:mm:ss"`` (``"1:05"`` -> 65.0).

    Raises ``ValueError`` on anything else, including seconds >= 60.
    """
    match = _LENGTH_PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"length {text!r} is not m:ss or h:mm:ss")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    if seconds >= 60 or (match.group(1) is not None and minutes >= 60):
        raise ValueError(f"length {text!r} has a field out of range")
    return float(hours * 3600 + minutes * 60 + seconds)


def format_length(seconds: float) -> str:
    """``length`` text for a duration: ``m:ss`` below an hour, ``h:mm:ss`` above (rounded to 1 s)."""
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def quality_rank(grade: str) -> int:
    """0 for ``A`` (best) .. 4 for ``E``; ``"no score"`` or empty ranks 5, below every grade.

    Raises ``ValueError`` for any other text.
    """
    text = grade.strip()
    if text.upper() in QUALITY_GRADES:
        return QUALITY_GRADES.index(text.upper())
    if text == "" or text.lower() == NO_SCORE:
        return len(QUALITY_GRADES)
    raise ValueError(f"unknown quality grade {grade!r}")


def parse_also(text: str) -> list[str]:
    """The background species of an ``also`` cell (``"; "``-separated scientific names)."""
    return [name.strip() for name in text.split(";") if name.strip()]


def to_cell(value: Any) -> str:
    """One API value as CSV text: lists joined with ``"; "``, objects as JSON, ``None`` as empty."""
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return ALSO_SEPARATOR.join(to_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return str(value)


def row_from_api(record: Mapping[str, Any], local_path: str) -> dict[str, str]:
    """A metadata row from a xeno-canto API v3 recording object and the file's local path.

    The API spells the taxonomic group ``grp``; it is stored under ``group``. Fields the API does not
    return stay empty, fields not in :data:`XC_FIELDS` are dropped.
    """
    source = dict(record)
    if "group" not in source and "grp" in source:
        source["group"] = source["grp"]
    row = {name: to_cell(source.get(name)) for name in XC_FIELDS}
    row[LOCAL_PATH] = local_path
    return row


# --------------------------------------------------------------------------------------------- I/O
def read_metadata(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``metadata.csv`` as dicts of text (every column present in the file is kept).

    Raises :class:`MetadataError` naming the file when it is missing, unreadable, empty, or lacks any
    of :data:`REQUIRED_COLUMNS` (the message lists the missing ones).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip() for name in reader.fieldnames or []]
            missing = [name for name in REQUIRED_COLUMNS if name not in header]
            if not header:
                raise MetadataError(f"{path}: empty file, expected a header with {', '.join(COLUMNS)}")
            if missing:
                raise MetadataError(f"{path}: missing required column(s): {', '.join(missing)}")
            reader.fieldnames = header
            return [{k: (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MetadataError(f"{path}: cannot read metadata: {err}") from err


def write_metadata(path: str | Path, rows: Iterable[Mapping[str, str]]) -> None:
    """Write ``rows`` to ``path`` atomically: :data:`COLUMNS` first, any extra columns after, sorted."""
    path = Path(path)
    rows = list(rows)
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    fieldnames = [*COLUMNS, *extra]
    write_csv_atomic(path, fieldnames, rows)


# ---------------------------------------------------------------------------------------- validity
def row_problem(row: Mapping[str, str], raw_dir: Path) -> tuple[str, str] | None:
    """The first reason a single row is unusable, as ``(kind, detail)``, or ``None``.

    Checks, in order: id, label, length, quality grade, then the audio file (``local_path`` inside
    ``raw_dir``, existing, non-empty). The audio is not decoded.
    """
    checks = (_check_id, _check_label, _check_length, _check_quality)
    for check in checks:
        problem = check(row)
        if problem is not None:
            return problem
    return file_problem(row.get(LOCAL_PATH, ""), raw_dir)


def validate_rows(rows: Sequence[Mapping[str, str]], raw_dir: str | Path) -> list[Problem]:
    """One :class:`Problem` per unusable row (at most one each), in row order.

    Besides :func:`row_problem`, a row whose ``id`` or ``local_path`` repeats an earlier valid row's is
    a ``duplicate_id`` / ``duplicate_file`` (the first occurrence is kept).
    """
    raw_dir = Path(raw_dir)
    problems: list[Problem] = []
    seen_ids: dict[str, int] = {}
    seen_paths: dict[str, int] = {}
    for index, row in enumerate(rows):
        rid, local = row.get("id", "").strip(), row.get(LOCAL_PATH, "").strip()
        found = row_problem(row, raw_dir)
        if found is None and rid in seen_ids:
            found = ("duplicate_id", f"id {rid} already used by row {seen_ids[rid] + 1}")
        if found is None and _normal_path(local) in seen_paths:
            found = ("duplicate_file", f"{local} already listed by row {seen_paths[_normal_path(local)] + 1}")
        if found is not None:
            problems.append(Problem(rid, local, *found, row=index))
            continue
        seen_ids[rid] = index
        seen_paths[_normal_path(local)] = index
    return problems


def _check_id(row: Mapping[str, str]) -> tuple[str, str] | None:
    return ("missing_id", "empty id") if not row.get("id", "").strip() else None


def _check_label(row: Mapping[str, str]) -> tuple[str, str] | None:
    label = label_of(row)
    if not label:
        return ("unknown_label", "empty gen and sp")
    if not is_known_label(label):
        return ("unknown_label", f"{label!r} is not a species name")
    return None


def _check_length(row: Mapping[str, str]) -> tuple[str, str] | None:
    try:
        parse_length_seconds(row.get("length", ""))
    except ValueError as err:
        return ("bad_length", str(err))
    return None


def _check_quality(row: Mapping[str, str]) -> tuple[str, str] | None:
    try:
        quality_rank(row.get("q", ""))
    except ValueError as err:
        return ("bad_quality", str(err))
    return None


def file_problem(local_path: str, raw_dir: Path) -> tuple[str, str] | None:
    local_path = local_path.strip()
    if not local_path:
        return ("missing_file", "empty local_path")
    relative = PurePosixPath(local_path.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts:
        return ("bad_path", f"{local_path} is not a path inside the raw folder")
    path = raw_dir / relative
    if not is_inside(path, raw_dir):
        return ("bad_path", f"{local_path} resolves (through a symbolic link) outside the raw folder")
    if not path.is_file():
        return ("missing_file", f"{local_path} not found in {raw_dir}")
    if path.stat().st_size == 0:
        return ("empty_file", f"{local_path} is empty (0 bytes)")
    return None


def _normal_path(local_path: str) -> str:
    return str(PurePosixPath(local_path.strip().replace("\\", "/")))
