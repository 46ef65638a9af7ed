"""prepare: rejections with reasons, class minimum, grouped stratified splits, and the two stages."""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import yaml
from params_yaml import section

from birdops.config import SplitParams
from birdops.contracts import MANIFEST_COLUMNS
from birdops.data.metadata import COLUMNS, MetadataError, format_length, parse_length_seconds, write_metadata
from birdops.data.prepare import (
    OTHER_LABEL,
    DataError,
    class_splits,
    prepare_corpus,
    split_targets,
    summarize,
    write_prepared,
)
from pipeline import background as background_stage
from pipeline import corpus as corpus_stage
from pipeline import prepare as prepare_stage

ROOT = Path(__file__).resolve().parents[2]


def row(
    xc_id: str,
    label: str = "Turdus merula",
    rec: str = "Ann",
    q: str = "A",
    length: str = "0:12",
    path: str | None = None,
) -> dict[str, str]:
    genus, _, epithet = label.partition(" ")
    local = path if path is not None else f"audio/XC{xc_id}.mp3"
    return {
        "id": xc_id,
        "gen": genus,
        "sp": epithet,
        "rec": rec,
        "q": q,
        "length": length,
        "local_path": local,
    }


def write_raw(folder: Path, rows: Iterable[dict[str, str]], empty: Iterable[str] = ()) -> Path:
    """A raw folder: metadata.csv plus, per row, a real WAV file (1 kHz, as long as the row says, at
    least 0.3 s; prepare reads its header) under the row's name."""
    rows = list(rows)
    for r in rows:
        target = folder / r["local_path"]
        if r["local_path"] and ".." not in r["local_path"] and not r["local_path"].startswith("/"):
            target.parent.mkdir(parents=True, exist_ok=True)
            if r["id"] in empty:
                target.write_bytes(b"")
            else:
                write_noise(target, _seconds_or(r["length"], 12.0))
    write_metadata(folder / "metadata.csv", rows)
    return folder


def write_noise(path: Path, seconds: float, rate_hz: int = 1000) -> None:
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, round(max(0.3, seconds) * rate_hz))
    sf.write(path, noise.astype(np.float32), rate_hz, format="WAV", subtype="PCM_16")


def _seconds_or(length: str, default: float) -> float:
    try:
        return parse_length_seconds(length)
    except ValueError:
        return default


def class_rows(label: str, count: int, recordists: int, start: int) -> list[dict[str, str]]:
    return [row(str(start + i), label, rec=f"{label[:3]}-rec{i % recordists}") for i in range(count)]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_every_rejected_recording_has_a_reason(tmp_path: Path) -> None:
    good = class_rows("Turdus merula", 6, 3, 100) + class_rows("Parus major", 6, 3, 200)
    bad = [
        row("100", "Turdus merula"),  # duplicate id
        row("301", "Turdus merula", path="audio/missing.mp3"),
        row("302", "Turdus merula"),  # empty file
        row("303", "Mystery mystery"),
        row("304", "Turdus"),  # no epithet
        row("305", length="12 s"),
        row("306", q="E"),
        row("307", q="no score"),
        row("308", q="Z"),
        row("309", length="0:00"),
        row("310", length="16:00"),
        row("311", path="../outside.mp3"),
        row("312", path="audio/XC100.mp3"),  # the same file as recording 100
        row("", path="audio/XC313.mp3"),
    ]
    raw = write_raw(tmp_path / "raw", good + bad, empty={"302"})
    (raw / "audio" / "missing.mp3").unlink()
    prepared = prepare_corpus(
        raw, section("prepare", min_quality="D", max_seconds=900.0, split={"test_fraction": 0.15})
    )
    write_prepared(prepared, tmp_path / "out")
    rejected = read_csv(tmp_path / "out" / "rejected.csv")
    kinds = [(r["id"], r["reason"].split(":")[0]) for r in rejected]
    assert kinds == [
        ("100", "duplicate_id"),
        ("301", "missing_file"),
        ("302", "empty_file"),
        ("303", "unknown_label"),
        ("304", "unknown_label"),
        ("305", "bad_length"),
        ("306", "low_quality"),
        ("307", "low_quality"),
        ("308", "bad_quality"),
        ("309", "too_short"),
        ("310", "too_long"),
        ("311", "bad_path"),
        ("312", "duplicate_file"),
        ("", "missing_id"),
    ]
    assert all(len(r["reason"]) > len(r["reason"].split(":")[0]) + 5 for r in rejected)
    assert "no score" in rejected[7]["reason"] and "0 bytes" in rejected[2]["reason"]
    manifest = read_csv(tmp_path / "out" / "manifest.csv")
    assert sorted(r["id"] for r in manifest) == sorted(r["id"] for r in good)
    summary = summarize(prepared)
    assert summary["rejected_by_reason"]["low_quality"] == 2 and summary["rejected"] == len(bad)
    assert summary["recordings"] == len(good) + len(bad) and summary["accepted"] == len(good)


def test_missing_columns_name_the_file_and_the_columns(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("id,gen,sp,rec,local_path\n1,Turdus,merula,Ann,a.mp3\n")
    with pytest.raises(MetadataError) as caught:
        prepare_corpus(tmp_path, section("prepare", split={"test_fraction": 0.15}))
    message = str(caught.value)
    assert str(tmp_path / "metadata.csv") in message and "q, length" in message
    with pytest.raises(MetadataError, match="cannot read"):
        prepare_corpus(tmp_path / "nowhere", section("prepare", split={"test_fraction": 0.15}))


@pytest.mark.parametrize(
    ("count", "expected"),
    [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)), (4, (2, 1, 1)), (10, (6, 2, 2)), (100, (70, 15, 15))],
)
def test_split_targets(count: int, expected: tuple[int, int, int]) -> None:
    targets = split_targets(count, SplitParams(val_fraction=0.15, test_fraction=0.15))
    assert (targets["train"], targets["val"], targets["test"]) == expected


def test_split_targets_keep_one_train_recording_with_large_fractions() -> None:
    targets = split_targets(4, SplitParams(val_fraction=0.45, test_fraction=0.45))
    assert (
        targets["train"] >= 1 and targets["val"] >= 1 and targets["test"] >= 1 and sum(targets.values()) == 4
    )


SPLIT_CLASSES = {  # label: (recordings, recordists)
    "Turdus merula": (60, 12),
    "Parus major": (25, 5),
    "Sylvia atricapilla": (9, 9),
    "Erithacus rubecula": (5, 2),  # too few recordists for three splits: split by recording
    "Fringilla coelebs": (3, 3),
    "Regulus regulus": (2, 1),
}


def split_corpus(folder: Path, seed: int = 13) -> tuple[list[dict[str, str]], dict[str, Any]]:
    rows = []
    for k, (label, (count, recordists)) in enumerate(SPLIT_CLASSES.items()):
        rows += class_rows(label, count, recordists, start=1000 * (k + 1))
    raw = write_raw(folder / "raw", rows)
    prepared = prepare_corpus(raw, section("prepare", seed=seed, split={"test_fraction": 0.15}))
    write_prepared(prepared, folder / f"out{seed}")
    return read_csv(folder / f"out{seed}" / "manifest.csv"), summarize(prepared)


def test_splits_are_stratified_grouped_and_complete(tmp_path: Path) -> None:
    manifest, summary = split_corpus(tmp_path)
    assert tuple(manifest[0]) == MANIFEST_COLUMNS
    assert len({r["id"] for r in manifest}) == len(manifest) == sum(n for n, _ in SPLIT_CLASSES.values())
    splits: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))  # label -> split -> recs
    counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in manifest:
        splits[r["label"]][r["split"]].add(r["rec"])
        counts[r["label"]][r["split"]] += 1
    for label, (count, recordists) in SPLIT_CLASSES.items():
        if count >= 3:
            assert all(counts[label][s] >= 1 for s in ("train", "val", "test")), label
        if recordists >= 3:  # enough recordists: no recordist in two splits of the class
            by_split = splits[label]
            assert not (
                by_split["train"] & by_split["val"]
                or by_split["train"] & by_split["test"]
                or by_split["val"] & by_split["test"]
            ), label
    assert dict(counts["Regulus regulus"]) == {"train": 1, "test": 1}
    assert 0.6 <= counts["Turdus merula"]["train"] / 60 <= 0.8
    assert summary["recordist_disjoint_classes"] == 4
    # the classes with too few recordists are named as split by recording
    assert summary["recording_grouped_classes"] == ["Erithacus rubecula", "Regulus regulus"]
    assert "per_class" not in summary  # per-class tables stay out of the metrics, with the data
    table = json.loads((tmp_path / "out13" / "class_splits.json").read_text())
    assert table["Erithacus rubecula"] == {"train": 3, "val": 1, "test": 1}
    assert sum(summary["splits"].values()) == len(manifest)


def test_splits_are_deterministic_under_the_seed(tmp_path: Path) -> None:
    first, _ = split_corpus(tmp_path / "a", seed=13)
    again, _ = split_corpus(tmp_path / "b", seed=13)
    other, _ = split_corpus(tmp_path / "c", seed=14)
    assert first == again
    assert [r["split"] for r in first] != [r["split"] for r in other]


def test_labels_are_sorted_and_indexed(tmp_path: Path) -> None:
    manifest, _ = split_corpus(tmp_path)
    labels = json.loads((tmp_path / "out13" / "labels.json").read_text())
    assert labels == sorted(SPLIT_CLASSES)
    assert all(labels[int(r["label_index"])] == r["label"] for r in manifest)
    assert all(float(r["length_s"]) == parse_length_seconds(format_length(12)) for r in manifest)


@pytest.mark.parametrize("policy", ["drop", "merge"])
def test_small_classes_are_dropped_or_merged(tmp_path: Path, policy: str) -> None:
    rows = class_rows("Turdus merula", 6, 3, 100) + class_rows("Parus major", 6, 3, 200)
    rows += class_rows("Sylvia borin", 2, 2, 300) + class_rows("Sylvia curruca", 1, 1, 400)
    raw = write_raw(tmp_path, rows)
    prepared = prepare_corpus(
        raw, section("prepare", min_per_class=3, small_classes=policy, split={"test_fraction": 0.15})
    )
    summary = summarize(prepared)
    assert summary["small_classes"] == {"policy": policy, "classes": {"Sylvia borin": 2, "Sylvia curruca": 1}}
    if policy == "drop":
        assert prepared.labels == ["Parus major", "Turdus merula"]
        assert [r.kind for r in prepared.rejected] == ["small_class"] * 3
    else:
        assert prepared.labels == ["Parus major", "Turdus merula", OTHER_LABEL]
        assert class_splits(prepared)[OTHER_LABEL] == {"train": 1, "val": 1, "test": 1}
        assert not prepared.rejected


def test_too_few_classes_is_an_error(tmp_path: Path) -> None:
    raw = write_raw(tmp_path, [*class_rows("Turdus merula", 6, 3, 100), row("9", "Parus major", q="E")])
    with pytest.raises(ValueError, match="1 class"):
        prepare_corpus(raw, section("prepare", split={"test_fraction": 0.15}))


# ------------------------------------------------------------------------------------- the stages
@pytest.fixture
def tiny_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory whose params.yaml is the real one with a tiny synthetic corpus."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    tiny = {
        "species": 4,
        "recordings": 16,
        "recordists": 4,
        "min_recording_seconds": 1.0,
        "max_recording_seconds": 2.0,
        "sample_rate_hz": 16000,
        "corrupt_files": 2,
    }
    params["data"]["synthetic"].update(tiny)
    tiny_background = {
        "recordings": 6,
        "sites": 3,
        "min_recording_seconds": 1.0,
        "max_recording_seconds": 2.0,
    }
    params["data"]["background_synthetic"].update(tiny_background, sample_rate_hz=16000)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_corpus_and_prepare_stages_end_to_end(tiny_repo: Path) -> None:
    assert corpus_stage.main(["--out", "data/raw"]) == 0
    metadata = read_csv(tiny_repo / "data/raw/metadata.csv")
    assert len(metadata) == 16 and tuple(metadata[0]) == COLUMNS
    assert background_stage.main(["--out", "data/background"]) == 0
    assert len(read_csv(tiny_repo / "data/background/metadata.csv")) == 6
    args = ["--raw", "data/raw", "--background", "data/background", "--out", "data/prepared"]
    assert prepare_stage.main([*args, "--summary", "metrics/data.json"]) == 0
    manifest = read_csv(tiny_repo / "data/prepared/manifest.csv")
    rejected = read_csv(tiny_repo / "data/prepared/rejected.csv")
    assert len(manifest) + len(rejected) == 16
    background = read_csv(tiny_repo / "data/prepared/background.csv")
    assert len(background) == 6 and {row["label_index"] for row in background} == {"-1"}
    # whole sites to one split: train, val and test background come from different places
    sites = {
        split: {r["rec"] for r in background if r["split"] == split} for split in ("train", "val", "test")
    }
    assert all(sites.values()) and not (sites["train"] & sites["test"] or sites["val"] & sites["test"])
    summary = json.loads((tiny_repo / "metrics/data.json").read_text())
    assert summary["accepted"] == len(manifest) and summary["classes"] == len(
        json.loads((tiny_repo / "data/prepared/labels.json").read_text())
    )


def test_stages_fail_clearly_on_bad_input(
    tiny_repo: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    args = ["--raw", "data/raw", "--background", "data/background", "--out", "data/prepared"]
    args += ["--summary", "metrics/data.json"]
    with caplog.at_level(logging.ERROR):
        assert prepare_stage.main(args) == 1
    assert "data/raw/metadata.csv" in caplog.text and not (tiny_repo / "metrics/data.json").exists()


def test_splits_that_cannot_train_are_refused_with_what_to_change(tmp_path: Path) -> None:
    """Every class with two recordings (e.g. min_quality A on a small download): no validation split."""
    rows = []
    for k, label in enumerate(["Turdus merula", "Parus major", "Regulus regulus"]):
        rows += class_rows(label, 2, 1, start=1000 * (k + 1))
    raw = write_raw(tmp_path / "raw", rows)
    with pytest.raises(DataError, match=r"the val split\(s\) would be empty.*prepare\.min_per_class"):
        prepare_corpus(raw, section("prepare", split={"test_fraction": 0.15}))
