"""Long soundscapes with known events: a split's recordings inserted into a bed of its background.

``build_soundscapes(raw_dir, background_dir, prepared_dir, out_dir, params)`` writes, for every split
in ``params.splits``, ``params.count[split]`` soundscapes of ``params.seconds`` as 16-bit FLAC,
``<out>/<split>/SC-<split>-<NNN>.flac``, listed in ``soundscapes.csv`` with their true events in
``annotations.csv`` (``birdops.contracts.write_soundscapes``; read back with ``read_soundscapes``).
A soundscape is made like this:

- **the bed**: pieces of the split's background recordings (``background.csv``; ``bed_segment_seconds``
  long, at random offsets), each recording in turn in a shuffled order, round after round when the
  split has less background than the soundscapes need, joined with equal-power crossfades of
  ``crossfade_seconds`` (the pieces are unrelated noises, so their powers add);
- **the layout**: inserted segments of ``event_seconds`` are drawn until they would cover more than
  ``1 - background_only_share`` of the soundscape; with ``overlap_probability`` a segment of another
  species starts inside the first (several species in one window). The free time is cut into uneven
  random gaps between them (:data:`GAP_CONCENTRATION`), so at least ``background_only_share`` of every
  soundscape is background only, some of it in long quiet stretches;
- **the events**: each segment is cut from the split's next target recording (``manifest.csv``; a
  shuffled order, round after round) around its most active part
  (:func:`birdops.features.activity.choose_segments`), faded in and out over 10 ms and added at a gain
  that puts the bird ``snr_db_range`` (uniform) over the bed. The SNR compares powers above the activity
  high-pass (where birds sing and wind mostly does not): the bird's over its active frames, the bed's
  over the segment's span;
- **the annotation** of an event is where the inserted bird is active, not the whole segment: the
  segment's frames at least ``activity.min_snr_db`` over the recording's noise floor (the
  activity detector's frame energies and floor), merged into spans across gaps shorter than
  ``max_gap_seconds``. A segment with no active frame is not inserted (the next recording is tried),
  so every inserted bird is annotated and every annotation holds a bird.

If the mix would clip, the whole soundscape is scaled down (every SNR is kept). Everything is drawn
from one generator per split seeded by ``(seed, split)``, one soundscape after another in one process,
and written through the project's encoder: the same inputs and params give the same bytes on every
run. A recording that cannot be decoded is skipped with a log line; a split without background or
target recordings (or with none that decodes) is a :class:`DataError` naming the split and the param.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from birdops.audio import AudioError, load_audio
from birdops.config import ActivityParams, SoundscapesParams
from birdops.contracts import (
    SPLITS,
    ManifestRow,
    PathEscapeError,
    Soundscape,
    SoundscapeEvent,
    background_manifest_path,
    manifest_path,
    read_manifest,
    write_soundscapes,
)
from birdops.data.encoding import encode_audio
from birdops.data.metadata import DataError
from birdops.features.activity import NOISE_FLOOR_PERCENTILE, choose_segments, frame_energy_db
from birdops.files import swap_folder, write_bytes_atomic
from birdops.windows import seconds_to_samples

log = logging.getLogger(__name__)

EDGE_FADE_SECONDS = 0.01  # an inserted segment's fade in and out: no click where it is cut
PEAK_LIMIT = 0.98  # a louder mix is scaled down to this peak rather than clipped
SPAN_DECIMALS = 4  # annotation times are written to 0.1 ms
# the free time is cut into gaps by a Dirichlet draw of this concentration: under 1, some gaps are long
# (quiet minutes between bouts of song, as in the field) and more windows hold background only
GAP_CONCENTRATION = 0.5


@dataclass(frozen=True)
class InsertedEvent:
    """One inserted recording: where it went, where it came from, how loud, and its true spans."""

    recording_id: str
    label: str
    start_s: float  # where the inserted segment begins in the soundscape
    end_s: float
    source_start_s: float  # where it was cut from the recording
    snr_db: float
    gain: float  # the decoded segment times this (faded at its ends) is what the file holds
    spans: tuple[tuple[float, float], ...]  # the annotation: (start_s, end_s) in the soundscape


@dataclass(frozen=True)
class MadeSoundscape:
    """A written soundscape: its file (relative to the folder), split, length and inserted events."""

    file: str
    split: str
    duration_s: float
    events: tuple[InsertedEvent, ...]

    @property
    def background_only_share(self) -> float:
        """Share of the soundscape outside every inserted segment."""
        covered = _union_seconds([(e.start_s, e.end_s) for e in self.events])
        return 1.0 - covered / self.duration_s

    def to_contract(self) -> Soundscape:
        spans = sorted((start, end, e.label) for e in self.events for start, end in e.spans)
        return Soundscape(self.file, self.split, self.duration_s, tuple(SoundscapeEvent(*s) for s in spans))


@dataclass(frozen=True)
class SoundscapesSummary:
    """What :func:`build_soundscapes` wrote, and the recordings it skipped (``id: reason``)."""

    soundscapes: tuple[MadeSoundscape, ...]
    skipped: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Per split: soundscapes, events, annotated seconds, the smallest background-only share."""
        splits: dict[str, Any] = {}
        for split in dict.fromkeys(s.split for s in self.soundscapes):
            made = [s for s in self.soundscapes if s.split == split]
            splits[split] = {
                "soundscapes": len(made),
                "events": sum(len(s.events) for s in made),
                "annotated_seconds": round(sum(_annotated(s) for s in made), 1),
                "background_only_share_min": round(min(s.background_only_share for s in made), 3),
            }
        return {"splits": splits, "skipped": list(self.skipped)}


def _annotated(made: MadeSoundscape) -> float:
    return sum(end - start for e in made.events for start, end in e.spans)


def _union_seconds(spans: Sequence[tuple[float, float]]) -> float:
    """Seconds covered by the union of ``(start, end)`` spans."""
    total, reach = 0.0, -np.inf
    for start, end in sorted(spans):
        total += max(0.0, end - max(start, reach))
        reach = max(reach, end)
    return total


# -------------------------------------------------------------------------------------- the stage
def build_soundscapes(
    raw_dir: str | Path,
    background_dir: str | Path,
    prepared_dir: str | Path,
    out_dir: str | Path,
    params: SoundscapesParams,
) -> SoundscapesSummary:
    """Write every split's soundscapes and their annotations into ``out_dir`` (built beside it and
    swapped in whole: files of an earlier configuration do not survive)."""
    targets = read_manifest(manifest_path(prepared_dir))
    background = _read_background(prepared_dir)
    inputs = {split: _split_inputs(split, targets, background) for split in params.splits}
    out_dir = Path(out_dir)
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    made: list[MadeSoundscape] = []
    skipped: list[str] = []
    try:
        for split, (recordings, beds) in inputs.items():
            maker = _SplitMaker(split, recordings, beds, Path(raw_dir), Path(background_dir), params)
            for index in range(params.count[split]):
                file = f"{split}/SC-{split}-{index:03d}.flac"
                wave, events = maker.soundscape()
                write_bytes_atomic(staging / file, encode_audio(wave, params.sample_rate_hz, "flac"))
                made.append(MadeSoundscape(file, split, len(wave) / params.sample_rate_hz, events))
            skipped += maker.skipped
            log.info("soundscapes: %s: %d soundscapes, %d events", split, params.count[split], maker.events)
        write_soundscapes(staging, [m.to_contract() for m in made])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    swap_folder(staging, out_dir, out_dir.with_name(f".{out_dir.name}.old"))
    return SoundscapesSummary(tuple(made), tuple(skipped))


def _read_background(prepared_dir: str | Path) -> list[ManifestRow]:
    path = background_manifest_path(prepared_dir)
    if not path.is_file():
        raise DataError(f"{path}: no list of background recordings (prepare writes it from data.background)")
    return read_manifest(path)


def _split_inputs(
    split: str, targets: Sequence[ManifestRow], background: Sequence[ManifestRow]
) -> tuple[list[ManifestRow], list[ManifestRow]]:
    recordings = [row for row in targets if row.split == split]
    beds = [row for row in background if row.split == split]
    for rows, what, listed_in in (
        (recordings, "target", "manifest.csv"),
        (beds, "background", "background.csv"),
    ):
        if not rows:
            raise DataError(
                f"the {split} split has no {what} recordings ({listed_in}) to make soundscapes from: "
                f"remove {split} from soundscapes.splits and soundscapes.count, or give it {what} recordings"
            )
    return recordings, beds


# ---------------------------------------------------------------------------------- the recordings
class _Turns:
    """A split's recordings in a shuffled order, round after round, decoded when their turn comes;
    one that cannot be decoded is logged and left out of every later round."""

    def __init__(
        self, rows: Sequence[ManifestRow], folder: Path, sample_rate_hz: int, rng: np.random.Generator
    ) -> None:
        self._rows = [rows[i] for i in rng.permutation(len(rows))]
        self._folder, self._rate = folder, sample_rate_hz
        self._next = 0
        self._dropped: set[int] = set()
        self.skipped: list[str] = []

    def take(self, other_than: str | None = None) -> tuple[ManifestRow, np.ndarray] | None:
        """The next decodable recording (whose label is not ``other_than``), or None after a whole
        round without one."""
        for _ in range(len(self._rows)):
            turn = self._next
            self._next = (self._next + 1) % len(self._rows)
            row = self._rows[turn]
            if turn in self._dropped or (other_than is not None and row.label == other_than):
                continue
            try:
                return row, load_audio(row.audio_path(self._folder), self._rate)
            except (AudioError, PathEscapeError, OSError) as err:
                self.drop(turn, f"{row.id}: {err}")
        return None

    def drop(self, turn: int | None, reason: str) -> None:
        """Leave a recording out from now on (``None``: the one :meth:`take` gave last)."""
        turn = (self._next - 1) % len(self._rows) if turn is None else turn
        self._dropped.add(turn)
        self.skipped.append(reason)
        log.warning("soundscapes: skipped %s", reason)

    def __len__(self) -> int:
        return len(self._rows)


@dataclass(frozen=True)
class EventSegment:
    """The part of a recording an event inserts, with where its bird is active."""

    row: ManifestRow
    wave: np.ndarray  # (samples,) float64
    source_start_s: float
    spans: tuple[tuple[float, float], ...]  # active, in seconds from the segment's start
    active_power: float  # mean power above the high-pass over the active frames


def cut_event(
    row: ManifestRow,
    wave: np.ndarray,
    sample_rate_hz: int,
    seconds: float,
    activity: ActivityParams,
    max_gap_seconds: float,
) -> EventSegment | None:
    """The most active ``seconds`` of ``wave`` (all of it when shorter) and where its bird is active:
    frames at least ``activity.min_snr_db`` over the recording's noise floor; None without any."""
    start_s = choose_segments(wave, sample_rate_hz, seconds, 1, activity)[0]
    start = seconds_to_samples(start_s, sample_rate_hz)
    segment = np.asarray(wave[start : start + seconds_to_samples(seconds, sample_rate_hz)], dtype=np.float64)
    floor_db = float(
        np.percentile(
            frame_energy_db(wave, sample_rate_hz, activity.frame_seconds, activity.highpass_hz),
            NOISE_FLOOR_PERCENTILE,
        )
    )
    energy_db = frame_energy_db(segment, sample_rate_hz, activity.frame_seconds, activity.highpass_hz)  # (F,)
    active = energy_db >= floor_db + activity.min_snr_db
    if not active.any():
        return None
    spans = active_spans(active, activity.frame_seconds, max_gap_seconds)
    power = float(np.mean(10.0 ** (energy_db[active] / 10.0)))
    return EventSegment(row, segment, start_s, spans, power)


def active_spans(
    active: np.ndarray, frame_seconds: float, max_gap_seconds: float
) -> tuple[tuple[float, float], ...]:
    """Runs of active frames ``(F,)`` as ``(start_s, end_s)`` spans, runs closer than
    ``max_gap_seconds`` merged into one."""
    edges = np.diff(np.r_[0, active.astype(np.int8), 0])
    spans: list[tuple[float, float]] = []
    for first, stop in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
        start_s, end_s = float(first * frame_seconds), float(stop * frame_seconds)
        if spans and start_s - spans[-1][1] < max_gap_seconds:
            spans[-1] = (spans[-1][0], end_s)
        else:
            spans.append((start_s, end_s))
    return tuple(spans)


def band_power(wave: np.ndarray, sample_rate_hz: int, activity: ActivityParams) -> float:
    """Mean power per sample above ``activity.highpass_hz`` over the whole frames of ``wave``."""
    energy_db = frame_energy_db(wave, sample_rate_hz, activity.frame_seconds, activity.highpass_hz)
    return float(np.mean(10.0 ** (energy_db / 10.0))) if len(energy_db) else 0.0


# ------------------------------------------------------------------------------------- one split
class _SplitMaker:
    """Makes one split's soundscapes one after another from one generator seeded by (seed, split)."""

    def __init__(
        self,
        split: str,
        recordings: Sequence[ManifestRow],
        beds: Sequence[ManifestRow],
        raw_dir: Path,
        background_dir: Path,
        params: SoundscapesParams,
    ) -> None:
        self.split, self.params = split, params
        self.rng = np.random.default_rng([params.seed, SPLITS.index(split)])
        self.birds = _Turns(recordings, raw_dir, params.sample_rate_hz, self.rng)
        self.background = _Turns(beds, background_dir, params.sample_rate_hz, self.rng)
        self.events = 0

    @property
    def skipped(self) -> list[str]:
        return [*self.background.skipped, *self.birds.skipped]

    def soundscape(self) -> tuple[np.ndarray, tuple[InsertedEvent, ...]]:
        """One soundscape ``(samples,)`` float32 and its inserted events, by start time."""
        rate = self.params.sample_rate_hz
        bed = self._bed(seconds_to_samples(self.params.seconds, rate))
        mix = bed.copy()
        events: list[InsertedEvent] = []
        for group in self._layout():
            label = None
            for start_s, seconds in group:
                event = self._insert(mix, bed, start_s, seconds, other_than=label)
                if event is None:
                    break
                events.append(event)
                label = event.label
        peak = float(np.max(np.abs(mix)))
        if peak > PEAK_LIMIT:  # scale the whole mix: every SNR stays, each gain is what the file holds
            mix *= PEAK_LIMIT / peak
            events = [replace(e, gain=e.gain * PEAK_LIMIT / peak) for e in events]
        self.events += len(events)
        return mix.astype(np.float32), tuple(sorted(events, key=lambda e: e.start_s))

    def _bed(self, total_samples: int) -> np.ndarray:
        """Background pieces joined with equal-power crossfades: ``(total_samples,)`` float64."""
        rate, low_high = self.params.sample_rate_hz, self.params.bed_segment_seconds
        fade = seconds_to_samples(self.params.crossfade_seconds, rate)
        pieces: list[np.ndarray] = []
        length = 0
        while length < total_samples:
            taken = self.background.take()
            if taken is None:
                raise DataError(
                    f"no background recording of the {self.split} split could be used (see the skipped "
                    f"recordings above): fix them, or remove {self.split} from soundscapes.splits"
                )
            wave = taken[1]
            if len(wave) <= 2 * fade:
                self.background.drop(None, f"{taken[0].id}: shorter than two crossfades")
                continue
            piece_samples = min(len(wave), seconds_to_samples(self.rng.uniform(*low_high), rate))
            start = int(self.rng.integers(0, len(wave) - piece_samples + 1))
            pieces.append(np.asarray(wave[start : start + piece_samples], dtype=np.float64))
            length += piece_samples - (fade if len(pieces) > 1 else 0)
        return crossfade_join(pieces, fade)[:total_samples]

    def _layout(self) -> list[list[tuple[float, float]]]:
        """Groups of ``(start_s, seconds)`` segments, the second of a group (if any) starting inside
        the first; the groups' spans cover at most ``1 - background_only_share`` of the soundscape."""
        p, rng = self.params, self.rng
        budget_s = (1.0 - p.background_only_share) * p.seconds
        low, high = p.event_seconds
        groups: list[list[tuple[float, float]]] = []
        spans: list[float] = []
        while budget_s - sum(spans) >= low:
            first = rng.uniform(low, min(high, budget_s - sum(spans)))
            group = [(0.0, first)]
            if rng.random() < p.overlap_probability:
                offset, second = rng.uniform(0.0, first), rng.uniform(low, high)
                if sum(spans) + max(first, offset + second) <= budget_s:
                    group.append((offset, second))
            groups.append(group)
            spans.append(max(offset + seconds for offset, seconds in group))
        gaps = rng.dirichlet(np.full(len(groups) + 1, GAP_CONCENTRATION)) * (
            p.seconds - sum(spans)
        )  # (G + 1,)
        starts = np.cumsum(gaps[:-1]) + np.r_[0.0, np.cumsum(spans)[:-1]]  # (G,)
        return [[(float(s) + o, seconds) for o, seconds in g] for s, g in zip(starts, groups, strict=True)]

    def _insert(
        self, mix: np.ndarray, bed: np.ndarray, start_s: float, seconds: float, other_than: str | None
    ) -> InsertedEvent | None:
        """Add the next usable recording's segment to ``mix`` at ``start_s`` (in place); None when no
        recording (of another species than ``other_than``) gives one with an active bird."""
        p, rate = self.params, self.params.sample_rate_hz
        at = seconds_to_samples(start_s, rate)
        seconds = min(seconds, (len(mix) - at) / rate)
        segment = self._next_segment(seconds, other_than)
        if segment is None:
            return None
        n = len(segment.wave)
        snr_db = float(self.rng.uniform(*p.snr_db_range))
        bed_power = max(band_power(bed[at : at + n], rate, p.activity), 1e-12)
        gain = float(np.sqrt(bed_power * 10.0 ** (snr_db / 10.0) / segment.active_power))
        mix[at : at + n] += gain * faded(segment.wave, seconds_to_samples(EDGE_FADE_SECONDS, rate))
        offset_s = at / rate
        spans = tuple(
            (round(offset_s + a, SPAN_DECIMALS), round(offset_s + b, SPAN_DECIMALS)) for a, b in segment.spans
        )
        row = segment.row
        return InsertedEvent(
            row.id, row.label, offset_s, offset_s + n / rate, segment.source_start_s, snr_db, gain, spans
        )

    def _next_segment(self, seconds: float, other_than: str | None) -> EventSegment | None:
        """The next recording in turn with an active bird in its most active ``seconds``."""
        p = self.params
        for _ in range(len(self.birds)):
            taken = self.birds.take(other_than)
            if taken is None:
                if other_than is None:
                    raise DataError(
                        f"no target recording of the {self.split} split could be decoded (see the skipped "
                        f"recordings above): fix them, or remove {self.split} from soundscapes.splits"
                    )
                return None
            segment = cut_event(*taken, p.sample_rate_hz, seconds, p.activity, p.max_gap_seconds)
            if segment is not None:
                return segment
        return None


def crossfade_join(pieces: Sequence[np.ndarray], fade_samples: int) -> np.ndarray:
    """Pieces joined end to start, each pair overlapping by ``fade_samples`` under an equal-power
    (sine / cosine) crossfade, which keeps the power of two unrelated noises constant."""
    ramp = (np.arange(fade_samples) + 0.5) / fade_samples
    fade_in, fade_out = np.sin(0.5 * np.pi * ramp), np.cos(0.5 * np.pi * ramp)
    total = sum(len(p) for p in pieces) - fade_samples * (len(pieces) - 1)
    out = np.zeros(total)
    at = 0
    for index, piece in enumerate(pieces):
        piece = piece.astype(np.float64, copy=True)
        if index:
            piece[:fade_samples] *= fade_in
        if index < len(pieces) - 1:
            piece[-fade_samples:] *= fade_out
        out[at : at + len(piece)] += piece
        at += len(piece) - fade_samples
    return out


def faded(wave: np.ndarray, fade_samples: int) -> np.ndarray:
    """``wave`` with raised-cosine fades of ``fade_samples`` (at most half its length) at both ends."""
    n = min(fade_samples, len(wave) // 2)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n) if n else np.zeros(0)
    out = np.asarray(wave, dtype=np.float64).copy()
    out[:n] *= ramp
    out[len(out) - n :] *= ramp[::-1]
    return out
