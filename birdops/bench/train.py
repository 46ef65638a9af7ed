"""The ``train`` section of ``birdops bench``: each variant's training samples/s as ``params.yaml``
sets it, the trainer's own :func:`~birdops.train.trainer.train_epoch` on random clips of its shape.

A run is set up by the trainer's :func:`~birdops.train.trainer.start_run` (the model, optimizer,
loaders and recipe a training run starts with) on random data of the right shape; the ``cuda``
section (:mod:`birdops.bench.cuda`) times its configurations with the same :class:`TrainRun`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from birdops.bench.common import Section, Table, fmt, ratio
from birdops.bench.timing import interleaved, rate_summary, wall_seconds
from birdops.config import TrainParams
from birdops.features.frontend import spec_for
from birdops.featurespec import FeatureSpec
from birdops.train.data import TrainData
from birdops.train.distributed import DistContext
from birdops.train.trainer import Run, deterministic_mode, start_run, train_epoch, training_net


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


def clip_shape(preset: str, clip_seconds: float) -> tuple[int, int]:
    """``(n_bins, n_frames)`` of a ``clip_seconds`` clip of ``preset``'s features."""
    return spec_for(preset).clip_shape(clip_seconds).features


def seconds_of(spec: FeatureSpec, shape: tuple[int, int]) -> float:
    """The clip length whose features have ``shape`` = ``(n_bins, n_frames)`` in ``spec`` (the cuda
    section times frame counts no 4 s clip has, such as the report's padded 1024); ValueError when
    none has."""
    n_frames = shape[1]
    seconds = (
        (n_frames - 1) * spec.hop_length_samples + int(spec.framing != "center") * spec.win_length_samples
    ) / spec.sample_rate_hz
    if spec.clip_shape(seconds).features != shape:
        raise ValueError(f"no clip of {spec.name} features has the shape {shape}")
    return seconds


def random_data(params: TrainParams, shape: tuple[int, int], num_classes: int, clips: int) -> TrainData:
    """Training data of ``clips`` random clips of ``shape`` = ``(n_bins, n_frames)`` in
    ``params``' feature preset (the same split serves as validation: the bench never reads it)."""
    split = random_split(clips, *shape, num_classes, seed=params.seed)
    preset = params.model.features
    spec = spec_for(preset)
    labels = tuple(f"class {i}" for i in range(num_classes))
    return TrainData(split, split, labels, preset, spec, clip_seconds=seconds_of(spec, shape))


@dataclass(frozen=True)
class TrainRun:
    """One training configuration, ready to time: the trainer's run and the net its steps call."""

    params: TrainParams
    run: Run
    net: nn.Module
    ctx: DistContext

    @property
    def steps(self) -> int:
        return len(self.run.train_loader)

    @property
    def samples(self) -> int:
        return self.steps * self.params.batch_size

    def epoch(self) -> float:
        """Seconds of ``train_epoch`` over the loader (it ends by reading the loss: synchronised)."""
        generator = torch.Generator().manual_seed(self.params.seed)
        run, ctx = self.run, self.ctx
        with deterministic_mode(self.params.deterministic, ctx.device):
            return wall_seconds(
                lambda: train_epoch(self.net, run.train_loader, run.recipe, generator, ctx, 0, "bench")
            )


def train_run(
    params: TrainParams, shape: tuple[int, int], num_classes: int, steps: int, device: torch.device
) -> TrainRun:
    """A :class:`TrainRun` of ``params``: ``steps`` batches of ``shape`` = ``(n_bins, n_frames)`` clips."""
    ctx = DistContext(rank=0, world_size=1, device=device)
    data = random_data(params, shape, num_classes, steps * params.batch_size)
    run = start_run(params, data, ctx)
    return TrainRun(params, run, training_net(run.model, params, ctx), ctx)


def time_runs(runs: dict[str, TrainRun], repeats: int) -> dict[str, dict[str, Any]]:
    """One untimed pass of each run first (compilation, the allocator, kernels' first calls, the
    loader's workers starting), then interleaved timed passes: samples/s (median) of each."""
    for run in runs.values():
        run.epoch()
    rounds = interleaved({name: run.epoch for name, run in runs.items()}, repeats)
    return {
        name: {"steps": runs[name].steps, **_samples(seconds, runs[name].samples)}
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
