"""The ``cache`` section of ``birdops bench``: the whole ``lms_cache`` stage against decoding alone,
and where one recording's time goes inside it."""

from __future__ import annotations

import io
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from birdops.audio import AudioError, load_audio
from birdops.bench.common import Section, Table, Timed, fmt, ratio, run_timed
from birdops.bench.inputs import Corpus
from birdops.bench.timing import interleaved, median
from birdops.config import LmsCacheParams
from birdops.contracts import background_manifest_path, write_manifest
from birdops.features.activity import choose_segments
from birdops.features.frontend import build_frontend, compute_features, spec_for
from birdops.windows import clips_at

T = TypeVar("T")
# the parts of a recording's work, in the order the stage does them (``work_per_file``)
WORK_PARTS = ("decode", "activity", "features", "partial_write")


def run_cache_stage(corpus: Corpus, work_dir: Path) -> Timed:
    """One whole ``lms_cache`` stage into a fresh ``work_dir/lms`` (a finished cache would be reused),
    run in ``work_dir``, where ``params.yaml`` is and ``runs/lms_cache.json`` goes. The corpus's
    recordings only: no background recordings (an empty ``background.csv``), so the stage decodes the
    files the decode-only run decodes (``birdops bench`` writes ``background_mix.copies`` 0)."""
    out = work_dir / "lms"
    shutil.rmtree(out, ignore_errors=True)
    background = work_dir / "background"
    background.mkdir(exist_ok=True)
    if not background_manifest_path(corpus.prepared_dir).is_file():
        write_manifest(background_manifest_path(corpus.prepared_dir), [])
    command = [
        sys.executable,
        "-m",
        "pipeline.lms_cache",
        "--raw",
        str(corpus.raw_dir),
        "--background",
        str(background),
        "--prepared",
        str(corpus.prepared_dir),
        "--out",
        str(out),
        "--summary",
        str(work_dir / "cache.json"),
    ]
    return run_timed(command, work_dir, "lms_cache stage")


def run_decode_only(files: Path, rates_hz: list[int], workers: int, work_dir: Path) -> tuple[Timed, int]:
    """``python -m birdops.bench.decode`` on the paths listed in ``files``; returns its run and refusals."""
    command = [
        sys.executable,
        "-m",
        "birdops.bench.decode",
        "--files",
        str(files),
        "--rates",
        ",".join(map(str, rates_hz)),
        "--workers",
        str(workers),
    ]
    done = run_timed(command, work_dir, "decode-only run")
    return done, int(done.stdout.split()[-1])


def cache_section(corpus: Corpus, params: LmsCacheParams, work_dir: Path, repeats: int) -> Section:
    """Files/s and audio-seconds/s of the whole ``lms_cache`` stage (a subprocess, start-up included)
    against decoding the same files at the presets' rates with as many processes (also a subprocess:
    ``birdops.bench.decode``); and the steady state of both, from runs on the first half of the files
    and on all of them: the extra files over the extra seconds (start-up cancels out), in wall time and
    in CPU time per recording, which a shared machine inflates least (workers' CPU is counted when they
    are forked from the stage: one torch thread each, i.e. ``workers`` >= cores, as on 2 cores)."""
    recordings = corpus.recordings()
    paths = [path for path, _ in recordings]
    audio_s = sum(length for _, length in recordings)
    half = corpus.first(len(paths) // 2, work_dir / "half_prepared")
    rates = sorted({spec_for(preset).sample_rate_hz for preset in params.presets})
    files, half_files = work_dir / "decode_files.txt", work_dir / "decode_half.txt"
    files.write_text("".join(f"{path}\n" for path in paths))
    half_files.write_text("".join(f"{path}\n" for path in paths[: len(paths) // 2]))
    refused: list[int] = []

    def decode(listed: Path) -> Timed:
        done, refusals = run_decode_only(listed, rates, params.workers, work_dir)
        refused.append(refusals)
        return done

    runs = interleaved(
        {
            "stage": lambda: run_cache_stage(corpus, work_dir),
            "decode_only": lambda: decode(files),
            "stage_half": lambda: run_cache_stage(half, work_dir),
            "decode_only_half": lambda: decode(half_files),
        },
        repeats,
    )
    extra = len(paths) - len(paths) // 2
    sides = {}
    for side in ("stage", "decode_only"):
        full, part = runs[side], runs[f"{side}_half"]
        wall, wall_half = median([r.wall_s for r in full]), median([r.wall_s for r in part])
        cpu, cpu_half = median([r.cpu_s for r in full]), median([r.cpu_s for r in part])
        sides[side] = {
            **_throughput([r.wall_s for r in full], len(paths), audio_s),
            "cpu_s": [round(r.cpu_s, 3) for r in full],
            "half_wall_s": wall_half,
            # nan when noise outweighs the second half's work (too few files for this machine's load)
            "steady_files_per_s": extra / (wall - wall_half) if wall > wall_half else math.nan,
            "steady_cpu_ms_per_file": 1000 * (cpu - cpu_half) / extra,
        }
    share = sides["stage"]["files_per_s"] / sides["decode_only"]["files_per_s"]
    steady = sides["stage"]["steady_files_per_s"] / sides["decode_only"]["steady_files_per_s"]
    cpu_share = sides["decode_only"]["steady_cpu_ms_per_file"] / sides["stage"]["steady_cpu_ms_per_file"]
    workers = params.workers
    result: dict[str, Any] = {
        "recordings": len(paths),
        "audio_seconds": round(audio_s, 1),
        "presets": list(params.presets),
        "decode_rates_hz": rates,
        "workers": workers,
        "decode_refused": refused[-1],
        **sides,
        "stage_over_decode_only": share,
        "steady_stage_over_decode_only": steady,
        "steady_cpu_stage_over_decode_only": cpu_share,
        # the rate the stage's CPU time per recording allows on `workers` free cores
        "steady_files_per_s_on_free_cores": 1000 * workers / sides["stage"]["steady_cpu_ms_per_file"],
    }
    table = Table(
        f"feature cache: {len(paths)} recordings, {audio_s / 60:.1f} min of audio, presets "
        f"{','.join(params.presets)}, {workers} workers; steady state: the second half of the files",
        ("", "lms_cache stage", "decode only", "stage / decode"),
    )
    for key, label in (("files_per_s", "files/s, whole run"), ("audio_s_per_s", "audio s/s, whole run")):
        table.rows.append((label, fmt(sides["stage"][key]), fmt(sides["decode_only"][key]), ratio(share)))
    table.rows.append(
        ("wall s (median)", fmt(sides["stage"]["wall_s"], 2), fmt(sides["decode_only"]["wall_s"], 2), "")
    )
    table.rows.append(
        (
            "files/s, steady state",
            fmt(sides["stage"]["steady_files_per_s"]),
            fmt(sides["decode_only"]["steady_files_per_s"]),
            ratio(steady),
        )
    )
    table.rows.append(
        (
            "CPU ms a file, steady state",
            fmt(sides["stage"]["steady_cpu_ms_per_file"], 2),
            fmt(sides["decode_only"]["steady_cpu_ms_per_file"], 2),
            ratio(cpu_share),
        )
    )
    table.rows.append(
        (
            f"files/s that CPU time allows on {workers} free cores",
            fmt(result["steady_files_per_s_on_free_cores"]),
            fmt(1000 * workers / sides["decode_only"]["steady_cpu_ms_per_file"]),
            ratio(cpu_share),
        )
    )
    work = work_per_file(corpus, params, repeats)
    result["work_per_file"] = work
    return Section(result, (table, work_table(work)))


def work_per_file(corpus: Corpus, params: LmsCacheParams, repeats: int) -> dict[str, Any]:
    """CPU ms a recording of each part of the stage's work (:data:`WORK_PARTS`), measured in this
    process on one thread with the stage's own functions, medians over ``repeats`` passes: decoding
    at each rate the presets need (``load_audio``), choosing the clips (``choose_segments``), the
    presets' features of those clips (``compute_features``, ``seed`` and ``mfcc`` sharing their
    spectrogram as in the stage) and writing them as a partial (``np.savez``, here into memory). The
    first three decide the bytes the stage caches: their sum over decoding alone is the least the
    stage can cost against decode-only without computing other features."""
    rates: dict[int, list[str]] = {}
    for preset in params.presets:
        rates.setdefault(spec_for(preset).sample_rate_hz, []).append(preset)
    frontends = {rate: [build_frontend(p) for p in presets] for rate, presets in rates.items()}
    paths = [path for path, _ in corpus.recordings()]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        passes = [_work_pass(paths, frontends, params) for _ in range(repeats)]
    finally:
        torch.set_num_threads(threads)
    decoded = passes[0]["files"]
    ms = {part: median([p["seconds"][part] for p in passes]) * 1000 / max(1, decoded) for part in WORK_PARTS}
    return {"files": decoded, "cpu_ms_per_file": ms}


def _work_pass(paths: list[Path], frontends: dict[int, list[Any]], params: LmsCacheParams) -> dict[str, Any]:
    """One pass of :func:`work_per_file` over ``paths``: CPU seconds per part, recordings decoded."""
    seconds = dict.fromkeys(WORK_PARTS, 0.0)

    def timed(part: str, work: Callable[..., T], *args: Any) -> T:
        started = time.process_time()
        out = work(*args)
        seconds[part] += time.process_time() - started
        return out

    files = 0
    for path in paths:
        for rate, rate_frontends in frontends.items():
            try:
                wave = timed("decode", load_audio, path, rate)
            except AudioError:
                continue
            files += 1
            starts = timed(
                "activity",
                choose_segments,
                wave,
                rate,
                params.clip_seconds,
                params.max_clips_per_recording,
                params.activity,
            )
            clips = torch.from_numpy(clips_at(wave, rate, starts, params.clip_seconds))  # (n, S)
            with torch.no_grad():
                features = timed("features", compute_features, rate_frontends, clips)
            halves = [f.numpy().astype(np.float16) for f in features]
            timed("partial_write", np.savez, io.BytesIO(), *halves)
    return {"seconds": seconds, "files": files // max(1, len(frontends))}


def work_table(work: dict[str, Any]) -> Table:
    """:func:`work_per_file`'s figures: each part in CPU ms a recording and against decoding."""
    ms = work["cpu_ms_per_file"]
    table = Table(
        f"where a recording's time goes: one thread, {work['files']} recordings, CPU ms a recording",
        ("part of the stage's work", "CPU ms", "of decoding"),
    )
    for part in WORK_PARTS:
        table.rows.append((part.replace("_", " "), fmt(ms[part], 2), ratio(ms[part] / ms["decode"])))
    floor = ms["decode"] + ms["activity"] + ms["features"]
    label = "decode + activity + features (the cached bytes)"
    table.rows.append((label, fmt(floor, 2), ratio(floor / ms["decode"])))
    return table


def _throughput(seconds: list[float], files: int, audio_s: float) -> dict[str, Any]:
    wall = median(seconds)
    return {
        "seconds": [round(s, 3) for s in seconds],
        "wall_s": wall,
        "files_per_s": files / wall,
        "audio_s_per_s": audio_s / wall,
    }
