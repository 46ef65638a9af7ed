"""The field check (``birdops.serve.field_check``, ``pipeline.field_check``) on the tone detector: real
files on disk, a real onnxruntime session, the windows ``birdops predict`` reports by default."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
from params_yaml import section, write_params
from tones import DETECTOR, LABELS, RATE_HZ, TONES_HZ, tone_model, tones

from birdops.contracts import BACKGROUND_INDEX, ManifestRow, write_manifest
from birdops.providers import CPU_PROVIDER
from birdops.serve.field_check import check, detections
from birdops.serve.inference import Classifier
from pipeline import field_check as stage

# (tone index, seconds of it) of each test recording, after 1 s of noise
RECORDINGS = [(0, 2.0), (1, 3.0), (2, 2.0), (1, 1.0)]


def write_world(root: Path) -> None:
    """``raw/`` tone recordings (test split), ``background/`` noise and hum from three sites (one per
    split), ``prepared/`` manifests listing both."""
    rows, background = [], []
    for k, (tone, seconds) in enumerate(RECORDINGS):
        local = f"audio/XC{k}.wav"
        (root / "raw" / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / "raw" / local, tones([(0, 1.0), (TONES_HZ[tone], seconds), (0, 1.0)]), RATE_HZ)
        rows.append(ManifestRow(f"XC{k}", local, LABELS[tone], tone, "test", "r", "A", seconds + 2.0))
    rng = np.random.default_rng(4)
    t = np.arange(6 * RATE_HZ) / RATE_HZ
    for k, split in enumerate(("train", "val", "test", "test")):
        wave = 0.02 * rng.standard_normal(t.size) + 0.05 * np.sin(2 * np.pi * 2000.0 * t)  # a hum no tone
        local = f"audio/BG{k}.wav"
        (root / "background" / "audio").mkdir(parents=True, exist_ok=True)
        sf.write(root / "background" / local, wave.astype(np.float32), RATE_HZ)
        background.append(ManifestRow(f"BG{k}", local, "", BACKGROUND_INDEX, split, f"site{k}", "", 6.0))
    write_manifest(root / "prepared" / "manifest.csv", rows)
    write_manifest(root / "prepared" / "background.csv", background)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("field")
    write_world(root)
    return root


def test_detections_are_the_windows_predict_reports(detector_path: Path) -> None:
    classifier = Classifier.load(detector_path, providers=[CPU_PROVIDER])
    wave = tones([(0, 1.0), (TONES_HZ[2], 1.0), (0, 1.0)])
    found = detections(classifier, wave)
    assert found.flagged.tolist() == [False, True, False]  # 1 s windows, no overlap
    assert found.found[1].tolist() == [False, False, True]
    assert found.top[1] == 2  # the tone's class tops the window it fills


def test_quiet_on_background_and_recall_clean_and_over_background(detector_path: Path, world: Path) -> None:
    classifier = Classifier.load(detector_path, providers=[CPU_PROVIDER])
    params = section("field_check", snr_db=5.0)
    found = check(classifier, world / "raw", world / "background", world / "prepared", params)
    assert found["background_recordings"] == 2 and found["background_windows"] == 12  # test sites only
    assert found["background_windows_flagged"] == 0.0
    assert found["test_recordings"] == 4 and found["clean_file_recall"] == 1.0
    assert found["mixed_file_recall"] == 1.0 and found["mixed_to_clean_recall"] == 1.0
    assert found["clean_top1_file_recall"] == found["mixed_top1_file_recall"] == 1.0
    assert found["mixed_to_clean_top1_recall"] == 1.0
    # the validation split's audio instead: one site of background (BG1) and no recording here
    with pytest.raises(ValueError, match="needs val recordings and val background"):
        check(classifier, world / "raw", world / "background", world / "prepared", params, "val")


def test_the_ranking_alone_counts_a_species_under_its_threshold(world: Path, tmp_path: Path) -> None:
    # every tone scores about 0.95, under these thresholds: no window names a species, yet each
    # recording's species is the top score of the windows its tone fills, clean and over background
    strict = dataclasses.replace(DETECTOR, thresholds=(0.99, 0.99, 0.99))
    path = tmp_path / "strict.onnx"
    onnx.save(tone_model(scoring=strict), str(path))
    classifier = Classifier.load(path, providers=[CPU_PROVIDER])
    found = check(classifier, world / "raw", world / "background", world / "prepared", section("field_check"))
    assert found["clean_file_recall"] == found["mixed_file_recall"] == 0.0
    assert found["mixed_to_clean_recall"] == 0.0  # no clean recall to compare with
    assert found["clean_top1_file_recall"] == found["mixed_top1_file_recall"] == 1.0


def test_the_stage_writes_its_metrics(
    detector_path: Path, world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_params(tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    argv = [
        "--model",
        str(detector_path),
        "--raw",
        str(world / "raw"),
        "--background",
        str(world / "background"),
    ]
    argv += ["--prepared", str(world / "prepared"), "--summary", "metrics/field.json"]
    assert stage.main(argv) == 0
    written = json.loads((tmp_path / "metrics" / "field.json").read_text())
    assert written["clean_file_recall"] == 1.0 and written["mixed_snr_db"] == 5.0
