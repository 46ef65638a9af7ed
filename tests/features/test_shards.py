"""The cache's files: ``features.json`` round trips and is checked against its spec, a split over
several shards is read row by row (never concatenated, never mapped), the shards' bytes, and memory
that does not grow with the split."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from worlds import features_info

import birdops.features.shards as shards
from birdops.contracts import ManifestRow
from birdops.features.frontend import spec_for

ROW_SHAPE = (128, 173)  # a 4 s clip of the seed preset


def write_split(folder: Path, n_shards: int, clips_per_shard: int, seed: int = 0) -> np.ndarray:
    """``n_shards`` train shards of random float16 clips in the cache's layout; returns every clip."""
    (folder / "seed").mkdir(parents=True)
    rng = np.random.default_rng(seed)
    rows, clips = [], []
    for s in range(n_shards):
        shard = rng.standard_normal((clips_per_shard, *ROW_SHAPE), dtype=np.float32).astype(np.float16)
        np.save(folder / "seed" / f"train-{s:03d}.npy", shard)
        clips.append(shard)
        for r in range(clips_per_shard):
            rows.append([f"{s}-{r}", "train", f"train-{s:03d}.npy", r, (s + r) % 5, 0.5 * r])
    with (folder / "seed" / "index.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(shards.INDEX_COLUMNS)
        writer.writerows(rows)
    shards.write_features_info(folder / "seed", features_info(spec_for("seed"), 4.0))
    return np.concatenate(clips)


def test_features_json_round_trips_with_the_clip_shape_after_the_clip_length(tmp_path: Path) -> None:
    info = features_info(spec_for("ast"), 4.0)
    shards.write_features_info(tmp_path, info)
    text = (tmp_path / "features.json").read_text()
    data = json.loads(text)
    assert list(data)[1:5] == ["clip_seconds", "clip_samples", "n_bins", "n_frames"]
    assert (data["clip_samples"], data["n_bins"], data["n_frames"]) == (64000, 128, 398)
    assert text == json.dumps(data, indent=2) + "\n"  # ASCII, two-space indent, one newline
    assert shards.read_features_info(tmp_path) == info
    (tmp_path / "features.json").write_text(json.dumps({**data, "n_frames": 397}))
    with pytest.raises(ValueError, match=r"features\.json: .* not its spec's for a 4\.0 s clip"):
        shards.read_features_info(tmp_path)
    (tmp_path / "features.json").write_text(json.dumps({**data, "extra": 1}))
    with pytest.raises(ValueError, match=r"unknown \['extra'\]"):
        shards.read_features_info(tmp_path)


def test_a_split_of_several_shards_reads_any_rows(tmp_path: Path) -> None:
    expected = write_split(tmp_path, n_shards=3, clips_per_shard=4)
    split = shards.load_split(tmp_path, "seed", "train")
    clips = split.features
    assert isinstance(clips, shards.ShardedClips) and len(split.shards) == 3
    assert clips.shape == (12, *ROW_SHAPE) and clips.dtype == np.float16 and len(clips) == 12
    np.testing.assert_array_equal(clips[5], expected[5])
    np.testing.assert_array_equal(clips[-1], expected[-1])
    np.testing.assert_array_equal(clips[2:9], expected[2:9])  # across two shard boundaries
    np.testing.assert_array_equal(clips[::5], expected[::5])
    rows = [11, 0, 3, 4, 5, 7]
    np.testing.assert_array_equal(clips[rows], expected[rows])
    np.testing.assert_array_equal(clips[np.array(rows)], expected[rows])
    np.testing.assert_array_equal(np.asarray(clips, dtype=np.float32), expected.astype(np.float32))
    assert clips[3:3].shape == (0, *ROW_SHAPE)
    assert split.labels.tolist() == [(s + r) % 5 for s in range(3) for r in range(4)]
    assert split.ids[4] == "1-0" and split.start_s[5] == 0.5
    for bad in (12, -13, [0, 12]):
        with pytest.raises(IndexError):
            clips[bad]


def test_an_index_that_disagrees_with_its_shards_is_refused(tmp_path: Path) -> None:
    write_split(tmp_path, n_shards=2, clips_per_shard=3)
    index = tmp_path / "seed" / "index.csv"
    lines = index.read_text().splitlines()
    index.write_text("\n".join(lines[:-1]) + "\n")  # the last shard lists 2 of its 3 rows
    with pytest.raises(ValueError, match="lists 2 rows, the shard holds 3"):
        shards.load_split(tmp_path, "seed", "train")


def test_a_fortran_ordered_shard_is_refused(tmp_path: Path) -> None:
    write_split(tmp_path, n_shards=1, clips_per_shard=3)
    shard = tmp_path / "seed" / "train-000.npy"
    np.save(shard, np.asfortranarray(np.load(shard)))
    with pytest.raises(ValueError, match="Fortran-ordered"):
        shards.load_split(tmp_path, "seed", "train")


def shards_of(clips: list[np.ndarray], shard_max: int, tmp_path: Path) -> dict[str, bytes]:
    recording = ManifestRow("7", "audio/XC7.mp3", "A b", 0, "train", "r", "A", 9.0)
    out = io.StringIO()
    index = csv.DictWriter(out, fieldnames=shards.INDEX_COLUMNS)
    items = iter([(recording, 0.25 * i, clip) for i, clip in enumerate(clips)])
    assert shards.write_shards(tmp_path, "train", items, len(clips), shard_max, index) == len(clips)
    return {p.name: p.read_bytes() for p in sorted(tmp_path.glob("*.npy"))}


def test_shards_are_written_clip_by_clip_with_the_bytes_np_save_writes(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    clips = list(rng.standard_normal((7, *ROW_SHAPE), dtype=np.float32).astype(np.float16))
    written = shards_of(clips, 3, tmp_path)
    assert list(written) == ["train-000.npy", "train-001.npy", "train-002.npy"]
    for n, name in enumerate(written):
        expected = io.BytesIO()
        np.save(expected, np.stack(clips[3 * n : 3 * n + 3]))
        assert written[name] == expected.getvalue()


def test_a_clip_laid_out_in_fortran_order_is_written_c_ordered(tmp_path: Path) -> None:
    """The ast front end's clips come transposed; ``np.save`` of one such clip wrote a Fortran-ordered
    shard, in which a clip's values lie all over the file."""
    clip = np.asfortranarray(np.arange(128 * 398, dtype=np.float16).reshape(128, 398))
    shards_of([clip], 3, tmp_path)
    shard = np.load(tmp_path / "train-000.npy")
    assert shard.flags.c_contiguous and not np.isfortran(shard)
    np.testing.assert_array_equal(shard[0], clip)


# the child: iterate a split as training, its fingerprint and evaluation do; print its peak RSS (KiB)
PEAK_CHILD = """
import re, sys
import numpy as np, torch
from birdops.features.shards import load_split
from birdops.train.data import EpochSampler, FeatureDataset
from torch.utils.data import DataLoader

split = load_split(sys.argv[1], "seed", "train")
dataset = FeatureDataset([split], int(max(split.labels)) + 1)
loader = DataLoader(dataset, batch_size=32, sampler=EpochSampler(split.labels, 0, shuffle=True))
total = 0.0
for _ in range(2):  # two epochs in a shuffled order: every shard, again and again
    for features, _labels, _weights in loader:
        total += float(features[:, 0, 0].sum())
for start in range(0, len(split.features), 32):  # evaluation's order
    total += float(np.asarray(split.features[start : start + 32], dtype=np.float32)[:, 0, 0].sum())
print(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1), len(split.labels))
"""


def peak_rss_mib(folder: Path) -> tuple[float, int]:
    done = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, str(folder)], capture_output=True, text=True, check=True
    )
    peak_kib, clips = done.stdout.split()
    return int(peak_kib) / 1024, int(clips)


@pytest.mark.slow
def test_reading_a_split_holds_the_same_memory_for_n_and_4n_shards(tmp_path: Path) -> None:
    """Peak RSS of a process that reads every clip of a split (training's shuffled loader for two
    epochs, then evaluation's batches) does not grow with the split: 4 shards of 128 clips (45 MB
    of features) against 16 x 128 (181 MB). Concatenated in memory (the reader before), the larger
    split peaked 131 MB higher; read through memory maps, whose pages count in RSS once touched, 65 MB."""
    write_split(tmp_path / "n", n_shards=4, clips_per_shard=128)
    write_split(tmp_path / "4n", n_shards=16, clips_per_shard=128)
    small, small_clips = peak_rss_mib(tmp_path / "n")
    large, large_clips = peak_rss_mib(tmp_path / "4n")
    assert (small_clips, large_clips) == (512, 2048)
    print(f"peak RSS: {small:.0f} MiB for 4 shards, {large:.0f} MiB for 16")
    assert large - small < 16, (small, large)
