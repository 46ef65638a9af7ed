"""Which (window, species) pairs a prediction reports, and what each file holds: numpy only.

A species is *detected* in a window when its calibrated score reaches its threshold. The thresholds
are, per species, the first of:

1. a per-species override (``birdops predict --thresholds FILE``, the service's ``thresholds`` field);
2. one score for every species (``--min-score``, ``min_score``);
3. the model's own (``birdops.thresholds``, chosen on validation by the export);
4. 0.0 when the model has none (an export from before calibration): then every species passes and
   only the cap per window (``top_k``) limits the rows; :func:`choose_thresholds` says so in a warning.

A :class:`Selection` (:func:`select`) applies them to a recording's scores: each window's detected
species, best first, at most ``top_k`` of them. With ``thresholds=None`` (``--all``) every window
reports its ``top_k`` highest-scoring species whatever their scores. ``birdops predict`` and the
service build theirs here from their options; only their defaults for ``top_k`` differ.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from birdops.contracts import Scoring
from birdops.serve.inference import SpeciesScore, WindowScores

NO_THRESHOLDS_WARNING = (
    "the model has no per-species thresholds (an export from before calibration): a species without "
    "one from min-score or thresholds takes 0.0, so each window reports its top species whatever its "
    "score; set min-score or thresholds to report confident detections only"
)


class ThresholdsError(ValueError):
    """Thresholds that cannot be used: an unknown species, a value outside [0, 1], a malformed file."""


@dataclass(frozen=True)
class Selection:
    """Which (window, species) pairs are reported."""

    thresholds: tuple[float, ...] | None  # one calibrated-score threshold per label; None: ignore scores
    top_k: int | None = None  # at most this many species per window, best first; None: no cap

    def pick(self, scores: np.ndarray, labels: Sequence[str]) -> list[list[SpeciesScore]]:
        """For each window of ``scores (N, C)``, its reported species, best first (ties: the lower
        class index first): those whose score reaches their threshold, then the first ``top_k``."""
        order = np.argsort(-scores, axis=1, kind="stable")  # (N, C) best first
        limit = np.asarray(self.thresholds, dtype=np.float64) if self.thresholds is not None else None
        picked: list[list[SpeciesScore]] = []
        for row, ranked in zip(scores, order, strict=True):
            kept = ranked if limit is None else ranked[row[ranked] >= limit[ranked]]
            picked.append([SpeciesScore(labels[i], float(row[i])) for i in kept[: self.top_k]])
        return picked

    def thresholds_by_species(self, labels: Sequence[str]) -> dict[str, float] | None:
        return None if self.thresholds is None else dict(zip(labels, self.thresholds, strict=True))


def select(
    scoring: Scoring,
    labels: Sequence[str],
    top_k: int | None,
    min_score: float | None = None,
    overrides: Mapping[str, float] | None = None,
    report_all: bool = False,
) -> tuple[Selection, str | None]:
    """The :class:`Selection` of a model (its ``scoring``'s thresholds) and a user's options, and
    :func:`choose_thresholds`' warning. ``report_all`` ignores thresholds, so it refuses a
    ``min_score`` or ``overrides`` (:class:`ThresholdsError`)."""
    if report_all:
        if min_score is not None or overrides is not None:
            raise ThresholdsError(
                "'all' reports every window whatever the thresholds: drop min-score / thresholds"
            )
        return Selection(None, top_k), None
    thresholds, warning = choose_thresholds(labels, scoring.thresholds, min_score, overrides)
    return Selection(thresholds, top_k), warning


def choose_thresholds(
    labels: Sequence[str],
    model_thresholds: Sequence[float] | None,
    min_score: float | None = None,
    overrides: Mapping[str, float] | None = None,
) -> tuple[tuple[float, ...], str | None]:
    """Per-label thresholds in label order (the module docstring's order of precedence) and a warning
    when some species fell back to 0.0 because the model has no thresholds, else None. ``overrides``
    must already be checked (:func:`check_thresholds`)."""
    overrides = overrides or {}
    if min_score is not None:
        base: Sequence[float] = [min_score] * len(labels)
    elif model_thresholds is not None:
        base = model_thresholds
    else:
        base = [0.0] * len(labels)
    fell_back = min_score is None and model_thresholds is None and not set(labels) <= set(overrides)
    pairs = zip(labels, base, strict=True)
    chosen = tuple(float(overrides.get(label, threshold)) for label, threshold in pairs)
    return chosen, NO_THRESHOLDS_WARNING if fell_back else None


# ------------------------------------------------------------------------------------ thresholds in
def check_thresholds(values: Mapping[str, object], labels: Sequence[str], source: str) -> dict[str, float]:
    """``{species: threshold}`` from a user, checked: every species one of ``labels``, every threshold
    a number in [0, 1]. :class:`ThresholdsError` names ``source`` and the species."""
    return {
        str(species): _threshold(value, str(species), labels, f"{source}, species {species!r}")
        for species, value in values.items()
    }


def json_thresholds(text: str, labels: Sequence[str], source: str) -> dict[str, float]:
    """Per-species thresholds from a JSON object ``{"species": threshold}`` (the service's field);
    ``source`` names the text in errors."""
    try:
        values = json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as err:  # RecursionError: arrays or objects nested thousands deep
        reason = err if isinstance(err, ValueError) else "nested too deeply"
        expected = 'expected a JSON object {"species": threshold}'
        raise ThresholdsError(f"{source}: {expected}: {reason}") from None
    if not isinstance(values, dict):
        raise ThresholdsError(f'{source}: expected a JSON object {{"species": threshold}}')
    for species, value in values.items():
        if isinstance(value, str):  # a number in quotes: JSON says what it is, unlike a CSV cell
            raise ThresholdsError(
                f"{source}, species {species!r}: the threshold must be a number in [0, 1], got {value!r}"
            )
    return check_thresholds(values, labels, source)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members, refused when a name comes twice (json keeps the last one silently)."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"species {key!r} is listed twice")
        seen[key] = value
    return seen


def parse_thresholds(text: str, labels: Sequence[str], source: str) -> dict[str, float]:
    """Per-species thresholds from a JSON object (:func:`json_thresholds`) or a CSV ``species,threshold``
    (a header row of those names is optional); ``source`` names the text in errors."""
    if text.lstrip().startswith(("{", "[")):
        return json_thresholds(text, labels, source)
    chosen: dict[str, float] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or (number == 1 and [c.lower() for c in cells] == ["species", "threshold"]):
            continue
        where = f"{source}, row {number}"
        if len(cells) != 2:
            raise ThresholdsError(f"{where}: expected two cells 'species,threshold', got {row}")
        species, value = cells
        if species in chosen:
            raise ThresholdsError(f"{where}: species {species!r} is listed twice")
        chosen[species] = _threshold(value, species, labels, where)
    return chosen


def read_thresholds(path: str | Path, labels: Sequence[str]) -> dict[str, float]:
    """:func:`parse_thresholds` of a file (``birdops predict --thresholds``)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # a spreadsheet's CSV may start with a BOM
    except (OSError, UnicodeDecodeError) as err:
        raise ThresholdsError(f"{path}: cannot read the thresholds: {err}") from None
    return parse_thresholds(text, labels, str(path))


def _threshold(value: object, species: str, labels: Sequence[str], where: str) -> float:
    if species not in labels:
        close = difflib.get_close_matches(species, labels, n=3)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ThresholdsError(f"{where}: unknown species {species!r}: the model has no such label{hint}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ThresholdsError(f"{where}: the threshold must be a number in [0, 1], got {value!r}")
    try:
        threshold = float(value)
    except ValueError:
        raise ThresholdsError(f"{where}: the threshold must be a number in [0, 1], got {value!r}") from None
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ThresholdsError(f"{where}: the threshold {value} is outside [0, 1]")
    return threshold


# ---------------------------------------------------------------------------------- what a file holds
@dataclass(frozen=True)
class SpeciesFound:
    """One species reported in a file: in how many windows, its best score, its first and last window."""

    species: str
    windows: int
    best_score: float
    first_start_s: float
    last_end_s: float


def species_found(result: WindowScores, picked: Sequence[Sequence[SpeciesScore]]) -> list[SpeciesFound]:
    """The species of a file's reported windows (``picked``, from :meth:`Selection.pick`), best score
    first (ties: label order); empty when nothing was reported."""
    index = {label: i for i, label in enumerate(result.labels)}
    seen: dict[str, SpeciesFound] = {}
    for start_s, end_s, items in zip(result.starts_s, result.ends_s, picked, strict=True):
        for item in items:
            before = seen.get(item.species)
            seen[item.species] = SpeciesFound(
                item.species,
                1 if before is None else before.windows + 1,
                item.score if before is None else max(before.best_score, item.score),
                float(start_s) if before is None else before.first_start_s,
                float(end_s),
            )
    return sorted(seen.values(), key=lambda found: (-found.best_score, index[found.species]))


def describe_found(found: Sequence[SpeciesFound]) -> str:
    """One line for a file: ``no detections``, or each species with its windows and best score."""
    if not found:
        return "no detections"
    return ", ".join(
        f"{f.species} ({f.windows} window{'s' if f.windows != 1 else ''}, best {f.best_score:.3f})"
        for f in found
    )
