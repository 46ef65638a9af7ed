"""``birdops bench``: its timing helpers and tables, and ``--quick`` end to end through the real path
(the ``lms_cache`` stage as a subprocess, the ONNX export, onnxruntime, ``birdops predict``, the
trainer). Only the figures' structure is checked: timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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
    assert parse_args([]).sections == list(SECTIONS)
    assert parse_args(["--sections", "model,train"]).sections == ["model", "train"]
    for bad in (["--sections", "nope"], ["--raw", "somewhere"], ["--model", "m.onnx"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


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

    model = sections["model"]
    assert model["providers"] == ["CPUExecutionProvider"] and model["batch_size"] == 16
    for side in ("onnxruntime", "pytorch"):
        assert len(model[side]["calls"]) == 3 and model[side]["p99_ms"] >= model[side]["p50_ms"] > 0
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
