"""What the benchmarks run on, built from ``params.yaml`` in a work folder unless given.

- a corpus subset: the embedded generator with ``data.synthetic``'s settings and fewer recordings,
  then ``prepare`` with ``prepare``'s (the same code paths as the DAG's first two stages);
- a saved classifier of a variant's architecture (seeded random weights: throughput does not depend
  on what the weights learnt) and its ONNX export, made as the ``export_onnx`` stage makes it;
- a long recording of bird-like chirps in noise, written block by block as 16-bit FLAC.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from birdops.config import Params, SyntheticParams
from birdops.contracts import (
    BestError,
    ClassifierInfo,
    labels_path,
    manifest_path,
    read_best,
    read_labels,
    read_manifest,
    write_manifest,
)
from birdops.data.prepare import prepare_corpus, write_prepared
from birdops.data.synthetic import generate_corpus
from birdops.export.onnx_export import annotate, export_classifier, metadata_for, save_model, weights_sha256
from birdops.features.frontend import build_frontend
from birdops.models.checkpoint import load_classifier, save_classifier
from birdops.models.factory import build_model

log = logging.getLogger(__name__)

CHIRP_PERIOD_S = 0.7  # one call every 0.7 s
BLOCK_SECONDS = 60.0  # the long recording is generated and encoded a minute at a time


@dataclass(frozen=True)
class Corpus:
    """A raw folder and its prepared manifest: the files ``lms_cache`` reads."""

    raw_dir: Path
    prepared_dir: Path

    @property
    def manifest(self) -> Path:
        return manifest_path(self.prepared_dir)

    def recordings(self) -> list[tuple[Path, float]]:
        """``(audio path, length_s)`` of every manifest row, in manifest order."""
        return [(self.raw_dir / row.local_path, row.length_s) for row in read_manifest(self.manifest)]

    def labels(self) -> tuple[str, ...]:
        return read_labels(labels_path(self.prepared_dir))

    def first(self, count: int, prepared_dir: Path) -> Corpus:
        """The same raw folder with a manifest of its first ``count`` recordings in ``prepared_dir``."""
        prepared_dir.mkdir(parents=True, exist_ok=True)
        write_manifest(manifest_path(prepared_dir), read_manifest(self.manifest)[:count])
        shutil.copyfile(labels_path(self.prepared_dir), labels_path(prepared_dir))
        return Corpus(self.raw_dir, prepared_dir)


# What real recordings are like (the report's corpus, xeno-canto): 3 to 60 s (19 s on average), mostly
# MP3 at 44.1 kHz. No Ogg: libsndfile crashes encoding more than 2**21 samples of Vorbis at once
# (47 s at 44.1 kHz).
REPORT_LIKE: dict[str, object] = {
    "max_recording_seconds": 60.0,
    "sample_rate_hz": 44100,
    "formats": {"mp3": 0.8, "flac": 0.1, "wav": 0.1},
}


def corpus_subset(params: Params, recordings: int, species: int, out_dir: Path) -> Corpus:
    """Generate ``recordings`` recordings of ``species`` species like real ones (:data:`REPORT_LIKE`)
    with ``data.synthetic``'s other settings into ``out_dir/raw`` and prepare them into
    ``out_dir/prepared``."""
    base = params.data.synthetic
    synthetic = SyntheticParams(
        **{
            **base.model_dump(),
            **REPORT_LIKE,
            "recordings": recordings,
            "species": species,
            "recordists": max(1, recordings // 3),
            "confusable_pairs": min(base.confusable_pairs, species // 2),
        }
    )
    raw_dir, prepared_dir = out_dir / "raw", out_dir / "prepared"
    generate_corpus(synthetic, params.data.seed, raw_dir)
    write_prepared(prepare_corpus(raw_dir, params.prepare), prepared_dir)
    return Corpus(raw_dir, prepared_dir)


def best_variant(best_json: Path, fallback: str) -> str:
    """The variant ``metrics/best.json`` names (the one the DAG exports), else ``fallback``."""
    try:
        return read_best(best_json).variant
    except BestError:
        log.info("%s: no exported variant named; benchmarking %s", best_json, fallback)
        return fallback


def saved_model(params: Params, variant: str, labels: tuple[str, ...], models_dir: Path) -> Path:
    """Save a seeded, untrained classifier of ``variant``'s architecture as ``models_dir/<variant>``
    (what :func:`birdops.models.checkpoint.load_classifier` reads), for ``lms_cache.clip_seconds`` clips
    of its preset; returns the folder."""
    section = params.variant(variant)
    frontend = build_frontend(section.model.features)
    info = ClassifierInfo(
        variant=variant,
        model=section.model.model_dump(),
        labels=labels,
        feature_preset=frontend.spec.name,
        feature_spec=frontend.spec,
        clip_seconds=params.lms_cache.clip_seconds,
    )
    torch.manual_seed(section.seed)
    model = build_model(section.model, len(labels), *info.shape.features)
    save_classifier(models_dir / variant, model, info)
    return models_dir / variant


def exported_model(model_dir: Path, variant: str, opset: int, path: Path) -> Path:
    """Export the saved classifier in ``model_dir`` to ``path`` as the ``export_onnx`` stage does
    (front end inside the graph, dynamic batch, ``birdops.*`` metadata, full check); returns ``path``."""
    saved = load_classifier(model_dir)
    classifier, info = saved.waveform_classifier(), saved.info
    model = export_classifier(classifier, info.shape.samples, opset)
    annotate(model, metadata_for(info, variant, weights_sha256(model_dir)), opset)
    save_model(model, path)
    return path


def chirps(seconds: float, sample_rate_hz: int, seed: int = 0, start_s: float = 0.0) -> np.ndarray:
    """``seconds`` of rising chirps (2-6 kHz for 0.2 s, one every 0.7 s) in faint noise from ``start_s``
    on: float32 in [-1, 1], shape ``(round(seconds * sample_rate_hz),)``."""
    rng = np.random.default_rng([seed, round(start_s * sample_rate_hz)])
    t = start_s + np.arange(round(seconds * sample_rate_hz)) / sample_rate_hz
    phase_s = np.mod(t, CHIRP_PERIOD_S)  # time since the last chirp started
    sweep_hz = 2000.0 + 4000.0 * phase_s / 0.2
    call = np.where(phase_s < 0.2, np.sin(2 * np.pi * sweep_hz * phase_s), 0.0)
    return (0.3 * call + 0.02 * rng.normal(size=t.shape)).astype(np.float32)


def long_recording(path: Path, seconds: float, sample_rate_hz: int) -> Path:
    """Write ``seconds`` of :func:`chirps` as a mono 16-bit FLAC, one block at a time (an hour at
    44.1 kHz is 159 M samples: never all in memory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(
        path, "w", samplerate=sample_rate_hz, channels=1, format="FLAC", subtype="PCM_16"
    ) as out:
        start_s = 0.0
        while start_s < seconds:
            block_s = min(BLOCK_SECONDS, seconds - start_s)
            out.write(chirps(block_s, sample_rate_hz, start_s=start_s))
            start_s += block_s
    return path
