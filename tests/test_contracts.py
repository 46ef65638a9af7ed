"""The files the stages hand each other: the manifest and labels round trip on disk, manifest paths
that leave the raw folder are refused, a saved classifier's config, an exported model's metadata and
``best.json`` round trip, and malformed ones are refused with the reason."""

from __future__ import annotations

import ast
import dataclasses
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from specs import SEED

from birdops import contracts
from birdops.contracts import (
    MANIFEST_COLUMNS,
    Best,
    BestError,
    ClassifierInfo,
    Embedding,
    ManifestError,
    ManifestRow,
    MetadataError,
    ModelMetadata,
    PathEscapeError,
    Scoring,
    Soundscape,
    SoundscapeError,
    SoundscapeEvent,
    labels_path,
    manifest_path,
    read_best,
    read_info,
    read_labels,
    read_manifest,
    read_soundscapes,
    write_best,
    write_labels,
    write_manifest,
    write_soundscapes,
)

ROWS = [
    ManifestRow("12", "audio/XC12.mp3", "Turdus merula", 1, "train", "Ann", "A", 12.345),
    ManifestRow("7", "audio/sub dir/XC7.flac", "Parus major", 0, "test", "", "no score", 0.5),
]


def test_a_manifest_round_trips_through_its_file(tmp_path: Path) -> None:
    path = manifest_path(tmp_path / "prepared")
    assert path == tmp_path / "prepared" / "manifest.csv"
    write_manifest(path, ROWS)
    assert path.read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    assert read_manifest(path) == ROWS
    assert sorted(p.name for p in path.parent.iterdir()) == ["manifest.csv"]  # no temporary file left


def test_a_malformed_manifest_is_refused_with_the_file_and_the_row(tmp_path: Path) -> None:
    path = tmp_path / "manifest.csv"
    write_manifest(path, [ManifestRow("3", "a.wav", "x", 0, "holdout", "", "A", 1.0)])
    with pytest.raises(ManifestError, match=r"manifest.csv: recording 3 has unknown split 'holdout'"):
        read_manifest(path)
    write_manifest(path, [ManifestRow("3", "a.wav", "x", 0, "train", "", "A", 1.0)])
    path.write_text(path.read_text().replace(",0,train,", ",zero,train,"))
    with pytest.raises(ManifestError, match="recording 3"):
        read_manifest(path)
    path.write_text("id,local_path,split\n3,a.wav,train\n")
    with pytest.raises(ManifestError, match="lacks the column"):
        read_manifest(path)


def test_labels_round_trip_in_index_order(tmp_path: Path) -> None:
    path = labels_path(tmp_path)
    assert path == tmp_path / "labels.json"
    write_labels(path, ["Turdus merula", "Parus major", "other"])
    assert read_labels(path) == ("Turdus merula", "Parus major", "other")
    path.write_text(json.dumps({"a": 1}))
    with pytest.raises(ManifestError, match=r"labels\.json: the labels must be a JSON list"):
        read_labels(path)
    with pytest.raises(ManifestError, match="cannot read"):
        read_labels(tmp_path / "missing.json")


def test_manifest_paths_that_escape_the_raw_folder_are_refused(tmp_path: Path) -> None:
    """The stages re-check each manifest path when they open it: a link may have changed since prepare."""
    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    (raw / "audio" / "ok.wav").write_bytes(b"RIFF")
    (raw / "audio" / "passwd.wav").symlink_to("/etc/passwd")
    (raw / "audio" / "inner.wav").symlink_to(raw / "audio" / "ok.wav")

    def row(local_path: str) -> ManifestRow:
        return ManifestRow("1", local_path, "x", 0, "test", "", "A", 1.0)

    assert row("audio/ok.wav").audio_path(raw) == raw / "audio" / "ok.wav"
    assert row("audio/inner.wav").audio_path(raw) == raw / "audio" / "inner.wav"
    for outside in ("audio/passwd.wav", "../x.wav", "/etc/passwd", "audio/../../x.wav"):
        with pytest.raises(PathEscapeError, match="resolves outside"):
            row(outside).audio_path(raw)


RATE_8K = dataclasses.replace(SEED, sample_rate_hz=8000)

INFO = ClassifierInfo(
    variant="full",
    model={
        "arch": "ast",
        "size": "tiny",
        "features": "seed",
        "pretrained": None,
        "dropout": 0.0,
        "patch_stride": 10,
    },
    labels=("a b", "c d"),
    feature_preset="seed",
    feature_spec=SEED,
    clip_seconds=4.0,
    best_epoch=2,
    best_metric="val_accuracy",
    best_value=0.5,
    epochs_run=3,
)


SOUNDSCAPES = [
    Soundscape(
        "val/SC-val-000.flac",
        "val",
        60.0,
        (SoundscapeEvent(1.25, 3.5, "Turdus merula"), SoundscapeEvent(2.0, 2.75, "Parus major")),
    ),
    Soundscape("test/SC-test-000.flac", "test", 30.0, ()),
]


def test_soundscapes_round_trip_through_their_two_files(tmp_path: Path) -> None:
    write_soundscapes(tmp_path, SOUNDSCAPES)
    assert (tmp_path / "soundscapes.csv").read_text().splitlines()[1] == "val/SC-val-000.flac,val,60.0"
    assert (tmp_path / "annotations.csv").read_text().splitlines() == [
        "file,start_s,end_s,label",
        "val/SC-val-000.flac,1.25,3.5,Turdus merula",
        "val/SC-val-000.flac,2.0,2.75,Parus major",
    ]
    assert read_soundscapes(tmp_path) == SOUNDSCAPES
    assert SOUNDSCAPES[0].audio_path(tmp_path) == tmp_path / "val" / "SC-val-000.flac"
    with pytest.raises(PathEscapeError):
        Soundscape("../elsewhere.flac", "val", 1.0, ()).audio_path(tmp_path)


@pytest.mark.parametrize(
    ("soundscapes", "annotations", "message"),
    [
        ("file,split\na.flac,val\n", "file,start_s,end_s,label\n", "lacks the column\\(s\\) duration_s"),
        ("file,split,duration_s\na.flac,dev,5\n", "file,start_s,end_s,label\n", "unknown split 'dev'"),
        ("file,split,duration_s\na.flac,val,five\n", "file,start_s,end_s,label\n", "duration_s"),
        ("file,split,duration_s\na.flac,val,5\n", "file,start_s,end_s,label\nb.flac,1,2,x\n", "lies outside"),
        ("file,split,duration_s\na.flac,val,5\n", "file,start_s,end_s,label\na.flac,4,6,x\n", "lies outside"),
        ("file,split,duration_s\na.flac,val,5\n", "file,start_s,end_s,label\na.flac,nan,2,x\n", "not finite"),
    ],
)
def test_malformed_soundscape_files_are_refused(
    tmp_path: Path, soundscapes: str, annotations: str, message: str
) -> None:
    (tmp_path / "soundscapes.csv").write_text(soundscapes)
    (tmp_path / "annotations.csv").write_text(annotations)
    with pytest.raises(SoundscapeError, match=message):
        read_soundscapes(tmp_path)


def test_a_folder_without_annotations_is_refused(tmp_path: Path) -> None:
    write_soundscapes(tmp_path, SOUNDSCAPES)
    (tmp_path / "annotations.csv").unlink()
    with pytest.raises(SoundscapeError, match=r"annotations\.csv: cannot read"):
        read_soundscapes(tmp_path)


def test_classifier_info_round_trips_through_config_json(tmp_path: Path) -> None:
    data = INFO.to_dict()
    assert data["labels"] == ["a b", "c d"]  # a JSON list, not a tuple
    assert ClassifierInfo.from_dict(json.loads(json.dumps(data))) == INFO
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert read_info(tmp_path) == INFO
    assert INFO.num_classes == 2 and INFO.model_params.arch == "ast"


def test_classifier_config_names_the_classes_for_hugging_face_tools(tmp_path: Path) -> None:
    data = INFO.to_dict()
    assert data["id2label"] == {"0": "a b", "1": "c d"} and data["label2id"] == {"a b": 0, "c d": 1}
    assert read_info_of(tmp_path, data) == INFO
    (tmp_path / "config.json").write_text(json.dumps({**data, "id2label": {"0": "c d", "1": "a b"}}))
    with pytest.raises(ValueError, match="id2label/label2id disagree with its labels"):
        read_info(tmp_path)


def test_classifier_config_records_the_input_shape_of_its_spec(tmp_path: Path) -> None:
    data = INFO.to_dict()
    keys = list(data)
    assert keys[keys.index("clip_seconds") + 1 : keys.index("clip_seconds") + 3] == ["n_bins", "n_frames"]
    assert (data["n_bins"], data["n_frames"]) == (128, 173) == INFO.shape.features
    assert data["feature_spec"] == SEED.to_dict() and INFO.shape.samples == 88200
    with pytest.raises(ValueError, match=r"input shape \(128, 172\) is not its feature spec's"):
        read_info_of(tmp_path, {**data, "n_frames": 172})


def read_info_of(directory: Path, data: dict[str, object]) -> ClassifierInfo:
    (directory / "config.json").write_text(json.dumps(data))
    return read_info(directory)


def test_a_bad_classifier_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({**INFO.to_dict(), "surprise": 1}))
    with pytest.raises(ValueError, match="surprise"):
        read_info(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a saved birdops classifier"):
        read_info(tmp_path / "missing")


def test_metadata_round_trips_through_props() -> None:
    metadata = ModelMetadata(("a b", "c d"), 4.0, SEED, "full", "deadbeef")
    props = metadata.to_props()
    assert all(isinstance(value, str) for value in props.values())
    assert props["birdops.sample_rate_hz"] == "22050" and props["birdops.window_seconds"] == "4.0"
    assert json.loads(props["birdops.features"]) == SEED.to_dict()
    assert ModelMetadata.from_props(props) == metadata
    assert metadata.sample_rate_hz == 22050 and metadata.window_samples == 88200


def test_scoring_round_trips_and_defaults_to_an_uncalibrated_softmax() -> None:
    scoring = Scoring("sigmoid", 1.25, -0.5, (0.3, 0.9))
    metadata = ModelMetadata(("a", "b"), 1.0, RATE_8K, "v", "r", scoring)
    assert ModelMetadata.from_props(metadata.to_props()).scoring == scoring
    props = metadata.to_props()
    for key in ("birdops.activation", "birdops.calibration", "birdops.thresholds"):
        del props[key]
    assert ModelMetadata.from_props(props).scoring == Scoring("softmax", 1.0, 0.0, None)


def test_the_embedding_prop_round_trips_and_is_optional() -> None:
    metadata = ModelMetadata(("a", "b"), 1.0, RATE_8K, "v", "r", embedding=Embedding(192))
    props = metadata.to_props()
    assert json.loads(props["birdops.embedding"]) == {"output": "embedding", "dim": 192}
    assert ModelMetadata.from_props(props).embedding == Embedding(192, "embedding")
    del props["birdops.embedding"]  # an export from before embeddings
    assert ModelMetadata.from_props(props).embedding is None
    assert "birdops.embedding" not in ModelMetadata(("a", "b"), 1.0, RATE_8K, "v", "r").to_props()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"birdops.labels": None}, "lacks birdops.labels"),
        ({"birdops.labels": "[]"}, "non-empty JSON list"),
        ({"birdops.labels": '["a", "a"]'}, "duplicate"),
        ({"birdops.labels": "not json"}, "malformed"),
        ({"birdops.sample_rate_hz": "fast"}, "malformed"),
        ({"birdops.window_seconds": "0"}, "positive"),
        ({"birdops.features": "[1, 2]"}, "JSON object"),
        ({"birdops.features": '{"f_min_hz": 100.0}'}, "feature spec keys differ"),
        ({"birdops.sample_rate_hz": "16000"}, "its birdops.features say 8000"),
        ({"birdops.activation": "relu"}, "sigmoid, softmax"),
        ({"birdops.calibration": '{"scale": 0, "bias": 0}'}, "positive"),
        ({"birdops.calibration": '{"scale": 1}'}, "scale"),
        ({"birdops.thresholds": "[0.5]"}, "one threshold in"),
        ({"birdops.thresholds": "[0.5, 1.5]"}, "one threshold in"),
        ({"birdops.embedding": "64"}, "birdops.embedding must be a JSON object"),
        ({"birdops.embedding": '{"output": "embedding"}'}, "birdops.embedding must be a JSON object"),
        ({"birdops.embedding": '{"output": "embedding", "dim": 0}'}, "positive integer"),
        ({"birdops.embedding": '{"output": "embedding", "dim": 1.5}'}, "positive integer"),
        ({"birdops.embedding": '{"output": "embedding", "dim": true}'}, "positive integer"),
        ({"birdops.embedding": '{"output": "", "dim": 8}'}, "non-empty name"),
    ],
)
def test_bad_metadata_is_refused_with_the_key(change: dict[str, str | None], message: str) -> None:
    props = ModelMetadata(("a", "b"), 1.0, RATE_8K, "v", "r").to_props()
    for key, value in change.items():
        if value is None:
            del props[key]
        else:
            props[key] = value
    with pytest.raises(MetadataError, match=message):
        ModelMetadata.from_props(props, "m.onnx")


def test_the_contracts_import_no_torch_numpy_or_onnxruntime() -> None:
    import subprocess
    import sys

    heavy = "('torch', 'numpy', 'onnxruntime')"
    script = f"import sys, birdops.contracts\nprint(sorted(m for m in {heavy} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_best_json_round_trips_with_its_bytes(tmp_path: Path) -> None:
    path = tmp_path / "best.json"
    write_best(path, Best("full", "cmap", 0.353193096884))
    assert path.read_text() == '{\n  "variant": "full",\n  "val_cmap": 0.353193096884\n}\n'
    assert read_best(path) == Best("full", "cmap", 0.353193096884)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "cannot read the chosen variant"),
        ('{"val_cmap": 0.5}', "'variant' must be a non-empty string"),
        ('{"variant": "", "val_cmap": 0.5}', "'variant' must be a non-empty string"),
        ('{"variant": "full", "value": 0.5}', "one val_<metric> value"),
        ('{"variant": "full", "val_cmap": 0.5, "val_map": 0.5}', "one val_<metric> value"),
        ('{"variant": "full", "val_cmap": "high"}', "val_cmap must be a number"),
    ],
)
def test_a_bad_best_json_is_refused(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "best.json").write_text(text)
    with pytest.raises(BestError, match=message):
        read_best(tmp_path / "best.json")
    with pytest.raises(BestError, match="cannot read"):
        read_best(tmp_path / "missing.json")


def dag_outputs() -> set[str]:
    """Every path a stage of ``dvc.yaml`` writes (``outs`` and ``metrics``)."""
    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    return {
        next(iter(entry)) if isinstance(entry, dict) else str(entry)
        for stage in stages.values()
        for entry in [*stage.get("outs", []), *stage.get("metrics", [])]
    }


def test_the_paths_commands_default_to_are_where_the_dag_writes() -> None:
    """`birdops serve`/`predict` load the exported model, `report`/`bench` read the metrics where
    the stages put them: the only DAG paths the library names, each checked against dvc.yaml."""
    outputs = dag_outputs()
    assert str(Path(contracts.EXPORTED_MODEL).parent) in outputs
    assert contracts.BEST_METRICS in outputs
    assert f"{contracts.METRICS_DIR}/{contracts.EVAL_DIR}" in outputs


def test_no_other_module_names_a_dag_path() -> None:
    """A path under data/, models/ or metrics/ is written in dvc.yaml (stages) or contracts (the
    defaults above), never as another string in the library."""
    root = Path(__file__).resolve().parents[1] / "birdops"
    found = [
        f"{path.relative_to(root.parent)}:{node.lineno} {node.value!r}"
        for path in sorted(root.rglob("*.py"))
        if path.name != "contracts.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.startswith(("data/", "models/", "metrics/"))
    ]
    assert not found, f"DAG paths outside birdops.contracts: {found}"


def test_every_tracked_file_under_metrics_is_a_stage_output() -> None:
    """metrics/ holds results only: a benchmark's figures or a hand-made file would be a result
    no `dvc repro` makes."""
    root = Path(__file__).resolve().parents[1]
    tracked = subprocess.run(
        ["git", "ls-files", contracts.METRICS_DIR], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    outputs = dag_outputs()
    strays = [f for f in tracked if not any(f == out or f.startswith(f"{out}/") for out in outputs)]
    assert tracked and not strays, f"files under metrics/ that no stage writes: {strays}"
