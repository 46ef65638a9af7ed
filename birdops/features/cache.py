"""The feature cache's builder (the ``lms_cache`` stage): :func:`build_cache`.

The files it writes, one folder per preset of ``<out>`` (``data/lms``), and their reader are
:mod:`birdops.features.shards`: ``<preset>/<split>-<NNN>.npy`` shards, ``<preset>/index.csv`` and
``<preset>/features.json``; ``failed.csv`` (id, local_path, reason) lists the recordings that could
not be cached.

Splits: ``train``, ``val`` and ``test`` hold the manifest's clips; ``background-train``,
``background-val`` and ``background-test`` the background recordings' clips (``label_index`` -1,
spread evenly over each recording: :func:`birdops.mixing.spread_starts`); with
``background_mix.copies`` K, ``train-mixed`` holds a noisy copy of every ``train`` clip, row for row
(the clip over a segment of a training background recording, :func:`birdops.mixing.mix_at_snr`), and
``train-mixed2`` .. ``train-mixedK`` the other copies, each over its own draw of background and SNR.

How a run goes: every manifest recording is decoded once per sample rate (``seed`` and ``mfcc``
share their 22,050 Hz decode), its clips are chosen by :mod:`birdops.features.activity`, each
preset's front end runs on them in batches (``seed`` and ``mfcc`` from one shared STFT, mel and dB
pass), and the float16 result is saved as a *partial*
``<out>/.work/<preset>/<fingerprint>.npz`` (or ``<fingerprint>.failed.json`` with the reason). The
fingerprint hashes the preset's spec, the clip and activity parameters and the recording's id,
path, size and modification time, so a run that was killed resumes with the recordings that have no
partial yet, and a partial of another configuration is never reused (stale ones are deleted). When
every recording has its partials, each preset folder is assembled next to the old one (clip by
clip: one recording's partial in memory at a time) and swapped in, and ``.work`` is removed. Every
file is written to a temporary name and renamed into place.
"""

from __future__ import annotations

import concurrent.futures as cf
import functools
import hashlib
import itertools
import json
import logging
import math
import multiprocessing
import os
import shutil
import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from birdops.audio import AudioError, load_audio
from birdops.config import ActivityParams, BackgroundMixParams, LmsCacheParams
from birdops.contracts import (
    BACKGROUND_INDEX,
    FAILED_FILE,
    INDEX_FILE,
    SPLITS,
    ManifestRow,
    PathEscapeError,
    background_split,
    mixed_split,
    read_manifest,
)
from birdops.features.activity import choose_segments
from birdops.features.frontend import PRESETS, FrontEnd, build_frontend, compute_features, spec_for
from birdops.features.shards import INDEX_COLUMNS, FeaturesInfo, write_features_info, write_shards
from birdops.featurespec import FeatureSpec
from birdops.files import atomic_path, csv_rows_atomic, swap_folder, write_csv_atomic, write_text_atomic
from birdops.mixing import mix_at_snr, noise_segment, spread_starts
from birdops.procs import die_with_parent
from birdops.windows import clips_at

log = logging.getLogger(__name__)

CACHE_FORMAT = 2  # bump when the partial or shard format changes: old partials are then stale
WORK_DIR = ".work"
RUN_KEY = "run"  # the summary's record of how the run went (not a result)
FAILED_COLUMNS = ("id", "local_path", "reason")


# ------------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class _Task:
    """The presets of one recording that still lack a partial, with where to write each."""

    recording: ManifestRow
    raw_dir: str  # the manifest paths start here (the worker resolves and checks the path)
    partials: dict[str, str]  # preset -> partial path without extension
    background: bool  # a background recording: clips spread evenly, never mixed


@dataclass(frozen=True)
class _Mix:
    """How training clips get their noisy copy (picklable): the training background recordings."""

    raw_dir: str  # the background folder
    paths: tuple[str, ...]  # local paths of the training background recordings, sorted
    params: BackgroundMixParams

    def key(self) -> list[Any]:
        """What a copy depends on besides its own recording (part of a training clip's fingerprint)."""
        files = []
        for local_path in self.paths:
            try:
                stat = (Path(self.raw_dir) / local_path).stat()
                files.append([local_path, stat.st_size, stat.st_mtime_ns])
            except OSError:
                files.append([local_path, -1, -1])
        return [self.params.model_dump(), files]


@dataclass(frozen=True)
class _Settings:
    """What a worker needs besides the task (picklable)."""

    clip_seconds: float
    max_clips: int
    background_clips: int
    activity: ActivityParams
    mix: _Mix | None  # None: no noisy copies

    def mixes(self, task: _Task) -> bool:
        return self.mix is not None and not task.background and task.recording.split == "train"


def fingerprint(
    spec: FeatureSpec, params: LmsCacheParams, recording: ManifestRow, audio_path: Path, extra: Any = None
) -> str:
    """Hash of everything a recording's cached clips depend on (a missing file hashes as such);
    ``extra``: what else they depend on (the kind of recording, the background a copy is mixed with)."""
    try:
        stat = audio_path.stat()
        file_key = [stat.st_size, stat.st_mtime_ns]
    except OSError:
        file_key = [-1, -1]
    key = [
        CACHE_FORMAT,
        spec.to_dict(),
        params.clip_seconds,
        params.max_clips_per_recording,
        params.activity.model_dump(),
        recording.id,
        recording.local_path,
        file_key,
        extra,
    ]
    return hashlib.blake2b(json.dumps(key, sort_keys=True).encode(), digest_size=16).hexdigest()


def _partial_done(stem: str) -> bool:
    return Path(f"{stem}.npz").is_file() or Path(f"{stem}.failed.json").is_file()


# ----------------------------------------------------------------------------------------- workers
@dataclass(frozen=True)
class _Decoded:
    """A task's clips per preset: ``(clips (n, S) float32, starts_s)`` or why it has none. Presets
    of one sample rate hold the same clips (one decode, one choice of clips)."""

    task: _Task
    clips: dict[str, _Clips | str]


@dataclass(frozen=True)
class _Clips:
    """A recording's clips at one sample rate, and their noisy copies when it has them."""

    clips: np.ndarray  # (n, S) float32
    starts_s: list[float]
    mixed: np.ndarray | None  # (n, S) float32


_FRONTENDS: dict[str, FrontEnd] = {}  # per process, built on first use


def _frontend(preset: str) -> FrontEnd:
    if preset not in _FRONTENDS:
        _FRONTENDS[preset] = build_frontend(preset)
    return _FRONTENDS[preset]


def _init_worker(threads: int, owner_pid: int) -> None:
    """Pool initializer: end with the stage process ``owner_pid`` (never outlive a killed stage), and
    split the cores between workers instead of oversubscribing them."""
    die_with_parent(owner_pid)
    torch.set_num_threads(threads)


def _decode(task: _Task, sample_rate_hz: int) -> np.ndarray | str:
    """The waveform ``(samples,)`` of a task's recording, or why it cannot be used."""
    try:
        path = task.recording.audio_path(task.raw_dir)
    except PathEscapeError:
        return "path outside the raw folder"
    if not path.is_file():
        return "missing file"
    try:
        return load_audio(path, sample_rate_hz)
    except AudioError as err:
        reason = str(err).removeprefix(f"{path}: ")
    except Exception as err:  # a decoder bug on one odd file must not stop the whole cache
        log.warning("%s: unexpected decode error", path, exc_info=True)
        reason = f"unexpected decode error: {type(err).__name__}: {err}"
    # the reason names the file as the manifest does, whatever the raw folder is called here
    return reason.replace(str(path), task.recording.local_path)


def _decode_chunk(tasks: list[_Task], settings: _Settings) -> list[_Decoded]:
    """Decode a few recordings once per sample rate and cut their clips."""
    decoded = []
    for task in tasks:
        clips: dict[str, _Clips | str] = {}
        for sample_rate_hz, presets in _by_sample_rate(list(task.partials)).items():
            wave = _decode(task, sample_rate_hz)
            if isinstance(wave, str):
                clips |= dict.fromkeys(presets, wave)
                continue
            if task.background:
                starts_s = spread_starts(
                    len(wave), sample_rate_hz, settings.clip_seconds, settings.background_clips
                )
            else:
                starts_s = choose_segments(
                    wave, sample_rate_hz, settings.clip_seconds, settings.max_clips, settings.activity
                )
            cut = clips_at(wave, sample_rate_hz, starts_s, settings.clip_seconds)  # (n, S)
            mixed = _mixed(task, cut, sample_rate_hz, settings.mix) if settings.mixes(task) else None
            clips |= dict.fromkeys(presets, _Clips(cut, starts_s, mixed))
        decoded.append(_Decoded(task, clips))
    return decoded


def _mixed(task: _Task, clips: np.ndarray, sample_rate_hz: int, mix: _Mix | None) -> np.ndarray:
    """The noisy copies of the clips ``(n, S)``: ``(copies * n, S)``, copy after copy, each clip over a
    segment of a training background recording at a drawn SNR; every draw seeded by the recording's
    id (the first copy's draws are those of a cache of one copy)."""
    assert mix is not None
    rng = np.random.default_rng([mix.params.seed, zlib.crc32(task.recording.id.encode("utf-8"))])
    low_db, high_db = mix.params.snr_db_range
    out = np.empty((mix.params.copies * len(clips), clips.shape[1]), dtype=clips.dtype)
    for row in range(len(out)):  # copy after copy, each over every clip
        clip = clips[row % len(clips)]
        noise = _background_wave(mix.raw_dir, mix.paths[int(rng.integers(len(mix.paths)))], sample_rate_hz)
        out[row] = mix_at_snr(clip, noise_segment(noise, len(clip), rng), float(rng.uniform(low_db, high_db)))
    return out


@functools.lru_cache(maxsize=8)
def _background_wave(raw_dir: str, local_path: str, sample_rate_hz: int) -> np.ndarray:
    """A training background recording, decoded once per worker (the last few are kept)."""
    return load_audio(Path(raw_dir) / local_path, sample_rate_hz)


def _write_features(decoded: list[_Decoded]) -> int:
    """Write the partials of decoded recordings. Presets that share clips run in one batch through
    :func:`compute_features`, so ``seed`` and ``mfcc`` share one STFT, mel and dB pass."""
    # (sample rate, presets) -> (partial stems per preset, clips) of each recording
    groups: dict[tuple[int, tuple[str, ...]], list[tuple[list[str], _Clips]]] = {}
    for item in decoded:
        for failed_preset, outcome in item.clips.items():
            if isinstance(outcome, str):
                _write_json(Path(f"{item.task.partials[failed_preset]}.failed.json"), {"reason": outcome})
        for sample_rate_hz, rate_presets in _by_sample_rate(list(item.clips)).items():
            if isinstance(first := item.clips[rate_presets[0]], str):
                continue
            stems = [item.task.partials[p] for p in rate_presets]
            groups.setdefault((sample_rate_hz, tuple(rate_presets)), []).append((stems, first))
    for (_, presets), items in groups.items():
        # clean clips first, then the noisy copies: one batch through the front ends
        waves = [c.clips for _, c in items] + [c.mixed for _, c in items if c.mixed is not None]
        with torch.no_grad():
            features = compute_features(
                [_frontend(p) for p in presets], torch.from_numpy(np.concatenate(waves))
            )
        halves = [f.numpy().astype(np.float16) for f in features]  # each (sum n, F, T)
        offset, mixed_offset = 0, sum(len(c.clips) for _, c in items)
        for stems, clips in items:
            n = len(clips.clips)
            for stem, preset_features in zip(stems, halves, strict=True):
                parts = {"features": preset_features[offset : offset + n]}
                for copy in range(0 if clips.mixed is None else len(clips.mixed) // n):
                    start = mixed_offset + copy * n
                    parts[_mixed_key(copy)] = preset_features[start : start + n]
                _write_partial(Path(f"{stem}.npz"), np.asarray(clips.starts_s, dtype=np.float64), parts)
            offset += n
            mixed_offset += len(clips.mixed) if clips.mixed is not None else 0
    return len(decoded)


def _mixed_key(copy: int) -> str:
    """The partials' array of noisy copy ``copy``: ``mixed``, ``mixed2``, ..."""
    return f"mixed{copy + 1 if copy else ''}"


def _by_sample_rate(presets: Sequence[str]) -> dict[int, list[str]]:
    groups: dict[int, list[str]] = {}
    for preset in presets:
        groups.setdefault(spec_for(preset).sample_rate_hz, []).append(preset)
    return groups


def _process_chunk(tasks: list[_Task], settings: _Settings) -> int:
    """Decode a few recordings and write their partials (a pool worker's job); returns the count."""
    return _write_features(_decode_chunk(tasks, settings))


def _worker_context(threads: int) -> multiprocessing.context.BaseContext:
    """How workers start. ``fork`` when each runs torch on one thread: the workers inherit this
    process's imports (``forkserver`` imports torch again: 3 s of a stage's start-up), and a
    one-thread torch never starts an OpenMP team, whose pool a forked child must not touch after
    the parent used it. With more threads a worker would, so then ``forkserver``, which imports
    torch once and forks workers from that clean process (``spawn`` where it does not exist)."""
    methods = multiprocessing.get_all_start_methods()
    if threads == 1 and "fork" in methods:
        return multiprocessing.get_context("fork")
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _run_tasks(tasks: list[_Task], settings: _Settings, workers: int, chunk_recordings: int) -> None:
    """Process every task, in this process (``workers == 1``) or a pool of ``workers`` processes."""
    if not tasks:
        return
    size = max(1, min(chunk_recordings, math.ceil(len(tasks) / (4 * workers))))
    chunks = [tasks[i : i + size] for i in range(0, len(tasks), size)]
    with tqdm(total=len(tasks), unit="rec", desc="lms_cache", dynamic_ncols=True) as bar:
        if workers == 1:
            for chunk in chunks:
                bar.update(_process_chunk(chunk, settings))
            return
        threads = max(1, (os.cpu_count() or 1) // workers)
        with cf.ProcessPoolExecutor(
            workers,
            mp_context=_worker_context(threads),
            initializer=_init_worker,
            initargs=(threads, os.getpid()),
        ) as pool:
            # a few chunks queued per worker, the next submitted as one finishes: what waits in the
            # pool's queues does not grow with the corpus
            pending = iter(chunks)
            running = {
                pool.submit(_process_chunk, c, settings) for c in itertools.islice(pending, 4 * workers)
            }
            try:
                while running:
                    done, running = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                    for future in done:
                        bar.update(future.result())
                    running |= {
                        pool.submit(_process_chunk, c, settings) for c in itertools.islice(pending, len(done))
                    }
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise


# ---------------------------------------------------------------------------------------- assembly
@dataclass(frozen=True)
class _PresetResult:
    clips_per_split: dict[str, int]
    failed: dict[str, str]  # recording id -> reason
    n_bins: int
    n_frames: int


def _assemble(
    preset: str,
    recordings: list[ManifestRow],
    background: list[ManifestRow],
    stems: dict[str, str],
    out_dir: Path,
    params: LmsCacheParams,
) -> _PresetResult:
    """Build ``<out>/<preset>`` from the partials and swap it in for the old folder. Clips go from
    the partials to the shards one at a time, and index rows to ``index.csv`` as they are made: the
    assembly holds one recording's clips whatever the corpus's size."""
    spec = spec_for(preset)
    shape = spec.clip_shape(params.clip_seconds)
    staging = out_dir / WORK_DIR / f"{preset}.assembling"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    failed: dict[str, str] = {}
    clips_per_split = {}
    shard_max = params.shard_max_clips
    parts = [(split, [r for r in recordings if r.split == split], "features") for split in SPLITS]
    train = [r for r in recordings if r.split == "train"]
    parts += [(mixed_split("train", c), train, _mixed_key(c)) for c in range(params.background_mix.copies)]
    parts += [(background_split(s), [r for r in background if r.split == s], "features") for s in SPLITS]
    with csv_rows_atomic(staging / INDEX_FILE, INDEX_COLUMNS) as index:
        for split, members, key in parts:
            total = _count_clips(members, stems, failed)  # fills failed, which _split_clips skips
            clips = _split_clips(members, stems, failed, key)
            clips_per_split[split] = write_shards(staging, split, clips, total, shard_max, index)
    write_features_info(staging, features_info(spec, params))
    _swap_in(staging, out_dir / preset)
    return _PresetResult(clips_per_split, failed, shape.n_bins, shape.n_frames)


def _count_clips(members: list[ManifestRow], stems: dict[str, str], failed: dict[str, str]) -> int:
    """The clips of a split's recordings (their partials' starts only are read); fills ``failed``."""
    total = 0
    for recording in members:
        stem = stems[_stem_key(recording)]
        if Path(f"{stem}.failed.json").is_file():
            failed[_stem_key(recording)] = json.loads(Path(f"{stem}.failed.json").read_text())["reason"]
            continue
        with np.load(f"{stem}.npz") as partial:
            total += len(partial["start_s"])
    return total


def _split_clips(
    members: list[ManifestRow], stems: dict[str, str], failed: dict[str, str], key: str = "features"
) -> Iterator[tuple[ManifestRow, float, np.ndarray]]:
    """``(recording, start_s, features (F, T) float16)`` of every clip of a split's recordings that
    did not fail (the partials' ``key`` array: ``features``, or ``mixed`` for the noisy copies), one
    recording's partial in memory at a time."""
    for recording in members:
        if _stem_key(recording) in failed:
            continue
        with np.load(f"{stems[_stem_key(recording)]}.npz") as partial:
            features, starts_s = partial[key], partial["start_s"]
        for clip, start_s in zip(features, starts_s, strict=True):
            yield recording, float(start_s), clip


def _swap_in(staging: Path, target: Path) -> None:
    """Replace folder ``target`` by ``staging`` (the old one is renamed away, then deleted)."""
    swap_folder(staging, target, old=staging.with_name(staging.name.replace(".assembling", ".old")))


# -------------------------------------------------------------------------------------------- stage
def features_info(spec: FeatureSpec, params: LmsCacheParams) -> FeaturesInfo:
    """What this builder records in ``features.json`` of a cache of ``spec`` built with ``params``."""
    return FeaturesInfo(
        spec=spec,
        clip_seconds=params.clip_seconds,
        max_clips_per_recording=params.max_clips_per_recording,
        background_clips_per_recording=params.background_clips_per_recording,
        background_mix=params.background_mix,
        activity=params.activity,
        cache_format=CACHE_FORMAT,
    )


def build_cache(
    raw_dir: str | Path,
    manifest_path: str | Path,
    out_dir: str | Path,
    params: LmsCacheParams,
    chunk_recordings: int = 8,
    background_dir: str | Path | None = None,
    background_manifest: str | Path | None = None,
) -> dict[str, Any]:
    """Cache the features of every manifest recording (and every background recording, when both
    background arguments are given) for every preset; return the run's summary.

    ``chunk_recordings`` recordings go to a worker at a time (their clips share front-end batches).
    Safe to re-run after an interruption: finished recordings are not computed again.
    """
    started = time.perf_counter()
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    recordings = read_manifest(manifest_path)
    background = read_manifest(background_manifest) if background_manifest is not None else []
    bg_dir = Path(background_dir) if background_dir is not None else raw_dir
    mix = _mix_plan(background, bg_dir, params)
    presets: list[str] = list(dict.fromkeys(params.presets))
    stems = _fingerprints(recordings, presets, raw_dir, out_dir, params, mix)
    bg_stems = _fingerprints(background, presets, bg_dir, out_dir, params, None, background=True)
    for preset in presets:
        stems[preset] |= bg_stems[preset]
    _clean_stale(out_dir, presets, stems)
    tasks = _pending_tasks(recordings, presets, stems, raw_dir, False)
    tasks += _pending_tasks(background, presets, stems, bg_dir, True)
    log.info(
        "lms_cache: %d recordings and %d background recordings, presets %s: %d to process, %d done before",
        len(recordings),
        len(background),
        presets,
        len(tasks),
        len(recordings) + len(background) - len(tasks),
    )
    settings = _Settings(
        params.clip_seconds,
        params.max_clips_per_recording,
        params.background_clips_per_recording,
        params.activity,
        mix,
    )
    _run_tasks(tasks, settings, params.workers, chunk_recordings)
    results = {p: _assemble(p, recordings, background, stems[p], out_dir, params) for p in presets}
    _write_failed(out_dir / FAILED_FILE, [*recordings, *background], results)
    shutil.rmtree(out_dir / WORK_DIR, ignore_errors=True)
    wall_s = time.perf_counter() - started
    return _summary(recordings, background, results, len(tasks), wall_s, params.workers)


def _mix_plan(background: list[ManifestRow], bg_dir: Path, params: LmsCacheParams) -> _Mix | None:
    """The noisy copies' plan, or None when they are off. Raises ValueError when they are on and
    there is no training background to mix with."""
    if not params.background_mix.copies:
        return None
    paths = tuple(sorted(r.local_path for r in background if r.split == "train"))
    if not paths:
        raise ValueError(
            f"lms_cache.background_mix.copies is {params.background_mix.copies} but there is no training "
            "background recording "
            "(data/prepared/background.csv); set it to 0 or bring background recordings"
        )
    return _Mix(str(bg_dir), paths, params.background_mix)


def _fingerprints(
    recordings: list[ManifestRow],
    presets: list[str],
    raw_dir: Path,
    out_dir: Path,
    params: LmsCacheParams,
    mix: _Mix | None,
    background: bool = False,
) -> dict[str, dict[str, str]]:
    """preset -> recording id -> partial path without extension (a background recording's id is
    prefixed, so it never meets a manifest id)."""
    stems: dict[str, dict[str, str]] = {}
    mix_key = mix.key() if mix is not None else None
    for preset in presets:
        spec, folder = spec_for(preset), out_dir / WORK_DIR / preset
        stems[preset] = {
            _stem_key(r): str(
                folder
                / fingerprint(
                    spec,
                    params,
                    r,
                    raw_dir / r.local_path,
                    ["background", params.background_clips_per_recording]
                    if background
                    else (mix_key if r.split == "train" else None),
                )
            )
            for r in recordings
        }
    return stems


def _stem_key(recording: ManifestRow) -> str:
    """The key of a recording's partials and failures: its id, prefixed for a background recording
    (a user's background ids may repeat the corpus's)."""
    return f"background:{recording.id}" if recording.label_index == BACKGROUND_INDEX else recording.id


def _clean_stale(out_dir: Path, presets: list[str], stems: dict[str, dict[str, str]]) -> None:
    """Delete partials and preset folders that belong to another configuration, and temp files."""
    work = out_dir / WORK_DIR
    for preset in PRESETS:
        if preset not in presets:
            shutil.rmtree(out_dir / preset, ignore_errors=True)
            shutil.rmtree(work / preset, ignore_errors=True)
    for preset in presets:
        keep = {Path(stem).name for stem in stems[preset].values()}
        folder = work / preset
        folder.mkdir(parents=True, exist_ok=True)
        for path in folder.iterdir():
            if path.name.split(".")[0] not in keep or path.name.endswith(".tmp"):
                path.unlink()


def _pending_tasks(
    recordings: list[ManifestRow],
    presets: list[str],
    stems: dict[str, dict[str, str]],
    raw_dir: Path,
    background: bool,
) -> list[_Task]:
    tasks = []
    for recording in recordings:
        key = _stem_key(recording)
        todo = {p: stems[p][key] for p in presets if not _partial_done(stems[p][key])}
        if todo:
            tasks.append(_Task(recording, str(raw_dir), todo, background))
    return tasks


def _write_failed(path: Path, recordings: list[ManifestRow], results: dict[str, _PresetResult]) -> None:
    """One row per recording that failed for any preset, with the first preset's reason; each is
    also named in the log."""
    rows = []
    for recording in recordings:
        key = _stem_key(recording)
        reasons = [r.failed[key] for r in results.values() if key in r.failed]
        if reasons:
            rows.append({"id": recording.id, "local_path": recording.local_path, "reason": reasons[0]})
            log.warning("lms_cache: %s (%s) not cached: %s", recording.id, recording.local_path, reasons[0])
    write_csv_atomic(path, FAILED_COLUMNS, rows)


def reason_kind(reason: str) -> str:
    """The category of a failure reason (the text before its first ``:``), for counting."""
    return reason.split(":")[0].strip()


def _summary(
    recordings: list[ManifestRow],
    background: list[ManifestRow],
    results: dict[str, _PresetResult],
    processed: int,
    wall_s: float,
    workers: int,
) -> dict[str, Any]:
    total = len(recordings)
    background_keys = {_stem_key(r) for r in background}
    failed_all = {i for r in results.values() for i in r.failed}
    failed_ids = failed_all - background_keys
    reasons = Counter(
        reason_kind(next(r.failed[i] for r in results.values() if i in r.failed)) for i in failed_all
    )
    presets = {
        name: {
            "clips": r.clips_per_split,
            "clips_total": sum(r.clips_per_split.values()),
            "recordings_cached": total - len(set(r.failed) - background_keys),
            "recordings_failed": len(set(r.failed) - background_keys),
            "coverage_percent": _percent(total - len(set(r.failed) - background_keys), total),
            "shape": [r.n_bins, r.n_frames],
        }
        for name, r in results.items()
    }
    background_failed = len(failed_all & background_keys)
    return {
        "recordings": {"manifest": total, "cached": total - len(failed_ids), "failed": len(failed_ids)},
        "background_recordings": {
            "listed": len(background),
            "cached": len(background) - background_failed,
            "failed": background_failed,
        },
        "coverage_percent": _percent(total - len(failed_ids), total),
        "failures_by_reason": dict(sorted(reasons.items())),
        "presets": presets,
        # how this run went, not what it produced: a resumed or slower run makes the same cache
        RUN_KEY: {
            "processed_this_run": processed,
            "reused_from_interrupted_run": total + len(background) - processed,
            "workers": workers,
            "wall_seconds": round(wall_s, 3),
            "files_per_second": round(processed / wall_s, 3) if wall_s > 0 else 0.0,
        },
    }


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


# -------------------------------------------------------------------------------------- atomic i/o
# through birdops.files; an open handle, not a name, goes to numpy: np.save and np.savez append
# their suffix to a name that lacks it (the temporary one does)
def _write_partial(path: Path, start_s: np.ndarray, features: dict[str, np.ndarray]) -> None:
    """A recording's partial: ``start_s`` and its feature arrays (``features``, ``mixed``) by name."""
    with atomic_path(path) as temp, open(temp, "wb") as f:
        np.savez(f, start_s=start_s, **features)  # type: ignore[arg-type]


def _write_json(path: Path, data: Any) -> None:
    # ASCII JSON (non-ASCII escaped), unlike write_json_atomic: the bytes earlier caches hold
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
