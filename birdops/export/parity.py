"""Parity gates and throughput of an exported model against the PyTorch module it came from.

The clips are real validation clips: the cache's ``val`` segments (``index.csv``: recording id and
``start_s``) cut from the raw recordings decoded at the model's sample rate, exactly as the cache cut
them -- the model sees waveforms, so cached features cannot stand in for them. A gate compares the
logits of onnxruntime with PyTorch's (float32, CPU): the largest absolute difference and the share of
clips whose top-1 class agrees. The embedding output, where the graph has one, is measured the same
way (the largest difference relative to its scale) and reported beside the gate, which it does not
decide.
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
from birdops.contracts import (
    EMBEDDING_NAME,
    INPUT_NAME,
    OUTPUT_NAME,
    PathEscapeError,
    manifest_path,
    read_manifest,
)
from birdops.features.shards import load_split
from birdops.models.classifier import WaveformClassifier
from birdops.windows import clips_at

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


class Int8Unavailable(RuntimeError):
    """No int8 model can be made of this graph; the message says why."""


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
    manifest = manifest_path(prepared_dir)
    paths = {}
    for row in read_manifest(manifest):
        try:
            paths[row.id] = row.audio_path(raw_dir)
        except PathEscapeError:  # a link changed since prepare
            continue
    clips, rows = [], []
    for recording_id, recording_rows in rows_by_id.items():
        if recording_id not in paths:
            log.warning(
                "parity clip skipped: cached recording %s is not in %s, or its file resolves outside %s",
                recording_id,
                manifest,
                raw_dir,
            )
            continue
        try:
            wave = load_audio(paths[recording_id], sample_rate_hz)
        except AudioError as err:
            log.warning("parity clip skipped: %s", err)
            continue
        clips.append(clips_at(wave, sample_rate_hz, cached.start_s[recording_rows].tolist(), clip_seconds))
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


def logit_scale(reference: np.ndarray) -> float:
    """The scale a parity tolerance is relative to: the largest reference logit magnitude, at least 1.

    Float32 rounding error in a network grows with the size of its activations, so one absolute limit
    is too tight for a model whose logits reach 20 and too loose for one whose logits stay near 0.1;
    the floor of 1 keeps an untrained model's near-zero logits from shrinking the limit to nothing.
    """
    return max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0


def disagreement_margins(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, ...]:
    """For every row whose top-1 class differs, how far the reference puts the candidate's choice
    below its own top-1 (a near-tie that rounding may flip has a margin close to 0)."""
    rows = np.flatnonzero(reference.argmax(axis=1) != candidate.argmax(axis=1))
    picked = reference[rows, candidate[rows].argmax(axis=1)]
    return tuple(float(m) for m in reference[rows].max(axis=1) - picked)


@dataclass(frozen=True)
class ParityResult:
    clips: int
    max_abs_diff: float
    top1_agreement: float  # share of clips with the same top-1 class, as measured
    providers: tuple[str, ...]  # what onnxruntime actually ran on
    scale: float = 1.0  # :func:`logit_scale` of the reference logits
    margins: tuple[float, ...] | None = None  # :func:`disagreement_margins`; None: not measured
    top1: tuple[int, ...] = ()  # the candidate's top-1 class of each clip
    embedding_max_abs_diff: float | None = None  # None: the graph has no embedding output
    embedding_scale: float = 1.0  # :func:`logit_scale` of the reference embeddings (the same floor)

    def accuracy(self, labels: np.ndarray) -> float:
        """Share of clips whose candidate top-1 class is ``labels`` ``(N,)``."""
        return float(np.mean(np.asarray(self.top1) == labels)) if self.top1 else 0.0

    @property
    def max_rel_diff(self) -> float:
        return self.max_abs_diff / self.scale

    @property
    def embedding_max_rel_diff(self) -> float | None:
        if self.embedding_max_abs_diff is None:
            return None
        return self.embedding_max_abs_diff / self.embedding_scale

    def explained_agreement(self, max_rel_diff: float) -> float:
        """Top-1 agreement counting as agreeing the clips whose reference top-two logits are closer
        than the gate lets two logits move apart (twice its absolute limit): there a tie is decided by
        rounding, and any correct export may flip it."""
        if not self.clips:
            return 0.0
        if self.margins is None:
            return self.top1_agreement
        limit = 2 * max_rel_diff * self.scale
        unexplained = sum(margin > limit for margin in self.margins)
        return 1.0 - unexplained / self.clips

    def gate(self, name: str, max_rel_diff: float, min_top1_agreement: float) -> Gate:
        """Passed when ``max |diff| / scale`` is at most ``max_rel_diff`` and the explained top-1
        agreement at least ``min_top1_agreement`` (a NaN difference fails)."""
        agreement = self.explained_agreement(max_rel_diff)
        passed = self.max_rel_diff <= max_rel_diff and agreement >= min_top1_agreement
        verdict = "passed" if passed else "FAILED"
        embedding = ""
        if self.embedding_max_abs_diff is not None:
            embedding = (
                f"; embedding max |diff| {self.embedding_max_abs_diff:.3g} = "
                f"{self.embedding_max_rel_diff:.3g} of its scale {self.embedding_scale:.3g}"
            )
        return Gate(
            name,
            passed,
            (
                f"{name} parity gate {verdict} on {self.clips} validation clips "
                f"({', '.join(self.providers)}): "
                f"max |logit diff| {self.max_abs_diff:.3g} = {self.max_rel_diff:.3g} of the logit scale "
                f"{self.scale:.3g} (limit {max_rel_diff:g}), top-1 agreement {agreement:.4f} "
                f"(minimum {min_top1_agreement:g}; {self.top1_agreement:.4f} before near-ties){embedding}"
            ),
        )

    def to_summary(self, prefix: str) -> dict[str, Any]:
        """What the gate checked, for the stage's metrics: the same on every processor."""
        return {
            f"{prefix}top1_agreement": self.top1_agreement,
            f"{prefix}parity_clips": self.clips,
            f"{prefix}parity_providers": ",".join(self.providers),
        }

    def measurements(self, prefix: str) -> dict[str, Any]:
        """The measured differences: their last digits depend on the processor's kernels (onnxruntime
        picks its own per processor), so they go to the run record, not to the metrics."""
        measured = {
            f"{prefix}max_abs_diff": self.max_abs_diff,
            f"{prefix}max_rel_diff": self.max_rel_diff,
            f"{prefix}logit_scale": self.scale,
        }
        if self.embedding_max_abs_diff is not None:
            measured |= {
                f"{prefix}embedding_max_abs_diff": self.embedding_max_abs_diff,
                f"{prefix}embedding_max_rel_diff": self.embedding_max_abs_diff / self.embedding_scale,
                f"{prefix}embedding_scale": self.embedding_scale,
            }
        return measured


@dataclass
class ParityCheck:
    """PyTorch's logits and embeddings of ``clips`` (computed once) against any exported model's."""

    classifier: WaveformClassifier
    clips: np.ndarray  # (N, S) float32
    _reference: tuple[np.ndarray, np.ndarray] | None = field(default=None, init=False, repr=False)

    def reference(self) -> np.ndarray:
        """PyTorch's logits ``(N, C)``."""
        return self._outputs()[0]

    def reference_embedding(self) -> np.ndarray:
        """PyTorch's embeddings ``(N, H)``."""
        return self._outputs()[1]

    def _outputs(self) -> tuple[np.ndarray, np.ndarray]:
        if self._reference is None:
            self._reference = torch_outputs(self.classifier, self.clips)
        return self._reference

    def run(self, model_path: Path, providers: Sequence[str]) -> ParityResult:
        return self.run_session(ort.InferenceSession(str(model_path), providers=list(providers)))

    def run_session(self, session: ort.InferenceSession) -> ParityResult:
        has_embedding = EMBEDDING_NAME in {output.name for output in session.get_outputs()}
        names = [OUTPUT_NAME, EMBEDDING_NAME] if has_embedding else [OUTPUT_NAME]
        outputs = ort_outputs(session, self.clips, names)
        candidate, reference = outputs[0], self.reference()
        diff, agreement = compare(reference, candidate)
        embedding_diff, embedding_scale = None, 1.0
        if has_embedding:
            embedding_diff, _ = compare(self.reference_embedding(), outputs[1])
            embedding_scale = logit_scale(self.reference_embedding())
        return ParityResult(
            len(self.clips),
            diff,
            agreement,
            tuple(session.get_providers()),
            logit_scale(reference),
            disagreement_margins(reference, candidate),
            tuple(int(c) for c in candidate.argmax(axis=1)),
            embedding_diff,
            embedding_scale,
        )


@torch.no_grad()
def torch_logits(classifier: nn.Module, clips: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """``(N, C)`` float32 logits of PyTorch on the CPU in float32."""
    classifier = classifier.eval()
    out = [classifier(torch.from_numpy(clips[i : i + batch_size])) for i in range(0, len(clips), batch_size)]
    return torch.cat(out).float().numpy()


@torch.no_grad()
def torch_outputs(
    classifier: WaveformClassifier, clips: np.ndarray, batch_size: int = BATCH_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """``(logits (N, C), embeddings (N, H))`` float32 of PyTorch on the CPU in float32, in one pass."""
    classifier = classifier.eval()
    logits, embeddings = [], []
    for i in range(0, len(clips), batch_size):
        batch_logits, batch_embeddings = classifier.forward_with_embedding(
            torch.from_numpy(clips[i : i + batch_size])
        )
        logits.append(batch_logits)
        embeddings.append(batch_embeddings)
    return torch.cat(logits).float().numpy(), torch.cat(embeddings).float().numpy()


def ort_logits(session: ort.InferenceSession, clips: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """``(N, C)`` float32 logits of onnxruntime."""
    return ort_outputs(session, clips, [OUTPUT_NAME], batch_size)[0]


def ort_outputs(
    session: ort.InferenceSession, clips: np.ndarray, names: Sequence[str], batch_size: int = BATCH_SIZE
) -> list[np.ndarray]:
    """The float32 outputs ``names`` of onnxruntime, each ``(N, ...)``, from one run per batch."""
    batches = [
        session.run(list(names), {INPUT_NAME: np.ascontiguousarray(clips[i : i + batch_size])})
        for i in range(0, len(clips), batch_size)
    ]
    return [np.concatenate(part).astype(np.float32) for part in zip(*batches, strict=True)]


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
    separate_read_outputs(half)
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
    out: onnx.ModelProto = half
    return out


def separate_read_outputs(model: onnx.ModelProto) -> None:
    """Give every graph output that a node also reads (the embedding, which the final Linear reads)
    a tensor of its own: its producer writes ``<name>.value``, which its readers take, and an
    Identity copies it to the output. With ``keep_io_types`` the float16 converter casts an output
    back to float32 under its name, so a reader of that name would get float32 among float16 inputs
    and onnxruntime refuses the graph. Mutates ``model``."""
    read = {name for node in model.graph.node for name in node.input}
    shared = {output.name for output in model.graph.output} & read
    if not shared:
        return
    renamed = {name: f"{name}.value" for name in shared}
    for node in model.graph.node:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        node.output[:] = [renamed.get(name, name) for name in node.output]
    for value in model.graph.value_info:
        value.name = renamed.get(value.name, value.name)
    model.graph.node.extend(
        onnx.helper.make_node("Identity", [inner], [name], name=f"{name}.output")
        for name, inner in sorted(renamed.items())
    )


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


# ------------------------------------------------------------------------------------------ int8
def to_int8(model: onnx.ModelProto, path: Path) -> None:
    """Write to ``path`` a copy of ``model`` whose MatMul weights outside the front end are int8
    (onnxruntime dynamic quantization: activations are quantized per batch as it runs). The front
    end stays float32: its DFT matrices and filterbank make the features, and an 8-bit spectrum
    moves the logits by most of their scale."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    blocked = frontend_nodes(model)
    if not blocked:
        raise Int8Unavailable("the graph has no front-end scope metadata to keep the front end in float32")
    source = onnx.ModelProto()
    source.CopyFrom(model)
    # the exporter's intermediate shapes (value_info) conflict with the quantizer's shape inference
    del source.graph.value_info[:]
    quantize_dynamic(
        source, path, op_types_to_quantize=["MatMul"], weight_type=QuantType.QInt8, nodes_to_exclude=blocked
    )
