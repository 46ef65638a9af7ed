"""ONNX export of a trained classifier with its feature front end inside the graph.

The traced module is :class:`birdops.models.classifier.WaveformClassifier` (front end + model), so the
exported file takes raw waveforms and nothing outside it computes features. The dynamo exporter
(``torch.onnx.export(..., dynamo=True)``) is the one that can express the front end's complex STFT.

The file follows ``docs/architecture.md`` ("Exported model"): input ``waveform`` float32
``[batch, samples]`` (samples fixed, batch dynamic), outputs ``logits`` float32 ``[batch, classes]``
and ``embedding`` float32 ``[batch, dim]`` (the pooled vector the final linear layer reads),
``birdops.*`` metadata props (:class:`birdops.contracts.ModelMetadata`) plus ``birdops.opset``
and ``birdops.exporter``. It is one self-contained file (no external data) and passes
``onnx.checker.check_model(path, full_check=True)``.

:func:`export_best` is the whole ``export_onnx`` stage: export the variant ``metrics/best.json``
chose, gate it on parity with PyTorch on real validation clips, and write the Triton model
repository. Its outputs depend only on its inputs: no timing and no commit id goes into the file or
the summary (throughput is measured by ``birdops bench``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from birdops.config import ExportParams
from birdops.contracts import (
    CALIBRATION_FILE,
    EMBEDDING_KEY,
    EMBEDDING_NAME,
    EXPORTER_KEY,
    INPUT_NAME,
    MODEL_FILE,
    OPSET_KEY,
    OUTPUT_NAME,
    WEIGHTS_FILE,
    BestError,
    ClassifierInfo,
    Embedding,
    MetadataError,
    ModelMetadata,
    Scoring,
    read_best,
    read_scoring,
)
from birdops.export import parity, triton
from birdops.features.shards import load_split
from birdops.files import atomic_path
from birdops.models.checkpoint import load_classifier
from birdops.models.classifier import WaveformClassifier, WaveformEmbedder
from birdops.providers import CPU_PROVIDER, choose_providers

log = logging.getLogger(__name__)

FP16_MODEL_FILE = "model.fp16.onnx"
INT8_MODEL_FILE = "model.int8.onnx"
TRITON_DIR = "model_repository"
# protobuf cannot serialise a message of 2 GiB or more into one file
MAX_SINGLE_FILE_BYTES = 2**31 - 1
# node metadata the exporter adds that names files on the exporting machine: dropped from the file
DROPPED_NODE_PROPS = ("pkg.torch.onnx.stack_trace",)


class ExportError(RuntimeError):
    """The model cannot be exported as the contract requires."""


# ------------------------------------------------------------------------------------------ export
def export_classifier(classifier: WaveformClassifier, num_samples: int, opset: int) -> onnx.ModelProto:
    """Trace ``classifier`` (``(B, num_samples)`` waveforms -> ``(B, C)`` logits, and its ``(B, H)``
    embedding) to ONNX with a dynamic batch: input ``waveform [batch, num_samples]``, outputs
    ``logits [batch, C]`` and ``embedding [batch, H]``."""
    classifier = classifier.eval()
    example = 0.1 * torch.randn(2, num_samples, generator=torch.Generator().manual_seed(0))  # (2, S)
    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        WaveformEmbedder(classifier).eval(),
        (example,),
        input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME, EMBEDDING_NAME],
        dynamic_shapes=({0: batch},),
        opset_version=opset,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    if program is None:  # only the legacy exporter returns None
        raise ExportError("torch.onnx.export returned no program")
    return program.model_proto


def graph_embedding(model: onnx.ModelProto) -> Embedding | None:
    """The graph's embedding output as its metadata describes it (its width read from the graph), or
    None when the graph has no such output."""
    for output in model.graph.output:
        if output.name == EMBEDDING_NAME:
            dims = output.type.tensor_type.shape.dim
            if len(dims) != 2 or not dims[1].HasField("dim_value"):
                raise ExportError(f"the {EMBEDDING_NAME} output must be [batch, dim] with a fixed dim")
            return Embedding(dims[1].dim_value, EMBEDDING_NAME)
    return None


def annotate(model: onnx.ModelProto, metadata: ModelMetadata, opset: int) -> onnx.ModelProto:
    """``model`` with the ``birdops.*`` metadata props set (replacing any; the embedding prop from the
    graph's own embedding output) and the exporter's per-node stack traces (absolute paths of this
    machine) removed. Mutates and returns ``model``."""
    metadata = dataclasses.replace(metadata, embedding=graph_embedding(model))
    props = {
        **metadata.to_props(),
        OPSET_KEY: str(opset),
        EXPORTER_KEY: f"torch {torch.__version__} dynamo, onnx {onnx.__version__}",
    }
    replaced = set(props) | {EMBEDDING_KEY}  # a graph without the embedding output loses a stale prop
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in replaced]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, dict(kept) | props)
    for node in model.graph.node:
        keep = [p for p in node.metadata_props if p.key not in DROPPED_NODE_PROPS]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    embedding = metadata.embedding
    outputs = f"{OUTPUT_NAME} [batch, classes]" + (
        f", {embedding.output} [batch, {embedding.dim}]" if embedding else ""
    )
    model.doc_string = f"birdops {metadata.variant}: {INPUT_NAME} [batch, samples] -> {outputs}"
    return model


def save_model(model: onnx.ModelProto, path: Path) -> int:
    """Write ``model`` as one file (no external data) and check it fully; returns its size in bytes."""
    size = model.ByteSize()
    if size > MAX_SINGLE_FILE_BYTES:
        raise ExportError(f"the model is {size / 2**30:.2f} GiB; one ONNX file holds less than 2 GiB")
    with atomic_path(path) as temp:
        onnx.save(model, str(temp))  # a ".tmp" name is saved as protobuf, as an ".onnx" one is
    onnx.checker.check_model(str(path), full_check=True)
    return path.stat().st_size


def metadata_for(
    info: ClassifierInfo, variant: str, model_sha256: str, scoring: Scoring | None = None
) -> ModelMetadata:
    """The exported model's metadata; ``scoring`` (calibration and thresholds) defaults to the model's
    activation, uncalibrated, without thresholds. The window is the model's training clip length."""
    return ModelMetadata(
        labels=info.labels,
        window_seconds=info.clip_seconds,
        features=info.feature_spec,
        variant=variant,
        model_sha256=model_sha256,
        scoring=scoring or Scoring(activation=info.activation),
    )


def weights_sha256(model_dir: Path) -> str:
    """SHA-256 of a trained model's weights file: the exported file names the exact model it holds
    (``dvc.lock`` maps it to the run that trained it)."""
    digest = hashlib.sha256()
    with (model_dir / WEIGHTS_FILE).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- stage
@dataclass(frozen=True)
class StageResult:
    """The export stage's summary (``metrics/onnx.json``), its gates, and the measured parity
    differences (``runs/export_onnx.json``: their last digits vary with the processor)."""

    summary: dict[str, Any]
    gates: tuple[parity.Gate, ...]
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(gate.passed for gate in self.gates)


def export_best(
    best_json: Path,
    eval_dir: Path,
    models_dir: Path,
    raw_dir: Path,
    prepared_dir: Path,
    lms_dir: Path,
    out_dir: Path,
    params: ExportParams,
) -> StageResult:
    """Export the chosen variant to ``out_dir/model.onnx`` with its calibration and thresholds
    (``eval_dir/<variant>/calibration.json``), gate it and write the Triton repository (only when
    every gate passed); the summary is returned either way."""
    try:
        variant = read_best(best_json).variant
    except BestError as err:
        raise ExportError(str(err)) from err
    try:  # a model whose features no longer match the current front end cannot be exported
        saved = load_classifier(models_dir / variant)
    except ValueError as err:
        raise ExportError(str(err)) from err
    classifier, info = saved.waveform_classifier(), saved.info
    if info.variant != variant:
        log.warning("%s holds variant %r; exporting it as %r", models_dir / variant, info.variant, variant)
    try:
        scoring = read_scoring(eval_dir / variant / CALIBRATION_FILE, len(info.labels))
    except MetadataError as err:
        raise ExportError(str(err)) from err
    if scoring.activation != info.activation:
        raise ExportError(
            f"{eval_dir / variant / CALIBRATION_FILE} is for a {scoring.activation} model, "
            f"{models_dir / variant} is {info.activation}: evaluate the model again"
        )
    metadata = metadata_for(info, variant, weights_sha256(models_dir / variant), scoring)
    log.info(
        "exporting %s (%s, %d classes, %s s at %d Hz) with opset %d",
        variant,
        info.feature_preset,
        len(info.labels),
        info.clip_seconds,
        metadata.sample_rate_hz,
        params.opset,
    )
    # what an earlier run by hand left must not pass for this run's output
    (out_dir / FP16_MODEL_FILE).unlink(missing_ok=True)
    (out_dir / INT8_MODEL_FILE).unlink(missing_ok=True)
    shutil.rmtree(out_dir / TRITON_DIR, ignore_errors=True)
    model = annotate(
        export_classifier(classifier, metadata.window_samples, params.opset), metadata, params.opset
    )
    model_path = out_dir / MODEL_FILE
    size_bytes = save_model(model, model_path)
    clips, rows = parity.validation_clips(
        raw_dir,
        prepared_dir,
        lms_dir,
        info.feature_preset,
        params.parity_clips,
        metadata.sample_rate_hz,
        info.clip_seconds,
    )
    labels = load_split(lms_dir, info.feature_preset, parity.PARITY_SPLIT).labels[rows]  # (N,)
    if len(clips) < params.parity_clips:
        log.warning(
            "parity is checked on %d validation clips, fewer than parity_clips (%d): the split has no more",
            len(clips),
            params.parity_clips,
        )
    fp32_session = ort.InferenceSession(str(model_path), providers=[CPU_PROVIDER])
    check = parity.ParityCheck(classifier, clips)
    gates, summary, measured = run_gates(model, fp32_session, out_dir, check, labels, params)
    embedding = graph_embedding(model)
    summary = {
        "variant": variant,
        "opset": params.opset,
        "model_size_mb": size_bytes / 1e6,
        "embedding_dim": embedding.dim if embedding is not None else None,
        "parity_clips_requested": params.parity_clips,
    } | summary
    result = StageResult(summary, tuple(gates), measured)
    if result.passed:
        config = triton.write_repository(
            model_path, out_dir / TRITON_DIR, params.triton_model_name, params.triton_max_batch_size
        )
        log.info("wrote the Triton model repository: %s", config.parent)
    return result


def run_gates(
    model: onnx.ModelProto,
    fp32_session: ort.InferenceSession,
    out_dir: Path,
    check: parity.ParityCheck,
    labels: np.ndarray,
    params: ExportParams,
) -> tuple[list[parity.Gate], dict[str, Any], dict[str, Any]]:
    """The fp32 gate of the saved model (``fp32_session``, on the CPU) and, with ``params.fp16`` /
    ``params.int8``, the gates of the fp16 / int8 models written to ``out_dir``; ``labels`` ``(N,)``
    are the check's clips' classes. Each gate's verdict is logged."""
    fp32 = check.run_session(fp32_session)
    gates = [fp32.gate("fp32", params.fp32_max_rel_diff, params.fp32_min_top1_agreement)]
    summary = fp32.to_summary("") | {"fp32_gate_passed": gates[0].passed}
    measured = fp32.measurements("")
    if params.fp16:
        fp16_gate, fp16_summary, fp16_measured = fp16_export(model, out_dir / FP16_MODEL_FILE, check, params)
        summary |= fp16_summary
        measured |= fp16_measured
        gates += [fp16_gate] if fp16_gate else []
    if params.int8:
        int8_gate, int8_summary, int8_measured = int8_export(
            model, out_dir / INT8_MODEL_FILE, check, labels, params
        )
        summary |= int8_summary
        measured |= int8_measured
        gates.append(int8_gate)
    for gate in gates:
        (log.info if gate.passed else log.error)("%s", gate.message)
    return gates, summary, measured


def fp16_export(
    model: onnx.ModelProto, path: Path, check: parity.ParityCheck, params: ExportParams
) -> tuple[parity.Gate | None, dict[str, Any], dict[str, Any]]:
    """The float16 model (front end kept in float32) gated against PyTorch, on CUDA when onnxruntime
    has it: ``(gate, summary, measurements)``; ``(None, {...}, {})`` with the reason when the
    converter is not installed."""
    try:
        half = parity.to_float16(model)
    except parity.Float16Unavailable as err:
        log.warning("fp16 export skipped: %s", err)
        return None, {"fp16_skipped": str(err)}, {}
    size_bytes = save_model(half, path)
    result = check.run(path, choose_providers("auto").providers)
    gate = result.gate("fp16", params.fp16_max_rel_diff, params.fp16_min_top1_agreement)
    summary = result.to_summary("fp16_") | {
        "fp16_gate_passed": gate.passed,
        "fp16_model_size_mb": size_bytes / 1e6,
    }
    return gate, summary, result.measurements("fp16_")


def int8_export(
    model: onnx.ModelProto, path: Path, check: parity.ParityCheck, labels: np.ndarray, params: ExportParams
) -> tuple[parity.Gate, dict[str, Any], dict[str, Any]]:
    """The int8 model (:func:`birdops.export.parity.to_int8`) gated against PyTorch on the CPU, with
    the validation clips' accuracy of both: ``(gate, summary, measurements)``."""
    parity.to_int8(model, path)
    quantized = onnx.load(str(path))
    del quantized.metadata_props[:]  # the quantizer's copy: the float32 model's props, as they are
    quantized.metadata_props.extend(model.metadata_props)
    size_bytes = save_model(quantized, path)  # the same checks as the float32 file
    result = check.run(path, [CPU_PROVIDER])
    gate = result.gate("int8", params.int8_max_rel_diff, params.int8_min_top1_agreement)
    fp32_accuracy = float(np.mean(check.reference().argmax(axis=1) == labels))
    int8_accuracy = result.accuracy(labels)
    log.info("int8 model: validation-clip accuracy %.4f against PyTorch's %.4f", int8_accuracy, fp32_accuracy)
    summary = result.to_summary("int8_") | {
        "int8_gate_passed": gate.passed,
        "int8_model_size_mb": size_bytes / 1e6,
        "int8_val_clip_accuracy": int8_accuracy,
        "int8_val_clip_accuracy_delta": int8_accuracy - fp32_accuracy,
    }
    return gate, summary, result.measurements("int8_")
