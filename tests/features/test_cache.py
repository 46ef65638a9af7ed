"""The feature cache on a tiny corpus of real audio files: layout, failures, workers, resumption."""

from __future__ import annotations

import csv
import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from params_yaml import section
from worlds import MANIFEST_COLUMNS, calls_wave, write_background

import birdops.features.cache as cache
from birdops.audio import load_audio
from birdops.contracts import read_manifest
from birdops.features.activity import choose_segments
from birdops.features.frontend import build_frontend
from birdops.features.shards import load_split, read_features_info
from birdops.mixing import mix_at_snr, noise_segment, spread_starts
from birdops.windows import clips_at

PARAMS = section(
    "lms_cache",
    presets=["seed", "mfcc", "ast"],
    clip_seconds=2.0,
    max_clips_per_recording=2,
    workers=1,
    shard_max_clips=3,
    background_mix={"copies": 0},  # this corpus has no background; see test_background_clips_and_noisy_copies
)
# id -> (file name, split, label index, what it is); the audio is written by `make_corpus`
CORPUS = {
    "1": ("a.wav", "train", 0, "6 s WAV at 22,050 Hz, stereo, a call at 3.5 s"),
    "2": ("b.flac", "train", 1, "9 s FLAC at 32 kHz, calls at 1 s and 6 s"),
    "3": ("c.mp3", "val", 0, "5 s MP3 at 44.1 kHz"),
    "4": ("d.ogg", "test", 1, "1.5 s OGG: shorter than a clip"),
    "5": ("e.wav", "train", 1, "WAV cut in the middle of its data: decodes to the first half"),
    "6": ("f.flac", "val", 1, "FLAC cut in the middle: the decoder fails"),
    "7": ("g.mp3", "train", 0, "random bytes"),
    "8": ("h.wav", "test", 0, "digital silence"),
    "9": ("missing.wav", "train", 1, "no such file"),
}
FAILED = {"6": "cannot decode audio", "7": "cannot decode audio", "8": "audio is silent", "9": "missing file"}


def make_corpus(root: Path) -> tuple[Path, Path]:
    """Write the audio files of ``CORPUS`` under ``root/raw`` and its manifest; return both paths."""
    raw = root / "raw"
    (raw / "audio").mkdir(parents=True)
    audio = raw / "audio"
    wave = calls_wave(6.0, 22050, [3.5], 1)
    sf.write(audio / "a.wav", np.stack([wave, 0.5 * wave], axis=1), 22050)
    sf.write(audio / "b.flac", calls_wave(9.0, 32000, [1.0, 6.0], 2), 32000)
    sf.write(audio / "c.mp3", calls_wave(5.0, 44100, [0.5], 3), 44100)
    sf.write(audio / "d.ogg", calls_wave(1.5, 32000, [0.3], 4), 32000)
    for name, subtype in (("e.wav", "PCM_16"), ("f.flac", "PCM_16")):
        full = root / name
        sf.write(full, calls_wave(6.0, 32000, [1.0, 4.5], 5), 32000, subtype=subtype)
        payload = full.read_bytes()
        (audio / name).write_bytes(payload[: len(payload) // 2])
    (audio / "g.mp3").write_bytes(np.random.default_rng(7).bytes(6000))
    sf.write(audio / "h.wav", np.zeros(3 * 16000, dtype=np.float32), 16000)
    manifest = root / "prepared" / "manifest.csv"
    manifest.parent.mkdir()
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        for rec_id, (name, split, label_index, _) in CORPUS.items():
            writer.writerow(
                [
                    rec_id,
                    f"audio/{name}",
                    f"Genus species{label_index}",
                    label_index,
                    split,
                    f"recordist {rec_id}",
                    "A",
                    5.0,
                ]
            )
    return raw, manifest


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """One uninterrupted run with one worker: ``(out dir, summary)``."""
    out = tmp_path_factory.mktemp("lms") / "lms"
    return out, cache.build_cache(*corpus, out, PARAMS)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_same_cache(a: Path, b: Path, presets: list[str]) -> None:
    """Same files, same index, same features up to one float16 rounding step."""
    assert (a / "failed.csv").read_text() == (b / "failed.csv").read_text()
    for preset in presets:
        names = sorted(p.name for p in (a / preset).iterdir())
        assert names == sorted(p.name for p in (b / preset).iterdir())
        assert (a / preset / "index.csv").read_text() == (b / preset / "index.csv").read_text()
        assert (a / preset / "features.json").read_text() == (b / preset / "features.json").read_text()
        for shard in (a / preset).glob("*.npy"):
            # batches are composed differently; float32 sums then differ in the last bit, which can
            # move a float16 value by one step (~4e-3 at |x| ~ 4)
            other = np.load(b / preset / shard.name).astype(np.float32)
            np.testing.assert_allclose(np.load(shard).astype(np.float32), other, atol=4e-3)


def test_layout_failures_and_summary(reference: tuple[Path, dict]) -> None:
    out, summary = reference
    assert sorted(p.name for p in out.iterdir()) == ["ast", "failed.csv", "mfcc", "seed"]  # no .work left
    failed = {row["id"]: row for row in read_csv(out / "failed.csv")}
    assert {i: row["reason"].split(":")[0] for i, row in failed.items()} == FAILED
    assert failed["6"]["local_path"] == "audio/f.flac" and str(out.parent) not in failed["7"]["reason"]
    shapes = {"seed": (128, 87), "mfcc": (40, 87), "ast": (128, 198)}  # 2 s clips
    for preset, (n_bins, n_frames) in shapes.items():
        folder = out / preset
        index = read_csv(folder / "index.csv")
        assert list(index[0]) == ["id", "split", "shard", "row", "label_index", "start_s"]
        assert {row["id"] for row in index} == {"1", "2", "3", "4", "5"}
        assert {row["id"]: row["split"] for row in index} == {i: CORPUS[i][1] for i in "12345"}
        shards = sorted(folder.glob("*.npy"))
        assert [p.name for p in shards] == ["test-000.npy", "train-000.npy", "train-001.npy", "val-000.npy"]
        for shard in shards:
            array = np.load(shard, mmap_mode="r")
            assert array.dtype == np.float16 and array.shape[1:] == (n_bins, n_frames) and len(array) <= 3
            rows = [r for r in index if r["shard"] == shard.name]
            assert [int(r["row"]) for r in rows] == list(range(len(array)))
        meta = json.loads((folder / "features.json").read_text())
        assert meta["spec"]["name"] == preset and meta["clip_seconds"] == 2.0
        assert (meta["n_bins"], meta["n_frames"]) == (n_bins, n_frames)
        info = read_features_info(folder)
        assert info.shape.features == (n_bins, n_frames) and info.activity == PARAMS.activity
    assert summary["recordings"] == {"manifest": 9, "cached": 5, "failed": 4}
    run = summary[cache.RUN_KEY]  # how the run went: kept apart from the results
    assert (run["processed_this_run"], run["reused_from_interrupted_run"]) == (9, 0)
    assert run["wall_seconds"] > 0 and run["files_per_second"] > 0
    assert summary["coverage_percent"] == pytest.approx(100 * 5 / 9, abs=0.01)
    reasons = {"audio is silent": 1, "cannot decode audio": 2, "missing file": 1}
    assert summary["failures_by_reason"] == reasons
    # the short OGG gives exactly one clip; train has at least one clip per call (a: 1, b: 2, e: 1)
    clips = summary["presets"]["seed"]["clips"]
    assert clips["test"] == 1 and clips["train"] >= 4 and clips["val"] >= 1
    assert summary["presets"]["ast"]["clips"] == clips and summary[cache.RUN_KEY]["workers"] == 1


@pytest.mark.parametrize("preset", ["seed", "ast"])
def test_load_split_returns_the_front_end_output_of_the_chosen_clips(
    corpus: tuple[Path, Path], reference: tuple[Path, dict], preset: str
) -> None:
    raw, _ = corpus
    out, _ = reference
    frontend = build_frontend(preset)
    rate_hz = frontend.spec.sample_rate_hz
    split = load_split(out, preset, "train")
    assert split.features.dtype == np.float16 and split.labels.dtype == np.int64
    assert len(split.shards) == 2 and len(split.features) == len(split.ids) == len(split.start_s)
    assert split.spec == frontend.spec and split.clip_seconds == 2.0
    for rec_id in dict.fromkeys(split.ids):
        rows = [i for i, r in enumerate(split.ids) if r == rec_id]
        wave = load_audio(raw / "audio" / CORPUS[rec_id][0], rate_hz)
        starts_s = choose_segments(wave, rate_hz, 2.0, 2, PARAMS.activity)
        np.testing.assert_allclose(split.start_s[rows], starts_s, atol=1e-6)
        assert set(split.labels[rows]) == {CORPUS[rec_id][2]}
        with torch.no_grad():
            expected = frontend(torch.from_numpy(clips_at(wave, rate_hz, starts_s, 2.0))).numpy()
        # float16 keeps 11 significant bits: |error| <= 2**-11 |x|, plus float32 batch effects
        np.testing.assert_allclose(split.features[rows].astype(np.float32), expected, rtol=1e-3, atol=1e-3)
    # recording 2 (9 s, calls at 1 s and 6 s): two clips, one over each call
    two = split.start_s[[i for i, r in enumerate(split.ids) if r == "2"]]
    assert len(two) == 2 and two[0] <= 1.0 <= two[0] + 1.4 and two[1] <= 6.0 <= two[1] + 1.4
    short = load_split(out, preset, "test")
    assert short.ids == ["4"] and short.start_s.tolist() == [0.0]  # short: one padded clip


def test_two_workers_give_the_same_cache(
    corpus: tuple[Path, Path], reference: tuple[Path, dict], tmp_path: Path
) -> None:
    params = PARAMS.model_copy(update={"workers": 2})
    summary = cache.build_cache(*corpus, tmp_path / "lms", params, chunk_recordings=2)
    assert summary[cache.RUN_KEY]["workers"] == 2 and summary["recordings"] == reference[1]["recordings"]
    assert_same_cache(reference[0], tmp_path / "lms", ["seed", "mfcc", "ast"])


def counting_loader(calls: list[str], crash_at: int | None = None) -> Callable[[Path, int], np.ndarray]:
    """``load_audio`` that records the files it decodes; raises ``KeyboardInterrupt`` on call ``crash_at``."""

    def load(path: Path, sample_rate_hz: int) -> np.ndarray:
        calls.append(Path(path).name)
        if crash_at is not None and len(calls) == crash_at:
            raise KeyboardInterrupt  # what a kill (Ctrl-C, or DVC stopping) looks like mid-run
        return load_audio(path, sample_rate_hz)

    return load


def test_an_interrupted_run_resumes_without_redoing_finished_recordings(
    corpus: tuple[Path, Path], reference: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "lms"
    first: list[str] = []
    monkeypatch.setattr(cache, "load_audio", counting_loader(first, crash_at=5))
    # chunks of 2 recordings, each decoded at 22,050 and 16,000 Hz: the crash hits the second chunk
    with pytest.raises(KeyboardInterrupt):
        cache.build_cache(*corpus, out, PARAMS, chunk_recordings=2)
    assert first == ["a.wav", "a.wav", "b.flac", "b.flac", "c.mp3"]
    assert not (out / "seed").exists() and len(list((out / ".work" / "seed").glob("*.npz"))) == 2
    second: list[str] = []
    monkeypatch.setattr(cache, "load_audio", counting_loader(second))
    summary = cache.build_cache(*corpus, out, PARAMS, chunk_recordings=2)
    decodable = {name for name, *_ in CORPUS.values()} - {"missing.wav"}
    assert sorted(set(second)) == sorted(decodable - {"a.wav", "b.flac"})  # finished ones not redone
    assert summary[cache.RUN_KEY]["processed_this_run"] == 7
    assert summary[cache.RUN_KEY]["reused_from_interrupted_run"] == 2
    assert_same_cache(reference[0], out, ["seed", "mfcc", "ast"])
    assert not (out / ".work").exists()


def test_partials_and_outputs_of_another_configuration_are_not_reused(
    corpus: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "lms"
    two_presets = PARAMS.model_copy(update={"presets": ["seed", "mfcc"]})
    cache.build_cache(*corpus, out, two_presets)
    first: list[str] = []
    monkeypatch.setattr(cache, "load_audio", counting_loader(first, crash_at=3))
    with pytest.raises(KeyboardInterrupt):  # leaves partials of 2 s clips behind
        cache.build_cache(*corpus, out, two_presets, chunk_recordings=2)
    assert len(list((out / ".work" / "seed").glob("*.npz"))) == 2
    shorter = PARAMS.model_copy(update={"presets": ["seed"], "clip_seconds": 1.5, "shard_max_clips": 100})
    second: list[str] = []
    monkeypatch.setattr(cache, "load_audio", counting_loader(second))
    cache.build_cache(*corpus, out, shorter)
    assert {"a.wav", "b.flac"} <= set(second)  # the 2 s partials were stale: recomputed
    assert sorted(p.name for p in out.iterdir()) == ["failed.csv", "seed"]  # mfcc removed, no .work
    shards = sorted(p.name for p in (out / "seed").glob("*.npy"))
    assert shards == ["test-000.npy", "train-000.npy", "val-000.npy"]  # one shard a split now
    assert load_split(out, "seed", "train").features.shape[1:] == (128, 65)


def test_background_clips_and_noisy_copies(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    """Background recordings give their own splits (clips spread over each, label -1); every train
    clip gets its noisy copies, each split row for row: the clip over a training background segment at
    a drawn SNR, a draw of its own per copy."""
    raw, manifest = corpus
    write_background(tmp_path, seconds=5.0)
    params = section(
        "lms_cache",
        presets=["seed"],
        clip_seconds=2.0,
        max_clips_per_recording=2,
        background_clips_per_recording=3,
        workers=1,
        background_mix={"copies": 2, "snr_db_range": [0.0, 10.0], "seed": 4},
    )
    out = tmp_path / "lms"
    background_csv = tmp_path / "prepared" / "background.csv"
    summary = cache.build_cache(
        raw, manifest, out, params, background_dir=tmp_path / "background", background_manifest=background_csv
    )
    assert summary["background_recordings"] == {"listed": 6, "cached": 6, "failed": 0}
    frontend = build_frontend("seed")
    rate = frontend.spec.sample_rate_hz
    background = read_manifest(background_csv)
    for split in ("train", "val", "test"):
        found = load_split(out, "seed", f"background-{split}")
        members = [r for r in background if r.split == split]
        assert set(found.ids) == {r.id for r in members} and set(found.labels.tolist()) == {-1}
        wave = load_audio(tmp_path / "background" / members[0].local_path, rate)
        assert found.start_s[: len(found.ids) // 2].tolist() == spread_starts(len(wave), rate, 2.0, 3)
    clean = load_split(out, "seed", "train")
    copies = [load_split(out, "seed", name) for name in ("train-mixed", "train-mixed2")]
    with open(out / "seed" / "index.csv", newline="") as index:
        assert "train-mixed3" not in {row["split"] for row in csv.DictReader(index)}
    for mixed in copies:
        assert mixed.ids == clean.ids and mixed.start_s.tolist() == clean.start_s.tolist()
        assert mixed.labels.tolist() == clean.labels.tolist()
        assert not np.array_equal(mixed.features, clean.features)
    assert not np.array_equal(copies[0].features, copies[1].features)
    # recompute recording 1's copies from the documented draws: copy after copy, clip after clip
    paths = sorted(r.local_path for r in background if r.split == "train")
    rng = np.random.default_rng([4, zlib.crc32(b"1")])
    wave = load_audio(raw / "audio" / "a.wav", rate)
    rows = [i for i, rec in enumerate(clean.ids) if rec == "1"]
    for mixed in copies:
        for row, clip in zip(rows, clips_at(wave, rate, clean.start_s[rows], 2.0), strict=True):
            noise = load_audio(tmp_path / "background" / paths[int(rng.integers(len(paths)))], rate)
            segment = noise_segment(noise, len(clip), rng)
            noisy = mix_at_snr(clip, segment, float(rng.uniform(0.0, 10.0)))
            with torch.no_grad():
                expected = frontend(torch.from_numpy(noisy[None])).numpy()[0]
            np.testing.assert_allclose(mixed.features[row].astype(np.float32), expected, rtol=1e-3, atol=1e-3)
    # another training background changes what a train clip's partial holds: an interrupted run's
    # partials of train recordings are then stale, those of the other recordings are not
    recordings = read_manifest(manifest)

    def stems() -> dict[str, str]:
        mix = cache._mix_plan(background, tmp_path / "background", params)
        return cache._fingerprints(recordings, ["seed"], raw, out, params, mix)["seed"]

    before = stems()
    (tmp_path / "background" / paths[0]).write_bytes((tmp_path / "background" / paths[1]).read_bytes())
    after = stems()
    changed = {r.id for r in recordings if before[r.id] != after[r.id]}
    assert changed == {r.id for r in recordings if r.split == "train"}


def test_noisy_copies_need_training_background(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    params = PARAMS.model_copy(update={"background_mix": section("lms_cache.background_mix", copies=3)})
    with pytest.raises(ValueError, match="copies is 3 but there is no training background recording"):
        cache.build_cache(*corpus, tmp_path / "lms", params)
