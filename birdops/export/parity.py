"""Parity gates and throughput of an exported model against the PyTorch module it came from.

The clips are real validation clips: the cache's ``val`` segments (``index.csv``: recording id and
``start_s``) cut from the raw recordings decoded at the model's sample rate, exactly as the cache cut
them -- the model sees waveforms, so cached features cannot stand in for them. A gate compares the
logits of onnxruntime with PyTorch's (float32, CPU): the largest absolute difference and the share of
clips whose top-1 class agrees.
"""

from __future__ import annotations

import ast
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from birdops.audio import AudioError, load_audio
from birdops.data.prepare import MANIFEST_FILE
from birdops.features.cache import cut_clips, load_split, read_manifest
from birdops.serve.inference import INPUT_NAME, OUTPUT_NAME

log = logging.getLogger(__name__)

PARITY_SPLIT = "val"
BATCH_SIZE = 16  # parity and benchmark batch
# the module attribute of WaveformClassifier that holds the front end: its nodes stay float32
FRONTEND_SCOPE = "frontend"
NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"


class ParityError(RuntimeError):
    """Parity cannot be measured (no validation clip could be read)."""


class Float16Unavailable(RuntimeError):
    """No float16 model can be made here; the message says why."""


# ---------------------------------------------------------------------------------------- clips
def validation_clips(
    raw_dir: Path,
    prepared_dir: Path,
    lms_dir: Path,
    preset: str,
    count: int,
    sample_rate_hz: int,
    clip_seconds: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``count`` cached validation clips of ``preset``, spread evenly over the index, as
    waveforms ``(N, clip_samples)`` float32 decoded from the raw recordings, and their rows ``(N,)``
    in the cached split (recordings are decoded one at a time, so clips come grouped by recording)."""
    cached = load_split(lms_dir, preset, PARITY_SPLIT)
    if not cached.ids:
        raise ParityError(f"{lms_dir}/{preset}: no cached {PARITY_SPLIT} clips to check parity on")
    if abs(cached.clip_seconds - clip_seconds) > 1e-9:
        raise ParityError(f"cached clips are {cached.clip_seconds} s, the model takes {clip_seconds} s")
    picks = np.unique(
        np.linspace(0, len(cached.ids) - 1, num=min(count, len(cached.ids))).round().astype(int)
    )
    rows_by_id: dict[str, list[int]] = {}
    for i in picks:
        rows_by_id.setdefault(cached.ids[i], []).append(int(i))
    paths = {r.id: raw_dir / r.local_path for r in read_manifest(prepared_dir / MANIFEST_FILE)}
    clips, rows = [], []
    for recording_id, recording_rows in rows_by_id.items():
        if recording_id not in paths:
            raise ParityError(f"cached recording {recording_id} is not in {prepared_dir / MANIFEST_FILE}")
        try:
            wave = load_audio(paths[recording_id], sample_rate_hz)
        except AudioError as err:
            log.warning("parity clip skipped: %s", err)
            continue
        clips.append(cut_clips(wave, sample_rate_hz, cached.start_s[recording_rows].tolist(), clip_seconds))
        rows += recording_rows
    if not clips:
        raise ParityError("none of the chosen validation recordings could be decoded")
    return np.concatenate(clips), np.array(rows, dtype=np.int64)


# ---------------------------------------------------------------------------------------- gates
@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    message: str


def compare(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, float]:
    """``(max |reference - candidate|, share of rows with the same argmax)`` of two ``(N, C)`` arrays."""
    if reference.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: {reference.shape} vs {candidate.shape}")
    diff = float(np.max(np.abs(reference.astype(np.float64) - candidate.astype(np.float64))))
    agreement = float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))
    return diff, agreement


@dataclass(frozen=True)
class ParityResult:
    clips: int
    max_abs_diff: float
    top1_agreement: float
    providers: tuple[str, ...]  # what onnxruntime actually ran on

    def gate(self, name: str, max_abs_diff: float, min_top1_agreement: float) -> Gate:
        """Passed when the difference is at most ``max_abs_diff`` and the agreement at least
        ``min_top1_agreement`` (a NaN difference fails)."""
        passed = self.max_abs_diff <= max_abs_diff and self.top1_agreement >= min_top1_agreement
        verdict = "passed" if passed else "FAILED"
        return Gate(name, passed, (
            f"{name} parity gate {verdict} on {self.clips} validation clips ({', '.join(self.providers)}): "
            f"max |logit diff| {self.max_abs_diff:.3g} (limit {max_abs_diff:g}), top-1 agreement "
            f"{self.top1_agreement:.4f} (minimum {min_top1_agreement:g})"
        ))  # fmt: skip

    def to_summary(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}max_abs_diff": self.max_abs_diff, f"{prefix}top1_agreement": self.top1_agreement,
            f"{prefix}parity_clips": self.clips, f"{prefix}parity_providers": ",".join(self.providers),
        }  # fmt: skip


@dataclass
class ParityCheck:
    """PyTorch's logits of ``clips`` (computed once) against any exported model's."""

    classifier: nn.Module
    clips: np.ndarray  # (N, S) float32
    _reference: np.ndarray | None = field(default=None, init=False, repr=False)

    def reference(self) -> np.ndarray:
        if self._reference is None:
            self._reference = torch_logits(self.classifier, self.clips)
        return self._reference

    def run(self, model_path: Path, providers: Sequence[str]) -> ParityResult:
        return self.run_session(ort.InferenceSession(str(model_path), providers=list(providers)))

    def run_session(self, session: ort.InferenceSession) -> ParityResult:
        candidate = ort_logits(session, self.clips)
        diff, agreement = compare(self.reference(), candidate)
        return ParityResult(len(self.clips), diff, agreement, tuple(session.get_providers()))


@torch.no_grad()
def torch_logits(classifier: nn.Module, clips: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """``(N, C)`` float32 logits of PyTorch on the CPU in float32."""
    classifier = classifier.eval()
    out = [classifier(torch.from_numpy(clips[i : i + batch_size])) for i in range(0, len(clips), batch_size)]
    return torch.cat(out).float().numpy()


def ort_logits(session: ort.InferenceSession, clips: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """``(N, C)`` float32 logits of onnxruntime."""
    out = [
        session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(clips[i : i + batch_size])})[0]
        for i in range(0, len(clips), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------------------- float16
def frontend_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes the exporter traced inside ``WaveformClassifier.frontend``."""
    names = []
    for node in model.graph.node:
        scopes = next((p.value for p in node.metadata_props if p.key == NAME_SCOPES_KEY), "[]")
        if ast.literal_eval(scopes)[1:2] == [FRONTEND_SCOPE]:
            names.append(node.name)
    return names


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 inputs and outputs, and the feature front end kept in
    float32: its power spectrum spans more than float16's range (the dB floor is 1e-10)."""
    try:
        from onnxconverter_common import float16
    except ImportError as err:
        raise Float16Unavailable(
            "onnxconverter-common is not installed (pip install onnxconverter-common)"
        ) from err
    blocked = set(frontend_nodes(model))
    if not blocked:
        raise Float16Unavailable("the graph has no front-end scope metadata to keep the front end in float32")
    consumers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.name)
    # the converter casts a blocked node's inputs before it looks at initializers, so it would round
    # the front end's constants (e.g. the 1e-10 dB floor) through float16 too: keep them as they are
    front_end_constants = {
        init.name: init
        for init in model.graph.initializer
        if init.data_type == onnx.TensorProto.FLOAT and consumers.get(init.name, {""}) <= blocked
    }
    half = onnx.ModelProto()
    half.CopyFrom(model)
    with warnings.catch_warnings():
        # its per-constant warnings would also name the front-end constants restored below
        warnings.filterwarnings("ignore", category=UserWarning, module="onnxconverter_common")
        half = float16.convert_float_to_float16(half, keep_io_types=True, node_block_list=sorted(blocked))
    log.info("float16 model: constants outside float16's range (e.g. attention masks) clamped to +-1e4")
    for init in half.graph.initializer:
        if init.name in front_end_constants:
            init.CopyFrom(front_end_constants[init.name])  # its Cast to float32 is then a no-op
    for value in half.graph.value_info:
        if value.name in front_end_constants:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return half


# ------------------------------------------------------------------------------------ throughput
def clips_per_second(
    run: Callable[[], object], batch_size: int, min_seconds: float = 1.0, min_runs: int = 3
) -> float:
    """Clips per second of ``run`` (one call = one batch), after one warm-up call, timed over at least
    ``min_runs`` calls and ``min_seconds``."""
    run()
    runs, started = 0, time.perf_counter()
    while runs < min_runs or time.perf_counter() - started < min_seconds:
        run()
        runs += 1
    return runs * batch_size / (time.perf_counter() - started)


def benchmark(
    classifier: nn.Module, session: ort.InferenceSession, clips: np.ndarray, batch_size: int = BATCH_SIZE
) -> dict[str, Any]:
    """onnxruntime (CPU provider) against PyTorch (CPU, float32) on one fixed batch of real clips,
    each with its default threads (one per core)."""
    batch = np.ascontiguousarray(clips[np.arange(batch_size) % len(clips)])  # (B, S)
    ort_rate = clips_per_second(lambda: session.run([OUTPUT_NAME], {INPUT_NAME: batch}), batch_size)
    tensor = torch.from_numpy(batch)
    with torch.no_grad():
        torch_rate = clips_per_second(lambda: classifier(tensor), batch_size)
    log.info("throughput, batch %d: onnxruntime %.1f clips/s, PyTorch %.1f clips/s", batch_size, ort_rate,
             torch_rate)  # fmt: skip
    return {
        "benchmark_batch_size": batch_size, "ort_clips_per_s": ort_rate, "torch_clips_per_s": torch_rate,
        "ort_speedup": ort_rate / torch_rate, "benchmark_providers": ",".join(session.get_providers()),
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
