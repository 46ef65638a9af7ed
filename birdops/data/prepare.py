"""From a raw folder to a labelled, split manifest: what is usable, what is not and why.

``prepare_corpus(raw_dir, params)`` reads ``raw_dir/metadata.csv`` and keeps a recording only when its
row is valid (:func:`birdops.data.metadata.validate_rows`: id, species label, length, quality grade,
an existing non-empty audio file, no duplicate id or file), its grade is ``params.min_quality`` or
better (``"no score"`` counts as worst), its audio file's header is readable and within
:mod:`birdops.audio`'s limits (:func:`birdops.audio.probe`), its metadata length agrees with the header's
duration (within ``LENGTH_TOLERANCE_S`` or ``LENGTH_TOLERANCE_SHARE``), and that true duration (not
the metadata's) is within ``[min_seconds, max_seconds]``; ``length_s`` in the manifest is the true
duration.
Classes left with fewer than ``min_per_class`` recordings are dropped or merged into one ``"other"``
class (``small_classes``); ``"other"`` itself is dropped if it is still too small. Every recording that
is not kept is listed with one reason. Only headers are read here (the cache stage decodes).

Splits are made per class (stratified) with targets ``round(n * fraction)``:

- ``n >= 3``: at least one recording in each of train, val and test, and at least one in train;
- ``n == 2``: one train, one test (a test example of a rare class says more than a val one, and
  early stopping is driven by the many val recordings of the other classes);
- ``n == 1`` (only when ``min_per_class`` is 1): train.

Within a class, recordings are grouped by recordist when the class has at least as many recordists as
non-empty splits: whole recordists go to one split (greedy, largest groups first, to the split furthest
below its target), so a recordist's site and equipment cannot leak from train into test. Otherwise that
class is split by recording. A recording is never in two splits. The shuffle of each class depends only
on ``seed`` and the class label, so adding a class does not reshuffle the others.

Background recordings (:func:`prepare_background`: audio without any target species, from the folder
``data.background`` names) are screened the same way -- path inside their folder, an existing,
non-empty file, a readable header within the decoder's limits, a duration within ``[min_seconds,
max_seconds]`` -- and split with the same fractions, whole sources (sites or sessions) to one split, so
the test background was recorded where no training background was. They are listed in
``background.csv`` (label empty, ``label_index`` -1); rejected ones join ``rejected.csv`` with their
reason's kind prefixed ``background_``.
"""

from __future__ import annotations

import logging
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from birdops.audio import AudioError, probe
from birdops.config import PrepareParams, SplitParams
from birdops.contracts import (
    BACKGROUND_INDEX,
    CLASS_SPLITS_FILE,
    REJECTED_COLUMNS,
    REJECTED_FILE,
    SPLITS,
    ManifestRow,
    background_manifest_path,
    labels_path,
    manifest_path,
    write_labels,
    write_manifest,
)
from birdops.data.background import list_background
from birdops.data.metadata import (
    LOCAL_PATH,
    METADATA_FILE,
    NO_SCORE,
    DataError,
    Rejection,
    file_problem,
    format_length,
    label_of,
    parse_also,
    parse_length_seconds,
    quality_rank,
    read_metadata,
    validate_rows,
)
from birdops.files import write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)

OTHER_LABEL = "other"
# metadata length vs the header's duration: the larger of these is tolerated
LENGTH_TOLERANCE_S = 1.5
LENGTH_TOLERANCE_SHARE = 0.1


@dataclass(frozen=True)
class Candidate:
    """A recording that passed the row checks, before classes and splits."""

    id: str
    local_path: str
    label: str
    rec: str
    q: str
    length_s: float
    also: tuple[str, ...] = ()  # xeno-canto's background species


@dataclass(frozen=True)
class PreparedCorpus:
    """The result of :func:`prepare_corpus`."""

    manifest: list[ManifestRow]
    labels: list[str]
    rejected: list[Rejection]
    recordings: int  # rows in metadata.csv
    small_classes: dict[str, int] = field(default_factory=dict)  # label -> recordings, below min_per_class
    small_class_policy: str = "drop"  # what happened to them: "drop" or "merge" (into "other")
    recordist_disjoint: list[str] = field(default_factory=list)  # classes split by recordist
    background: list[ManifestRow] = field(default_factory=list)  # accepted background recordings


# ---------------------------------------------------------------------------------------- screening
def screen_rows(
    rows: Sequence[Mapping[str, str]], raw_dir: str | Path, params: PrepareParams
) -> tuple[list[Candidate], list[Rejection]]:
    """Split metadata rows into usable candidates and rejections (one reason per rejected row)."""
    problems = {problem.row: problem for problem in validate_rows(rows, raw_dir)}
    candidates: list[Candidate] = []
    rejected: list[Rejection] = []
    for index, row in enumerate(rows):
        rid, local = row.get("id", "").strip(), row.get(LOCAL_PATH, "").strip()
        if index in problems:
            rejected.append(problems[index])
            continue
        listed_s = parse_length_seconds(row["length"])
        try:
            true_s, _, _ = probe(Path(raw_dir) / local)
        except AudioError as err:
            rejected.append(Rejection(rid, local, f"audio_{err.kind}", err.reason))
            continue
        candidate = Candidate(
            id=rid,
            local_path=local,
            label=label_of(row),
            rec=row.get("rec", "").strip(),
            q=row.get("q", "").strip() or NO_SCORE,
            length_s=round(true_s, 3),
            also=tuple(parse_also(row.get("also", ""))),
        )
        problem = _length_mismatch(listed_s, true_s) or _quality_or_length_problem(candidate, params)
        if problem is None:
            candidates.append(candidate)
        else:
            rejected.append(Rejection(rid, local, *problem))
    return candidates, rejected


def _length_mismatch(listed_s: float, true_s: float) -> tuple[str, str] | None:
    """Metadata lengths are whole seconds (``m:ss``); one further from the file's header duration than
    :data:`LENGTH_TOLERANCE_S` or :data:`LENGTH_TOLERANCE_SHARE` of it says the row is not this file."""
    if abs(listed_s - true_s) <= max(LENGTH_TOLERANCE_S, LENGTH_TOLERANCE_SHARE * true_s):
        return None
    return (
        "length_mismatch",
        f"metadata length {format_length(listed_s)} but the file holds {true_s:.2f} s of audio",
    )


def _quality_or_length_problem(candidate: Candidate, params: PrepareParams) -> tuple[str, str] | None:
    if quality_rank(candidate.q) > quality_rank(params.min_quality):
        if candidate.q.lower() == NO_SCORE:
            return (
                "low_quality",
                f"'no score' counts as the worst grade, below min_quality {params.min_quality}",
            )
        return ("low_quality", f"grade {candidate.q} is worse than min_quality {params.min_quality}")
    if candidate.length_s < params.min_seconds:
        return ("too_short", f"{candidate.length_s:.2f} s of audio is shorter than {params.min_seconds:g} s")
    if candidate.length_s > params.max_seconds:
        return ("too_long", f"{candidate.length_s:.2f} s of audio is longer than {params.max_seconds:g} s")
    return None


def apply_class_minimum(
    candidates: Sequence[Candidate], min_per_class: int, policy: str
) -> tuple[list[Candidate], list[Rejection], dict[str, int]]:
    """Drop (``policy="drop"``) or merge into ``"other"`` (``"merge"``) classes below ``min_per_class``.

    Returns ``(kept, rejected, small_classes)`` where ``small_classes`` maps each small label to its count.
    """
    counts = Counter(c.label for c in candidates)
    small = {label: n for label, n in sorted(counts.items()) if n < min_per_class}
    if policy == "merge":
        candidates = [_relabel(c, OTHER_LABEL) if c.label in small else c for c in candidates]
        counts = Counter(c.label for c in candidates)
    kept, rejected = [], []
    for candidate in candidates:
        if counts[candidate.label] >= min_per_class and (policy == "merge" or candidate.label not in small):
            kept.append(candidate)
            continue
        detail = (
            f"class {candidate.label!r} has {counts[candidate.label]} usable recording(s), "
            f"fewer than min_per_class={min_per_class}"
        )
        rejected.append(Rejection(candidate.id, candidate.local_path, "small_class", detail))
    return kept, rejected, small


def _relabel(candidate: Candidate, label: str) -> Candidate:
    return Candidate(
        candidate.id,
        candidate.local_path,
        label,
        candidate.rec,
        candidate.q,
        candidate.length_s,
        candidate.also,
    )


# ------------------------------------------------------------------------------------------ splits
def split_targets(count: int, split: SplitParams) -> dict[str, int]:
    """How many recordings of a class of ``count`` go to each split (see the module docstring)."""
    if count <= 0:
        return dict.fromkeys(SPLITS, 0)
    if count == 1:
        return {"train": 1, "val": 0, "test": 0}
    if count == 2:
        return {"train": 1, "val": 0, "test": 1}
    test = max(1, round(count * split.test_fraction))
    val = max(1, round(count * split.val_fraction))
    while count - test - val < 1:  # only reachable with fractions near 0.5
        if test >= val:
            test -= 1
        else:
            val -= 1
    return {"train": count - test - val, "val": val, "test": test}


def split_class(
    candidates: Sequence[Candidate], split: SplitParams, rng: np.random.Generator
) -> tuple[dict[str, str], bool]:
    """Recording id -> split for one class, and whether whole recordists were kept to one split."""
    targets = split_targets(len(candidates), split)
    needed = sum(1 for n in targets.values() if n > 0)
    by_recordist: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_recordist[candidate.rec or f"<unknown {candidate.id}>"].append(candidate)
    grouped = len(by_recordist) >= needed
    groups = list(by_recordist.values()) if grouped else [[c] for c in candidates]
    return _assign_groups(groups, targets, rng), grouped


def _assign_groups(
    groups: list[list[Candidate]], targets: Mapping[str, int], rng: np.random.Generator
) -> dict[str, str]:
    """Greedy: largest group first, into the split furthest below its target; every split with a
    non-zero target gets at least one group (the last groups are forced into still-empty splits)."""
    shuffled = [groups[i] for i in rng.permutation(len(groups))]
    ordered = sorted(shuffled, key=len, reverse=True)  # stable: ties keep the random order
    filled = dict.fromkeys(SPLITS, 0)
    assignment: dict[str, str] = {}
    for position, group in enumerate(ordered):
        open_splits = [s for s in SPLITS if targets[s] > 0]
        empty = [s for s in open_splits if filled[s] == 0]
        remaining = len(ordered) - position
        choices = empty if len(empty) >= remaining else open_splits
        chosen = max(choices, key=lambda s: (targets[s] - filled[s], -SPLITS.index(s)))
        filled[chosen] += len(group)
        assignment.update((c.id, chosen) for c in group)
    return assignment


def assign_splits(
    candidates: Sequence[Candidate], split: SplitParams, seed: int
) -> tuple[dict[str, str], list[str]]:
    """Recording id -> split for all classes, and the labels whose splits share no recordist."""
    by_label: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_label[candidate.label].append(candidate)
    assignment: dict[str, str] = {}
    disjoint = []
    for label in sorted(by_label):
        members = sorted(by_label[label], key=lambda c: _id_key(c.id))
        rng = np.random.default_rng([seed, zlib.crc32(label.encode("utf-8"))])
        class_assignment, grouped = split_class(members, split, rng)
        assignment.update(class_assignment)
        if grouped:
            disjoint.append(label)
    return assignment, disjoint


def _id_key(rid: str) -> tuple[int, str]:
    return (len(rid), rid)  # numeric order for xeno-canto's digit ids


def check_trainable(candidates: Sequence[Candidate], splits: Mapping[str, str], raw_dir: Path) -> None:
    """Raise :class:`DataError` when training could not run on these splits: an empty validation or
    test split (early stopping and evaluation need them), or a class with no training recording
    (the model would carry a class it never saw). The message names the classes and what to change."""
    by_split: dict[str, set[str]] = {split: set() for split in SPLITS}
    for candidate in candidates:
        by_split[splits[candidate.id]].add(candidate.label)
    empty = [split for split in ("val", "test") if not by_split[split]]
    if empty:
        raise DataError(
            f"{raw_dir / METADATA_FILE}: the {' and '.join(empty)} split(s) would be empty: every class "
            f"has too few recordings for them (a class needs 3 for train, val and test); accept more "
            f"recordings (prepare.min_quality, prepare.min_seconds) or drop small classes "
            f"(raise prepare.min_per_class to 3)"
        )
    untrained = sorted({c.label for c in candidates} - by_split["train"])
    if untrained:
        raise DataError(
            f"{raw_dir / METADATA_FILE}: no training recording for {', '.join(untrained)}; "
            f"drop such classes with a higher prepare.min_per_class, or bring more of their recordings"
        )


def class_splits(prepared: PreparedCorpus) -> dict[str, dict[str, int]]:
    """Recordings per class and split, in label order."""
    counts: dict[str, dict[str, int]] = {label: dict.fromkeys(SPLITS, 0) for label in prepared.labels}
    for row in prepared.manifest:
        counts[row.label][row.split] += 1
    return counts


# ------------------------------------------------------------------------------------- background
def prepare_background(
    background_dir: str | Path, params: PrepareParams
) -> tuple[list[ManifestRow], list[Rejection]]:
    """The usable background recordings of ``background_dir``, split by source, and the rejected ones.

    Raises :class:`DataError` naming the folder when it lists nothing, or when too few sources are left
    to give train, val and test background (at least three)."""
    background_dir = Path(background_dir)
    candidates: list[Candidate] = []
    rejected: list[Rejection] = []
    seen: set[str] = set()
    for row in list_background(background_dir):
        problem = _background_problem(row.id, row.local_path, seen, background_dir, params)
        if isinstance(problem, Rejection):
            rejected.append(problem)
            continue
        seen.add(row.id)
        candidates.append(Candidate(row.id, row.local_path, "", row.source or row.id, "", problem))
    sources = {c.rec for c in candidates}
    if len(sources) < len(SPLITS):
        raise DataError(
            f"{background_dir}: {len(candidates)} usable background recording(s) from {len(sources)} "
            f"source(s); train, val and test background need at least {len(SPLITS)} sources"
        )
    rng = np.random.default_rng([params.seed, zlib.crc32(b"background")])
    splits, _ = split_class(sorted(candidates, key=lambda c: _id_key(c.id)), params.split, rng)
    rows = [
        ManifestRow(c.id, c.local_path, "", BACKGROUND_INDEX, splits[c.id], c.rec, "", c.length_s)
        for c in sorted(candidates, key=lambda c: _id_key(c.id))
    ]
    return rows, rejected


def _background_problem(
    rid: str, local_path: str, seen: set[str], folder: Path, params: PrepareParams
) -> Rejection | float:
    """Why a background recording cannot be used (a :class:`Rejection`), or its true duration (s)."""
    found = ("missing_id", "empty id") if not rid else None
    if found is None and rid in seen:
        found = ("duplicate_id", f"id {rid} is listed twice")
    found = found or file_problem(local_path, folder)
    if found is None:
        try:
            seconds = round(probe(folder / local_path)[0], 3)
        except AudioError as err:
            found = (f"audio_{err.kind}", err.reason)
        else:
            if seconds < params.min_seconds:
                found = ("too_short", f"{seconds:.2f} s of audio is shorter than {params.min_seconds:g} s")
            elif seconds > params.max_seconds:
                found = ("too_long", f"{seconds:.2f} s of audio is longer than {params.max_seconds:g} s")
            else:
                return seconds
    return Rejection(rid, local_path, f"background_{found[0]}", found[1])


# ----------------------------------------------------------------------------------------- the stage
def prepare_corpus(
    raw_dir: str | Path, params: PrepareParams, background_dir: str | Path | None = None
) -> PreparedCorpus:
    """Screen, filter classes and split the recordings of ``raw_dir``, and the background recordings of
    ``background_dir`` when given (see the module docstring).

    Raises :class:`DataError` naming the file when ``metadata.csv`` is unusable or fewer than two
    classes are left, or the background folder is unusable.
    """
    raw_dir = Path(raw_dir)
    rows = read_metadata(raw_dir / METADATA_FILE)
    candidates, rejected = screen_rows(rows, raw_dir, params)
    kept, too_small, small = apply_class_minimum(candidates, params.min_per_class, params.small_classes)
    labels = sorted({c.label for c in kept})
    if len(labels) < 2:
        raise DataError(
            f"{raw_dir / METADATA_FILE}: {len(labels)} class(es) left after filtering "
            f"({len(rejected) + len(too_small)} of {len(rows)} recordings rejected); need at least 2"
        )
    splits, disjoint = assign_splits(kept, params.split, params.seed)
    check_trainable(kept, splits, raw_dir)
    index = {label: i for i, label in enumerate(labels)}
    manifest = [
        ManifestRow(
            c.id,
            c.local_path,
            c.label,
            index[c.label],
            splits[c.id],
            c.rec,
            c.q,
            c.length_s,
            "; ".join(sorted(label for label in set(c.also) if label in index and label != c.label)),
        )
        for c in sorted(kept, key=lambda c: (c.label, _id_key(c.id)))
    ]
    background, background_rejected = (
        prepare_background(background_dir, params) if background_dir is not None else ([], [])
    )
    return PreparedCorpus(
        manifest=manifest,
        labels=labels,
        background=background,
        rejected=[*rejected, *too_small, *background_rejected],
        recordings=len(rows),
        small_classes=small,
        small_class_policy=params.small_classes,
        recordist_disjoint=disjoint,
    )


def write_prepared(prepared: PreparedCorpus, out_dir: str | Path) -> None:
    """Write ``manifest.csv``, ``labels.json`` and ``rejected.csv`` into ``out_dir``."""
    out_dir = Path(out_dir)
    write_manifest(manifest_path(out_dir), prepared.manifest)
    write_manifest(background_manifest_path(out_dir), prepared.background)
    write_csv_atomic(
        out_dir / REJECTED_FILE,
        REJECTED_COLUMNS,
        ({"id": r.id, "local_path": r.local_path, "reason": r.reason} for r in prepared.rejected),
    )
    write_labels(labels_path(out_dir), prepared.labels)
    # the per-class table lives with the data: as metrics it would be one column per class
    write_json_atomic(out_dir / CLASS_SPLITS_FILE, class_splits(prepared))


def summarize(prepared: PreparedCorpus) -> dict[str, Any]:
    """The data metrics: counts per split and per class and split, rejections by reason, class sizes."""
    per_class = class_splits(prepared)
    seconds = dict.fromkeys(SPLITS, 0.0)
    for row in prepared.manifest:
        seconds[row.split] += row.length_s
    sizes = sorted(sum(counts.values()) for counts in per_class.values())
    background_seconds = dict.fromkeys(SPLITS, 0.0)
    for row in prepared.background:
        background_seconds[row.split] += row.length_s
    return {
        "recordings": prepared.recordings,
        "accepted": len(prepared.manifest),
        "rejected": len(prepared.rejected),
        "rejected_by_reason": dict(sorted(Counter(r.kind for r in prepared.rejected).items())),
        "classes": len(prepared.labels),
        "splits": {s: sum(counts[s] for counts in per_class.values()) for s in SPLITS},
        "audio_hours": {s: round(seconds[s] / 3600, 3) for s in SPLITS},
        "background": {
            "splits": {s: sum(1 for r in prepared.background if r.split == s) for s in SPLITS},
            "sources": {s: len({r.rec for r in prepared.background if r.split == s}) for s in SPLITS},
            "audio_hours": {s: round(background_seconds[s] / 3600, 3) for s in SPLITS},
        },
        "class_size": {"min": sizes[0], "median": float(np.median(sizes)), "max": sizes[-1]} if sizes else {},
        "small_classes": {"policy": prepared.small_class_policy, "classes": prepared.small_classes},
        "recordist_disjoint_classes": len(prepared.recordist_disjoint),
        # classes whose recordists could not be kept to one split: grouped by recording instead
        "recording_grouped_classes": sorted(set(prepared.labels) - set(prepared.recordist_disjoint)),
    }


def log_summary(summary: Mapping[str, Any]) -> None:
    """One log line per headline number of :func:`summarize`."""
    log.info(
        "prepare: %d of %d recordings accepted in %d classes; splits %s",
        summary["accepted"],
        summary["recordings"],
        summary["classes"],
        summary["splits"],
    )
    background = summary["background"]
    log.info(
        "prepare: background recordings per split %s from %s sources",
        background["splits"],
        background["sources"],
    )
    for kind, count in summary["rejected_by_reason"].items():
        log.info("prepare: rejected %d recording(s): %s", count, kind)
    for label in summary["recording_grouped_classes"]:
        log.warning("prepare: %s: too few recordists to keep each to one split; split by recording", label)
    small = summary["small_classes"]
    if small["classes"]:
        log.info("prepare: classes below min_per_class (%s): %s", small["policy"], small["classes"])
