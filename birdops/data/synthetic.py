"""The embedded corpus: a deterministic, xeno-canto-like set of recordings written like a real download.

``generate_corpus(params, seed, out_dir)`` writes ``out_dir/audio/XC<id>.<ext>`` (MP3 mostly, some WAV,
FLAC and Ogg Vorbis, shares from ``params.formats``) and ``out_dir/metadata.csv`` in the xeno-canto API
v3 schema of :mod:`birdops.data.metadata`. The same ``(params, seed)`` gives the same bytes.

What makes it a fair stand-in for the real task:

- every species has its own procedural voice (:mod:`birdops.data.voices`): band within 1-10 kHz, sweep
  shape, syllable timing, trills, harmonics, a call note; each recording jitters pitch and tempo, the
  number and timing of phrases, the amplitude and the start;
- ``confusable_pairs`` sister species (same genus) share a voice up to 5-10 % pitch and 8-15 % tempo;
- backgrounds: pink-to-brown noise, wind (low, gusty), distant calls of other species (listed in
  ``also`` as xeno-canto does), at an SNR drawn from ``snr_db_range`` (skewed towards clean recordings,
  as on xeno-canto); the quality grade ``q`` follows the SNR the way a human grader would (wind costs a
  grade step, graders disagree by ~2 dB) and ~2 % are ``"no score"``;
- long-tailed class sizes (:func:`class_sizes`): the smallest class has exactly 2 recordings;
- recordists are shared across species with a Zipf-like activity, each with a home region, a device
  and a microphone, so several recordings share a recordist (what ``prepare`` groups splits by);
- ``corrupt_files`` recordings of large classes are broken on purpose (a truncated MP3, random bytes,
  a WAV header without samples, a silent file) but listed normally, to exercise later error paths.

SNR is the foreground's power over the samples where it sounds, divided by the broadband noise power;
wind is added on top (mostly below 500 Hz) and distant calls 15-30 dB below the foreground.

The report's scale (89 species, ~11,000 recordings, 2 to several hundred per class) is a matter of
``params.yaml`` only; it is ~58 h of audio, ~50 CPU-minutes to generate and ~4 GB on disk::

    data:
      synthetic:
        species: 89
        recordings: 11075
        recordists: 1500
        min_recording_seconds: 3.0
        max_recording_seconds: 60.0
        long_tail_exponent: 0.3     # class sizes 2 .. ~880, median ~72

With the defaults (20 species, 360 recordings, exponent 1.0) classes range from 2 to 119 recordings
(median 7.5).
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
from tqdm import tqdm

from birdops.config import SyntheticParams
from birdops.data.encoding import encode_audio
from birdops.data.metadata import (
    AUDIO_DIR,
    LOCAL_PATH,
    METADATA_FILE,
    QUALITY_GRADES,
    XC_FIELDS,
    format_length,
    write_metadata,
)
from birdops.data.names import (
    DEVICES,
    LICENSES,
    MICROPHONES,
    PLACE_WORDS,
    REGIONS,
    SpeciesName,
    invent_genera,
    invent_recordists,
    invent_species,
)
from birdops.data.noise import colored_noise, wind_noise
from birdops.data.voices import (
    Performance,
    Voice,
    confusable_voice,
    draw_performance,
    draw_voice,
    render_voice,
)
from birdops.files import write_bytes_atomic
from birdops.procs import die_with_parent

log = logging.getLogger(__name__)

CORRUPTIONS: tuple[str, ...] = ("truncated_mp3", "random_bytes", "header_only_wav", "silent")
# the file format each corruption forces (None: keep the planned one)
_CORRUPTION_FORMAT: dict[str, str | None] = {
    "truncated_mp3": "mp3",
    "random_bytes": "wav",
    "header_only_wav": "wav",
    "silent": "flac",
}
# lower SNR bounds (dB) of grades A, B, C, D; below the last is E
_GRADE_SNR_DB = (20.0, 12.0, 5.0, 0.0)
_NO_SCORE_SHARE = 0.02
_RECORDIST_ZIPF = 0.8  # activity of the k-th most active recordist ~ 1 / k**0.8


@dataclass(frozen=True)
class Species:
    """One species of the corpus."""

    name: SpeciesName
    voice: Voice
    sister: int | None  # index of its confusable sister species, if any


@dataclass(frozen=True)
class Recordist:
    """A recordist: where and with what they record."""

    name: str
    region: int  # index into names.REGIONS
    device: str
    microphone: str
    folder: str  # their upload folder in xeno-canto's URLs
    noise_exponent: float  # colour of the noise where they record: 1 pink .. 2 brown


@dataclass(frozen=True)
class RecordingPlan:
    """Everything needed to render one recording, independently of all others."""

    xc_id: int
    species: int
    recordist: int
    local_path: str
    audio_format: str
    num_samples: int
    sample_rate_hz: int
    voice: Voice
    performance: Performance
    background: tuple[int, ...]  # species heard in the distance (the ``also`` column)
    background_voices: tuple[Voice, ...]
    snr_db: float
    noise_exponent: float
    wind: bool
    corruption: str | None
    seed: tuple[int, ...]  # entropy of this recording's renderer

    @property
    def duration_seconds(self) -> float:
        """Length of the audio."""
        return self.num_samples / self.sample_rate_hz


@dataclass(frozen=True)
class CorpusPlan:
    """The whole corpus before any audio exists: species, recordists, one plan and row per recording."""

    species: list[Species]
    recordists: list[Recordist]
    recordings: list[RecordingPlan]
    rows: list[dict[str, str]]


@dataclass(frozen=True)
class CorpusSummary:
    """What :func:`generate_corpus` wrote."""

    recordings: int
    species: int
    audio_hours: float
    bytes_on_disk: int
    class_sizes: dict[str, int]
    formats: dict[str, int]
    quality: dict[str, int]
    corrupt: dict[str, str] = field(default_factory=dict)  # id -> corruption
    removed_stale: int = 0

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form (class sizes summarised as smallest / median / largest)."""
        sizes = sorted(self.class_sizes.values())
        return {
            "recordings": self.recordings,
            "species": self.species,
            "audio_hours": round(self.audio_hours, 3),
            "megabytes": round(self.bytes_on_disk / 1e6, 2),
            "class_size": {"min": sizes[0], "median": float(np.median(sizes)), "max": sizes[-1]},
            "formats": self.formats,
            "quality": self.quality,
            "corrupt": self.corrupt,
            "removed_stale": self.removed_stale,
        }


# --------------------------------------------------------------------------------------- planning
def class_sizes(num_species: int, num_recordings: int, exponent: float) -> np.ndarray:
    """Recordings per class, largest first: ``(num_species,)`` int, summing to ``num_recordings``.

    Zipf-like with a floor of 2: class ``k`` (1-based rank) gets ``2 + extra * w_k / sum(w)`` with
    ``w_k = k**-exponent - num_species**-exponent``, so the rarest class has exactly 2 recordings and
    the head decays as ``1 / k**exponent``. ``exponent == 0`` gives (nearly) equal classes. Rounding
    keeps the total exact (largest remainders).
    """
    if num_recordings < 2 * num_species:
        raise ValueError("need at least 2 recordings per species")
    ranks = np.arange(1, num_species + 1, dtype=np.float64)
    weights = ranks**-exponent - float(num_species) ** -exponent
    if weights.sum() <= 0:
        weights = np.ones(num_species)
    extra = num_recordings - 2 * num_species
    share = extra * weights / weights.sum()
    sizes = np.floor(share).astype(np.int64)
    leftover = extra - int(sizes.sum())
    sizes[np.argsort(-(share - sizes), kind="stable")[:leftover]] += 1
    out: np.ndarray = sizes + 2
    return out


def plan_corpus(params: SyntheticParams, seed: int) -> CorpusPlan:
    """Draw the whole corpus (names, voices, sizes, recordists, every recording and its metadata)."""
    species = _plan_species(params, np.random.default_rng([seed, 0]))
    recordists = _plan_recordists(params.recordists, np.random.default_rng([seed, 1]))
    rng = np.random.default_rng([seed, 2])
    sizes = class_sizes(params.species, params.recordings, params.long_tail_exponent)
    labels = np.repeat(rng.permutation(params.species), sizes)  # species index per recording
    ids = np.sort(rng.choice(np.arange(100_000, 1_000_000), size=params.recordings, replace=False))
    ids = rng.permutation(ids)
    order = sorted(range(params.recordings), key=lambda i: (species[labels[i]].name.scientific, ids[i]))
    corruptions = _plan_corruptions(labels, params.corrupt_files, rng)
    plans, rows = [], []
    for index in order:
        plan = _plan_recording(
            params,
            seed,
            int(ids[index]),
            int(labels[index]),
            species,
            recordists,
            corruptions.get(index),
            rng,
        )
        plans.append(plan)
        rows.append(_metadata_row(plan, species, recordists[plan.recordist], rng))
    return CorpusPlan(species, recordists, plans, rows)


def _plan_species(params: SyntheticParams, rng: np.random.Generator) -> list[Species]:
    count = params.species
    pairs = min(params.confusable_pairs, count // 2)
    chosen = rng.permutation(count)[: 2 * pairs].reshape(pairs, 2)
    sister = {int(a): int(b) for a, b in chosen} | {int(b): int(a) for a, b in chosen}
    genera = invent_genera(rng, max(1, round(0.75 * count)))
    genus_of = [genera[int(rng.integers(len(genera)))] for _ in range(count)]
    voices = [draw_voice(rng) for _ in range(count)]
    for a, b in chosen:
        genus_of[b] = genus_of[a]  # sisters are congeners
        voices[b] = confusable_voice(voices[a], rng)
    names = invent_species(rng, genus_of)
    return [Species(names[i], voices[i], sister.get(i)) for i in range(count)]


def _plan_recordists(count: int, rng: np.random.Generator) -> list[Recordist]:
    names = invent_recordists(rng, count)
    return [
        Recordist(
            name=name,
            region=int(rng.integers(len(REGIONS))),
            device=str(rng.choice(DEVICES)),
            microphone=str(rng.choice(MICROPHONES)),
            folder="".join(rng.choice(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"), size=10)),
            noise_exponent=float(rng.uniform(0.8, 2.0)),
        )
        for name in names
    ]


def _plan_corruptions(labels: np.ndarray, count: int, rng: np.random.Generator) -> dict[int, str]:
    """Recording index -> corruption, drawn from the larger classes so no small class is wiped out."""
    if count == 0:
        return {}
    sizes = np.bincount(labels)
    large = np.flatnonzero(sizes[labels] >= max(5, int(np.median(sizes))))
    pool = large if len(large) >= count else np.arange(len(labels))
    chosen = rng.choice(pool, size=min(count, len(pool)), replace=False)
    return {int(index): CORRUPTIONS[k % len(CORRUPTIONS)] for k, index in enumerate(sorted(chosen))}


def _plan_recording(
    params: SyntheticParams,
    seed: int,
    xc_id: int,
    species_index: int,
    species: list[Species],
    recordists: list[Recordist],
    corruption: str | None,
    rng: np.random.Generator,
) -> RecordingPlan:
    voice = species[species_index].voice
    duration_s = float(
        np.exp(rng.uniform(np.log(params.min_recording_seconds), np.log(params.max_recording_seconds)))
    )
    num_samples = max(1, round(duration_s * params.sample_rate_hz))
    low_db, high_db = params.snr_db_range
    background = _draw_background(species_index, len(species), rng)
    recordist = _draw_recordist(len(recordists), rng)
    audio_format = _CORRUPTION_FORMAT.get(corruption or "") or _draw_format(params, rng)
    return RecordingPlan(
        xc_id=xc_id,
        species=species_index,
        recordist=recordist,
        local_path=f"{AUDIO_DIR}/XC{xc_id}.{audio_format}",
        audio_format=audio_format,
        num_samples=num_samples,
        sample_rate_hz=params.sample_rate_hz,
        voice=voice,
        performance=draw_performance(voice, num_samples / params.sample_rate_hz, rng),
        background=background,
        background_voices=tuple(species[i].voice for i in background),
        snr_db=float(low_db + (high_db - low_db) * rng.beta(2.2, 1.2)),
        noise_exponent=float(np.clip(recordists[recordist].noise_exponent + rng.normal(0, 0.15), 0.5, 2.2)),
        wind=bool(rng.random() < 0.3),
        corruption=corruption,
        seed=(seed, 3, xc_id),
    )


def _draw_background(species_index: int, num_species: int, rng: np.random.Generator) -> tuple[int, ...]:
    """0-2 other species calling in the distance (40 % of recordings have at least one)."""
    if num_species < 2 or rng.random() >= 0.4:
        return ()
    others = np.delete(np.arange(num_species), species_index)
    count = min(len(others), 1 + int(rng.random() < 0.3))
    return tuple(sorted(int(i) for i in rng.choice(others, size=count, replace=False)))


def _draw_recordist(count: int, rng: np.random.Generator) -> int:
    weights = np.arange(1, count + 1, dtype=np.float64) ** -_RECORDIST_ZIPF
    return int(rng.choice(count, p=weights / weights.sum()))


def _draw_format(params: SyntheticParams, rng: np.random.Generator) -> str:
    names = sorted(params.formats)
    shares = np.array([params.formats[name] for name in names], dtype=np.float64)
    if shares.sum() <= 0:
        raise ValueError("data.synthetic.formats: shares must add up to more than 0")
    return str(names[int(rng.choice(len(names), p=shares / shares.sum()))])


def grade_for_snr(snr_db: float, wind: bool, rng: np.random.Generator) -> str:
    """The quality grade a human would give: by SNR, one step worse with wind, ~2 dB disagreement."""
    if rng.random() < _NO_SCORE_SHARE:
        return "no score"
    perceived_db = snr_db - (4.0 if wind else 0.0) + rng.normal(0.0, 2.0)
    for grade, threshold_db in zip(QUALITY_GRADES, _GRADE_SNR_DB, strict=False):
        if perceived_db >= threshold_db:
            return grade
    return QUALITY_GRADES[-1]


def _metadata_row(
    plan: RecordingPlan, species: list[Species], recordist: Recordist, rng: np.random.Generator
) -> dict[str, str]:
    """A xeno-canto API v3 record for ``plan``, as metadata text."""
    name = species[plan.species].name
    country, region, lat, lon = REGIONS[recordist.region]
    recorded = date(2005, 1, 1) + timedelta(days=int(rng.integers(0, 7300)))
    uploaded = recorded + timedelta(days=int(rng.integers(0, 400)))
    also = [species[i].name.scientific for i in plan.background]
    remarks = [
        text for flag, text in ((plan.wind, "Windy."), (bool(also), "Other birds in background.")) if flag
    ]
    base = f"//xeno-canto.org/sounds/uploaded/{recordist.folder}"
    song = plan.performance.sound_type == "song"
    row = {
        "id": str(plan.xc_id),
        "gen": name.genus,
        "sp": name.epithet,
        "ssp": "",
        "group": "birds",
        "en": name.english,
        "rec": recordist.name,
        "cnt": country,
        "loc": f"{rng.choice(PLACE_WORDS)} {int(rng.integers(1, 9))}, {region}",
        "lat": f"{lat + rng.normal(0, 0.8):.4f}",
        "lon": f"{lon + rng.normal(0, 0.8):.4f}",
        "alt": str(int(rng.integers(0, 2500))),
        "type": plan.performance.sound_type,
        "sex": "male" if song and rng.random() < 0.6 else "",
        "stage": "adult" if rng.random() < 0.7 else "",
        "method": "field recording",
        "url": f"https://xeno-canto.org/{plan.xc_id}",
        "file": f"https://xeno-canto.org/{plan.xc_id}/download",
        "file-name": f"XC{plan.xc_id}-{name.english.replace(' ', '-')}.{plan.audio_format}",
        "sono": json.dumps(
            {s: f"{base}/ffts/XC{plan.xc_id}-{s}.png" for s in ("small", "med", "large", "full")}
        ),
        "osci": json.dumps({s: f"{base}/wave/XC{plan.xc_id}-{s}.png" for s in ("small", "med", "large")}),
        "lic": str(rng.choice(LICENSES)),
        "q": grade_for_snr(plan.snr_db, plan.wind, rng),
        "length": format_length(plan.duration_seconds),
        "time": f"{int(np.clip(rng.normal(7, 3), 0, 23)):02d}:{int(rng.integers(0, 60)):02d}",
        "date": recorded.isoformat(),
        "uploaded": uploaded.isoformat(),
        "also": "; ".join(also),
        "rmk": " ".join(remarks),
        "animal-seen": str(rng.choice(["yes", "no", "unknown"])),
        "playback-used": "yes" if rng.random() < 0.1 else "no",
        "temp": "",
        "regnr": "",
        "auto": "no",
        "dvc": recordist.device,
        "mic": recordist.microphone,
        "smp": str(plan.sample_rate_hz),
    }
    assert tuple(row) == XC_FIELDS  # the schema and this record must not drift apart
    return row | {LOCAL_PATH: plan.local_path}


# -------------------------------------------------------------------------------------- rendering
def render_recording(plan: RecordingPlan) -> np.ndarray:
    """The waveform of one recording: float32 ``(plan.num_samples,)``, peak in [0.25, 0.9].

    Foreground voice with a little reverberation, coloured noise at ``plan.snr_db``, optional wind and
    distant calls of ``plan.background`` species.
    """
    rng = np.random.default_rng(list(plan.seed))
    n, rate = plan.num_samples, plan.sample_rate_hz
    foreground, active = render_voice(plan.voice, plan.performance, n, rate, rng)
    foreground = _reverberate(foreground, rate, rng)
    signal_power = float(np.mean(foreground[active] ** 2)) if active.any() else 1e-6
    noise_rms = np.sqrt(signal_power / 10 ** (plan.snr_db / 10))
    mix = foreground + noise_rms * colored_noise(n, plan.noise_exponent, rng)
    if plan.wind:
        mix += noise_rms * 10 ** (rng.uniform(0.0, 12.0) / 20) * wind_noise(n, rate, rng)
    for voice in plan.background_voices:
        mix += _distant_call(voice, n, rate, signal_power, rng)
    peak = float(np.max(np.abs(mix))) or 1.0
    out: np.ndarray = (mix * (rng.uniform(0.25, 0.9) / peak)).astype(np.float32)
    return out


def _reverberate(wave: np.ndarray, sample_rate_hz: int, rng: np.random.Generator) -> np.ndarray:
    """Two early reflections, 15-90 ms late and 5-15 dB down (trees, ground)."""
    out = wave.copy()
    for _ in range(2):
        delay = int(rng.uniform(0.015, 0.09) * sample_rate_hz)
        if 0 < delay < len(wave):
            out[delay:] += wave[:-delay] * 10 ** (-rng.uniform(5.0, 15.0) / 20)
    return out


def _distant_call(
    voice: Voice, num_samples: int, sample_rate_hz: int, reference_power: float, rng: np.random.Generator
) -> np.ndarray:
    """Another species far away: dull (few harmonics), 15-30 dB below the foreground's power."""
    duration_s = num_samples / sample_rate_hz
    performance = draw_performance(voice, duration_s, rng)
    dull = Performance(
        performance.sound_type,
        performance.pitch_ratio,
        performance.tempo_ratio * 1.2,
        brightness=float(rng.uniform(0.05, 0.25)),
        start_seconds=float(rng.uniform(0.0, duration_s * 0.8)),
    )
    track, active = render_voice(voice, dull, num_samples, sample_rate_hz, rng)
    power = float(np.mean(track[active] ** 2)) if active.any() else 1.0
    gain = np.sqrt(reference_power / power) * 10 ** (-rng.uniform(15.0, 30.0) / 20)
    return _reverberate(track * np.float32(gain), sample_rate_hz, rng)


def recording_bytes(plan: RecordingPlan) -> bytes:
    """The file content of a recording: the encoded audio, or the planned corruption of it."""
    wave = render_recording(plan)
    serial = plan.xc_id
    if plan.corruption is None:
        return encode_audio(wave, plan.sample_rate_hz, plan.audio_format, serial)
    rng = np.random.default_rng([*plan.seed, 99])
    if plan.corruption == "truncated_mp3":
        return encode_audio(wave, plan.sample_rate_hz, "mp3")[:512]  # a download cut off in the first frames
    if plan.corruption == "random_bytes":
        return rng.bytes(int(rng.integers(2048, 16384)))
    if plan.corruption == "header_only_wav":
        return encode_audio(np.zeros(0, dtype=np.float32), plan.sample_rate_hz, "wav")
    if plan.corruption == "silent":
        return encode_audio(np.zeros(plan.num_samples, dtype=np.float32), plan.sample_rate_hz, "flac")
    raise ValueError(f"unknown corruption {plan.corruption!r}")


# ---------------------------------------------------------------------------------------- writing
def generate_corpus(
    params: SyntheticParams, seed: int, out_dir: str | Path, workers: int | None = None
) -> CorpusSummary:
    """Write the corpus to ``out_dir`` (``audio/`` + ``metadata.csv``) and summarise it.

    Files of an earlier run that are not part of this corpus are removed. ``workers`` processes render
    in parallel (default: up to 2); the output does not depend on it.
    """
    out_dir = Path(out_dir)
    plan = plan_corpus(params, seed)
    (out_dir / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    sizes = _write_audio(plan.recordings, out_dir, workers or min(2, os.cpu_count() or 1))
    removed = remove_stale_files(out_dir / AUDIO_DIR, {Path(p.local_path).name for p in plan.recordings})
    write_metadata(out_dir / METADATA_FILE, plan.rows)
    summary = _summarise(plan, sum(sizes), removed)
    log.info(
        "corpus: %d recordings of %d species, %.2f h of audio, %.1f MB in %s",
        summary.recordings,
        summary.species,
        summary.audio_hours,
        summary.bytes_on_disk / 1e6,
        out_dir,
    )
    return summary


def write_recording(plan: RecordingPlan, out_dir: Path) -> int:
    """Render, encode and atomically write one recording; returns its size in bytes."""
    payload = recording_bytes(plan)
    path = out_dir / plan.local_path
    write_bytes_atomic(path, payload)
    return len(payload)


def _write_audio(plans: list[RecordingPlan], out_dir: Path, workers: int) -> list[int]:
    # longest first, so the last jobs of a parallel run are short ones
    ordered = sorted(plans, key=lambda p: -p.num_samples)
    progress = tqdm(total=len(ordered), desc="corpus", unit="rec", disable=None)
    with progress:
        if workers <= 1:
            return [_tick(progress, write_recording(p, out_dir)) for p in ordered]
        # the workers end with this process, even when it is killed (birdops.procs)
        with ProcessPoolExecutor(
            max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(),)
        ) as pool:
            results = pool.map(write_recording, ordered, [out_dir] * len(ordered), chunksize=2)
            return [_tick(progress, size) for size in results]


def _tick(progress: tqdm, value: int) -> int:
    progress.update(1)
    return value


def remove_stale_files(folder: Path, keep: set[str]) -> int:
    """Delete files in ``folder`` (not recursive) whose name is not in ``keep``; returns how many."""
    stale = [path for path in folder.iterdir() if path.is_file() and path.name not in keep]
    for path in stale:
        path.unlink()
    if stale:
        log.info("removed %d stale file(s) of an earlier corpus from %s", len(stale), folder)
    return len(stale)


def _summarise(plan: CorpusPlan, total_bytes: int, removed: int) -> CorpusSummary:
    labels = Counter(plan.species[p.species].name.scientific for p in plan.recordings)
    return CorpusSummary(
        recordings=len(plan.recordings),
        species=len(labels),
        audio_hours=sum(p.duration_seconds for p in plan.recordings) / 3600,
        bytes_on_disk=total_bytes,
        class_sizes=dict(sorted(labels.items())),
        formats=dict(sorted(Counter(p.audio_format for p in plan.recordings).items())),
        quality=dict(sorted(Counter(row["q"] for row in plan.rows).items())),
        corrupt={str(p.xc_id): p.corruption for p in plan.recordings if p.corruption is not None},
        removed_stale=removed,
    )
