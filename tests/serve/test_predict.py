"""``birdops predict`` on real audio files on disk: WAV, FLAC, MP3, a 10-minute recording, a corrupt
file and a file that is not audio, with the tone-detector model of ``test_inference`` (whose answers
are known from the generated audio)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import soundfile as sf
from tones import DETECTOR, TONES_HZ, tone_model, tones

from birdops import cli, providers
from birdops.providers import CPU_PROVIDER
from birdops.serve import detect, predict
from birdops.serve.inference import Classifier, WindowScores

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


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--hop-seconds", "inf"], "--hop-seconds: must be a finite number > 0, got inf"),
        (["--batch-size", "100000"], "--batch-size: must be at most 1024 windows, got 100000"),
        (["--embeddings", "same.csv", "-o", "same.csv"], "--output and --embeddings both name same.csv"),
    ],
)
def test_options_that_cannot_work_are_refused_by_argparse(
    model_path: Path,
    recordings: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run([str(recordings / "a.wav"), "--model", str(model_path), *options])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "same.csv").exists()


def test_a_hop_or_an_output_that_cannot_work_is_refused_before_any_audio_is_read(
    embedder_path: Path, recordings: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out.csv"
    argv = [str(recordings / "a.wav"), "--model", str(embedder_path)]
    assert run([*argv, "-o", str(out), "--hop-seconds", "1e300"]) == 2
    assert "a hop of 1e+300 s is longer than the longest recording birdops reads" in caplog.text
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # a file where the output's folder should be
    table = ["-o", str(blocked / "out.csv")]
    embeddings = ["-o", str(out), "--embeddings", str(blocked / "e.csv")]
    for options in (table, embeddings):
        caplog.clear()
        assert run([*argv, *options]) == 2
        assert f"{options[-1]}: cannot write there" in caplog.text
        assert not out.exists()  # the table opened before the embeddings' failure is not left behind
    assert "Traceback" not in caplog.text


def test_device_cuda_where_cuda_cannot_run_exits_1_before_any_audio_is_read(
    model_path: Path,
    recordings: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(providers, "cuda_usable", lambda: (False, "no usable CUDA device"))
    out = tmp_path / "cuda.csv"
    argv = [str(recordings / "a.wav"), "--model", str(model_path), "--device", "cuda", "-o", str(out)]
    assert run(argv) == 1 and not out.exists()
    assert "device cuda: CUDA cannot run here: no usable CUDA device" in caplog.text


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


def test_an_overnight_recording_longer_than_an_hour_is_classified(model_path: Path, tmp_path: Path) -> None:
    seconds = 3700  # over the hour a whole-file decode takes; streamed, memory stays flat
    night = tmp_path / "night.flac"
    plan = [(TONES_HZ[0], 3000.0), (TONES_HZ[1], 700.0)]  # the mid tone in the last 700 s
    sf.write(night, tones(plan, 4000), 4000)  # at 4 kHz (resampled to the model's 8 kHz): a small file
    out = tmp_path / "night.csv"
    assert run([str(night), "--model", str(model_path), "--output", str(out), "--min-score", "0.5"]) == 0
    rows = read_table(out)
    assert len(rows) == seconds and rows[-1]["end_s"] == f"{seconds:.3f}"
    assert [r["species"] for r in rows] == [LOW] * 3000 + [MID] * 700


# the first box of an .m4a file (an MP4 container of AAC audio): no decoder birdops uses reads it
M4A_HEAD = b"\x00\x00\x00\x1cftypM4A \x00\x00\x00\x00M4A mp42isom" + bytes(64)


def test_a_memory_card_folder_classifies_every_readable_type_and_names_the_foreign_ones(
    model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    card = tmp_path / "card"
    (card / ".Trashes").mkdir(parents=True)
    sf.write(card / "dawn.caf", tones([(TONES_HZ[2], 2.0)]), 8000, format="CAF")
    sf.write(card / "dusk.W64", tones([(TONES_HZ[0], 1.0)]), 8000, format="W64")
    sf.write(card / ".Trashes" / "deleted.wav", tones([(TONES_HZ[1], 1.0)]), 8000)
    (card / "._dawn.caf").write_bytes(b"\x00\x05\x16\x07" + bytes(80))  # macOS resource fork
    (card / "phone.m4a").write_bytes(M4A_HEAD)
    (card / "CONFIG.TXT").write_text("gain: medium")
    out = tmp_path / "predictions.csv"
    with caplog.at_level(logging.INFO):
        code = cli.main(["predict", str(card), "--model", str(model_path), "--output", str(out)])
    assert code == 0  # two recordings classified; the .m4a is refused by name
    rows = read_table(out)
    assert {(Path(r["file"]).name, r["species"]) for r in rows} == {("dawn.caf", HIGH), ("dusk.W64", LOW)}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("1 input(s) could not be classified (unsupported_format 1)" in m for m in warnings)
    refusal = [m for m in warnings if "phone.m4a" in m][-1]
    assert "is not a type birdops reads" in refusal and "ffmpeg -i IN.m4a OUT.flac" in refusal
    assert not any("._dawn" in r.getMessage() or "deleted.wav" in r.getMessage() for r in caplog.records)
    (tmp_path / "empty").mkdir()
    inputs = [str(card), str(card / ".Trashes"), str(tmp_path / "empty")]
    paths, missing = predict.find_audio(inputs)
    # hidden files and folders are left out of a search, not when named
    assert [p.name for p in paths] == ["dawn.caf", "dusk.W64", "phone.m4a", "deleted.wav"]
    assert missing == [f"{tmp_path / 'empty'}: the folder holds no audio file (hidden ones left out)"]


# ------------------------------------------------------------------------------ detections (a detector)
DAWN = [(TONES_HZ[1], 1.0), (0, 1.0), (TONES_HZ[0], 0.5), (TONES_HZ[2], 0.5)]  # mid, noise, low + high


@pytest.fixture(scope="module")
def field(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dawn.wav: the mid tone (scores 0.945), noise, low and high together (0.907, 0.906), the mid tone
    at a tenth of the amplitude (0.300); night.flac: 3 s of noise (every score under 0.01)."""
    root = tmp_path_factory.mktemp("field")
    sf.write(
        root / "dawn.wav", np.concatenate([tones(DAWN), tones([(TONES_HZ[1], 1.0)], amplitude=0.03)]), 8000
    )
    sf.write(root / "night.flac", tones([(0, 3.0)]), 8000)
    return root


def predict_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """birdops predict's warnings (not the provider's about a missing GPU)."""
    return [
        r.getMessage() for r in caplog.records if r.name == predict.log.name and r.levelno >= logging.WARNING
    ]


def detected(path: Path) -> list[tuple[str, str, str]]:
    return [(Path(r["file"]).name, r["start_s"], r["species"]) for r in read_table(path)]


def test_by_default_only_detections_are_written_and_the_summary_names_files_without_any(
    detector_path: Path, field: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "detections.csv"
    with caplog.at_level(logging.INFO):
        code = cli.main(["predict", str(field), "--model", str(detector_path), "-o", str(out)])
    assert code == 0  # a file without detections is a success
    assert out.read_text().splitlines()[0] == "file,start_s,end_s,species,score"
    assert detected(out) == [
        ("dawn.wav", "0.000", MID),
        ("dawn.wav", "2.000", LOW),  # two species in one window, best first, no cap by default
        ("dawn.wav", "2.000", HIGH),
    ]  # nothing for the noise, the quiet tone (0.30 < 0.5) or the night
    scores = [float(r["score"]) for r in read_table(out)]
    assert scores == [
        pytest.approx(0.9446, abs=1e-3),
        pytest.approx(0.9072, abs=1e-3),
        pytest.approx(0.9061, abs=1e-3),
    ]
    assert scores[1] > scores[2]
    messages = [r.getMessage() for r in caplog.records]
    assert "detections in 1 of 2 files, 3 species:" in messages
    assert (
        f"  {field / 'dawn.wav'}: Mid tone (1 window, best 0.945), Low tone (1 window, best 0.907), "
        "High tone (1 window, best 0.906)"
    ) in messages
    assert f"  {field / 'night.flac'}: no detections" in messages
    assert predict_warnings(caplog) == []  # the model has thresholds


def test_min_score_and_a_thresholds_file_replace_the_models_thresholds(
    detector_path: Path, field: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out.csv"
    base = [str(field), "--model", str(detector_path), "-o", str(out)]
    assert run([*base, "--min-score", "0.2"]) == 0
    assert ("dawn.wav", "3.000", MID) in detected(out) and len(detected(out)) == 4  # the quiet tone too
    thresholds = tmp_path / "thresholds.csv"
    thresholds.write_text("species,threshold\nMid tone,0.25\nHigh tone,0.95\n")
    assert run([*base, "--thresholds", str(thresholds)]) == 0
    assert detected(out) == [  # mid at 0.25 finds the quiet tone, high at 0.95 is gone, low keeps 0.5
        ("dawn.wav", "0.000", MID),
        ("dawn.wav", "2.000", LOW),
        ("dawn.wav", "3.000", MID),
    ]
    as_json = tmp_path / "thresholds.json"
    as_json.write_text('{"Low tone": 0.95}')
    assert run([*base, "--thresholds", str(as_json), "--min-score", "0.2"]) == 0  # the file over min-score
    assert detected(out) == [
        ("dawn.wav", "0.000", MID),
        ("dawn.wav", "2.000", HIGH),
        ("dawn.wav", "3.000", MID),
    ]


def test_top_k_caps_the_rows_per_window_and_all_reports_every_window(
    detector_path: Path, field: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out.csv"
    base = [str(field), "--model", str(detector_path), "-o", str(out)]
    assert run([*base, "--top-k", "1"]) == 0
    assert detected(out) == [("dawn.wav", "0.000", MID), ("dawn.wav", "2.000", LOW)]
    with caplog.at_level(logging.INFO):
        assert run([*base, "--all"]) == 0  # the top 1 of every window, whatever its score
    assert "top species of every window (--all, whatever their scores), 3 species:" in caplog.text
    assert f"  {field / 'night.flac'}: " in caplog.text and "no detections" not in caplog.text
    rows = detected(out)
    assert [(name, start) for name, start, _ in rows] == [
        *(("dawn.wav", f"{s:.3f}") for s in range(4)),
        *(("night.flac", f"{s:.3f}") for s in range(3)),
    ]
    assert rows[3] == ("dawn.wav", "3.000", MID)
    assert run([*base, "--all", "--top-k", "2"]) == 0
    assert len(read_table(out)) == 2 * 7


def test_bad_thresholds_are_refused_before_anything_is_classified(
    detector_path: Path,
    field: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out.csv"
    base = [str(field), "--model", str(detector_path), "-o", str(out)]
    bad = tmp_path / "bad.csv"
    bad.write_text("species,threshold\nMid tone,0.3\nMid tones,0.4\n")
    assert run([*base, "--thresholds", str(bad)]) == 2
    assert (
        f"{bad}, row 3: unknown species 'Mid tones'" in caplog.text
        and "did you mean 'Mid tone'" in caplog.text
    )
    bad.write_text("Mid tone,1.2\n")
    assert run([*base, "--thresholds", str(bad)]) == 2
    assert f"{bad}, row 1: the threshold 1.2 is outside [0, 1]" in caplog.text
    assert not out.exists()
    for argv in (
        ["--min-score", "1.5"],
        ["--all", "--min-score", "0.3"],
        ["--all", "--thresholds", str(bad)],
    ):
        with pytest.raises(SystemExit) as exit_info:
            run([*base, *argv])
        assert exit_info.value.code == 2
    for option in ("--output", "--embeddings"):  # a folder where a file is to go
        with pytest.raises(SystemExit) as exit_info:
            run([str(field), "--model", str(detector_path), option, str(tmp_path)])
        assert exit_info.value.code == 2
        assert f"{option} {tmp_path} is a folder: name the file to write in it" in capsys.readouterr().err
    # a hop under one sample at the model's 8 kHz: refused before any audio is read, not per file
    assert run([*base, "--hop-seconds", "0.00005"]) == 2
    assert "--hop-seconds: a hop of 5e-05 s is under one sample at the model's 8000 Hz" in caplog.text
    assert not out.exists() and "unexpected error" not in caplog.text
    assert run([*base, "--hop-seconds", "0.0001"]) == 0  # one sample is a hop


def test_a_model_without_thresholds_warns_once_and_keeps_its_former_output(
    model_path: Path, field: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out.csv"
    with caplog.at_level(logging.INFO):
        assert run([str(field), "--model", str(model_path), "-o", str(out)]) == 0
    assert predict_warnings(caplog) == [
        f"{model_path}: {detect.NO_THRESHOLDS_WARNING}"
    ]  # once, for both files
    assert [(name, start) for name, start, _ in detected(out)] == [  # the top species of every window
        *(("dawn.wav", f"{s:.3f}") for s in range(4)),
        *(("night.flac", f"{s:.3f}") for s in range(3)),
    ]
    assert "detections in 2 of 2 files, 3 species:" in caplog.text


# -------------------------------------------------------------------------------------- embeddings
@pytest.fixture(scope="module")
def embedder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tone detector with an embedding output (``tone_model(embedding=True)``: 6 wide)."""
    path = tmp_path_factory.mktemp("embedder") / "embedder.onnx"
    onnx.save(tone_model(scoring=DETECTOR, embedding=True), str(path))
    return path


@pytest.mark.parametrize("name", ["embeddings.csv", "embeddings.csv.gz"])
def test_embeddings_are_written_one_row_per_window_and_read_by_pandas(
    embedder_path: Path, recordings: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    """Every window of every classified file, detected or not; the corrupt file has no row; the
    values read back by ``pandas.read_csv`` are the float32 embeddings of the same windows exactly."""
    import pandas as pd

    out, table_path = tmp_path / "detections.csv", tmp_path / name
    argv = [str(recordings), "--model", str(embedder_path), "-o", str(out), "--embeddings", str(table_path)]
    with caplog.at_level(logging.INFO):
        assert run([*argv, "--hop-seconds", "0.5"]) == 0
    table = pd.read_csv(table_path)  # a .gz name is decompressed by its suffix
    assert list(table.columns) == ["file", "start_s", "end_s", *(f"e{k}" for k in range(6))]
    classifier = Classifier.load(embedder_path, providers=[CPU_PROVIDER])
    names = sorted(Path(f).name for f in table["file"].unique())
    assert names == ["a.wav", "b.MP3", "c.flac", "long.flac"]  # not the corrupt file
    for file, rows in table.groupby("file", sort=False):
        expected = classifier.predict_file(str(file), 0.5, predict.BATCH_SIZE, embeddings=True)
        assert expected.embeddings is not None
        np.testing.assert_array_equal(rows.iloc[:, 3:].to_numpy(np.float32), expected.embeddings)
        np.testing.assert_allclose(rows["start_s"], expected.starts_s, atol=5e-4)
        np.testing.assert_allclose(rows["end_s"], expected.ends_s, atol=5e-4)
    assert len(table) == 5 + 3 + 2 + 2 * LONG_SECONDS - 1  # every window at a 0.5 s hop
    assert f"wrote the embeddings of {len(table)} windows -> {table_path}" in caplog.text
    # each detection finds its window's embedding by the keys both tables share
    joined = pd.read_csv(out).merge(
        table, on=["file", "start_s", "end_s"], how="left", validate="many_to_one"
    )
    assert len(joined) > 0 and joined["e0"].notna().all()
    if name.endswith(".gz"):  # no name or time in the header: the same rows give the same bytes
        first = table_path.read_bytes()
        assert run([*argv, "--hop-seconds", "0.5"]) == 0
        assert table_path.read_bytes() == first and first[:2] == b"\x1f\x8b"


def test_embeddings_from_a_model_without_them_are_refused_before_any_audio_is_read(
    model_path: Path, recordings: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out, table_path = tmp_path / "out.csv", tmp_path / "embeddings.csv"
    argv = [str(recordings / "a.wav"), "--model", str(model_path), "-o", str(out)]
    assert run([*argv, "--embeddings", str(table_path)]) == 2
    assert f"{model_path}: the model has no embedding output" in caplog.text
    assert not out.exists() and not table_path.exists()
    with pytest.raises(SystemExit) as exit_info:  # both tables on standard output
        run([str(recordings / "a.wav"), "--model", str(model_path), "--embeddings", "-"])
    assert exit_info.value.code == 2


def test_a_file_damaged_part_way_is_classified_up_to_the_damage(
    model_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    card = tmp_path / "card"
    card.mkdir()
    path = card / "dawn.flac"
    sf.write(path, tones([(TONES_HZ[0], 30.0), (TONES_HZ[2], 30.0)]), 8000)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # a bad sector in the middle of the recording
    data[middle : middle + 3000] = np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    out = tmp_path / "d.csv"
    with caplog.at_level(logging.INFO):
        assert run([str(card), "--model", str(model_path), "-o", str(out), "--all"]) == 0
    rows = read_table(out)
    assert 20 < len(rows) < 40 and rows[0]["species"] == LOW  # the windows before the damage
    assert (
        f"{path}: classified up to " in caplog.text
        and "where it is damaged: cannot decode audio" in caplog.text
    )
    assert "1 file(s) were classified up to damaged data, not to their end" in caplog.text
    assert "could not be classified" not in caplog.text


# --------------------------------------------------------------------------------------- file names
def test_a_file_name_that_is_not_utf8_is_written_with_its_bytes_and_cut_again(
    embedder_path: Path, tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """An old memory card's Latin-1 name (``café``'s é as the byte 0xE9) and one with CSV's own
    characters: every table names each file by its own bytes, and ``birdops segments`` opens it."""
    import gzip
    import os

    card = tmp_path / "card"
    card.mkdir()
    latin1 = os.fsdecode(os.fsencode(card) + b"/caf\xe9 dawn.wav")  # not UTF-8: a lone surrogate
    sf.write(os.fsencode(latin1), tones([(TONES_HZ[2], 2.0)]), 8000, format="WAV")
    sf.write(card / 'dusk, "west".wav', tones([(TONES_HZ[0], 1.0)]), 8000)
    out, raven, embeddings = tmp_path / "d.csv", tmp_path / "d.txt", tmp_path / "e.csv.gz"
    model = ["--model", str(embedder_path), "--min-score", "0.5"]
    assert run([str(card), *model, "-o", str(out), "--embeddings", str(embeddings)]) == 0
    assert run([str(card), *model, "-o", str(raven), "--format", "raven"]) == 0
    capsysbinary.readouterr()
    assert run([str(card), *model]) == 0  # standard output
    printed = capsysbinary.readouterr().out
    latin1_bytes = os.fsencode(latin1)
    assert latin1_bytes + b",0.000,1.000," in out.read_bytes()  # the name's own bytes, not an escape
    assert out.read_bytes().count(latin1_bytes) == 2 and b'"' + os.fsencode(card) in out.read_bytes()
    assert raven.read_bytes().count(latin1_bytes) == 2
    assert gzip.decompress(embeddings.read_bytes()).count(latin1_bytes) == 2
    assert printed.count(latin1_bytes) == 2
    clips = tmp_path / "clips"
    assert cli.main(["segments", str(out), "--out", str(clips)]) == 0
    names = sorted(p.name.rsplit("_", 1)[0] for p in clips.rglob("*.wav"))  # less the score
    assert names == ["caf_ dawn_0.000-1.000", "caf_ dawn_1.000-2.000", "dusk, _west__0.000-1.000"]


# ------------------------------------------------------------------------------------ interruption
def interrupted_card(tmp_path: Path, long_seconds: int) -> Path:
    """``a.wav`` (the low tone, 2 s), then ``b.flac``: ``long_seconds`` of a faint constant level,
    which takes the model a while (and is refused as silent only after its last block), then
    ``c.wav`` (the high tone)."""
    card = tmp_path / "card"
    card.mkdir()
    sf.write(card / "a.wav", tones([(TONES_HZ[0], 2.0)]), 8000)
    with sf.SoundFile(card / "b.flac", "w", samplerate=8000, channels=1, subtype="PCM_16") as sound:
        for _ in range(long_seconds // 100):  # a constant compresses to nothing
            sound.write(np.full(100 * 8000, 2, dtype=np.int16))
    sf.write(card / "c.wav", tones([(TONES_HZ[2], 1.0)]), 8000)
    return card


def test_an_interrupted_run_keeps_the_files_it_finished(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    card = interrupted_card(tmp_path, 100)
    classify = Classifier.predict_file

    def ctrl_c_on_b(self: Classifier, path: str | Path, *args: Any) -> WindowScores:
        if Path(path).name == "b.flac":
            raise KeyboardInterrupt  # Ctrl-C while the second file is classified
        return classify(self, path, *args)

    monkeypatch.setattr(Classifier, "predict_file", ctrl_c_on_b)
    out = tmp_path / "d.csv"
    with caplog.at_level(logging.INFO):
        code = cli.main(["predict", str(card), "--model", str(model_path), "-o", str(out), "--all"])
    assert code == predict.INTERRUPTED == 130
    assert {Path(r["file"]).name for r in read_table(out)} == {"a.wav"}  # whole, not b's part, not c
    assert f"interrupted while classifying {card / 'b.flac'}" in caplog.text
    assert "the tables hold the 1 file(s) classified before it; 2 file(s) were not classified" in caplog.text
    assert not list(tmp_path.glob(".*.tmp"))


def test_sigterm_stops_a_real_run_at_the_file_it_is_classifying(model_path: Path, tmp_path: Path) -> None:
    """``birdops predict`` in its own process, stopped by SIGTERM once its first file's rows are in
    the table being written: it ends at once with the finished file's table, exit status 130."""
    import signal
    import subprocess
    import sys
    import time

    card = interrupted_card(tmp_path, 20 * 3600)  # 20 h: a minute or more to classify
    out = tmp_path / "d.csv"
    command = [sys.executable, "-m", "birdops.cli", "predict", str(card), "--model", str(model_path)]
    child = subprocess.Popen([*command, "-o", str(out), "--all"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any("a.wav" in p.read_text() for p in tmp_path.glob(".d.csv.*.tmp")):
            assert child.poll() is None and time.monotonic() < deadline, "a.wav's rows never came"
            time.sleep(0.05)
        started = time.monotonic()
        child.send_signal(signal.SIGTERM)
        _, stderr = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == predict.INTERRUPTED, stderr[-2000:]
    assert time.monotonic() - started < 10  # it did not classify the 20 h first
    assert {Path(r["file"]).name for r in read_table(out)} == {"a.wav"}
    assert "interrupted while classifying" in stderr and "b.flac" in stderr
    assert not list(tmp_path.glob(".d.csv.*.tmp"))
