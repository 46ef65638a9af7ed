"""soundscapes: the same bytes on every run, annotations inside their files and over the inserted
bird's calls, the inserted recording in the audio at its recorded gain, background-only stretches,
the stage end to end on real files, and the errors that name what to change."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from params_yaml import section, write_params

from birdops.audio import load_audio
from birdops.config import SoundscapesParams
from birdops.contracts import (
    ANNOTATIONS_FILE,
    SOUNDSCAPES_FILE,
    ManifestRow,
    background_manifest_path,
    manifest_path,
    read_manifest,
    read_soundscapes,
    write_manifest,
)
from birdops.data.metadata import DataError
from birdops.data.noise import colored_noise
from birdops.data.soundscapes import (
    SoundscapesSummary,
    active_spans,
    band_power,
    build_soundscapes,
    crossfade_join,
    faded,
)
from pipeline import soundscapes as soundscapes_stage

RECORDING_RATE_HZ = 22050  # the recordings' rate: the soundscapes resample them to RATE_HZ
RATE_HZ = 16000
CALLS_S = ((0.5, 1.1), (1.7, 2.3), (2.9, 3.5), (4.1, 4.7))  # each recording's calls, 0.6 s of quiet between
SPECIES = {"Turdus merula": 2000.0, "Parus major": 3500.0, "Regulus regulus": 5000.0}  # lowest pitch (Hz)
PARAMS: dict[str, Any] = {
    "seconds": 20.0,
    "count": {"val": 2, "test": 3},
    "sample_rate_hz": RATE_HZ,
    "event_seconds": [2.0, 4.0],
    "snr_db_range": [6.0, 10.0],
    "bed_segment_seconds": [3.0, 6.0],
    "max_gap_seconds": 0.3,  # shorter than the quiet between two calls: one span a call
    "overlap_probability": 0.5,
}


def bird(pitch_hz: float, seed: int) -> np.ndarray:
    """5.5 s: faint noise, and at CALLS_S rising chirps from ``pitch_hz``: ``(samples,)`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(5.5 * RECORDING_RATE_HZ)) / RECORDING_RATE_HZ
    wave = 0.002 * rng.standard_normal(t.size)
    for start_s, end_s in CALLS_S:
        local = t - start_s
        inside = (t >= start_s) & (t < end_s)
        wave += 0.3 * np.sin(2 * np.pi * (pitch_hz * local + 1500.0 * local**2)) * inside
    return wave.astype(np.float32)


def write_world(root: Path, broken: tuple[str, ...] = ()) -> dict[str, Path]:
    """``root/raw`` (2 recordings per species and split), ``root/background`` (2 noises per split,
    12 s at 44.1 kHz), ``root/prepared`` (manifest.csv, background.csv). Recordings named in
    ``broken`` hold random bytes."""
    rows, beds = [], []
    for k, (label, pitch_hz) in enumerate(SPECIES.items()):
        for split_index, split in enumerate(("train", "val", "test")):
            for n in range(2):
                xc_id = f"{k}{split_index}{n}"
                path = root / "raw" / "audio" / f"XC{xc_id}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, bird(pitch_hz, int(xc_id)), RECORDING_RATE_HZ, subtype="PCM_16")
                if xc_id in broken:
                    path.write_bytes(np.random.default_rng(1).bytes(4000))
                rows.append(ManifestRow(xc_id, f"audio/XC{xc_id}.wav", label, k, split, f"r{n}", "A", 5.5))
    rng = np.random.default_rng(2)
    for split in ("train", "val", "test"):
        for n in range(2):
            name = f"{split}-noise-{n}.flac"
            noise = 0.05 * colored_noise(12 * 44100, 1.0 + 0.5 * n, rng)
            (root / "background").mkdir(exist_ok=True)
            sf.write(root / "background" / name, noise.astype(np.float32), 44100, format="FLAC")
            beds.append(ManifestRow(name, name, "", -1, split, f"site{n}", "", 12.0))
    write_manifest(manifest_path(root / "prepared"), rows)
    write_manifest(background_manifest_path(root / "prepared"), beds)
    return {"raw": root / "raw", "background": root / "background", "prepared": root / "prepared"}


def build(world: dict[str, Path], out: Path, **changes: Any) -> SoundscapesSummary:
    """The soundscapes of ``world`` with the committed params, PARAMS and ``changes`` (whole values)."""
    params = SoundscapesParams.model_validate({**section("soundscapes", **PARAMS).model_dump(), **changes})
    return build_soundscapes(world["raw"], world["background"], world["prepared"], out, params)


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], Path, SoundscapesSummary]:
    root = tmp_path_factory.mktemp("world")
    world = write_world(root)
    return world, root / "soundscapes", build(world, root / "soundscapes")


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_same_inputs_give_the_same_bytes(
    made: tuple[dict[str, Path], Path, SoundscapesSummary], tmp_path: Path
) -> None:
    world, out, _ = made
    build(world, tmp_path / "again")
    first = digests(out)
    assert first == digests(tmp_path / "again")
    assert set(first) == {
        SOUNDSCAPES_FILE,
        ANNOTATIONS_FILE,
        "val/SC-val-000.flac",
        "val/SC-val-001.flac",
        "test/SC-test-000.flac",
        "test/SC-test-001.flac",
        "test/SC-test-002.flac",
    }
    build(world, tmp_path / "other", seed=99)
    assert digests(tmp_path / "other")["test/SC-test-000.flac"] != first["test/SC-test-000.flac"]


def test_the_listed_files_hold_the_annotated_audio(
    made: tuple[dict[str, Path], Path, SoundscapesSummary],
) -> None:
    _, out, summary = made
    soundscapes = read_soundscapes(out)
    assert [s.file for s in soundscapes] == [m.file for m in summary.soundscapes]
    labels = set()
    for soundscape in soundscapes:
        info = sf.info(soundscape.audio_path(out))
        assert (info.samplerate, info.format, info.frames) == (RATE_HZ, "FLAC", 20 * RATE_HZ)
        assert soundscape.duration_s == 20.0 and soundscape.events
        assert all(0 <= e.start_s < e.end_s <= soundscape.duration_s for e in soundscape.events)
        labels |= {e.label for e in soundscape.events}
    assert labels == set(SPECIES)
    # some events share time with another species: several species in one window
    assert any(
        a.label != b.label and a.start_s < b.end_s and b.start_s < a.end_s
        for s in soundscapes
        for a in s.events
        for b in s.events
    )


def test_each_inserted_recording_is_in_the_audio_at_its_gain(
    made: tuple[dict[str, Path], Path, SoundscapesSummary],
) -> None:
    """Least squares of the soundscape on the source segment over the inserted span recovers the
    recorded gain (the bed and other birds are uncorrelated with it); another species' recording
    cut the same way finds nothing."""
    world, out, summary = made
    for soundscape in summary.soundscapes:
        mix = load_audio(out / soundscape.file, RATE_HZ).astype(np.float64)
        for event in soundscape.events:
            at, n = round(event.start_s * RATE_HZ), round((event.end_s - event.start_s) * RATE_HZ)
            source = load_audio(world["raw"] / "audio" / f"XC{event.recording_id}.wav", RATE_HZ)
            start = round(event.source_start_s * RATE_HZ)
            segment = source[start : start + n].astype(np.float64)
            span = slice(at + 160, at + n - 160)  # past the 10 ms fades
            inner = segment[160 : n - 160]
            assert mix[span] @ inner / (inner @ inner) == pytest.approx(event.gain, rel=0.1)
            assert np.corrcoef(mix[span], inner)[0, 1] > 0.5
            other = next(k for k, label in enumerate(SPECIES) if label != event.label)
            stranger = load_audio(world["raw"] / "audio" / f"XC{other}20.wav", RATE_HZ)[start : start + n]
            if len(stranger) == n:
                assert abs(mix[span] @ stranger[160 : n - 160]) / (inner @ inner) < 0.1 * event.gain


def test_each_bird_sits_at_its_drawn_snr_over_the_bed(
    made: tuple[dict[str, Path], Path, SoundscapesSummary],
) -> None:
    """The bed is what is left when every inserted segment is taken out again; above the high-pass,
    the bird's power over its annotated spans against the bed's over the segment is the drawn SNR."""
    world, out, summary = made
    activity = section("soundscapes").activity
    low, high = PARAMS["snr_db_range"]
    for soundscape in summary.soundscapes:
        mix = load_audio(out / soundscape.file, RATE_HZ).astype(np.float64)
        birds = np.zeros_like(mix)
        segments = []
        for event in soundscape.events:
            at, n = round(event.start_s * RATE_HZ), round((event.end_s - event.start_s) * RATE_HZ)
            source = load_audio(world["raw"] / "audio" / f"XC{event.recording_id}.wav", RATE_HZ)
            start = round(event.source_start_s * RATE_HZ)
            segment = event.gain * faded(source[start : start + n], 160)
            birds[at : at + n] += segment
            segments.append((event, at, segment))
        bed = mix - birds
        for event, at, segment in segments:
            sounding = np.concatenate(
                [segment[round(a * RATE_HZ) - at : round(b * RATE_HZ) - at] for a, b in event.spans]
            )
            bed_power = band_power(bed[at : at + len(segment)], RATE_HZ, activity)
            snr_db = 10 * np.log10(np.mean(sounding**2) / bed_power)
            assert low <= event.snr_db <= high and snr_db == pytest.approx(event.snr_db, abs=0.5)


def test_annotations_cover_the_calls_not_the_quiet_between(
    made: tuple[dict[str, Path], Path, SoundscapesSummary],
) -> None:
    """In the source's time, every annotated span lies on one call (within a 50 ms frame), and every
    call wholly inside an inserted segment is annotated."""
    _, _, summary = made
    frame_s = 0.05
    for soundscape in summary.soundscapes:
        for event in soundscape.events:
            shift = event.source_start_s - event.start_s  # soundscape time -> source time
            spans = [(a + shift, b + shift) for a, b in event.spans]
            assert spans, event
            for a, b in spans:
                assert any(
                    start - frame_s - 1e-3 <= a and b <= end + frame_s + 1e-3 for start, end in CALLS_S
                ), (a, b)
            segment_end = event.end_s + shift
            for start, end in CALLS_S:
                if event.source_start_s <= start and end <= segment_end:
                    assert any(a <= start + frame_s + 1e-3 and end - frame_s - 1e-3 <= b for a, b in spans), (
                        start,
                        spans,
                    )


def test_a_share_of_every_soundscape_is_background_only(
    made: tuple[dict[str, Path], Path, SoundscapesSummary], tmp_path: Path
) -> None:
    _, out, summary = made
    share = section("soundscapes").background_only_share
    for soundscape in summary.soundscapes:
        assert soundscape.background_only_share >= share
    for soundscape in read_soundscapes(out):  # the annotations lie inside the inserted segments
        annotated = union_seconds([(e.start_s, e.end_s) for e in soundscape.events])
        assert 0 < annotated <= (1 - share) * soundscape.duration_s
    world, _, _ = made
    quiet = build(world, tmp_path / "quiet", background_only_share=0.8)
    assert all(s.background_only_share >= 0.8 for s in quiet.soundscapes)
    assert sum(len(s.events) for s in quiet.soundscapes) < sum(len(s.events) for s in summary.soundscapes)


def test_an_undecodable_recording_is_skipped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    world = write_world(tmp_path, broken=("010", "121"))  # a val and a test recording
    with caplog.at_level(logging.WARNING):
        summary = build(world, tmp_path / "out")
    assert len(summary.skipped) == 2 and "010" in caplog.text and "121" in caplog.text
    used = {e.recording_id for s in summary.soundscapes for e in s.events}
    assert used and not used & {"010", "121"}


def test_a_split_without_background_or_recordings_names_the_split_and_the_param(tmp_path: Path) -> None:
    world = write_world(tmp_path)
    no_test_background = [
        r for r in read_manifest(background_manifest_path(world["prepared"])) if r.split != "test"
    ]
    write_manifest(background_manifest_path(world["prepared"]), no_test_background)
    with pytest.raises(DataError, match=r"the test split has no background recordings.*soundscapes\.splits"):
        build(world, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    build(world, tmp_path / "out", splits=["val"], count={"val": 1})  # what the message says to do
    no_val_birds = [r for r in read_manifest(manifest_path(world["prepared"])) if r.split != "val"]
    write_manifest(manifest_path(world["prepared"]), no_val_birds)
    with pytest.raises(DataError, match=r"the val split has no target recordings.*soundscapes\.splits"):
        build(world, tmp_path / "out", splits=["val"], count={"val": 1})
    background_manifest_path(world["prepared"]).unlink()
    with pytest.raises(DataError, match=r"background\.csv: no list of background recordings"):
        build(world, tmp_path / "out")


def test_every_broken_background_of_a_split_is_an_error(tmp_path: Path) -> None:
    world = write_world(tmp_path)
    for path in world["background"].glob("val-*"):
        path.write_bytes(b"not audio at all")
    with pytest.raises(DataError, match=r"no background recording of the val split could be used"):
        build(world, tmp_path / "out")


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Seconds inside at least one span, counted on a 1 ms grid."""
    grid = np.zeros(round(max(end for _, end in spans) * 1000) + 1, dtype=bool)
    for start, end in spans:
        grid[round(start * 1000) : round(end * 1000)] = True
    return float(grid.sum()) / 1000


def test_the_stage_runs_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    world = write_world(tmp_path / "data")
    write_params(tmp_path / "params.yaml", soundscapes={**PARAMS, "count": {"val": 1, "test": 1}})
    monkeypatch.chdir(tmp_path)
    args = ["--raw", "data/raw", "--background", "data/background", "--prepared", "data/prepared"]
    assert soundscapes_stage.main([*args, "--out", "data/soundscapes"]) == 0
    files = [s.file for s in read_soundscapes(tmp_path / "data/soundscapes")]
    assert files == ["val/SC-val-000.flac", "test/SC-test-000.flac"]
    (world["prepared"] / "background.csv").unlink()
    with caplog.at_level(logging.ERROR):
        assert soundscapes_stage.main([*args, "--out", "data/other"]) == 1
    assert "no list of background recordings" in caplog.text and not (tmp_path / "data/other").exists()


# ------------------------------------------------------------------------------------------ pieces
def test_active_frames_become_spans_across_short_gaps() -> None:
    active = np.array([0, 1, 1, 0, 1, 0, 0, 0, 1, 1], dtype=bool)  # frames of 0.1 s
    np.testing.assert_allclose(active_spans(active, 0.1, 0.15), [(0.1, 0.5), (0.8, 1.0)])
    np.testing.assert_allclose(active_spans(active, 0.1, 0.0), [(0.1, 0.3), (0.4, 0.5), (0.8, 1.0)])
    assert active_spans(np.zeros(4, bool), 0.1, 1.0) == ()


def test_crossfades_keep_the_power_of_unrelated_noises() -> None:
    rng = np.random.default_rng(0)
    pieces = [rng.standard_normal(20000) for _ in range(3)]
    joined = crossfade_join(pieces, 4000)
    assert len(joined) == 3 * 20000 - 2 * 4000
    np.testing.assert_array_equal(joined[:16000], pieces[0][:16000])
    seam = joined[16000:20000]  # the first crossfade
    assert np.mean(seam**2) == pytest.approx(1.0, rel=0.1)
