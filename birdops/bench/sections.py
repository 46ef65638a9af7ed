"""The measurements of ``birdops bench``: each returns its JSON section and the table it prints.

Every comparison is measured side by side in the same run, in interleaved rounds (``timing``), and
reported as the median of the rounds with the ratio between the sides.
"""

from __future__ import annotations

import functools
import gc
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from birdops.bench.inputs import Corpus, chirps, long_recording
from birdops.bench.timing import call_latencies, interleaved, median, percentile, rate_summary, wall_seconds
from birdops.config import LmsCacheParams, ModelParams, TrainParams
from birdops.contracts import background_manifest_path, write_manifest
from birdops.export.parity import compare, logit_scale
from birdops.features.frontend import spec_for
from birdops.models.checkpoint import load_classifier
from birdops.providers import CPU_PROVIDER, CUDA_PROVIDER
from birdops.serve.inference import Classifier
from birdops.train.data import EpochSampler, FeatureDataset
from birdops.train.distributed import DistContext
from birdops.train.optim import make_optimizer
from birdops.train.trainer import (
    Batch,
    Recipe,
    build_training_model,
    deterministic_mode,
    make_loader,
    make_recipe,
    train_epoch,
    training_net,
    use_fused_adamw,
)
from birdops.windows import even_windows

PREDICT_RATE_HZ = 44100  # field recorders' usual rate: predict pays for resampling as on real files
TAIL_CHARS = 2000  # of a failed subprocess's stderr, in the error


class BenchError(RuntimeError):
    """A benchmark failed (a stage or command exited with an error, an input is missing)."""


class Unavailable(BenchError):
    """A benchmark needs what this machine lacks (a GPU, onnxruntime's CUDA provider)."""


@dataclass(frozen=True)
class Table:
    """What a section prints: a title, column names and rows of formatted cells."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def render(self) -> str:
        if not self.rows:  # a skipped or failed section: its title says why
            return self.title
        cells = [self.columns, *self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title]
        for n, row in enumerate(cells):
            padded = [
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(padded))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


@dataclass(frozen=True)
class Section:
    """A section's figures (its part of the JSON) and the tables it prints."""

    result: dict[str, Any]
    tables: tuple[Table, ...]


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


# ------------------------------------------------------------------------------------ feature cache
def stage_env() -> dict[str, str]:
    """The environment for ``python -m pipeline.lms_cache``: this one, with the folder holding the
    ``pipeline`` package first on ``PYTHONPATH`` (the stage's process then runs this checkout)."""
    spec = importlib.util.find_spec("pipeline")
    if spec is None or spec.origin is None:
        raise BenchError("the pipeline package (the DVC stages) is not importable; run from the repository")
    root = str(Path(spec.origin).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


@dataclass(frozen=True)
class Timed:
    """A command's wall seconds, CPU seconds (its own and its reaped workers', from ``wait4``) and
    standard output."""

    wall_s: float
    cpu_s: float
    stdout: str


def run_timed(command: list[str], cwd: Path, what: str) -> Timed:
    """Run ``command`` in ``cwd`` with :func:`stage_env`; :class:`BenchError` when it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=stage_env(), stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if code:
            raise BenchError(f"{what} exited with {code}: {err.read()[-TAIL_CHARS:]}")
        return Timed(wall, usage.ru_utime + usage.ru_stime, out.read())


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
    return Section(result, (table,))


def _throughput(seconds: list[float], files: int, audio_s: float) -> dict[str, Any]:
    wall = median(seconds)
    return {
        "seconds": [round(s, 3) for s in seconds],
        "wall_s": wall,
        "files_per_s": files / wall,
        "audio_s_per_s": audio_s / wall,
    }


# ---------------------------------------------------------------------------------- exported model
def providers(device: str) -> list[str]:
    return [CUDA_PROVIDER, CPU_PROVIDER] if device == "cuda" else [CPU_PROVIDER]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_section(
    onnx_path: Path,
    models_dir: Path,
    batch_size: int,
    threads: int,
    device: str,
    repeats: int,
    min_calls: int,
    min_seconds: float,
) -> Section:
    """onnxruntime against PyTorch eager on the same model (the ONNX file's variant, loaded from
    ``models_dir``), the same batch of ``batch_size`` windows and the same threads: clips/s, p50/p99
    batch latency, and the parity of their logits."""
    classifier = Classifier.load(onnx_path, providers=providers(device), intra_op_threads=threads)
    if device == "cuda" and CUDA_PROVIDER not in classifier.providers:
        raise Unavailable(f"onnxruntime runs {onnx_path} on {', '.join(classifier.providers)}, not CUDA")
    module = load_classifier(models_dir / classifier.metadata.variant, device).waveform_classifier()
    window_s, rate_hz = classifier.window_seconds, classifier.sample_rate_hz
    windows, _ = even_windows(chirps(batch_size * window_s, rate_hz, seed=1), rate_hz, window_s, window_s)
    batch = windows[:batch_size]  # (B, S): the first batch_size windows, end to end
    tensor = torch.from_numpy(batch).to(device)

    def torch_logits() -> np.ndarray:
        with torch.inference_mode():
            logits = module(tensor)  # (B, C)
        sync(tensor.device)
        out: np.ndarray = logits.float().cpu().numpy()
        return out

    def ort_logits() -> np.ndarray:
        return classifier.logits(batch)

    reference, candidate = torch_logits(), ort_logits()  # also the warm-up calls
    max_abs, top1 = compare(reference, candidate)
    max_rel = max_abs / logit_scale(reference)
    rounds = interleaved(
        {
            "onnxruntime": functools.partial(call_latencies, ort_logits, min_calls, min_seconds),
            "pytorch": functools.partial(call_latencies, torch_logits, min_calls, min_seconds),
        },
        repeats,
    )
    sides = {side: _latency_summary(latencies, batch_size) for side, latencies in rounds.items()}
    speedup = sides["onnxruntime"]["clips_per_s"] / sides["pytorch"]["clips_per_s"]
    work = {} if device == "cuda" else one_thread_cpu_ms(onnx_path, torch_logits, batch, repeats)
    result: dict[str, Any] = {
        "model": str(onnx_path),
        "variant": classifier.metadata.variant,
        "device": device,
        "providers": classifier.providers,
        "threads": threads,
        "batch_size": batch_size,
        **sides,
        "ort_over_torch": speedup,
        **work,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "parity_digits": -math.log10(max(max_rel, 1e-16)),
        "top1_agreement": top1,
    }
    table = Table(
        f"exported model ({classifier.metadata.variant}) on {device}: batch {batch_size}, {threads} threads; "
        f"parity {result['parity_digits']:.1f} digits (max |diff| / scale {max_rel:.1e}), top-1 {top1:.3f}",
        ("", "onnxruntime", "pytorch eager", "ort / torch"),
    )
    table.rows.append(
        (
            "clips/s",
            fmt(sides["onnxruntime"]["clips_per_s"]),
            fmt(sides["pytorch"]["clips_per_s"]),
            ratio(speedup),
        )
    )
    for key, label in (("p50_ms", "p50 batch ms"), ("p99_ms", "p99 batch ms")):
        ort_ms, torch_ms = sides["onnxruntime"][key], sides["pytorch"][key]
        table.rows.append((label, fmt(ort_ms, 2), fmt(torch_ms, 2), ratio(ort_ms / torch_ms)))
    if work:
        ort_ms, torch_ms = work["cpu_ms_1_thread"]["onnxruntime"], work["cpu_ms_1_thread"]["pytorch"]
        table.rows.append(
            ("CPU ms a batch, 1 thread", fmt(ort_ms, 1), fmt(torch_ms, 1), ratio(torch_ms / ort_ms))
        )
    return Section(result, (table,))


def one_thread_cpu_ms(
    onnx_path: Path, torch_logits: Callable[[], np.ndarray], batch: np.ndarray, repeats: int
) -> dict[str, Any]:
    """CPU milliseconds of one batch on one thread (median of ``repeats`` interleaved calls), each
    side: the work a call costs, which a machine shared with other jobs does not inflate as it does
    the wall time of two threads waiting for each other. ``ort_over_torch_1_thread`` is torch's CPU
    time over onnxruntime's."""
    classifier = Classifier.load(onnx_path, providers=[CPU_PROVIDER], intra_op_threads=1)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        classifier.logits(batch), torch_logits()  # the first one-thread calls
        rounds = interleaved(
            {
                "onnxruntime": lambda: cpu_seconds(lambda: classifier.logits(batch)),
                "pytorch": lambda: cpu_seconds(torch_logits),
            },
            repeats,
        )
    finally:
        torch.set_num_threads(threads)
    cpu_ms = {side: 1000 * median(seconds) for side, seconds in rounds.items()}
    return {"cpu_ms_1_thread": cpu_ms, "ort_over_torch_1_thread": cpu_ms["pytorch"] / cpu_ms["onnxruntime"]}


def cpu_seconds(run: Callable[[], object]) -> float:
    """CPU seconds (every thread of this process) of one call of ``run``."""
    started = time.process_time()
    run()
    return time.process_time() - started


def models_section(
    models: dict[str, tuple[Path, Path]],
    batch_size: int,
    threads: int,
    repeats: int,
    min_calls: int,
    min_seconds: float,
) -> Section:
    """:func:`model_section` on the CPU for each variant's ``(model.onnx, models folder)``, and a
    summary table of the ratios."""
    done = {
        name: model_section(onnx, folder, batch_size, threads, "cpu", repeats, min_calls, min_seconds)
        for name, (onnx, folder) in models.items()
    }
    summary = Table(
        f"onnxruntime / PyTorch eager per variant: batch {batch_size}; clips/s on {threads} threads, "
        "and CPU time a batch on 1 thread",
        (
            "variant",
            "ort clips/s",
            "torch clips/s",
            f"ort / torch ({threads} threads)",
            "ort / torch (1 thread CPU)",
        ),
    )
    for name, section in done.items():
        r = section.result
        summary.rows.append(
            (
                name,
                fmt(r["onnxruntime"]["clips_per_s"]),
                fmt(r["pytorch"]["clips_per_s"]),
                ratio(r["ort_over_torch"]),
                ratio(r["ort_over_torch_1_thread"]),
            )
        )
    tables = tuple(t for section in done.values() for t in section.tables)
    return Section({"variants": {name: s.result for name, s in done.items()}}, (*tables, summary))


def _latency_summary(rounds: list[list[float]], batch_size: int) -> dict[str, Any]:
    """Median over rounds of clips/s, and p50/p99 of every call's latency pooled over the rounds."""
    pooled = [s for latencies in rounds for s in latencies]
    return {
        "calls": [len(latencies) for latencies in rounds],
        "clips_per_s": median([batch_size * len(latencies) / sum(latencies) for latencies in rounds]),
        "p50_ms": 1000 * percentile(pooled, 0.5),
        "p99_ms": 1000 * percentile(pooled, 0.99),
    }


# -------------------------------------------------------------------------------- birdops predict
# `python -c PEAK_WRAPPER PEAK_FILE ARGS...`: runs `birdops ARGS...`, then writes its own peak RSS (KiB)
PEAK_WRAPPER = """
import re, sys
from birdops.cli import main
try:
    code = main(sys.argv[2:])
finally:
    status = open("/proc/self/status").read()
    open(sys.argv[1], "w").write(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
sys.exit(code)
"""


def run_predict(command: list[str], log_path: Path) -> tuple[float, float]:
    """Run ``birdops predict`` (``command``: its arguments after ``predict``); returns its wall seconds
    and its peak RSS in MiB.

    The peak is the child's own ``VmHWM`` (``/proc/self/status``), which it writes as it exits
    (:data:`PEAK_WRAPPER`). ``ru_maxrss`` cannot tell it: Linux carries the peak of the memory a
    process had before ``exec`` into it, and a child forked from this process (torch loaded) starts
    with this process's pages.
    """
    peak_file = log_path.with_suffix(".peak")
    wrapped = [sys.executable, "-c", PEAK_WRAPPER, str(peak_file), "predict", *command]
    with log_path.open("w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(wrapped, stdout=subprocess.DEVNULL, stderr=log)
        _, status, _ = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        # the reason: predict's refusal and error lines (each once; its summary repeats the refusals)
        warnings = list(
            dict.fromkeys(
                line.split(": ", 1)[-1].strip()
                for line in log_path.read_text().splitlines()
                if line.startswith(("WARNING", "ERROR"))
            )
        )
        raise BenchError(
            f"birdops predict exited with {process.returncode}: {' | '.join(warnings)[-TAIL_CHARS:]}"
        )
    return seconds, int(peak_file.read_text()) / 1024  # VmHWM is in KiB


def predict_section(
    onnx_path: Path, work_dir: Path, seconds: float, batch_size: int, threads: int, device: str, repeats: int
) -> Section:
    """``birdops predict`` (a subprocess, start-up included) on a generated ``seconds``-long 44.1 kHz
    FLAC: audio seconds per wall second (x real time) and peak RSS."""
    recording = long_recording(work_dir / "long.flac", seconds, PREDICT_RATE_HZ)
    output = work_dir / "predict.csv"
    command = [
        str(recording),
        "--model",
        str(onnx_path),
        "--output",
        str(output),
        "--batch-size",
        str(batch_size),
        "--threads",
        str(threads),
        "--device",
        device,
    ]
    runs = interleaved({"predict": lambda: run_predict(command, work_dir / "predict.log")}, repeats)[
        "predict"
    ]
    walls, peaks = [wall for wall, _ in runs], [peak for _, peak in runs]
    with output.open() as handle:
        rows = sum(1 for _ in handle) - 1
    result: dict[str, Any] = {
        "recording_seconds": seconds,
        "sample_rate_hz": PREDICT_RATE_HZ,
        "format": "FLAC PCM_16",
        "recording_mib": recording.stat().st_size / 2**20,
        "batch_size": batch_size,
        "threads": threads,
        "device": device,
        "seconds": [round(s, 3) for s in walls],
        "wall_s": median(walls),
        "x_real_time": seconds / median(walls),
        "peak_rss_mib": [round(p, 1) for p in peaks],
        "peak_rss_mib_max": max(peaks),
        "rows": rows,
    }
    table = Table(
        f"birdops predict: {seconds / 60:g} min of 44.1 kHz FLAC, batch {batch_size}, {threads} threads, "
        f"{device}",
        ("", "value"),
        [
            ("x real time (audio s / wall s)", fmt(result["x_real_time"])),
            ("wall s (median)", fmt(result["wall_s"], 2)),
            ("peak RSS MiB (max)", fmt(result["peak_rss_mib_max"])),
        ],
    )
    return Section(result, (table,))


# --------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class RandomSplit:
    """Clips of random features in a cached split's shape and dtype (throughput does not depend on
    their values)."""

    features: np.ndarray  # (N, F, T) float16
    labels: np.ndarray  # (N,) int64

    @property
    def ids(self) -> list[str]:
        return [str(i) for i in range(len(self.labels))]


def random_split(clips: int, n_bins: int, n_frames: int, num_classes: int, seed: int) -> RandomSplit:
    rng = np.random.default_rng(seed)
    features = rng.standard_normal((clips, n_bins, n_frames), dtype=np.float32).astype(np.float16)
    return RandomSplit(features, np.arange(clips, dtype=np.int64) % num_classes)


@dataclass(frozen=True)
class TrainRun:
    """One training configuration, ready to time: the trainer's model, net, optimizer recipe and
    loader (``birdops.train.trainer``'s own functions), over random clips of the right shape."""

    params: TrainParams
    net: torch.nn.Module
    recipe: Recipe
    loader: DataLoader[Batch]
    ctx: DistContext

    @property
    def samples(self) -> int:
        return len(self.loader) * self.params.batch_size

    def epoch(self) -> float:
        """Seconds of ``train_epoch`` over the loader (it ends by reading the loss: synchronised)."""
        generator = torch.Generator().manual_seed(self.params.seed)
        with deterministic_mode(self.params.deterministic, self.ctx.device):
            return wall_seconds(
                lambda: train_epoch(self.net, self.loader, self.recipe, generator, self.ctx, 0, "bench")
            )


def train_run(
    params: TrainParams, shape: tuple[int, int], num_classes: int, steps: int, device: torch.device
) -> TrainRun:
    """A :class:`TrainRun` of ``params``: ``steps`` batches of ``shape`` = ``(n_bins, n_frames)`` clips."""
    ctx = DistContext(rank=0, world_size=1, device=device)
    model = build_training_model(params, num_classes, *shape, ctx)
    optimizer = make_optimizer(model, params.optim, fused=use_fused_adamw(params, device))
    split = random_split(steps * params.batch_size, *shape, num_classes, seed=params.seed)
    sampler = EpochSampler(split.labels, params.seed, shuffle=True, balanced=params.balanced_sampling)
    loader = make_loader(FeatureDataset([split], num_classes), sampler, params, ctx)
    recipe = make_recipe(params, optimizer, num_classes, len(loader), ctx)
    return TrainRun(params, training_net(model, params, ctx), recipe, loader, ctx)


def clip_shape(preset: str, clip_seconds: float) -> tuple[int, int]:
    """``(n_bins, n_frames)`` of a ``clip_seconds`` clip of ``preset``'s features."""
    return spec_for(preset).clip_shape(clip_seconds).features


def time_runs(runs: dict[str, TrainRun], repeats: int) -> dict[str, dict[str, Any]]:
    """One untimed pass of each run first (compilation, the allocator, kernels' first calls, the
    loader's workers starting), then interleaved timed passes: samples/s (median) of each."""
    for run in runs.values():
        run.epoch()
    rounds = interleaved({name: run.epoch for name, run in runs.items()}, repeats)
    return {
        name: {"steps": len(runs[name].loader), **_samples(seconds, runs[name].samples)}
        for name, seconds in rounds.items()
    }


def _samples(seconds: list[float], samples: int) -> dict[str, Any]:
    summary = rate_summary(seconds, samples)
    return {"seconds": summary["seconds"], "samples_per_s": summary["per_s"]}


def describe(params: TrainParams) -> dict[str, Any]:
    m = params.model
    return {
        "arch": m.arch,
        "size": m.size,
        "features": m.features,
        "patch_stride": m.patch_stride,
        "batch_size": params.batch_size,
        "precision": params.precision,
        "attention": params.attention,
        "compile_model": params.compile_model,
        "fused_adamw": params.fused_adamw,
        "num_workers": params.num_workers,
    }


def train_section(
    variants: dict[str, TrainParams],
    clip_seconds: float,
    num_classes: int,
    steps: int,
    repeats: int,
    device: torch.device,
) -> Section:
    """Training samples/s of each variant as ``params.yaml`` sets it, one trainer step per batch
    (augmentation, forward, loss, backward, clipping, AdamW), on ``device``."""
    runs = {
        name: train_run(params, clip_shape(params.model.features, clip_seconds), num_classes, steps, device)
        for name, params in variants.items()
    }
    timed = time_runs(runs, repeats)
    first = next(iter(timed.values()))["samples_per_s"]
    result = {name: {**describe(variants[name]), **timed[name]} for name in variants}
    table = Table(
        f"training on {device}: {steps} steps a round after one untimed pass, {num_classes} classes",
        ("variant", "model", "batch", "samples/s", "vs first"),
    )
    for name, row in result.items():
        model = f"{row['arch']} {row['size']} {row['features']}"
        table.rows.append(
            (
                name,
                model,
                str(row["batch_size"]),
                fmt(row["samples_per_s"]),
                ratio(row["samples_per_s"] / first),
            )
        )
    return Section({"device": str(device), "num_classes": num_classes, "variants": result}, (table,))


# ------------------------------------------------------------------------------------------- CUDA
# the architecture only: base_ast keeps a variant's dropout and pretrained weights
BASE_AST = ModelParams(
    arch="ast", size="base", features="seed", pretrained=None, dropout=0.0, patch_stride=10
)


GPU_LOADER_WORKERS = 4  # the README's GPU profile: loading and collating off the main thread


def base_ast(params: TrainParams, **changes: Any) -> TrainParams:
    """``params`` with the 86M AudioSet AST architecture, bf16, the GPU profile's loader workers,
    and ``changes``."""
    data = params.model_dump()
    data["model"] = {**data["model"], **BASE_AST.model_dump(exclude={"dropout", "pretrained"})}
    return TrainParams(**{**data, "precision": "bf16", "num_workers": GPU_LOADER_WORKERS, **changes})


def largest_batch(params: TrainParams, shape: tuple[int, int], num_classes: int, limit: int) -> int:
    """The largest power-of-two multiple of ``params.batch_size`` (up to ``limit``) whose training
    step fits in GPU memory; 0 when none does."""
    fitting, batch = 0, params.batch_size
    while batch <= limit and step_fits(params.model_copy(update={"batch_size": batch}), shape, num_classes):
        fitting, batch = batch, batch * 2
    return fitting


def step_fits(params: TrainParams, shape: tuple[int, int], num_classes: int) -> bool:
    """Whether one training step of ``params`` runs on the GPU without running out of memory."""
    gc.collect()  # the previous try's model and activations
    torch.cuda.empty_cache()
    try:
        train_run(params, shape, num_classes, 1, torch.device("cuda")).epoch()
    except torch.OutOfMemoryError:
        return False
    return True


def measure_alone(
    params: TrainParams, shape: tuple[int, int], num_classes: int, steps: int, repeats: int
) -> dict[str, Any]:
    """Samples/s and peak GPU memory of one configuration, timed with nothing else on the GPU."""
    device = torch.device("cuda")
    torch.cuda.reset_peak_memory_stats(device)
    runs = {"run": train_run(params, shape, num_classes, steps, device)}
    timed = time_runs(runs, repeats)["run"]
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30
    del runs
    torch.cuda.empty_cache()
    return {**describe(params), "frames": shape[1], **timed, "peak_gib": peak_gib}


def cuda_configs(
    params: TrainParams, real_frames: int, frames: list[int], batches: list[int], use_compile: bool
) -> dict[str, tuple[TrainParams, int]]:
    """The base-AST configurations the GPU section times, ``name -> (params, frames)``: eager and
    SDPA at ``params.batch_size``, SDPA compiled at each of ``batches`` (SDPA alone without
    ``use_compile``), and eager at the other ``frames`` lengths."""
    configs: dict[str, tuple[TrainParams, int]] = {
        "eager": (base_ast(params, attention="eager"), real_frames),
        "sdpa": (base_ast(params, attention="sdpa"), real_frames),
    }
    fast = {"attention": "sdpa", "compile_model": use_compile}
    label = "sdpa+compile" if use_compile else "sdpa"
    for batch in batches:
        name = label if batch == params.batch_size else f"{label} batch {batch}"
        configs[name] = (base_ast(params, batch_size=batch, **fast), real_frames)
    for length in frames:
        if length != real_frames:
            configs[f"eager {length} frames"] = (base_ast(params, attention="eager"), length)
    return configs


def cuda_train_section(
    params: TrainParams,
    clip_seconds: float,
    num_classes: int,
    steps: int,
    repeats: int,
    frames: list[int],
    batches: list[int],
    max_batch: int,
    use_compile: bool,
) -> Section:
    """Base-AST training on the GPU (bf16, the real frame count): :func:`cuda_configs` one at a
    time, then SDPA at the largest batch that fits, with each configuration's peak memory."""
    device = torch.device("cuda")
    n_bins, real_frames = clip_shape("seed", clip_seconds)
    configs = cuda_configs(params, real_frames, frames, batches, use_compile)
    # one configuration at a time: each one's peak memory is its own
    result = {
        name: measure_alone(config, (n_bins, length), num_classes, steps, repeats)
        for name, (config, length) in configs.items()
    }
    best = configs["sdpa+compile" if use_compile and params.batch_size in batches else "sdpa"][0]
    shape = (n_bins, real_frames)
    batch = largest_batch(best.model_copy(update={"compile_model": False}), shape, num_classes, max_batch)
    if batch:
        big = best.model_copy(update={"batch_size": batch})
        result[f"largest batch {batch}"] = measure_alone(big, shape, num_classes, steps, repeats)
    eager = result["eager"]["samples_per_s"]
    table = Table(
        f"base AST training on {torch.cuda.get_device_name(device)}: bf16, {n_bins} bins",
        ("configuration", "frames", "batch", "samples/s", "peak GiB", "vs eager"),
    )
    for name, row in result.items():
        table.rows.append(
            (
                name,
                str(row["frames"]),
                str(row["batch_size"]),
                fmt(row["samples_per_s"]),
                fmt(row["peak_gib"], 2),
                ratio(row["samples_per_s"] / eager),
            )
        )
    return Section({"device": torch.cuda.get_device_name(device), "configurations": result}, (table,))


def skipped(reason: str) -> Section:
    return Section({"skipped": reason}, (Table(f"skipped: {reason}", ()),))


def failed(reason: str) -> Section:
    return Section({"failed": reason}, (Table(f"failed: {reason}", ()),))


def run_section(measure: Callable[[], Section]) -> Section:
    """``measure()``, or a skipped section naming the reason when this machine cannot run it."""
    try:
        return measure()
    except Unavailable as err:
        return skipped(str(err))
