"""The GPU training part of ``birdops bench --sections cuda``: the 86M AudioSet AST in bf16 -- eager,
SDPA, SDPA compiled at several batches, other clip lengths, and the largest batch that fits -- each
configuration timed alone, with its peak GPU memory (``birdops.bench.main`` adds onnxruntime's CUDA
provider, ``birdops predict`` on the GPU and the GPU profile's epoch)."""

from __future__ import annotations

import gc
from typing import Any

import torch

from birdops.bench.common import Section, Table, fmt, ratio
from birdops.bench.train import clip_shape, describe, time_runs, train_run
from birdops.config import ModelParams, TrainParams

# the architecture only: base_ast keeps a variant's dropout, pretrained weights and noise floor
BASE_AST = ModelParams(
    arch="ast",
    size="base",
    features="seed",
    pretrained=None,
    dropout=0.0,
    patch_stride=10,
    noise_floor_quantile=None,
)


GPU_LOADER_WORKERS = 4  # the README's GPU profile: loading and collating off the main thread


def base_ast(params: TrainParams, **changes: Any) -> TrainParams:
    """``params`` with the 86M AudioSet AST architecture, bf16, the GPU profile's loader workers,
    and ``changes``."""
    data = params.model_dump()
    data["model"] = {
        **data["model"],
        **BASE_AST.model_dump(exclude={"dropout", "pretrained", "noise_floor_quantile"}),
    }
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
