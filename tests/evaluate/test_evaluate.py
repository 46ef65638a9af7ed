"""Evaluation end to end on a tiny world: real audio files, a real feature cache, tiny real models.

Three saved classifiers share one front end: ``phase2b`` is a randomly initialised tiny AST,
``baseline`` always predicts class 0 and ``full`` always predicts class 1 (their head is a constant
bias). The validation split is mostly class 0 and the test split mostly class 1, so validation and
test disagree on which constant model is better: the best model must be the validation choice.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from params_yaml import section, write_params
from worlds import save_tiny_ast, write_prepared_and_cache, write_soundscape

from birdops.audio import load_audio
from birdops.contracts import Best, read_best, read_info, read_scoring
from birdops.evaluate import scoring as sc
from birdops.evaluate.selection import select_best
from birdops.features.frontend import build_frontend
from birdops.features.shards import load_split
from birdops.models.checkpoint import load_classifier
from birdops.scores import aggregate, scores
from birdops.windows import even_windows
from pipeline import evaluate as stage

pytestmark = pytest.mark.usefixtures("one_torch_thread")

LABELS = ("Alpha one", "Beta two", "Gamma three")
TONE_HZ = (1200.0, 2600.0, 5200.0)  # one tone per class, above the 500 Hz high-pass
FILE_RATE_HZ = 16000  # resampled to the front end's 22,050 Hz on load
CLIP_SECONDS = 1.0
# (split, label index) of each recording; val is mostly class 0, test mostly class 1
SPLIT_PLAN = [
    *[("train", k) for k in range(3)],
    *[("val", k) for k in (0, 0, 0, 1, 2)],
    *[("test", k) for k in (0, 1, 1, 1, 2)],
]
CORRUPT_ID = "XC99"  # a test recording whose file is not audio
# one 6 s soundscape per split: (start_s, end_s, class) of its tone calls, silence around them
SOUNDSCAPE_PLAN = {"val": [(0.5, 1.8, 0), (3.0, 4.5, 1)], "test": [(1.0, 2.5, 1), (4.0, 5.0, 2)]}


def write_recording(path: Path, label: int, seconds: float, rng: np.random.Generator) -> None:
    """Two 0.8 s calls of the class's tone, near the start and the end, in faint noise."""
    t = np.arange(round(seconds * FILE_RATE_HZ)) / FILE_RATE_HZ
    calls = ((t > 0.1) & (t < 0.9)) | ((t > seconds - 0.9) & (t < seconds - 0.1))
    wave = 0.3 * calls * np.sin(2 * np.pi * TONE_HZ[label] * t) + 0.01 * rng.normal(size=t.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), FILE_RATE_HZ)


def write_world(root: Path) -> None:
    """``raw/`` audio, ``prepared/`` manifest + labels and the ``lms/`` cache of the ``seed`` preset."""
    rng = np.random.default_rng(3)
    rows = []
    for i, (split, label) in enumerate(SPLIT_PLAN):
        seconds = 2.2 + 0.4 * (i % 4)
        local = f"audio/XC{i + 1}.wav"
        write_recording(root / "raw" / local, label, seconds, rng)
        rows.append((f"XC{i + 1}", local, LABELS[label], label, split, "rec", "A", seconds))
    (root / "raw" / "audio" / f"{CORRUPT_ID}.wav").write_bytes(b"this is not a wave file" * 20)
    rows.append((CORRUPT_ID, f"audio/{CORRUPT_ID}.wav", LABELS[2], 2, "test", "rec", "A", 3.0))
    write_prepared_and_cache(root, rows, LABELS, CLIP_SECONDS)
    for split, events in SOUNDSCAPE_PLAN.items():
        t = np.arange(6 * FILE_RATE_HZ) / FILE_RATE_HZ
        wave = 0.01 * rng.normal(size=t.shape)
        for start, end, label in events:
            wave += 0.3 * ((t >= start) & (t < end)) * np.sin(2 * np.pi * TONE_HZ[label] * t)
        found = [(start, end, LABELS[label]) for start, end, label in events]
        write_soundscape(root, f"SC-{split}", split, wave, FILE_RATE_HZ, found)


def save_model(folder: Path, variant: str, constant_class: int | None) -> None:
    """A tiny AST from the real factory; with ``constant_class`` its logits ignore the input."""
    save_tiny_ast(folder, variant, LABELS, CLIP_SECONDS, seed=11, constant_class=constant_class)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world")
    write_world(root)
    save_model(root / "models", "phase2b", None)
    save_model(root / "models", "baseline", 0)
    save_model(root / "models", "full", 1)
    return root


@pytest.fixture(scope="module")
def evaluated(world: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The evaluate stage run through ``pipeline.evaluate.main``; returns its ``--out`` folder."""
    workdir = tmp_path_factory.mktemp("stage")
    evaluate = {"window_seconds": None, "hop_seconds": 0.5, "batch_size": 4, "select_metric": "f1_macro"}
    write_params(workdir / "params.yaml", evaluate=evaluate)
    out = workdir / "metrics"
    models = [str(world / "models" / name) for name in ("phase2b", "baseline", "full")]
    argv = ["--models", *models, "--raw", str(world / "raw"), "--prepared", str(world / "prepared")]
    argv += ["--background", str(world / "background"), "--soundscapes", str(world / "soundscapes")]
    argv += ["--lms", str(world / "lms"), "--out", str(out)]
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)  # stages read params.yaml from the working directory
        assert stage.main(argv) == 0
    return out


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def details(evaluated: Path, variant: str) -> dict[str, Any]:
    return read_json(evaluated / "eval" / variant / "details.json")


VARIANTS = ("phase2b", "baseline", "full")


def test_headline_is_the_same_few_flat_keys_for_every_variant(evaluated: Path) -> None:
    """``<variant>.json`` (what ``dvc metrics show`` renders) holds the headline only: the same keys
    for each variant, flat, each the figure of the details it names."""
    expected = {
        "accuracy",
        "f1_macro",
        "f1_weighted",
        "map",
        "cmap",
        "false_alarms",
    }
    for variant in VARIANTS:
        headline = read_json(evaluated / f"{variant}.json")
        assert set(headline) == expected, variant
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in headline.values())
        found = details(evaluated, variant)
        assert headline["accuracy"] == found["test_clip"]["accuracy"]
        assert headline["f1_weighted"] == found["test_clip"]["f1_weighted"]
        assert headline["cmap"] == found["detection"]["cmap"]
        assert headline["false_alarms"] == found["detection"]["background_windows_flagged"]
    # best.json: the chosen variant and its validation value of the selection metric (f1_macro here)
    best = read_json(evaluated / "best.json")
    selection = read_json(evaluated / "eval" / "selection.json")
    assert best == {"variant": selection["variant"], "val_f1_macro": selection["value"]}
    assert read_best(evaluated / "best.json") == Best(selection["variant"], "f1_macro", selection["value"])


def test_tables_for_plots_follow_the_details(evaluated: Path) -> None:
    rows = list(csv.DictReader((evaluated / "eval" / "test_metrics.csv").open()))
    assert [r["variant"] for r in rows[::6]] == list(VARIANTS)  # six test figures per variant
    for row in rows:
        found = details(evaluated, row["variant"])
        name = row["metric"]
        assert float(row["value"]) == read_json(evaluated / f"{row['variant']}.json")[name]
        if name in ("accuracy", "f1_macro"):
            ci = found["test_clip_ci95"]
            assert (float(row["low"]), float(row["high"])) == (ci[f"{name}_low"], ci[f"{name}_high"])
        else:
            assert row["low"] == row["high"] == ""
    paired = list(csv.DictReader((evaluated / "eval" / "paired.csv").open()))
    comparisons = read_json(evaluated / "eval" / "comparisons.json")
    assert [(r["comparison"], r["metric"]) for r in paired] == [
        ("baseline - phase2b", "accuracy"),
        ("baseline - phase2b", "f1_macro"),
        ("full - baseline", "accuracy"),
        ("full - baseline", "f1_macro"),
    ]
    assert float(paired[2]["difference"]) == comparisons["full_vs_baseline"]["accuracy_diff"]
    assert float(paired[3]["high"]) == comparisons["full_vs_baseline"]["f1_macro_diff_high"]


def test_details_are_complete_and_consistent(world: Path, evaluated: Path) -> None:
    data = details(evaluated, "phase2b")
    levels = ("test_clip", "test_recording", "val_clip")
    sizes = {"n_test_clips", "n_test_recordings", "n_skipped_recordings", "n_val_clips"}
    detection = {"detection", "val_detection"}
    assert set(data) == {*levels, "test_clip_ci95", "test_recording_ci95", *sizes, *detection}
    for level in ("test_clip", "test_recording"):
        ci = data[f"{level}_ci95"]
        assert set(ci) == {"accuracy_low", "accuracy_high", "f1_macro_low", "f1_macro_high"}
        for metric in ("accuracy", "f1_macro"):
            assert ci[f"{metric}_low"] <= data[level][metric] <= ci[f"{metric}_high"]
    for level in levels:
        assert set(data[level]) == {"accuracy", "top5_accuracy", "f1_macro", "f1_weighted", "map"}
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in data[level].values())
        assert data[level]["top5_accuracy"] == 1.0  # 3 classes: top-5 is top-3

    # recompute clip accuracy from the saved model and the cache, independently of the evaluator
    model = load_classifier(world / "models" / "phase2b").model
    test = load_split(world / "lms", "seed", "test")
    with torch.no_grad():
        logits = model(torch.from_numpy(np.asarray(test.features, dtype=np.float32)))
    expected = float(np.mean(logits.argmax(dim=1).numpy() == test.labels))
    assert data["test_clip"]["accuracy"] == pytest.approx(expected, abs=1e-6)
    assert data["n_test_clips"] == len(test.labels) == 10  # two calls a recording, two clips
    assert CORRUPT_ID not in test.ids  # the cache failed it too
    assert data["n_val_clips"] == len(load_split(world / "lms", "seed", "val").labels)
    # the corrupt recording is skipped, logged and counted
    assert data["n_test_recordings"] == 5 and data["n_skipped_recordings"] == 1
    skipped = list(csv.DictReader((evaluated / "eval" / "phase2b" / "skipped.csv").open()))
    assert [row["id"] for row in skipped] == [CORRUPT_ID] and "cannot decode" in skipped[0]["reason"]


def test_constant_models_give_the_exact_expected_metrics(world: Path, evaluated: Path) -> None:
    test_labels = load_split(world / "lms", "seed", "test").labels
    for variant, k in (("baseline", 0), ("full", 1)):
        data = details(evaluated, variant)
        assert data["test_clip"]["accuracy"] == pytest.approx(np.mean(test_labels == k), abs=1e-6)
        # decodable test recordings have labels 0, 1, 1, 1, 2
        assert data["test_recording"]["accuracy"] == pytest.approx([0.2, 0.6][k])
        # a constant score column ranks nothing: AP of a class is its share of the samples
        shares = [np.mean(test_labels == c) for c in range(3)]
        assert data["test_clip"]["map"] == pytest.approx(np.mean(shares), abs=1e-5)


def test_generations_are_compared_on_the_same_clips(world: Path, evaluated: Path) -> None:
    """baseline always says class 0 and full always class 1: their paired difference is known."""
    found = read_json(evaluated / "eval" / "comparisons.json")
    assert set(found) == {"baseline_vs_phase2b", "full_vs_baseline"}
    labels = load_split(world / "lms", "seed", "test").labels
    row = found["full_vs_baseline"]
    assert row["accuracy_diff"] == pytest.approx(np.mean(labels == 1) - np.mean(labels == 0), abs=1e-6)
    assert row["accuracy_diff_low"] <= row["accuracy_diff"] <= row["accuracy_diff_high"]
    assert 0.0 <= row["accuracy_p_value"] <= 1.0 and row["n_test_recordings"] == 5
    within = row["accuracy_diff_low"] <= 0.0 <= row["accuracy_diff_high"]
    assert row["accuracy_verdict"] == ("within noise" if within else "better")


def test_bootstrap_resamples_whole_recordings() -> None:
    from birdops.evaluate import uncertainty

    groups = np.array(["a", "a", "a", "b", "c"])
    for sample in uncertainty.resample_indices(groups, 50, seed=1):
        drawn = groups[sample]
        assert len(set(drawn)) <= 3
        assert all(np.sum(drawn == g) % (3 if g == "a" else 1) == 0 for g in set(drawn))
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1] * 5)
    rec = np.repeat(np.arange(20), 2)
    same = uncertainty.paired(labels, labels, labels, rec, 3, 200, seed=0)
    assert same["accuracy"].value == 0.0 and same["accuracy"].within_noise and same["accuracy"].p_value == 1.0
    wrong = (labels + 1) % 3
    better = uncertainty.paired(wrong, labels, labels, rec, 3, 200, seed=0)["accuracy"]
    assert better.value == 1.0 and not better.within_noise and better.p_value == 0.0


def test_best_is_chosen_on_validation_not_test(evaluated: Path) -> None:
    summaries = {v: details(evaluated, v) for v in VARIANTS}
    val = {v: s["val_clip"]["f1_macro"] for v, s in summaries.items()}
    test = {v: s["test_clip"]["f1_macro"] for v, s in summaries.items()}
    # the constructed disagreement: baseline is better on validation, full on test
    assert val["baseline"] > val["full"] and test["full"] > test["baseline"]
    best = read_json(evaluated / "eval" / "selection.json")
    assert best["metric"] == "val_clip.f1_macro"
    assert best["candidates"] == pytest.approx(val)
    assert val[best["variant"]] == max(val.values()) and best["variant"] != "full"
    assert best["value"] == pytest.approx(val[best["variant"]])


def test_field_windows_calibration_and_thresholds(world: Path, evaluated: Path) -> None:
    """The test windows are the even windows of the test soundscape and test background recordings;
    the calibration and thresholds written for the export are the ones the metrics used."""
    frontend = build_frontend("seed")
    rate = frontend.spec.sample_rate_hz
    count = 0
    for path in [
        world / "soundscapes/test/SC-test.flac",
        *sorted((world / "background/audio").glob("BG[56].wav")),
    ]:
        windows, _ = even_windows(load_audio(path, rate), rate, CLIP_SECONDS, 0.5)
        count += len(windows)
    for variant in ("phase2b", "baseline", "full"):
        found = details(evaluated, variant)["detection"]
        assert found["n_windows"] == count
        assert 0.0 <= found["cmap"] <= 1.0 and 0.0 <= found["roc_auc"] <= 1.0
        assert 0.0 <= found["background_windows_flagged"] <= 1.0 and found["false_detections_per_hour"] >= 0
        assert found["background_hours"] > 0
        calibration = read_json(evaluated / "eval" / variant / "calibration.json")
        scoring = read_scoring(evaluated / "eval" / variant / "calibration.json", len(LABELS))
        assert scoring.activation == "softmax" and scoring.thresholds is not None
        assert list(scoring.thresholds) == calibration["thresholds"]
        assert set(calibration["choice"]["classes"]) == set(LABELS)
    # a constant model ranks nothing: its AP of each class is its share of positives, AUC one half
    assert details(evaluated, "baseline")["detection"]["roc_auc"] == pytest.approx(0.5)


def test_plot_and_table_files(evaluated: Path) -> None:
    folder = evaluated / "eval" / "baseline"
    for name in ("confusion.png", "per_class_f1.png"):
        assert (folder / name).read_bytes()[:4] == b"\x89PNG"
    per_class = list(csv.DictReader((folder / "per_class.csv").open()))
    assert [row["label"] for row in per_class] == list(LABELS)
    assert float(per_class[0]["recall"]) == 1.0 and float(per_class[1]["recall"]) == 0.0
    per_recording = list(csv.DictReader((folder / "per_class_recording.csv").open()))
    assert [int(row["support"]) for row in per_recording] == [1, 3, 1]
    confusion = list(csv.DictReader((folder / "confusion.csv").open()))
    assert len(confusion) == details(evaluated, "baseline")["n_test_clips"]
    assert {row["predicted"] for row in confusion} == {LABELS[0]}


def test_recording_scores_match_a_direct_computation(world: Path) -> None:
    saved = load_classifier(world / "models" / "phase2b")
    model, info = saved.model, saved.info
    frontend = build_frontend("seed")
    recordings = sc.read_recordings(world / "prepared", world / "raw", "test")
    params = section("evaluate", hop_seconds=0.4, batch_size=3)  # batches cross recording boundaries
    scored, skipped = sc.evaluate_recordings(model, frontend, info, recordings, params, torch.device("cpu"))
    assert [s.id for s in skipped] == [CORRUPT_ID]
    expected = []
    for recording in recordings[:-1]:  # the corrupt one is last
        wave = load_audio(recording.path, 22050)
        windows, _ = even_windows(wave, 22050, CLIP_SECONDS, 0.4)
        with torch.no_grad():
            logits = model(frontend(torch.from_numpy(windows)))
        expected.append(torch.softmax(logits, dim=1).mean(dim=0).numpy())
    np.testing.assert_allclose(scored.scores, np.stack(expected), atol=1e-5)
    np.testing.assert_array_equal(scored.labels, [r.label_index for r in recordings[:-1]])


def test_recording_scores_are_the_service_mean_of_window_scores() -> None:
    """Random logits stand in for a model's (the classifier passes its inputs through): each
    recording's score is :func:`birdops.scores.aggregate` of :func:`birdops.scores.scores`, and equals,
    bit for bit, the float64 running sum over windows divided by their count that evaluation
    computed before it used the service's functions (so the rounded metrics cannot move)."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        classes, recordings = int(rng.integers(2, 30)), int(rng.integers(1, 12))
        items = [
            (i, rng.normal(0.0, 4.0, (int(rng.integers(1, 40)), classes)).astype(np.float32))
            for i in range(recordings)
            if rng.random() > 0.2  # some recordings give no window (undecodable)
        ]
        batch_size = int(rng.integers(1, 20))
        for activation in ("softmax", "sigmoid", "softmax_background"):
            batches = sc.batch_windows(iter(items), batch_size)
            found, counts = sc.recording_scores(
                torch.nn.Identity(), batches, recordings, classes, torch.device("cpu"), activation
            )
            sums, expected_counts = np.zeros((recordings, classes)), np.zeros(recordings, dtype=np.int64)
            for index, logits in items:
                window_scores = scores(logits, activation)
                np.testing.assert_array_equal(found[index], aggregate(window_scores))
                for row in window_scores:  # the former arithmetic: a running float64 sum
                    sums[index] += row
                expected_counts[index] = len(logits)
            kept = expected_counts > 0
            np.testing.assert_array_equal(counts, expected_counts)
            np.testing.assert_array_equal(found[kept], sums[kept] / expected_counts[kept, None])
            assert not found[~kept].any()


def test_per_recording_joins_a_recording_split_across_batches() -> None:
    batches = [
        (np.array([[0.0], [0.1], [1.0]]), np.array([0, 0, 1])),
        (np.array([[1.1], [1.2], [4.0]]), np.array([1, 1, 4])),
        (np.array([[4.1]]), np.array([4])),
    ]
    found = [(index, rows[:, 0].tolist()) for index, rows in sc.per_recording(batches)]
    assert found == [(0, [0.0, 0.1]), (1, [1.0, 1.1, 1.2]), (4, [4.0, 4.1])]


def test_batch_windows_regroups_across_recordings() -> None:
    items = [(0, np.full((2, 4), 0.0)), (1, np.full((5, 4), 1.0)), (3, np.full((1, 4), 3.0))]
    batches = list(sc.batch_windows(iter(items), batch_size=3))
    assert [len(w) for w, _ in batches] == [3, 3, 2]
    owners = np.concatenate([o for _, o in batches])
    np.testing.assert_array_equal(owners, [0, 0, 1, 1, 1, 1, 1, 3])
    windows = np.concatenate([w for w, _ in batches])
    np.testing.assert_array_equal(windows[:, 0], owners.astype(float))


def test_select_best_uses_validation_metrics_only() -> None:
    def summary(val_f1: float, val_map: float, val_acc: float, test_f1: float) -> dict[str, Any]:
        return {
            "val_clip": {"f1_macro": val_f1, "map": val_map, "accuracy": val_acc},
            "test_clip": {"f1_macro": test_f1, "map": 1.0, "accuracy": 1.0},
        }

    summaries = {"a": summary(0.5, 0.2, 0.9, 0.9), "b": summary(0.7, 0.1, 0.1, 0.1)}
    best = select_best(summaries, "f1_macro")
    expected = {
        "variant": "b",
        "metric": "val_clip.f1_macro",
        "value": 0.7,
        "candidates": {"a": 0.5, "b": 0.7},
        "decided_by": "f1_macro",
    }
    assert best == expected
    assert select_best(summaries, "accuracy")["variant"] == "a"
    # a tie on the selection metric goes to the next validation metric, then to the first listed,
    # and the record says so
    tied = {"a": summary(0.5, 0.2, 0.9, 0.9), "b": summary(0.5, 0.3, 0.1, 0.1)}
    assert select_best(tied, "f1_macro")["variant"] == "b"
    decided = select_best(tied, "f1_macro")["decided_by"]
    assert decided == "tie on f1_macro between a, b: broken by val_clip.map"
    same = {"a": summary(0.5, 0.2, 0.9, 0.1), "b": summary(0.5, 0.2, 0.9, 0.9)}
    assert select_best(same, "f1_macro")["variant"] == "a"
    assert "equal on every tie-breaker" in select_best(same, "f1_macro")["decided_by"]
    zero = {"a": summary(0.0, 0.2, 0.1, 0.1), "b": summary(0.0, 0.3, 0.1, 0.1)}
    assert select_best(zero, "f1_macro")["decided_by"] == "order (every variant scores 0)"
    with pytest.raises(ValueError, match="no evaluated variant"):
        select_best({}, "map")


def test_mismatched_models_are_rejected(world: Path, tmp_path: Path) -> None:
    info = read_info(world / "models" / "phase2b")
    frontend = build_frontend("seed")
    with pytest.raises(ValueError, match="labels"):
        load_classifier(world / "models" / "phase2b", labels=("x", "y", "z"))
    spec = dataclasses.replace(frontend.spec, f_min_hz=300.0)  # the seed front end changed since training
    save_tiny_ast(tmp_path, "stale", LABELS, CLIP_SECONDS, seed=11, feature_spec=spec)
    with pytest.raises(ValueError, match="features whose settings differ"):
        load_classifier(tmp_path / "stale", labels=LABELS)
    with pytest.raises(ValueError, match=r"set evaluate\.window_seconds to null"):
        sc.window_seconds_for(info, frontend, section("evaluate", window_seconds=2.0))
    assert sc.window_seconds_for(info, frontend, section("evaluate", window_seconds=None)) == CLIP_SECONDS
