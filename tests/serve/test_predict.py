"""``birdops predict`` on real audio files on disk: WAV, FLAC, MP3, a 10-minute recording, a corrupt
file and a file that is not audio, with the tone-detector model of ``test_inference`` (whose answers
are known from the generated audio)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tones import TONES_HZ, tones

from birdops import cli
from birdops.serve import predict

LOW, MID, HIGH = "Low tone", "Mid tone", "High tone"
LONG_SECONDS = 600  # the 10-minute recording: the tone changes every 10 s (low, mid, high, low, ...)


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recordings")
    (root / "sub" / "deeper").mkdir(parents=True)
    sf.write(root / "a.wav", tones([(TONES_HZ[0], 1.0), (TONES_HZ[2], 1.0), (TONES_HZ[1], 1.0)]), 8000)
    sf.write(root / "sub" / "b.MP3", tones([(TONES_HZ[2], 2.0)], 16000), 16000, format="MP3")
    sf.write(root / "sub" / "deeper" / "c.flac", tones([(TONES_HZ[1], 1.5)], 22050), 22050)
    plan = [(TONES_HZ[k % 3], 10.0) for k in range(LONG_SECONDS // 10)]
    sf.write(root / "long.flac", tones(plan), 8000)
    (root / "sub" / "corrupt.mp3").write_bytes(b"ID3\x04\x00" + bytes(range(256)) * 40)
    (root / "notes.txt").write_text("field notes, not audio")
    return root


def read_table(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle, delimiter=delimiter))


def run(argv: list[str]) -> int:
    return predict.main(argv)


def test_a_folder_is_classified_window_by_window_and_the_corrupt_file_reported(
    model_path: Path, recordings: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "predictions.csv"
    with caplog.at_level(logging.INFO):
        code = cli.main(["predict", str(recordings), "--model", str(model_path), "--output", str(out)])
    assert code == 0  # the corrupt file is a warning, the other files were classified
    with out.open() as handle:
        assert handle.readline().strip() == "file,start_s,end_s,species,score"
    rows = read_table(out)
    by_file: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_file.setdefault(Path(row["file"]).name, []).append(row)
    assert sorted(by_file) == ["a.wav", "b.MP3", "c.flac", "long.flac"]  # not notes.txt, not corrupt.mp3
    a = by_file["a.wav"]
    assert [(r["start_s"], r["end_s"], r["species"]) for r in a] == [
        ("0.000", "1.000", LOW),
        ("1.000", "2.000", HIGH),
        ("2.000", "3.000", MID),
    ]
    assert all(0.99 < float(r["score"]) <= 1.0 for r in a)
    assert {r["species"] for r in by_file["b.MP3"]} == {HIGH}  # a 16 kHz MP3, resampled to 8 kHz
    assert [r["species"] for r in by_file["c.flac"]] == [MID, MID]
    assert [r["end_s"] for r in by_file["c.flac"]] == ["1.000", "1.500"]
    # the 10-minute recording: 600 one-second windows, the tone changes every 10 windows
    long = by_file["long.flac"]
    assert len(long) == LONG_SECONDS and long[-1]["end_s"] == f"{LONG_SECONDS:.3f}"
    expected = [(LOW, MID, HIGH)[(i // 10) % 3] for i in range(LONG_SECONDS)]
    assert [r["species"] for r in long] == expected
    # reported: in the log as it happens and in the summary at the end
    failures = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("corrupt.mp3" in m and "cannot decode" in m for m in failures)
    assert any("1 input(s) could not be classified" in m for m in failures)
    assert any("classified 4 files" in r.getMessage() for r in caplog.records)


def test_raven_selection_table(model_path: Path, recordings: Path, tmp_path: Path) -> None:
    out = tmp_path / "selections.txt"
    argv = [str(recordings / "a.wav"), str(recordings / "sub" / "deeper" / "c.flac")]
    assert run([*argv, "--model", str(model_path), "--output", str(out), "--format", "raven"]) == 0
    header = out.read_text().splitlines()[0].split("\t")
    assert header == [
        "Selection",
        "View",
        "Channel",
        "Begin Time (s)",
        "End Time (s)",
        "Low Freq (Hz)",
        "High Freq (Hz)",
        "Species",
        "Score",
        "Begin Path",
    ]
    rows = read_table(out, delimiter="\t")
    assert [int(r["Selection"]) for r in rows] == [1, 2, 3, 4, 5]
    assert {(r["View"], r["Channel"]) for r in rows} == {("Spectrogram 1", "1")}
    # the band comes from the model's feature metadata: f_min 100 Hz, no f_max -> Nyquist of 8 kHz
    assert {(r["Low Freq (Hz)"], r["High Freq (Hz)"]) for r in rows} == {("100.0", "4000.0")}
    assert [(r["Begin Time (s)"], r["Species"]) for r in rows] == [
        ("0.000", LOW),
        ("1.000", HIGH),
        ("2.000", MID),
        ("0.000", MID),
        ("1.000", MID),
    ]
    assert [Path(r["Begin Path"]).name for r in rows] == ["a.wav"] * 3 + ["c.flac"] * 2


def test_top_k_min_score_and_hop(model_path: Path, recordings: Path, tmp_path: Path) -> None:
    wav = recordings / "a.wav"  # low, high, mid: 1 s each
    out = tmp_path / "hop.csv"
    assert (
        run([str(wav), "--model", str(model_path), "-o", str(out), "--hop-seconds", "0.5", "--top-k", "3"])
        == 0
    )
    rows = read_table(out)
    starts = sorted({float(r["start_s"]) for r in rows})
    assert starts == [0.0, 0.5, 1.0, 1.5, 2.0]
    assert all(sum(r["start_s"] == f"{s:.3f}" for r in rows) == 3 for s in starts)  # 3 species each
    scores = [float(r["score"]) for r in rows if r["start_s"] == "0.000"]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
    filtered = tmp_path / "filtered.csv"
    argv = [str(wav), "--model", str(model_path), "-o", str(filtered), "--top-k", "3", "--min-score", "0.5"]
    assert run([*argv, "--batch-size", "1"]) == 0
    kept = read_table(filtered)
    assert len(kept) == 3 and all(float(r["score"]) >= 0.5 for r in kept)  # only each window's winner


def test_globs_and_missing_inputs(
    model_path: Path, recordings: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "glob.csv"
    pattern = str(recordings / "**" / "*.flac")
    with caplog.at_level(logging.WARNING):
        code = run([pattern, str(recordings / "nope.wav"), "--model", str(model_path), "-o", str(out)])
    assert code == 0
    assert {Path(r["file"]).name for r in read_table(out)} == {"c.flac", "long.flac"}
    assert "nope.wav: no such file or folder" in caplog.text


def test_exit_status_is_1_when_nothing_could_be_classified(
    model_path: Path, recordings: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "none.csv"
    assert run([str(recordings / "sub" / "corrupt.mp3"), "--model", str(model_path), "-o", str(out)]) == 1
    assert read_table(out) == []  # the header is there, no rows
    assert "no file was classified" in caplog.text
    assert run([str(recordings / "a.wav"), "--model", str(tmp_path / "missing.onnx"), "-o", str(out)]) == 1
    with pytest.raises(SystemExit) as exit_info:
        run([str(recordings / "a.wav"), "--model", str(model_path), "--top-k", "0"])
    assert exit_info.value.code == 2


def test_standard_output_is_the_default(
    model_path: Path, recordings: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([str(recordings / "sub" / "b.MP3"), "--model", str(model_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "file,start_s,end_s,species,score"
    assert [line.split(",")[3] for line in lines[1:]] == [HIGH, HIGH]


def test_find_audio_recurses_and_deduplicates(recordings: Path) -> None:
    inputs = [str(recordings), str(recordings / "a.wav"), str(recordings / "notes.txt"), "no/such/*.wav"]
    paths, missing = predict.find_audio(inputs)
    names = [p.relative_to(recordings).as_posix() for p in paths]
    assert names == [
        "a.wav",
        "long.flac",
        "sub/b.MP3",
        "sub/corrupt.mp3",
        "sub/deeper/c.flac",
        "notes.txt",
    ]  # a folder's audio files (any case of extension), then explicitly named files, each once
    assert missing == ["no/such/*.wav: the pattern matches no audio file"]
    assert np.all([p.is_file() for p in paths])
