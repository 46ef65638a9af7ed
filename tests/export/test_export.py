"""The export_onnx stage end to end on a tiny world: real audio files, a real feature cache and a tiny
real AST, exported by ``pipeline.export_onnx.main`` with the dynamo exporter and checked against the
contract of ``docs/architecture.md`` ("Exported model"), then served by ``birdops.serve.inference``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import soundfile as sf
import torch
import yaml
from params_yaml import section, tree
from worlds import save_tiny_ast, write_prepared_and_cache

from birdops.audio import load_audio
from birdops.contracts import Best, write_best
from birdops.export import onnx_export, parity
from birdops.features.frontend import build_frontend
from birdops.features.shards import load_split
from birdops.featurespec import FeatureSpec
from birdops.models.checkpoint import load_classifier
from birdops.providers import CPU_PROVIDER
from birdops.serve import predict
from birdops.serve.inference import Classifier
from birdops.windows import even_batches, even_windows
from pipeline import export_onnx as stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ("Alpha one", "Beta two", "Gamma three")
TONE_HZ = (1200.0, 2600.0, 5200.0)  # one tone per class, above the seed preset's 500 Hz high-pass
FILE_RATE_HZ = 16000  # resampled to the front end's 22,050 Hz on load
CLIP_SECONDS = 1.0
SPLITS = ["train", "train", "train", "val", "val", "val", "test", "test", "test"]
PARITY_CLIPS = 5


def write_world(root: Path) -> None:
    """``raw/`` audio (calls of the class's tone in faint noise), ``prepared/`` manifest + labels, and the
    ``lms/`` cache of the ``seed`` preset with 1 s clips."""
    rng = np.random.default_rng(5)
    rows = []
    for i, split in enumerate(SPLITS):
        label, seconds = i % 3, 2.5 + 0.5 * (i % 2)
        t = np.arange(round(seconds * FILE_RATE_HZ)) / FILE_RATE_HZ
        calls = ((t > 0.2) & (t < 1.0)) | ((t > seconds - 1.0) & (t < seconds - 0.2))
        wave = 0.3 * calls * np.sin(2 * np.pi * TONE_HZ[label] * t) + 0.01 * rng.normal(size=t.shape)
        local = f"audio/XC{i + 1}.{'flac' if i % 2 else 'wav'}"
        (root / "raw" / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / "raw" / local, wave.astype(np.float32), FILE_RATE_HZ)
        rows.append((f"XC{i + 1}", local, LABELS[label], label, split, "rec", "A", seconds))
    write_prepared_and_cache(root, rows, LABELS, CLIP_SECONDS)


def save_model(folder: Path, variant: str, feature_spec: FeatureSpec | None = None) -> None:
    save_tiny_ast(
        folder, variant, LABELS, CLIP_SECONDS, seed=3, feature_spec=feature_spec, activation="sigmoid"
    )


# what evaluate chose on validation for the model: written into the export's metadata
CALIBRATION = {"activation": "sigmoid", "scale": 1.5, "bias": -0.5, "thresholds": [0.3, 0.6, 0.9]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_world(root)
    save_model(root / "models", "full")
    (root / "metrics").mkdir()
    write_best(root / "metrics" / "best.json", Best("full", "cmap", 0.5))
    (root / "metrics" / "eval" / "full").mkdir(parents=True)
    (root / "metrics" / "eval" / "full" / "calibration.json").write_text(json.dumps(CALIBRATION))
    return root


def params_yaml(**overrides: Any) -> str:
    section = {
        "opset": 18,
        "parity_clips": PARITY_CLIPS,
        "fp32_max_rel_diff": 1e-3,
        "fp32_min_top1_agreement": 1.0,
        "fp16": True,
        "fp16_max_rel_diff": 0.05,
        "fp16_min_top1_agreement": 0.8,
        "int8": True,
        "int8_max_rel_diff": 0.2,
        "int8_min_top1_agreement": 0.5,
        "triton_model_name": "birds",
        "triton_max_batch_size": 8,
    }
    return yaml.safe_dump(tree(export_onnx=section | overrides), sort_keys=False)


def run_stage(world: Path, workdir: Path, params: str) -> int:
    (workdir / "params.yaml").write_text(params)
    argv = ["--best", str(world / "metrics" / "best.json"), "--models", str(world / "models")]
    argv += ["--eval", str(world / "metrics" / "eval")]
    argv += ["--raw", str(world / "raw"), "--prepared", str(world / "prepared"), "--lms", str(world / "lms")]
    argv += ["--out", str(workdir / "export"), "--summary", str(workdir / "onnx.json")]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)  # stages read params.yaml from the working directory
        return stage.main(argv)


@pytest.fixture(scope="module")
def exported(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The stage's working directory: ``export/`` and ``onnx.json``."""
    workdir = tmp_path_factory.mktemp("stage")
    assert run_stage(world, workdir, params_yaml()) == 0
    return workdir


def summary_of(workdir: Path) -> dict[str, Any]:
    return json.loads((workdir / "onnx.json").read_text())


# -------------------------------------------------------------------------------------- the file
def test_model_file_follows_the_export_contract(exported: Path) -> None:
    path = exported / "export" / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["waveform"]
    assert [o.name for o in model.graph.output] == ["logits", "embedding"]  # logits first, as before
    (waveform,), (logits, embedding) = model.graph.input, model.graph.output
    types = {value.type.tensor_type.elem_type for value in (waveform, logits, embedding)}
    assert types == {onnx.TensorProto.FLOAT}
    in_dims, out_dims = waveform.type.tensor_type.shape.dim, logits.type.tensor_type.shape.dim
    assert in_dims[0].dim_param and not in_dims[0].HasField("dim_value")  # dynamic batch
    assert in_dims[1].dim_value == 22050  # 1 s at the seed preset's rate, fixed
    assert out_dims[0].dim_param and out_dims[1].dim_value == len(LABELS)
    embedding_dims = embedding.type.tensor_type.shape.dim
    assert embedding_dims[0].dim_param == out_dims[0].dim_param and embedding_dims[1].dim_value == 64  # tiny
    # the front end is in the graph, its spectrum as MatMuls (the two-stage DFT), not the STFT op
    front_end = set(parity.frontend_nodes(model))
    assert any(node.op_type == "MatMul" for node in model.graph.node if node.name in front_end)
    assert not any(node.op_type in {"STFT", "DFT"} for node in model.graph.node)
    # one self-contained file: no tensor points at external data
    assert not any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    names = {p.name for p in (exported / "export").iterdir()}
    assert names - {"model.fp16.onnx"} == {"model.onnx", "model.int8.onnx", "model_repository"}


def test_metadata_describes_the_model(world: Path, exported: Path) -> None:
    model = onnx.load(str(exported / "export" / "model.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["birdops.labels"]) == list(LABELS)
    assert int(props["birdops.sample_rate_hz"]) == 22050
    assert float(props["birdops.window_seconds"]) == CLIP_SECONDS
    assert json.loads(props["birdops.features"]) == build_frontend("seed").spec.to_dict()
    assert props["birdops.variant"] == "full"
    weights = (world / "models" / "full" / "model.safetensors").read_bytes()
    assert props["birdops.model_sha256"] == hashlib.sha256(weights).hexdigest()  # the exact model held
    assert props["birdops.activation"] == "sigmoid"
    assert json.loads(props["birdops.calibration"]) == {"scale": 1.5, "bias": -0.5}
    assert json.loads(props["birdops.thresholds"]) == [0.3, 0.6, 0.9]
    assert json.loads(props["birdops.embedding"]) == {"output": "embedding", "dim": 64}
    assert props["birdops.opset"] == "18"
    assert (
        model.doc_string
        == "birdops full: waveform [batch, samples] -> logits [batch, classes], embedding [batch, 64]"
    )
    assert model.opset_import[0].version == 18
    # no absolute paths of the exporting machine inside the file
    assert "/work/" not in (exported / "export" / "model.onnx").read_bytes().decode("latin-1")


def test_onnxruntime_serves_the_export_like_pytorch(world: Path, exported: Path) -> None:
    """The exported file loaded by the serving code (no torch) gives PyTorch's windows, any batch size."""
    classifier = Classifier.load(exported / "export" / "model.onnx", providers=[CPU_PROVIDER])
    assert classifier.labels == LABELS and classifier.window_seconds == CLIP_SECONDS
    wave = load_audio(world / "raw" / "audio" / "XC6.flac", classifier.sample_rate_hz)
    windows, _ = even_windows(wave, classifier.sample_rate_hz, CLIP_SECONDS, 0.5)  # (N, S)
    module = load_classifier(world / "models" / "full").waveform_classifier()
    with torch.no_grad():
        expected = module(torch.from_numpy(windows)).numpy()
        embedded = module.forward_with_embedding(torch.from_numpy(windows))[1].numpy()  # (N, 64)
    np.testing.assert_allclose(classifier.logits(windows), expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(classifier.logits(windows[:1]), expected[:1], atol=1e-4, rtol=0)
    result = classifier.predict_windows(wave, hop_seconds=0.5, batch_size=2, embeddings=True)
    calibrated = torch.sigmoid(1.5 * torch.from_numpy(expected) - 0.5).numpy()  # the metadata's scoring
    np.testing.assert_allclose(result.scores, calibrated, atol=1e-5)
    assert classifier.embedding is not None and classifier.embedding.dim == 64
    assert result.embeddings is not None and result.embeddings.shape == (len(windows), 64)
    np.testing.assert_allclose(result.embeddings, embedded, atol=1e-4, rtol=0)
    # asking for the embeddings changes no score: they come from the same run
    np.testing.assert_array_equal(classifier.predict_windows(wave, 0.5, batch_size=2).scores, result.scores)


def test_predict_writes_every_windows_embedding_in_a_table_pandas_reads(
    world: Path, exported: Path, tmp_path: Path
) -> None:
    """``birdops predict --embeddings`` with the exported model on real recordings: one row per window,
    whatever was detected, read back by ``pandas.read_csv`` to the float32 values of a direct
    onnxruntime run of the same windows, bit for bit."""
    import pandas as pd

    model = exported / "export" / "model.onnx"
    files = [world / "raw" / "audio" / "XC6.flac", world / "raw" / "audio" / "XC1.wav"]
    table_path, detections = tmp_path / "embeddings.csv", tmp_path / "detections.csv"
    argv = [*map(str, files), "--model", str(model), "--output", str(detections)]
    argv += ["--embeddings", str(table_path), "--hop-seconds", "0.5", "--batch-size", "3"]
    assert predict.main(argv) == 0
    table = pd.read_csv(table_path)
    columns = [f"e{k}" for k in range(64)]
    assert list(table.columns) == ["file", "start_s", "end_s", *columns]
    assert all(table[column].dtype == np.float64 for column in ["start_s", "end_s", *columns])
    session = ort.InferenceSession(str(model), providers=[CPU_PROVIDER])
    assert list(table["file"].unique()) == [str(path) for path in files]
    for path in files:
        rows = table[table["file"] == str(path)]
        wave = load_audio(path, 22050)
        batches = list(even_batches(wave, 22050, CLIP_SECONDS, 0.5, 3))
        direct = np.concatenate([session.run(["embedding"], {"waveform": w})[0] for w, _ in batches])
        starts = np.concatenate([starts_s for _, starts_s in batches])
        assert len(rows) == len(direct) == len(starts)  # every window, detected or not
        np.testing.assert_array_equal(rows[columns].to_numpy(np.float32), direct)
        np.testing.assert_allclose(rows["start_s"], starts, atol=5e-4)
        np.testing.assert_allclose(
            rows["end_s"], np.minimum(starts + CLIP_SECONDS, len(wave) / 22050), atol=5e-4
        )


# ---------------------------------------------------------------------------------- gates, summary
def test_summary_records_parity_and_size_and_no_timing(exported: Path) -> None:
    summary = summary_of(exported)
    assert summary["variant"] == "full" and summary["opset"] == 18
    assert summary["fp32_gate_passed"] is True
    measured = json.loads((exported / "runs" / "export_onnx.json").read_text())  # the run record
    assert measured["logit_scale"] >= 1.0
    assert measured["max_rel_diff"] == pytest.approx(measured["max_abs_diff"] / measured["logit_scale"])
    assert 0 <= measured["max_rel_diff"] <= 1e-3
    # the embedding is measured the same way and recorded beside the logits' figures
    assert measured["embedding_scale"] >= 1.0
    assert measured["embedding_max_rel_diff"] == pytest.approx(
        measured["embedding_max_abs_diff"] / measured["embedding_scale"]
    )
    assert 0 <= measured["embedding_max_rel_diff"] <= 1e-4
    assert summary["embedding_dim"] == 64
    assert not [key for key in summary if key.endswith(("_diff", "_scale"))]  # processor-dependent digits
    assert summary["top1_agreement"] == 1.0
    assert summary["parity_clips"] == summary["parity_clips_requested"] == PARITY_CLIPS
    assert summary["parity_providers"] == CPU_PROVIDER
    size_mb = (exported / "export" / "model.onnx").stat().st_size / 1e6
    assert summary["model_size_mb"] == pytest.approx(size_mb)
    # a re-run must give the same file: no throughput, seconds or commit id in it
    assert not [key for key in summary if key.endswith(("_per_s", "_seconds", "speedup", "revision"))]
    assert all(not isinstance(value, (dict, list)) for value in summary.values())  # flat, for dvc metrics


def test_fp16_model_keeps_float32_io_and_passes_its_gate(exported: Path) -> None:
    summary = summary_of(exported)
    try:
        import onnxconverter_common  # noqa: F401
    except ImportError:
        assert "onnxconverter-common" in summary["fp16_skipped"]
        assert not (exported / "export" / "model.fp16.onnx").exists()
        return
    assert summary["fp16_gate_passed"] is True
    measured = json.loads((exported / "runs" / "export_onnx.json").read_text())
    assert measured["fp16_max_rel_diff"] <= 0.05 and summary["fp16_top1_agreement"] >= 0.8
    assert measured["fp16_embedding_max_rel_diff"] <= 0.05
    half = onnx.load(str(exported / "export" / "model.fp16.onnx"))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [o.name for o in half.graph.output] == ["logits", "embedding"]
    assert {o.type.tensor_type.elem_type for o in half.graph.output} == {onnx.TensorProto.FLOAT}
    types = {init.data_type for init in half.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types  # the transformer's weights
    # the front end stays float32, its constants too (the dB floor 1e-10 is below float16's range)
    front_end = set(parity.frontend_nodes(half))
    assert any(node.op_type == "MatMul" for node in half.graph.node if node.name in front_end)
    producer = {out: node for node in half.graph.node for out in node.output}

    def source(name: str) -> str:  # through the converter's Cast nodes
        node = producer.get(name)
        return source(node.input[0]) if node is not None and node.op_type == "Cast" else name

    clip_floors = {source(n.input[1]) for n in half.graph.node if n.op_type == "Clip" and n.name in front_end}
    floors = [init for init in half.graph.initializer if init.name in clip_floors]
    assert floors and all(init.data_type == onnx.TensorProto.FLOAT for init in floors)
    assert all(float(onnx.numpy_helper.to_array(init)) == pytest.approx(1e-10) for init in floors)
    assert summary["fp16_model_size_mb"] < summary["model_size_mb"]


def test_int8_model_quantizes_the_transformer_only_and_passes_its_gate(world: Path, exported: Path) -> None:
    summary = summary_of(exported)
    measured = json.loads((exported / "runs" / "export_onnx.json").read_text())
    assert summary["int8_gate_passed"] is True and summary["int8_parity_clips"] == PARITY_CLIPS
    # quantization moved the logits (more than float32 rounding does), within the gate's limit
    assert measured["max_rel_diff"] < measured["int8_max_rel_diff"] <= 0.2
    assert measured["embedding_max_rel_diff"] < measured["int8_embedding_max_rel_diff"] <= 0.2
    clips, rows = parity.validation_clips(
        world / "raw", world / "prepared", world / "lms", "seed", PARITY_CLIPS, 22050, CLIP_SECONDS
    )
    labels = load_split(world / "lms", "seed", "val").labels[rows]
    classifier = load_classifier(world / "models" / "full").waveform_classifier()
    session = ort.InferenceSession(str(exported / "export" / "model.int8.onnx"), providers=[CPU_PROVIDER])
    int8_accuracy = float(np.mean(parity.ort_logits(session, clips).argmax(axis=1) == labels))
    torch_accuracy = float(np.mean(parity.torch_logits(classifier, clips).argmax(axis=1) == labels))
    assert summary["int8_val_clip_accuracy"] == pytest.approx(int8_accuracy)
    assert summary["int8_val_clip_accuracy_delta"] == pytest.approx(int8_accuracy - torch_accuracy)
    model = onnx.load(str(exported / "export" / "model.int8.onnx"))
    front_end = set(parity.frontend_nodes(model))
    quantized = [n for n in model.graph.node if n.op_type in {"MatMulInteger", "DynamicQuantizeMatMul"}]
    assert quantized and not {n.name for n in quantized} & front_end
    assert any(n.op_type == "MatMul" for n in model.graph.node if n.name in front_end)  # still float32
    fp32 = onnx.load(str(exported / "export" / "model.onnx"))
    assert {p.key: p.value for p in model.metadata_props} == {p.key: p.value for p in fp32.metadata_props}


def test_the_exported_front_end_gives_the_cached_features_of_real_clips(world: Path, tmp_path: Path) -> None:
    """The graph's front end (two-stage DFT) on real validation clips against the features the cache
    holds for them (``torch.stft``, float16) and against the cache's front end in float32."""
    frontend = build_frontend("seed")
    clips, rows = parity.validation_clips(
        world / "raw", world / "prepared", world / "lms", "seed", PARITY_CLIPS, 22050, CLIP_SECONDS
    )
    path = tmp_path / "frontend.onnx"
    torch.onnx.export(
        frontend,
        (torch.from_numpy(clips[:2]),),
        str(path),
        dynamo=True,
        input_names=["waveform"],
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
        opset_version=18,
        verbose=False,
    )
    (exported,) = ort.InferenceSession(str(path), providers=[CPU_PROVIDER]).run(None, {"waveform": clips})
    with torch.no_grad():
        eager = frontend(torch.from_numpy(clips)).numpy()
    cached = load_split(world / "lms", "seed", "val").features[rows].astype(np.float32)
    assert len(clips) >= 4 and exported.shape == cached.shape
    np.testing.assert_allclose(exported, eager, rtol=0, atol=1e-4)  # float32 rounding only
    assert np.abs(exported - eager).mean() < 2e-6
    # the cache is float16: 11 significant bits
    np.testing.assert_allclose(exported, cached, rtol=1e-3, atol=1e-3)


def test_triton_repository_is_written_next_to_the_model(exported: Path) -> None:
    folder = exported / "export" / "model_repository" / "birds"
    assert (folder / "1" / "model.onnx").read_bytes() == (exported / "export" / "model.onnx").read_bytes()
    assert (folder / "labels.txt").read_text().splitlines() == list(LABELS)
    config = (folder / "config.pbtxt").read_text()
    assert 'name: "birds"' in config and "max_batch_size: 8" in config
    assert re.search(r'name: "waveform"\s+data_type: TYPE_FP32\s+dims: \[ 22050 \]', config)
    assert re.search(r'name: "embedding"\s+data_type: TYPE_FP32\s+dims: \[ 64 \]\s+}', config)  # no labels
    assert config.count("label_filename") == 1


def test_a_failed_gate_fails_the_stage(world: Path, exported: Path, tmp_path: Path) -> None:
    """An impossible limit: the stage exits 1, records the failure and leaves no Triton repository.
    (The graph is the one already exported: this test is about the gate, not the exporter.)"""
    model = onnx.load(str(exported / "export" / "model.onnx"))
    stale = tmp_path / "export" / "model_repository" / "birds" / "config.pbtxt"  # from an earlier run
    stale.parent.mkdir(parents=True)
    stale.write_text('name: "birds"')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(onnx_export, "export_classifier", lambda classifier, num_samples, opset: model)
        code = run_stage(world, tmp_path, params_yaml(fp32_max_rel_diff=1e-12, fp16=False))
    assert code == 1
    summary = summary_of(tmp_path)
    assert summary["fp32_gate_passed"] is False
    assert json.loads((tmp_path / "runs" / "export_onnx.json").read_text())["max_rel_diff"] > 1e-12
    assert not (tmp_path / "export" / "model_repository").exists()


def test_gate_limits_are_inclusive_and_nan_fails() -> None:
    result = parity.ParityResult(clips=4, max_abs_diff=1e-4, top1_agreement=0.75, providers=(CPU_PROVIDER,))
    assert result.gate("fp32", 1e-4, 0.75).passed
    assert not result.gate("fp32", 0.9e-4, 0.75).passed
    failed = result.gate("fp32", 1e-4, 0.76)
    assert not failed.passed and "FAILED" in failed.message and "0.76" in failed.message
    nan = parity.ParityResult(clips=4, max_abs_diff=float("nan"), top1_agreement=1.0, providers=())
    assert not nan.gate("fp32", 1.0, 0.0).passed
    diff, agreement = parity.compare(np.array([[0.0, 1.0], [2.0, 0.0]]), np.array([[0.0, 1.5], [0.0, 2.0]]))
    assert diff == 2.0 and agreement == 0.5


# --------------------------------------------------------------------------------- clips and checks
def test_parity_clips_are_the_cached_validation_segments(world: Path) -> None:
    """Decoded and cut again from the raw recordings, the clips give the cached features back."""
    frontend = build_frontend("seed")
    clips, rows = parity.validation_clips(
        world / "raw", world / "prepared", world / "lms", "seed", 100, 22050, CLIP_SECONDS
    )
    cached = load_split(world / "lms", "seed", "val")
    assert sorted(rows.tolist()) == list(range(len(cached.ids)))  # every val clip, each once
    with torch.no_grad():
        features = frontend(torch.from_numpy(clips)).numpy()
    np.testing.assert_allclose(features, cached.features[rows].astype(np.float32), atol=2e-2, rtol=0)
    few, few_rows = parity.validation_clips(
        world / "raw", world / "prepared", world / "lms", "seed", 2, 22050, CLIP_SECONDS
    )
    assert len(few) == 2 and {0, len(cached.ids) - 1} == set(few_rows.tolist())  # spread over the split


def test_a_model_trained_on_other_features_is_refused(tmp_path: Path) -> None:
    spec = dataclasses.replace(build_frontend("seed").spec, top_db=60.0)
    save_model(tmp_path, "odd", feature_spec=spec)
    best = tmp_path / "best.json"
    write_best(best, Best("odd", "cmap", 0.5))
    folders = (tmp_path / "raw", tmp_path / "prepared", tmp_path / "lms", tmp_path / "out")
    with pytest.raises(onnx_export.ExportError, match="retrain it"):
        onnx_export.export_best(best, tmp_path / "eval", tmp_path, *folders, section("export_onnx"))


def test_the_calibration_must_be_the_models(world: Path, tmp_path: Path) -> None:
    """The scores the export promises are the evaluated model's: a missing calibration, or one fitted for
    another activation, stops the export before a file is written."""
    best = world / "metrics" / "best.json"
    folders = (world / "models", world / "raw", world / "prepared", world / "lms", tmp_path / "out")
    with pytest.raises(onnx_export.ExportError, match=r"calibration\.json"):
        onnx_export.export_best(best, tmp_path / "eval", *folders, section("export_onnx"))
    (tmp_path / "eval" / "full").mkdir(parents=True)
    softmax = CALIBRATION | {"activation": "softmax", "bias": 0.0}
    (tmp_path / "eval" / "full" / "calibration.json").write_text(json.dumps(softmax))
    with pytest.raises(onnx_export.ExportError, match=r"softmax model.*sigmoid: evaluate the model again"):
        onnx_export.export_best(best, tmp_path / "eval", *folders, section("export_onnx"))
    (tmp_path / "eval" / "full" / "calibration.json").write_text(
        json.dumps(CALIBRATION | {"thresholds": [2]})
    )
    with pytest.raises(onnx_export.ExportError, match="one threshold in"):
        onnx_export.export_best(best, tmp_path / "eval", *folders, section("export_onnx"))
    assert not (tmp_path / "out" / "model.onnx").exists()


def test_best_json_must_name_a_variant(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"metric": "val_clip.f1_macro"}))
    folders = (tmp_path / "raw", tmp_path / "prepared", tmp_path / "lms", tmp_path / "out")
    with pytest.raises(onnx_export.ExportError, match=r"best\.json: 'variant' must be a non-empty string"):
        onnx_export.export_best(path, tmp_path / "eval", tmp_path, *folders, section("export_onnx"))


def test_a_gate_on_fewer_clips_than_asked_says_so(
    world: Path, exported: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = onnx.load(str(exported / "export" / "model.onnx"))
    with pytest.MonkeyPatch.context() as patch, caplog.at_level("WARNING"):
        patch.setattr(onnx_export, "export_classifier", lambda classifier, num_samples, opset: model)
        assert run_stage(world, tmp_path, params_yaml(parity_clips=500, fp16=False)) == 0
    summary = summary_of(tmp_path)
    assert summary["parity_clips_requested"] == 500 and summary["parity_clips"] < 500
    assert "fewer than parity_clips (500)" in caplog.text
