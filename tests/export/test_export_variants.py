"""The fp32 parity gate on every kind of model the export stage can be asked to export.

Each case is a tiny model from the real factory whose head is scaled so its logits reach a trained
model's size (about 10), behind its preset's real front end: the MFCC ViT (Phase 2B), the ``seed``
log-mel AST (baseline, full) and the ``ast``-preset AST (the GPU profile). A correct export must pass
the gate with the limits of ``params.yaml``; a wrong one -- the same graph around slightly different
weights, or a front end with other settings -- must fail it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from worlds import model_params

from birdops.config import ExportParams, load_params
from birdops.export import onnx_export, parity
from birdops.features.frontend import build_frontend
from birdops.models.classifier import WaveformClassifier
from birdops.models.factory import build_model
from birdops.providers import CPU_PROVIDER

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
CLIP_SECONDS = 1.0
NUM_CLASSES = 6
# name -> (arch, preset, model.noise_floor_quantile)
CASES: dict[str, tuple[str, str, float | None]] = {
    "phase2b-vit-mfcc": ("vit", "mfcc", None),
    "ast-seed": ("ast", "seed", None),
    "ast-seed-noise-floor": ("ast", "seed", 0.5),
    "ast-ast": ("ast", "ast", None),
}


def export_params() -> ExportParams:
    return load_params(ROOT / "params.yaml").export_onnx


def tiny_classifier(
    arch: str, preset: str, noise_floor: float | None = None, seed: int = 0
) -> WaveformClassifier:
    frontend = build_frontend(preset)
    torch.manual_seed(seed)
    model = build_model(
        model_params(arch, preset, noise_floor_quantile=noise_floor),
        NUM_CLASSES,
        *frontend.spec.clip_shape(CLIP_SECONDS).features,
    )
    head = [
        m
        for name, m in model.named_modules()
        if name.startswith("classifier") and isinstance(m, torch.nn.Linear)
    ]
    with torch.no_grad():
        head[-1].weight.mul_(20.0)  # logits of a trained model's size
    return WaveformClassifier(frontend, model).eval()


def clips(sample_rate_hz: int, count: int = 12) -> np.ndarray:
    """Calls of different pitches in noise: ``(count, samples)`` float32."""
    rng = np.random.default_rng(1)
    t = np.arange(round(CLIP_SECONDS * sample_rate_hz)) / sample_rate_hz
    rows = [
        0.3 * np.sin(2 * np.pi * (800 + 450 * k) * t) * (t > 0.1 * (k % 5)) + 0.02 * rng.normal(size=t.shape)
        for k in range(count)
    ]
    return np.stack(rows).astype(np.float32)


def session_of(classifier: WaveformClassifier, path: Path) -> ort.InferenceSession:
    samples = classifier.frontend.spec.clip_shape(CLIP_SECONDS).samples
    model = onnx_export.export_classifier(classifier, samples, export_params().opset)
    onnx_export.save_model(model, path)
    return ort.InferenceSession(str(path), providers=[CPU_PROVIDER])


@pytest.fixture(scope="module", params=sorted(CASES))
def case(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, WaveformClassifier, ort.InferenceSession]:
    classifier = tiny_classifier(*CASES[request.param])
    path = tmp_path_factory.mktemp(request.param) / "model.onnx"
    return request.param, classifier, session_of(classifier, path)


@pytest.mark.slow
def test_a_correct_export_passes_the_fp32_gate(
    case: tuple[str, WaveformClassifier, ort.InferenceSession],
) -> None:
    name, classifier, session = case
    params = export_params()
    result = parity.ParityCheck(classifier, clips(classifier.frontend.spec.sample_rate_hz)).run_session(
        session
    )
    assert result.scale > 3.0, f"{name}: logits too small to test a relative limit ({result.scale})"
    gate = result.gate("fp32", params.fp32_max_rel_diff, params.fp32_min_top1_agreement)
    assert gate.passed, gate.message
    # with headroom: a correct export sits far below the limit, so another CPU's rounding passes too
    assert result.max_rel_diff < params.fp32_max_rel_diff / 10, gate.message
    # the second output, the embedding (the tiny size's 64 wide), is as close to PyTorch's
    assert [o.name for o in session.get_outputs()] == ["logits", "embedding"]
    assert session.get_outputs()[1].shape[1] == 64
    assert result.embedding_max_rel_diff is not None, gate.message
    assert result.embedding_max_rel_diff < params.fp32_max_rel_diff / 10, gate.message
    assert "embedding max |diff|" in gate.message


@pytest.mark.slow
def test_the_embedding_output_leaves_the_exported_logits_bit_identical(
    case: tuple[str, WaveformClassifier, ort.InferenceSession], tmp_path: Path
) -> None:
    """The same classifier traced with its logits only (the graph before embeddings were exported):
    onnxruntime gives the same logits, bit for bit, whether the embedding is fetched or not."""
    _, classifier, session = case
    samples = classifier.frontend.spec.clip_shape(CLIP_SECONDS).samples
    program = torch.onnx.export(
        classifier,
        (0.1 * torch.randn(2, samples, generator=torch.Generator().manual_seed(0)),),
        input_names=["waveform"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        opset_version=export_params().opset,
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    assert program is not None
    onnx_export.save_model(program.model_proto, tmp_path / "logits_only.onnx")
    logits_only = ort.InferenceSession(str(tmp_path / "logits_only.onnx"), providers=[CPU_PROVIDER])
    batch = clips(classifier.frontend.spec.sample_rate_hz)
    (before,) = logits_only.run(["logits"], {"waveform": batch})
    both = session.run(["logits", "embedding"], {"waveform": batch})
    np.testing.assert_array_equal(both[0], before)
    np.testing.assert_array_equal(session.run(["logits"], {"waveform": batch})[0], before)


@pytest.mark.slow
def test_an_export_of_other_weights_fails_the_gate(
    case: tuple[str, WaveformClassifier, ort.InferenceSession],
) -> None:
    """The reference is the same architecture with every weight moved by 1%: the gate must see it."""
    name, classifier, session = case
    params = export_params()
    other = tiny_classifier(*CASES[name])
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for weight in other.parameters():
            weight.mul_(1 + 0.01 * torch.randn(weight.shape, generator=generator))
    result = parity.ParityCheck(other, clips(classifier.frontend.spec.sample_rate_hz)).run_session(session)
    gate = result.gate("fp32", params.fp32_max_rel_diff, params.fp32_min_top1_agreement)
    assert not gate.passed, gate.message


@pytest.mark.slow
def test_an_export_with_another_front_end_fails_the_gate(tmp_path: Path) -> None:
    """The seed AST exported with a front end whose dB range differs (top_db 60 instead of 80)."""
    params = export_params()
    classifier = tiny_classifier("ast", "seed")
    odd = tiny_classifier("ast", "seed")
    odd.frontend.spec = dataclasses.replace(odd.frontend.spec, top_db=60.0)
    session = session_of(odd, tmp_path / "odd.onnx")
    result = parity.ParityCheck(classifier, clips(22050)).run_session(session)
    gate = result.gate("fp32", params.fp32_max_rel_diff, params.fp32_min_top1_agreement)
    assert not gate.passed, gate.message


def parity_of(reference: np.ndarray, candidate: np.ndarray) -> tuple[parity.ParityResult, float]:
    """The parity result of ``candidate`` logits against ``reference`` ones, and the raw top-1 agreement."""
    diff, agreement = parity.compare(reference, candidate)
    margins = parity.disagreement_margins(reference, candidate)
    scale = parity.logit_scale(reference)
    return parity.ParityResult(len(reference), diff, agreement, (CPU_PROVIDER,), scale, margins), agreement


def test_near_ties_do_not_fail_a_correct_export() -> None:
    """Two classes within rounding of each other may swap: counted as agreeing; a clear swap is not."""
    reference = np.array([[5.0, 5.0 + 1e-6, 0.0], [1.0, 0.0, 9.0], [0.0, 8.0, 1.0]], dtype=np.float32)
    candidate = np.array([[5.0 + 1e-6, 5.0, 0.0], [1.0, 0.0, 9.0], [0.0, 8.0, 1.0]], dtype=np.float32)
    result, agreement = parity_of(reference, candidate)
    assert agreement == pytest.approx(2 / 3) and result.explained_agreement(1e-3) == 1.0
    assert result.gate("fp32", 1e-3, 1.0).passed
    swapped = candidate.copy()
    swapped[2] = [0.0, 1.0, 8.0]  # a clear swap: 7 logits apart
    result, agreement = parity_of(reference, swapped)
    assert not result.gate("fp32", 1e-3, 1.0).passed
    assert parity.logit_scale(np.full((2, 3), 0.01)) == 1.0  # small logits: the floor of 1
