"""``birdops segments`` on real files: ``birdops predict`` runs the tone detector over recordings on
disk, then ``segments`` cuts its table's detections into clips, which must hold exactly the source's
samples of each window plus the padding."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tones import TONES_HZ, tones

from birdops import cli
from birdops.serve import segments
from birdops.serve.segments import Row

LOW, MID, HIGH = "Low tone", "Mid tone", "High tone"
LOW_HZ, MID_HZ, HIGH_HZ = TONES_HZ


def plan(*parts: tuple[float, float], rate_hz: int = 8000) -> np.ndarray:
    """One-second windows, each a tone at its own amplitude ``(frequency_hz, amplitude)`` (0 Hz: noise)."""
    return np.concatenate([tones([(f, 1.0)], rate_hz, amplitude) for f, amplitude in parts])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """north/dawn.wav (8 kHz mono float): mid 0.945, noise, low 0.746, mid 0.849, high 0.945, mid 0.565;
    south/dawn.flac (44.1 kHz stereo, 16 bit, blocks of 65,536 frames): low 0.945, mid 0.746, high 0.849.
    (The detector's scores at amplitudes 0.3, 0.15, 0.1 and 0.06, about: the right channel has some
    noise of its own.)"""
    root = tmp_path_factory.mktemp("site")
    (root / "north").mkdir()
    (root / "south").mkdir()
    north = plan((MID_HZ, 0.3), (0, 0), (LOW_HZ, 0.1), (MID_HZ, 0.15), (HIGH_HZ, 0.3), (MID_HZ, 0.06))
    sf.write(root / "north" / "dawn.wav", north, 8000, subtype="FLOAT")
    south = plan((LOW_HZ, 0.3), (MID_HZ, 0.1), (HIGH_HZ, 0.15), rate_hz=44100)
    right = south + np.random.default_rng(1).normal(0.0, 0.002, len(south)).astype(np.float32)
    sf.write(root / "south" / "dawn.flac", np.stack([south, right], axis=1), 44100)
    return root


def predict_table(site: Path, detector: Path, out: Path, fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``birdops predict`` run in ``site`` on relative paths, so the table's paths are relative."""
    with monkeypatch.context() as patch:
        patch.chdir(site)
        argv = ["predict", "north", "south", "--model", str(detector), "-o", str(out), "--format", fmt]
        assert cli.main(argv) == 0


@pytest.fixture(scope="module")
def table(site: Path, detector_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("table") / "detections.csv"
    with pytest.MonkeyPatch.context() as patch:
        predict_table(site, detector_path, out, "csv", patch)
    return out


def source_mono(path: Path) -> tuple[np.ndarray, int]:
    wave, rate_hz = sf.read(path, dtype="float32", always_2d=True)
    return wave.mean(axis=1, dtype=np.float32), rate_hz


def clips_under(out: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(out).as_posix(): sf.read(p, dtype="float32")[0] for p in sorted(out.rglob("*.*"))}


def clip_names(table: Path, *keys: tuple[str, float, str], suffix: str = "wav") -> list[str]:
    """The clips of the table's rows ``(folder, start_s, species)``, named as segments names them."""
    rows = {(Path(r.file).parent.name, r.start_s, r.species): r for r in segments.read_table(table)}
    chosen = (rows[key] for key in keys)
    return sorted(f"{r.species}/dawn_{r.start_s:.3f}-{r.end_s:.3f}_{r.score:.3f}.{suffix}" for r in chosen)


def run(table: Path, out: Path, *options: str) -> int:
    return cli.main(["segments", str(table), "--out", str(out), *options])


def test_each_clip_holds_the_source_samples_of_its_window_plus_the_padding(
    site: Path, table: Path, tmp_path: Path
) -> None:
    rows = segments.read_table(table)
    assert [(r.file, r.start_s, r.species) for r in rows] == [
        ("north/dawn.wav", 0.0, MID),
        ("north/dawn.wav", 2.0, LOW),
        ("north/dawn.wav", 3.0, MID),
        ("north/dawn.wav", 4.0, HIGH),
        ("north/dawn.wav", 5.0, MID),
        ("south/dawn.flac", 0.0, LOW),
        ("south/dawn.flac", 1.0, MID),
        ("south/dawn.flac", 2.0, HIGH),
    ]  # nothing for the noise
    expected = [0.945, 0.746, 0.849, 0.945, 0.565, 0.945, 0.746, 0.849]
    assert [r.score for r in rows] == [pytest.approx(score, abs=0.01) for score in expected]
    out = tmp_path / "clips"
    assert run(table, out, "--audio-root", str(site), "--padding-seconds", "0.25") == 0
    clips = clips_under(out)
    assert len(clips) == len(rows)
    for row in rows:
        name = f"{row.species}/dawn_{row.start_s:.3f}-{row.end_s:.3f}_{row.score:.3f}.wav"
        source, rate_hz = source_mono(site / row.file)
        start = max(round((row.start_s - 0.25) * rate_hz), 0)
        end = min(round((row.end_s + 0.25) * rate_hz), len(source))
        assert sf.info(out / name).samplerate == rate_hz  # the recording's own rate, not the model's
        if rate_hz == 8000:  # mono float: the decoded samples, bit for bit
            np.testing.assert_array_equal(clips[name], source[start:end])
        else:  # stereo: the decoder's mix-down of the 16-bit channels
            np.testing.assert_allclose(clips[name], source[start:end], atol=1e-7)
    # the first window starts at 0 (no padding before it), the last one ends the file (none after)
    (first,) = clip_names(table, ("north", 0.0, MID))
    (last,) = clip_names(table, ("south", 2.0, HIGH))
    (inner,) = clip_names(table, ("north", 3.0, MID))
    assert (len(clips[first]), len(clips[last]), len(clips[inner])) == (1.25 * 8000, 1.25 * 44100, 1.5 * 8000)


def test_species_score_range_and_the_count_per_species(site: Path, table: Path, tmp_path: Path) -> None:
    root = ["--audio-root", str(site)]
    assert run(table, tmp_path / "mid", *root, "--species", MID, "--max-per-species", "2") == 0
    # the two best of the four mid detections (0.945 and 0.849; not 0.746 or 0.565)
    assert sorted(clips_under(tmp_path / "mid")) == clip_names(
        table, ("north", 0.0, MID), ("north", 3.0, MID)
    )
    assert run(table, tmp_path / "range", *root, "--min-score", "0.7", "--max-score", "0.9") == 0
    assert sorted(clips_under(tmp_path / "range")) == clip_names(
        table, ("north", 2.0, LOW), ("north", 3.0, MID), ("south", 1.0, MID), ("south", 2.0, HIGH)
    )
    assert run(table, tmp_path / "best", *root, "--max-per-species", "1", "--format", "flac") == 0
    best = clips_under(tmp_path / "best")
    keys = [("north", 0.0, MID), ("north", 4.0, HIGH), ("south", 0.0, LOW)]
    assert sorted(best) == clip_names(table, *keys, suffix="flac")
    north, _ = source_mono(site / "north" / "dawn.wav")
    (mid,) = clip_names(table, keys[0], suffix="flac")
    np.testing.assert_allclose(best[mid], north[:8000], atol=2**-23)  # 24-bit FLAC


def test_the_count_per_species_keeps_the_best_scores_and_breaks_ties_by_file_and_start() -> None:
    rows = [
        Row("b.wav", 0.0, 3.0, "A", 0.8, 2),
        Row("a.wav", 6.0, 9.0, "A", 0.8, 3),
        Row("a.wav", 3.0, 6.0, "A", 0.8, 4),
        Row("a.wav", 0.0, 3.0, "A", 0.9, 5),
        Row("a.wav", 0.0, 3.0, "B", 0.4, 6),
    ]
    chosen = segments.choose(rows, max_per_species=3)
    assert [(r.species, r.file, r.start_s) for r in chosen] == [
        ("A", "a.wav", 0.0),
        ("A", "a.wav", 3.0),
        ("A", "a.wav", 6.0),
        ("B", "a.wav", 0.0),
    ]
    assert segments.choose(list(reversed(rows)), max_per_species=3) == chosen  # whatever the table order
    assert segments.choose(rows, species=["B"], min_score=0.5) == []


def test_a_raven_table_gives_the_same_clips(
    site: Path, table: Path, detector_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raven = tmp_path / "detections.selections.txt"
    predict_table(site, detector_path, raven, "raven", monkeypatch)
    assert run(raven, tmp_path / "raven", "--audio-root", str(site)) == 0
    assert run(table, tmp_path / "csv", "--audio-root", str(site)) == 0
    from_raven, from_csv = clips_under(tmp_path / "raven"), clips_under(tmp_path / "csv")
    assert sorted(from_raven) == sorted(from_csv) and len(from_csv) == 8
    for name, clip in from_csv.items():
        np.testing.assert_array_equal(from_raven[name], clip)


def test_a_file_that_cannot_be_decoded_is_skipped_and_the_others_are_cut(
    site: Path, table: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    damaged = tmp_path / "site"
    shutil.copytree(site, damaged)
    (damaged / "south" / "dawn.flac").write_bytes(b"fLaC\x00\x00\x00\x22" + b"\xff" * 300)
    with caplog.at_level(logging.INFO):
        assert run(table, tmp_path / "clips", "--audio-root", str(damaged)) == 0
    assert len(clips_under(tmp_path / "clips")) == 5  # north's five
    skipped = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"skipped: {damaged / 'south' / 'dawn.flac'}: " in m and "decode" in m for m in skipped), (
        skipped
    )
    assert "wrote 5 clips of 3 species" in caplog.text
    (damaged / "north" / "dawn.wav").unlink()
    caplog.clear()
    assert run(table, tmp_path / "none", "--audio-root", str(damaged)) == 1  # nothing could be cut
    assert f"skipped: {damaged / 'north' / 'dawn.wav'}: no such audio file" in caplog.text
    assert "no clip was written" in caplog.text


def test_tables_that_cannot_be_read_and_choices_that_select_nothing(
    site: Path, table: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spreadsheet = tmp_path / "spreadsheet.csv"  # the table saved again by a spreadsheet: a BOM first
    spreadsheet.write_text("\ufeff" + table.read_text())
    assert segments.read_table(spreadsheet) == segments.read_table(table)
    other = tmp_path / "other.csv"
    other.write_text("id,label\n1,x\n")
    assert run(other, tmp_path / "out") == 1
    assert "not a birdops predict table: the predictions CSV lacks file, start_s, end_s, species, score" in (
        caplog.text
    )
    other.write_text("file,start_s,end_s,species,score\na.wav,3.0,1.0,Mid tone,0.9\n")
    assert run(other, tmp_path / "out") == 1
    assert f"{other}, line 2: the window 3.0-1.0 s is not a span of the recording" in caplog.text
    assert "no row is a detection: nothing to cut" in caplog.text
    with pytest.raises(segments.TableError, match="line 2: the window"):
        segments.read_table(other)  # without a list for them, a malformed row is raised
    # a malformed row among good ones: skipped with its line named, the others cut
    lines = table.read_text().splitlines()
    edited = tmp_path / "edited.csv"
    edited.write_text("\n".join([lines[0], "x.wav,4.000,4.000,Mid tone,0.5", *lines[1:]]) + "\n")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert run(edited, tmp_path / "cut", "--audio-root", str(site)) == 0
    assert f"{edited}, line 2: the window 4.0-4.0 s is not a span of the recording" in caplog.text
    assert len(list((tmp_path / "cut").rglob("*.wav"))) == len(lines) - 1
    other.write_text("file,start_s,end_s,species,score\na.wav,1.0,1e300,Mid tone,0.9\n")  # past a day
    assert run(other, tmp_path / "out") == 1 and "the window 1.0-1e+300 s is not a span" in caplog.text
    for bad in ("nan", "2", "-5"):
        with pytest.raises(SystemExit) as exit_info:
            run(table, tmp_path / "out", "--min-score", bad)
        assert exit_info.value.code == 2
    with caplog.at_level(logging.INFO):
        assert run(table, tmp_path / "out", "--species", "Robin", "--audio-root", str(site)) == 0
    assert "no detection of 'Robin' in the table" in caplog.text and "nothing to cut" in caplog.text
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        run(table, tmp_path / "out", "--min-score", "0.9", "--max-score", "0.5")
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:  # a file where the clips' folder is to go
        run(table, spreadsheet, "--audio-root", str(site))
    assert exit_info.value.code == 2 and spreadsheet.read_text().startswith("\ufeff")


def test_names_are_safe_and_unique() -> None:
    assert segments.safe_name("../Turdus/merula\x00") == "_Turdus_merula_"
    assert segments.safe_name("..") == "_"
    row = Row("C:\\field\\site 1\\dawn.wav", 1.5, 4.5, "Turdus merula", 0.91234, 2)
    assert segments.clip_name(row, "wav") == "dawn_1.500-4.500_0.912.wav"
    used: set[Path] = set()
    names = [segments._unique(Path("out/A/x.wav"), used) for _ in range(3)]
    assert names == [Path("out/A/x.wav"), Path("out/A/x_2.wav"), Path("out/A/x_3.wav")]


def test_every_link_of_a_chained_ogg_recording_is_classified_and_cut(
    detector_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cat a.ogg b.ogg``: libsndfile alone reads the first link and says the file ends there."""
    links = []
    for rate_hz, parts in ((8000, [(MID_HZ, 0.3), (0, 0)]), (16000, [(HIGH_HZ, 0.3), (LOW_HZ, 0.3)])):
        buffer = io.BytesIO()
        sf.write(buffer, plan(*parts, rate_hz=rate_hz), rate_hz, format="OGG", subtype="VORBIS")
        links.append(buffer.getvalue())
    (tmp_path / "dawn.ogg").write_bytes(b"".join(links))
    table = tmp_path / "detections.csv"
    monkeypatch.chdir(tmp_path)
    assert cli.main(["predict", "dawn.ogg", "--model", str(detector_path), "-o", str(table)]) == 0
    rows = segments.read_table(table)
    assert [(r.start_s, r.species) for r in rows] == [(0.0, MID), (2.0, HIGH), (3.0, LOW)]
    assert run(table, tmp_path / "clips") == 0
    clips = clips_under(tmp_path / "clips")
    names = sorted(f"{r.species}/dawn_{r.start_s:.3f}-{r.end_s:.3f}_{r.score:.3f}.wav" for r in rows)
    assert sorted(clips) == names
    assert all(len(clip) == 8000 for clip in clips.values())  # one second at the first link's rate
