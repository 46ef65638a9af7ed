"""The background corpus (``birdops.data.background``) and how ``prepare`` screens and splits a
background folder (``birdops.data.prepare.prepare_background``), on real files written to disk."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from params_yaml import section

from birdops.contracts import BACKGROUND_INDEX
from birdops.data.background import (
    BEDS,
    generate_background,
    list_background,
    plan_background,
    render_background,
)
from birdops.data.metadata import DataError
from birdops.data.prepare import prepare_background

TINY = {"recordings": 12, "sites": 6, "min_recording_seconds": 1.0, "max_recording_seconds": 2.5}


def tiny_params(**changes: object) -> object:
    return section("data.background_synthetic", **(TINY | {"sample_rate_hz": 16000} | changes))


def digest(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def test_the_corpus_is_the_same_bytes_whatever_the_workers(tmp_path: Path) -> None:
    params = tiny_params()
    generate_background(params, 7, tmp_path / "one", workers=1)
    generate_background(params, 7, tmp_path / "two", workers=2)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    rows = list_background(tmp_path / "one")
    assert len(rows) == 12 and len({r.source for r in rows}) == 6
    assert all((tmp_path / "one" / r.local_path).is_file() for r in rows)


def test_every_bed_is_heard_and_levels_span_near_silence_to_loud() -> None:
    params = tiny_params(recordings=60, sites=len(BEDS))
    plans = plan_background(params, 7)
    assert {p.site.bed for p in plans} == set(BEDS)
    peaks = [float(np.max(np.abs(render_background(p)))) for p in plans]
    assert min(peaks) < 0.02 and max(peaks) > 0.3 and max(peaks) <= 0.9 + 1e-6
    assert any(p.bed_only for p in plans) and not all(p.bed_only for p in plans)


def test_prepare_splits_whole_sites_and_keeps_the_row_type(tmp_path: Path) -> None:
    generate_background(tiny_params(), 7, tmp_path, workers=1)
    rows, rejected = prepare_background(tmp_path, section("prepare", min_seconds=0.5))
    assert not rejected and len(rows) == 12
    assert {r.label for r in rows} == {""} and {r.label_index for r in rows} == {BACKGROUND_INDEX}
    by_split = {s: {r.rec for r in rows if r.split == s} for s in ("train", "val", "test")}
    assert all(by_split.values())
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"])
    assert not by_split["val"] & by_split["test"]


def write_wave(path: Path, wave: np.ndarray, rate: int = 16000) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, rate)


def test_a_folder_without_metadata_is_every_audio_file_its_first_folder_the_source(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for site in ("marsh", "road", "forest"):
        for k in range(2):
            write_wave(
                tmp_path / "audio" / site / f"{k}.wav", 0.1 * rng.standard_normal(16000).astype(np.float32)
            )
    write_wave(tmp_path / "audio" / "loose.flac", 0.1 * rng.standard_normal(16000).astype(np.float32))
    (tmp_path / "audio" / "notes.txt").write_text("not audio")
    rows = list_background(tmp_path)
    assert [r.id for r in rows] == [
        "forest/0.wav",
        "forest/1.wav",
        "loose.flac",
        "marsh/0.wav",
        "marsh/1.wav",
        "road/0.wav",
        "road/1.wav",
    ]
    assert {r.source for r in rows} == {"forest", "marsh", "road", "loose"}
    assert rows[0].local_path == "audio/forest/0.wav"


def test_bad_background_files_are_rejected_with_their_reason(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for site in ("a", "b", "c"):
        write_wave(tmp_path / "audio" / site / "ok.wav", 0.1 * rng.standard_normal(32000).astype(np.float32))
    write_wave(tmp_path / "audio" / "a" / "silent.wav", np.zeros(32000, dtype=np.float32))
    write_wave(tmp_path / "audio" / "b" / "short.wav", 0.1 * rng.standard_normal(4000).astype(np.float32))
    (tmp_path / "audio" / "c" / "html.mp3").write_text("<html>not found</html>")
    (tmp_path / "metadata.csv").write_text(
        "id,local_path,source\n"
        + "".join(f"{s},audio/{s}/ok.wav,{s}\n" for s in ("a", "b", "c"))
        + "s,audio/a/silent.wav,a\nshort,audio/b/short.wav,b\nh,audio/c/html.mp3,c\n"
        + "a,audio/a/ok.wav,a\nescape,../outside.wav,a\nmissing,audio/none.wav,b\n"
    )
    rows, rejected = prepare_background(tmp_path, section("prepare", min_seconds=1.0))
    # a silent file's header reads fine: the cache stage decodes it and lists it in failed.csv
    assert [r.id for r in rows] == ["a", "b", "c", "s"]
    reasons = {r.id: r.kind for r in rejected}
    assert reasons["short"] == "background_too_short"
    assert reasons["h"] == "background_audio_not_audio"
    assert reasons["escape"] == "background_bad_path"
    assert reasons["missing"] == "background_missing_file"
    assert [r.kind for r in rejected if r.id == "a"] == ["background_duplicate_id"]


def test_too_few_sources_or_no_recording_are_refused_naming_the_folder(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for k in range(4):
        write_wave(
            tmp_path / "audio" / "one-site" / f"{k}.wav", 0.1 * rng.standard_normal(16000).astype(np.float32)
        )
    with pytest.raises(DataError, match=r"1 source\(s\).*at least 3 sources"):
        prepare_background(tmp_path, section("prepare", min_seconds=0.5))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no background recording"):
        list_background(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metadata.csv").write_text("id,file\n1,x.wav\n")
    with pytest.raises(DataError, match="needs the column"):
        list_background(tmp_path / "bad")
