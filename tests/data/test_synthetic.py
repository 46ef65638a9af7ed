"""The embedded corpus: schema, determinism, long tail, voices, backgrounds, corrupt files."""

from __future__ import annotations

import csv
import hashlib
import os
import struct
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from params_yaml import section

from birdops.audio import AudioError, decode_bytes, load_audio
from birdops.data.encoding import encode_audio, ogg_crc
from birdops.data.metadata import COLUMNS, QUALITY_GRADES, parse_also, parse_length_seconds, validate_rows
from birdops.data.noise import colored_noise
from birdops.data.synthetic import (
    CorpusPlan,
    class_sizes,
    generate_corpus,
    plan_corpus,
)
from birdops.data.voices import Performance, render_voice

TINY = section(
    "data.synthetic",
    species=4,
    recordings=12,
    recordists=3,
    min_recording_seconds=1.0,
    max_recording_seconds=2.5,
    sample_rate_hz=16000,
    confusable_pairs=1,
    formats={"mp3": 0.25, "wav": 0.25, "flac": 0.25, "ogg": 0.25},
    corrupt_files=2,
)


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny corpus generated twice: in-process and with a pool of two workers."""
    first, second = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    generate_corpus(TINY, seed=3, out_dir=first, workers=1)
    generate_corpus(TINY, seed=3, out_dir=second, workers=2)
    return first, second


@pytest.fixture(scope="module")
def default_plan() -> CorpusPlan:
    return plan_corpus(section("data.synthetic"), seed=7)


def test_generation_is_byte_for_byte_deterministic(corpora: tuple[Path, Path]) -> None:
    first, second = corpora
    assert (first / "metadata.csv").read_bytes() == (second / "metadata.csv").read_bytes()
    hashes = file_hashes(first / "audio")
    assert hashes == file_hashes(second / "audio")
    assert {name.rsplit(".", 1)[1] for name in hashes} == {"wav", "flac", "mp3", "ogg"}
    assert len(hashes) == TINY.recordings


def test_another_seed_gives_another_corpus(tmp_path: Path, corpora: tuple[Path, Path]) -> None:
    generate_corpus(TINY, seed=4, out_dir=tmp_path, workers=1)
    assert read_rows(tmp_path) != read_rows(corpora[0])


def test_metadata_is_the_xeno_canto_schema_and_matches_the_audio(corpora: tuple[Path, Path]) -> None:
    folder = corpora[0]
    with (folder / "metadata.csv").open(newline="") as handle:
        assert tuple(next(csv.reader(handle))) == COLUMNS
    rows = read_rows(folder)
    assert validate_rows(rows, folder) == []
    corrupt = 0
    for row in rows:
        assert row["local_path"] == f"audio/XC{row['id']}.{row['file-name'].rsplit('.', 1)[1]}"
        assert row["file"] == f"https://xeno-canto.org/{row['id']}/download"
        assert row["q"] in (*QUALITY_GRADES, "no score")
        assert row["type"] in ("song", "call") and row["smp"] == "16000" and row["group"] == "birds"
        try:
            wave = load_audio(folder / row["local_path"], TINY.sample_rate_hz)
        except AudioError:
            corrupt += 1
            continue
        assert abs(len(wave) / TINY.sample_rate_hz - parse_length_seconds(row["length"])) <= 0.6
    assert corrupt == TINY.corrupt_files


def test_corrupt_files_break_in_different_ways(tmp_path: Path) -> None:
    params = TINY.model_copy(update={"recordings": 16, "corrupt_files": 4})
    summary = generate_corpus(params, seed=5, out_dir=tmp_path, workers=1)
    assert sorted(summary.corrupt.values()) == ["header_only_wav", "random_bytes", "silent", "truncated_mp3"]
    rows = {row["id"]: row for row in read_rows(tmp_path)}
    messages = []
    for xc_id in summary.corrupt:
        with pytest.raises(AudioError) as caught:
            load_audio(tmp_path / rows[xc_id]["local_path"], 16000)
        messages.append(str(caught.value))
    assert any("silent" in m for m in messages) and any("no audio samples" in m for m in messages)


def test_regenerating_removes_stale_files(tmp_path: Path) -> None:
    small = TINY.model_copy(update={"corrupt_files": 0, "formats": {"wav": 1.0}})
    generate_corpus(small, seed=1, out_dir=tmp_path, workers=1)
    (tmp_path / "audio" / "XC1.mp3").write_bytes(b"left over")
    summary = generate_corpus(small, seed=2, out_dir=tmp_path, workers=1)
    listed = {row["local_path"].split("/")[1] for row in read_rows(tmp_path)}
    assert {p.name for p in (tmp_path / "audio").iterdir()} == listed
    assert summary.removed_stale == 1 + small.recordings  # the stray file and the first corpus's files


def test_class_sizes_are_long_tailed_with_defaults(default_plan: CorpusPlan) -> None:
    sizes = np.array(sorted(Counter(p.species for p in default_plan.recordings).values()))
    assert len(sizes) == 20 and sizes.sum() == 360
    assert sizes.min() == 2
    assert sizes.max() > 10 * np.median(sizes)


@pytest.mark.parametrize(
    ("species", "recordings", "exponent"), [(20, 360, 1.0), (4, 28, 1.0), (89, 11075, 0.3), (10, 100, 0.0)]
)
def test_class_sizes_add_up_and_keep_two_per_class(species: int, recordings: int, exponent: float) -> None:
    sizes = class_sizes(species, recordings, exponent)
    assert sizes.sum() == recordings and sizes.min() >= 2
    assert np.all(np.diff(sizes) <= 0)  # largest first
    if exponent > 0:
        assert sizes.min() == 2
    else:
        assert sizes.max() - sizes.min() <= 1


def test_report_scale_preset_is_expressible_in_params() -> None:
    preset = section(
        "data.synthetic",
        species=89,
        recordings=11075,
        recordists=1500,
        max_recording_seconds=60.0,
        long_tail_exponent=0.3,
    )
    sizes = class_sizes(preset.species, preset.recordings, preset.long_tail_exponent)
    assert sizes.min() == 2 and sizes.max() > 200 and round(sizes.mean()) == 124


def test_recordists_are_shared_and_record_several_times(default_plan: CorpusPlan) -> None:
    per_recordist = Counter(row["rec"] for row in default_plan.rows)
    species_per_recordist = defaultdict(set)
    for row in default_plan.rows:
        species_per_recordist[row["rec"]].add((row["gen"], row["sp"]))
    assert len(per_recordist) <= 60
    assert sum(per_recordist.values()) / len(per_recordist) >= 3
    assert max(len(s) for s in species_per_recordist.values()) >= 5


def test_confusable_pairs_are_congeners_with_close_voices(default_plan: CorpusPlan) -> None:
    sisters = [(i, s.sister) for i, s in enumerate(default_plan.species) if s.sister is not None]
    assert len(sisters) == 2 * 3
    for a, b in sisters:
        first, second = default_plan.species[a], default_plan.species[b]
        assert first.name.genus == second.name.genus and first.name.epithet != second.name.epithet
        assert first.voice.shape == second.voice.shape
        assert 0.88 < first.voice.low_hz / second.voice.low_hz < 1.14
        assert first.voice.low_hz != second.voice.low_hz


def test_background_species_are_other_species_named_in_also(default_plan: CorpusPlan) -> None:
    labels = {f"{row['gen']} {row['sp']}" for row in default_plan.rows}
    with_also = [row for row in default_plan.rows if row["also"]]
    assert 0.25 < len(with_also) / len(default_plan.rows) < 0.55
    for row in with_also:
        names = parse_also(row["also"])
        assert names and set(names) <= labels and f"{row['gen']} {row['sp']}" not in names


def test_quality_grade_follows_snr(default_plan: CorpusPlan) -> None:
    snr_by_grade = defaultdict(list)
    for plan, row in zip(default_plan.recordings, default_plan.rows, strict=True):
        snr_by_grade[row["q"]].append(plan.snr_db)
    means = [np.mean(snr_by_grade[g]) for g in QUALITY_GRADES]
    assert means == sorted(means, reverse=True)
    lows = [p.snr_db for p in default_plan.recordings]
    assert min(lows) >= -5.0 and max(lows) <= 30.0


def test_formats_follow_their_shares(default_plan: CorpusPlan) -> None:
    counts = Counter(p.audio_format for p in default_plan.recordings)
    assert 0.6 < counts["mp3"] / 360 < 0.8
    assert all(counts[f] >= 15 for f in ("wav", "flac", "ogg"))


def test_a_voice_sounds_in_its_own_band(default_plan: CorpusPlan) -> None:
    rate = 32000
    for species in default_plan.species[:6]:
        voice = species.voice
        performance = Performance("song", 1.0, 1.0, brightness=1.0, start_seconds=0.1)
        wave, active = render_voice(voice, performance, 3 * rate, rate, np.random.default_rng(0))
        assert active.any() and np.abs(wave).max() > 0
        spectrum = np.abs(np.fft.rfft(wave))
        peak_hz = np.fft.rfftfreq(len(wave), 1 / rate)[np.argmax(spectrum)]
        drift = max(voice.pitch_drift, 1 / voice.pitch_drift) ** (voice.syllables_per_phrase + 1)
        assert voice.low_hz / drift * 0.95 <= peak_hz <= voice.high_hz * drift * 1.05
        assert voice.low_hz >= 1000 and voice.high_hz <= 10000


@pytest.mark.parametrize("exponent", [1.0, 2.0])
def test_colored_noise_has_the_requested_slope(exponent: float) -> None:
    noise = colored_noise(1 << 16, exponent, np.random.default_rng(1))
    power = np.abs(np.fft.rfft(noise)) ** 2
    frequency = np.fft.rfftfreq(len(noise))
    band = (frequency > 0.005) & (frequency < 0.4)
    slope = np.polyfit(np.log(frequency[band]), np.log(power[band]), 1)[0]
    assert abs(slope + exponent) < 0.15
    assert abs(np.std(noise) - 1.0) < 1e-3


def reference_ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) & 0xFFFFFFFF if crc & 0x80000000 else (crc << 1) & 0xFFFFFFFF
    return crc


def test_ogg_files_are_reproducible_and_valid() -> None:
    for data in (b"", b"OggS", os.urandom(3000)):
        assert ogg_crc(data) == reference_ogg_crc(data)
    wave = (0.3 * np.sin(np.arange(16000) * 0.3)).astype(np.float32)
    first, second = encode_audio(wave, 16000, "ogg", serial=42), encode_audio(wave, 16000, "ogg", serial=42)
    assert first == second
    assert struct.unpack_from("<I", first, 14)[0] == 42
    decoded = decode_bytes(first, 16000)
    assert abs(len(decoded) - len(wave)) < 200
