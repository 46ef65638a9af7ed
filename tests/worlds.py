"""Builders of small on-disk worlds (raw recordings, prepared manifest, feature cache) for tests."""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from params_yaml import section

from birdops.config import ModelParams
from birdops.contracts import (
    ANNOTATION_COLUMNS,
    ANNOTATIONS_FILE,
    BACKGROUND_INDEX,
    SOUNDSCAPE_COLUMNS,
    SOUNDSCAPES_FILE,
    ClassifierInfo,
    ManifestRow,
    write_manifest,
)
from birdops.features.cache import build_cache
from birdops.features.cache import features_info as cache_features_info
from birdops.features.frontend import build_frontend, spec_for
from birdops.features.shards import FeaturesInfo
from birdops.featurespec import FeatureSpec
from birdops.models.checkpoint import save_classifier
from birdops.models.factory import build_model

MANIFEST_COLUMNS = ["id", "local_path", "label", "label_index", "split", "rec", "q", "length_s"]
BACKGROUND_RATE_HZ = 16000


def model_params(
    arch: str = "ast",
    features: str = "seed",
    *,
    size: str = "tiny",
    pretrained: str | None = None,
    patch_stride: int = 10,
    noise_floor_quantile: float | None = None,
) -> ModelParams:
    """A model section for tests: by default the tiny ``seed`` AST from random weights, no dropout, no
    noise floor."""
    return ModelParams.model_validate(
        {
            "arch": arch,
            "size": size,
            "features": features,
            "pretrained": pretrained,
            "dropout": 0.0,
            "patch_stride": patch_stride,
            "noise_floor_quantile": noise_floor_quantile,
        }
    )


def write_prepared_and_cache(
    root: Path, rows: Iterable[Sequence[object]], labels: Sequence[str], clip_seconds: float
) -> None:
    """``root/prepared`` (manifest of ``rows`` in ``MANIFEST_COLUMNS`` order, labels.json) for the
    recordings already under ``root/raw``, six background recordings in ``root/background`` (listed in
    ``prepared/background.csv``, :func:`write_background`), then the real ``seed`` cache in
    ``root/lms``, with the noisy copies of the training clips."""
    prepared = root / "prepared"
    prepared.mkdir()
    with (prepared / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    (prepared / "labels.json").write_text(json.dumps(list(labels)))
    write_background(root, seconds=max(3.0, 2.5 * clip_seconds))
    params = section(
        "lms_cache", presets=["seed"], clip_seconds=clip_seconds, max_clips_per_recording=2, workers=1
    )
    build_cache(
        root / "raw",
        prepared / "manifest.csv",
        root / "lms",
        params,
        background_dir=root / "background",
        background_manifest=prepared / "background.csv",
    )


def write_background(root: Path, seconds: float, seed: int = 5) -> None:
    """``root/background/audio/BG<k>.wav``: two recordings of each of three sites (pink-ish noise with
    a low hum, one site per split), listed in ``root/prepared/background.csv`` as ``prepare`` does."""
    rng = np.random.default_rng(seed)
    rows = []
    t = np.arange(round(seconds * BACKGROUND_RATE_HZ)) / BACKGROUND_RATE_HZ
    for k, (split, site) in enumerate([(s, s) for s in ("train", "val", "test") for _ in range(2)]):
        noise = np.cumsum(rng.standard_normal(t.size)) * 0.002
        wave = 0.05 * rng.standard_normal(t.size) + noise - noise.mean() + 0.1 * np.sin(2 * np.pi * 120 * t)
        local = f"audio/BG{k + 1}.wav"
        (root / "background" / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / "background" / local, wave.astype(np.float32), BACKGROUND_RATE_HZ)
        rows.append(
            ManifestRow(f"BG{k + 1}", local, "", BACKGROUND_INDEX, split, f"site-{site}", "", seconds)
        )
    write_manifest(root / "prepared" / "background.csv", rows)


def write_soundscape(
    root: Path,
    name: str,
    split: str,
    wave: np.ndarray,
    rate_hz: int,
    events: Sequence[tuple[float, float, str]],
) -> None:
    """Add ``wave`` as ``root/soundscapes/<split>/<name>.flac`` with its true ``events`` (start_s,
    end_s, label) to ``soundscapes.csv`` and ``annotations.csv`` (created on first use)."""
    folder = root / "soundscapes"
    (folder / split).mkdir(parents=True, exist_ok=True)
    file = f"{split}/{name}.flac"
    sf.write(folder / file, wave.astype(np.float32), rate_hz)
    for table, columns, new_rows in (
        (SOUNDSCAPES_FILE, SOUNDSCAPE_COLUMNS, [[file, split, len(wave) / rate_hz]]),
        (ANNOTATIONS_FILE, ANNOTATION_COLUMNS, [[file, start, end, label] for start, end, label in events]),
    ):
        path = folder / table
        fresh = not path.exists()
        with path.open("a", newline="") as handle:
            writer = csv.writer(handle)
            if fresh:
                writer.writerow(columns)
            writer.writerows(new_rows)


def spec_of_shape(preset: str, n_bins: int, n_frames: int) -> FeatureSpec:
    """The preset's spec with its bins, rate and hop bent so that a 4 s clip is ``(n_bins, n_frames)``
    (centred frames: ``1 + 400 (n_frames - 1) // 400``): for tiny models and hand-made caches that
    never meet the real front end."""
    spec = dataclasses.replace(
        spec_for(preset), n_bins=n_bins, sample_rate_hz=100 * (n_frames - 1), hop_length_samples=400
    )
    assert spec.clip_shape(4.0).features == (n_bins, n_frames)
    return spec


def features_info(spec: FeatureSpec, clip_seconds: float) -> FeaturesInfo:
    """What ``features.json`` says of a cache of ``clip_seconds`` clips of ``spec`` built with the
    committed ``lms_cache`` settings."""
    return cache_features_info(spec, section("lms_cache").model_copy(update={"clip_seconds": clip_seconds}))


def save_tiny_ast(
    folder: Path,
    variant: str,
    labels: Sequence[str],
    clip_seconds: float,
    seed: int,
    feature_spec: FeatureSpec | None = None,
    constant_class: int | None = None,
    activation: str = "softmax",
) -> None:
    """A tiny ``seed``-feature AST from the real factory, saved as ``folder/variant``. With
    ``constant_class`` its logits ignore the input (the head outputs 5 for that class, 0 elsewhere);
    ``feature_spec`` overrides the recorded front-end settings; ``activation`` is how its logits read."""
    frontend = build_frontend("seed")
    cfg = model_params()
    torch.manual_seed(seed)
    model = build_model(cfg, len(labels), *frontend.spec.clip_shape(clip_seconds).features)
    if constant_class is not None:
        dense = model.get_submodule("classifier.dense")
        assert isinstance(dense, torch.nn.Linear)
        with torch.no_grad():
            dense.weight.zero_()
            dense.bias.copy_(torch.tensor([5.0 if k == constant_class else 0.0 for k in range(len(labels))]))
    info = ClassifierInfo(
        variant=variant,
        model=cfg.model_dump(),
        labels=tuple(labels),
        feature_preset="seed",
        feature_spec=feature_spec or frontend.spec,
        clip_seconds=clip_seconds,
        activation=activation,
    )
    save_classifier(folder / variant, model, info)


def calls_wave(seconds: float, rate_hz: int, call_starts_s: list[float], seed: int) -> np.ndarray:
    """Low noise plus 0.6 s rising 2-5 kHz calls at ``call_starts_s``: ``(samples,)`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate_hz)) / rate_hz
    wave = 0.005 * rng.standard_normal(t.size)
    for start_s in call_starts_s:
        local = t - start_s
        inside = (local >= 0) & (local < 0.6)
        wave += 0.4 * np.sin(2 * np.pi * (2000 * local + 2500 * local**2)) * inside
    return wave.astype(np.float32)
