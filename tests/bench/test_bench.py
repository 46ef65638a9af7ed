"""``birdops bench``: its timing helpers and tables, and ``--quick`` end to end through the real path
(the ``lms_cache`` stage as a subprocess, the ONNX export, onnxruntime, ``birdops predict``, the
trainer). Only the figures' structure is checked: timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from birdops.bench.growth import REPORT_MAX_RECORDING_SECONDS, write_scaled_params
from birdops.bench.main import SECTIONS, parse_args
from birdops.bench.sections import Table, base_ast, clip_shape
from birdops.bench.timing import interleaved, percentile, rate_summary
from birdops.config import VARIANTS, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_rounds_interleave_the_sides() -> None:
    calls: list[str] = []

    def side(name: str) -> object:
        return lambda: calls.append(name) or len(calls)

    results = interleaved({"a": side("a"), "b": side("b")}, repeats=3)
    assert calls == ["a", "b"] * 3  # a slow spell of the machine lands on both sides
    assert results == {"a": [1, 3, 5], "b": [2, 4, 6]}


def test_percentiles_and_medians() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.0) == 1.0 and percentile(values, 1.0) == 5.0
    assert percentile(values, 0.99) == pytest.approx(4.96)
    assert rate_summary([2.0, 1.0, 4.0], units_per_run=10)["per_s"] == 5.0  # the median run's rate


def test_table_aligns_its_columns() -> None:
    table = Table("title", ("", "left", "right"), [("clips/s", "1.0", "22.5"), ("p99 ms", "100.25", "3.0")])
    lines = table.render().splitlines()
    assert lines[0] == "title"
    assert len({len(line) for line in lines[1:]}) == 1  # every row as wide as the header
    assert lines[3].startswith("clips/s ") and lines[3].endswith("22.5")


def test_options_are_checked() -> None:
    assert parse_args([]).sections == list(SECTIONS) and "growth" not in SECTIONS  # growth: opt-in
    assert parse_args(["--sections", "model,train"]).sections == ["model", "train"]
    growth = parse_args(["--sections", "growth", "--scales", "1,2"])
    assert growth.sections == ["growth"] and growth.scales == [1, 2] and growth.growth_steps == 24
    assert parse_args([]).scales == [1, 4, 16]
    for bad in (
        ["--sections", "nope"],
        ["--raw", "somewhere"],
        ["--model", "m.onnx"],
        ["--repeats", "0"],
        ["--scales", "1,x"],
        ["--scales", "0"],
        ["--growth-steps", "0"],
    ):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_growth_scales_the_corpus_and_takes_the_reports_lengths_above_1x(tmp_path: Path) -> None:
    base = load_params(ROOT / "params.yaml").data.synthetic
    one = write_scaled_params(ROOT / "params.yaml", 1, tmp_path / "x1")
    four = write_scaled_params(ROOT / "params.yaml", 4, tmp_path / "x4")
    assert one == base.model_dump() | {"snr_db_range": list(base.snr_db_range)}  # 1x: the default
    assert (four["recordings"], four["recordists"]) == (4 * base.recordings, 4 * base.recordists)
    assert four["max_recording_seconds"] == REPORT_MAX_RECORDING_SECONDS == 60.0
    scaled = load_params(tmp_path / "x4" / "params.yaml")
    assert scaled.data.synthetic.recordings == 4 * base.recordings
    assert scaled.train_full == load_params(ROOT / "params.yaml").train_full  # only the corpus changes


@pytest.mark.slow
def test_quick_bench_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "birdops.cli", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["quick"] is True and report["repeats"] == 3
    sections = report["sections"]
    assert set(sections) == set(SECTIONS)
    assert "stage / decode" in done.stdout and "ort / torch" in done.stdout

    cache = sections["cache"]
    assert cache["recordings"] > 0 and cache["audio_seconds"] > 0 and cache["decode_refused"] == 0
    for side in ("stage", "decode_only"):
        assert len(cache[side]["seconds"]) == 3 and cache[side]["files_per_s"] > 0
    assert cache["stage_over_decode_only"] == pytest.approx(
        cache["stage"]["files_per_s"] / cache["decode_only"]["files_per_s"]
    )

    (model,) = sections["model"]["variants"].values()  # --quick: the exported variant only
    assert model["providers"] == ["CPUExecutionProvider"] and model["batch_size"] == 16
    for side in ("onnxruntime", "pytorch"):
        assert len(model[side]["calls"]) == 3 and model[side]["p99_ms"] >= model[side]["p50_ms"] > 0
        assert model["cpu_ms_1_thread"][side] > 0
    assert model["parity_digits"] > 4 and model["top1_agreement"] == 1.0  # the same model on both

    predict = sections["predict"]
    assert predict["sample_rate_hz"] == 44100 and len(predict["seconds"]) == 3
    assert predict["x_real_time"] > 0 and predict["peak_rss_mib_max"] > 10 and predict["rows"] > 0

    train = sections["train"]["variants"]
    assert set(train) == set(VARIANTS)
    for row in train.values():
        assert len(row["seconds"]) == 3 and row["samples_per_s"] > 0 and row["attention"] == "eager"

    assert "skipped" in sections["cuda"] or set(sections["cuda"]) == {"train", "onnx"}
    # a timing record of this machine: never a DVC output
    assert not (ROOT / "metrics" / "bench.json").exists()


def test_the_gpu_rows_train_the_base_ast_on_real_length_clips() -> None:
    """The CUDA section's configurations, checked where no GPU is: the 86M AST on the 173 frames of a
    real 4 s clip, in bf16, fed by the GPU profile's loader workers."""
    assert clip_shape("seed", 4.0) == (128, 173)
    full = load_params(ROOT / "params.yaml").train_full
    sdpa = base_ast(full, attention="sdpa", compile_model=True)
    assert (sdpa.model.arch, sdpa.model.size, sdpa.model.patch_stride) == ("ast", "base", 10)
    assert (sdpa.precision, sdpa.attention, sdpa.compile_model, sdpa.num_workers) == ("bf16", "sdpa", True, 4)
    assert sdpa.optim == full.optim and sdpa.augment == full.augment  # the full variant's recipe otherwise
