"""The embedded background corpus: field recordings in which none of the target species sings.

A field recording is mostly windows without the target birds, so a model that is served on them must
have heard what a site sounds like when no target bird is there and learnt to say "none of these".
``generate_background(params, seed, out_dir)`` writes ``out_dir/audio/BG<NNNNN>.<ext>`` (the container
shares of ``params.formats``) and ``out_dir/metadata.csv`` (:data:`BACKGROUND_COLUMNS`); the same
``(params, seed)`` gives the same bytes.

What a recording holds. Every recording belongs to a *site* (``source``: what ``prepare`` groups the
splits by, so test background comes from sites the model never trained on). A site has a *bed*, the
sound that is always there -- near-silence with microphone hiss, white, pink or brown noise, wind,
rain, a stream, distant traffic or an insect chorus -- and a few *event* sources typical of it, drawn
from the everyday sound classes of :mod:`birdops.data.sounds` (people talking and whistling, dogs,
cats, frogs, crickets, music, bells, sirens, phones, horns, engines, power tools, knocks, thunder).
A recording is its site's bed with a drifting level plus events at random times, 15 dB below to
15 dB above the bed; one in five is the bed alone. The overall level spans near-silence (peak 0.003)
to loud (0.9). No bird voice of :mod:`birdops.data.voices` is ever used.

A user's own background folder (``data.background`` names it) has the same layout; its
``metadata.csv`` needs only ``id``, ``local_path`` and ``source`` (a site or session: recordings of
one source stay in one split). A folder without ``metadata.csv`` is read as every audio file under
``audio/`` (:func:`list_background`), its source the first folder below ``audio/`` (a file directly in
``audio/`` is its own source).
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from birdops.audio import audio_files
from birdops.config import BackgroundSynthParams
from birdops.data.encoding import encode_audio
from birdops.data.metadata import AUDIO_DIR, METADATA_FILE, DataError
from birdops.data.noise import band_noise, colored_noise, wind_noise
from birdops.data.sounds import SOUND_CLASSES
from birdops.files import write_bytes_atomic, write_csv_atomic
from birdops.procs import die_with_parent

log = logging.getLogger(__name__)

BACKGROUND_COLUMNS: tuple[str, ...] = ("id", "local_path", "source", "kind", "length_s")
REQUIRED_COLUMNS: tuple[str, ...] = ("id", "local_path", "source")
_BED_ONLY_SHARE = 0.2
_EVENTS_PER_SITE = (2, 5)  # how many sound classes a site's events are drawn from
_EVENT_GAIN_DB = (-15.0, 15.0)  # an event's level over the bed's
_PEAK_RANGE = (0.003, 0.9)  # log-uniform: near-silence to loud


# ------------------------------------------------------------------------------------------- beds
def _hiss(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Microphone self-noise: white noise, slightly tilted (the recording's level makes it quiet)."""
    return colored_noise(n, float(rng.uniform(0.0, 0.3)), rng)


def _traffic(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """A road far away: a low rumble whose level swells as vehicles pass every 3-20 s."""
    rumble = band_noise(rng, n, 30.0, float(rng.uniform(400.0, 1200.0)), sr)
    t = np.arange(n, dtype=np.float32) / sr
    swell = np.ones(n, dtype=np.float32)
    for passing_s in np.cumsum(rng.uniform(3.0, 20.0, size=int(n / sr / 3.0) + 1)):
        width_s = float(rng.uniform(1.5, 5.0))
        swell += np.float32(rng.uniform(1.0, 6.0)) * np.exp(-0.5 * ((t - passing_s) / width_s) ** 2)
    return rumble * swell


def _insects(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """An insect chorus: several crickets and cicadas at once, near and far."""
    chorus = np.zeros(n, dtype=np.float32)
    for _ in range(int(rng.integers(2, 6))):
        make = SOUND_CLASSES["Cricket"] if rng.random() < 0.6 else SOUND_CLASSES["Cicada"]
        chorus += np.float32(10 ** (rng.uniform(-20.0, 0.0) / 20)) * _unit(make(rng, n, sr))
    return chorus


BEDS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "hiss": _hiss,
    "white noise": lambda rng, n, sr: colored_noise(n, 0.0, rng),
    "pink noise": lambda rng, n, sr: colored_noise(n, 1.0, rng),
    "brown noise": lambda rng, n, sr: colored_noise(n, 2.0, rng),
    "wind": lambda rng, n, sr: wind_noise(n, sr, rng),
    "rain": SOUND_CLASSES["Rain"],
    "stream": SOUND_CLASSES["Stream"],
    "traffic": _traffic,
    "insects": _insects,
}
EVENT_CLASSES: tuple[str, ...] = tuple(name for name in SOUND_CLASSES if name not in ("Rain", "Wind"))


def _unit(wave: np.ndarray) -> np.ndarray:
    """``wave`` at unit RMS (a silent one unchanged)."""
    rms = float(np.sqrt(np.mean(np.square(wave, dtype=np.float64)))) if len(wave) else 0.0
    return (wave / np.float32(rms)).astype(np.float32) if rms > 0 else wave.astype(np.float32)


# --------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class Site:
    """A place recorded several times: its bed and the sound classes its events come from."""

    name: str
    bed: str  # a key of BEDS
    events: tuple[str, ...]  # keys of SOUND_CLASSES


@dataclass(frozen=True)
class BackgroundPlan:
    """Everything needed to render one background recording, independently of all others."""

    id: str
    site: Site
    local_path: str
    audio_format: str
    num_samples: int
    sample_rate_hz: int
    bed_only: bool
    seed: tuple[int, ...]

    @property
    def kind(self) -> str:
        return f"{self.site.bed}" if self.bed_only else f"{self.site.bed} + events"


def plan_background(params: BackgroundSynthParams, seed: int) -> list[BackgroundPlan]:
    """Draw the sites and every recording of the background corpus."""
    rng = np.random.default_rng([seed, 40])
    beds = sorted(BEDS)
    # the beds take turns, so each is heard at sites/len(BEDS) sites and, split by site, in every split
    sites = [
        Site(
            name=f"site-{k + 1:02d}",
            bed=beds[k % len(beds)],
            events=tuple(
                str(e)
                for e in rng.choice(EVENT_CLASSES, size=int(rng.integers(*_EVENTS_PER_SITE)), replace=False)
            ),
        )
        for k in range(params.sites)
    ]
    names = sorted(params.formats)
    shares = np.array([params.formats[name] for name in names], dtype=np.float64)
    plans = []
    for index in range(params.recordings):
        site = sites[index % params.sites] if index < params.sites else sites[int(rng.integers(params.sites))]
        seconds = float(
            np.exp(rng.uniform(np.log(params.min_recording_seconds), np.log(params.max_recording_seconds)))
        )
        audio_format = str(names[int(rng.choice(len(names), p=shares / shares.sum()))])
        rid = f"BG{index + 1:05d}"
        plans.append(
            BackgroundPlan(
                id=rid,
                site=site,
                local_path=f"{AUDIO_DIR}/{rid}.{audio_format}",
                audio_format=audio_format,
                num_samples=max(1, round(seconds * params.sample_rate_hz)),
                sample_rate_hz=params.sample_rate_hz,
                bed_only=bool(rng.random() < _BED_ONLY_SHARE),
                seed=(seed, 41, index),
            )
        )
    return plans


# -------------------------------------------------------------------------------------- rendering
def render_background(plan: BackgroundPlan) -> np.ndarray:
    """The waveform of one recording: float32 ``(plan.num_samples,)``, peak in :data:`_PEAK_RANGE`."""
    rng = np.random.default_rng(list(plan.seed))
    n, rate = plan.num_samples, plan.sample_rate_hz
    drift = np.exp(0.3 * np.interp(np.arange(n), np.linspace(0, n, 6), rng.standard_normal(6)))
    mix = _unit(BEDS[plan.site.bed](rng, n, rate)) * drift.astype(np.float32)
    if not plan.bed_only:
        for onset_s in np.cumsum(rng.exponential(6.0, size=max(1, int(n / rate / 4)))):
            start = round(float(onset_s) * rate)
            if start >= n:
                break
            length = min(n - start, round(float(rng.uniform(1.0, 8.0)) * rate))
            event = _unit(SOUND_CLASSES[str(rng.choice(plan.site.events))](rng, length, rate))
            fade = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.01 * rate))
            mix[start : start + length] += (
                event * np.float32(10 ** (rng.uniform(*_EVENT_GAIN_DB) / 20)) * fade
            )
    peak = float(np.max(np.abs(mix))) or 1.0
    level = float(np.exp(rng.uniform(np.log(_PEAK_RANGE[0]), np.log(_PEAK_RANGE[1]))))
    out: np.ndarray = (mix * (level / peak)).astype(np.float32)
    return out


def write_recording(plan: BackgroundPlan, out_dir: Path) -> int:
    """Render, encode and atomically write one recording; returns its size in bytes."""
    payload = encode_audio(render_background(plan), plan.sample_rate_hz, plan.audio_format, int(plan.id[2:]))
    write_bytes_atomic(out_dir / plan.local_path, payload)
    return len(payload)


def generate_background(
    params: BackgroundSynthParams, seed: int, out_dir: str | Path, workers: int | None = None
) -> dict[str, object]:
    """Write the background corpus to ``out_dir`` (``audio/`` + ``metadata.csv``) and summarise it.

    Files of an earlier run that are not part of this corpus are removed; ``workers`` processes render
    in parallel (default: up to 2); the output does not depend on it.
    """
    out_dir = Path(out_dir)
    plans = plan_background(params, seed)
    (out_dir / AUDIO_DIR).mkdir(parents=True, exist_ok=True)
    workers = workers or min(2, os.cpu_count() or 1)
    ordered = sorted(plans, key=lambda p: -p.num_samples)  # longest first: short jobs end a parallel run
    with tqdm(total=len(ordered), desc="background", unit="rec", disable=None) as progress:
        if workers <= 1:
            sizes = [write_recording(p, out_dir) for p in ordered]
        else:
            with ProcessPoolExecutor(workers, initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
                sizes = list(pool.map(write_recording, ordered, [out_dir] * len(ordered), chunksize=2))
        progress.update(len(ordered))
    keep = {Path(p.local_path).name for p in plans}
    for stale in (p for p in (out_dir / AUDIO_DIR).iterdir() if p.is_file() and p.name not in keep):
        stale.unlink()
    rows = [
        {
            "id": p.id,
            "local_path": p.local_path,
            "source": p.site.name,
            "kind": p.kind,
            "length_s": f"{p.num_samples / p.sample_rate_hz:.3f}",
        }
        for p in plans
    ]
    write_csv_atomic(out_dir / METADATA_FILE, BACKGROUND_COLUMNS, rows)
    summary: dict[str, object] = {
        "recordings": len(plans),
        "sites": params.sites,
        "audio_hours": round(sum(p.num_samples / p.sample_rate_hz for p in plans) / 3600, 3),
        "megabytes": round(sum(sizes) / 1e6, 2),
        "beds": dict(sorted(Counter(p.site.bed for p in plans).items())),
        "bed_only": sum(p.bed_only for p in plans),
    }
    log.info("background: %s in %s", summary, out_dir)
    return summary


# ---------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class BackgroundRow:
    """One listed background recording (before its audio is checked)."""

    id: str
    local_path: str  # relative to the background folder
    source: str  # site or session: the group kept to one split


def list_background(folder: str | Path) -> list[BackgroundRow]:
    """The recordings of a background folder: its ``metadata.csv`` (columns :data:`REQUIRED_COLUMNS`
    at least), or, without one, every audio file under ``audio/`` (sorted; id = the path below
    ``audio/``, source = its first folder, or the file itself). :class:`DataError` names the folder
    when neither gives a recording or a required column is missing."""
    folder = Path(folder)
    table = folder / METADATA_FILE
    if table.is_file():
        with table.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
            if missing:
                raise DataError(f"{table}: a background table needs the column(s) {', '.join(missing)}")
            rows = [
                BackgroundRow(r["id"].strip(), r["local_path"].strip(), r["source"].strip()) for r in reader
            ]
    else:
        audio = folder / AUDIO_DIR
        files = audio_files(audio)
        rows = []
        for path in files:
            below = PurePosixPath(path.relative_to(audio).as_posix())
            source = below.parts[0] if len(below.parts) > 1 else below.stem
            rows.append(BackgroundRow(str(below), f"{AUDIO_DIR}/{below}", source))
    if not rows:
        raise DataError(
            f"{folder}: no background recording (no {METADATA_FILE}, no audio files in {AUDIO_DIR}/)"
        )
    return rows
