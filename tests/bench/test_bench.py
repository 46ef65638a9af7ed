"""``birdops bench``: its timing helpers and tables, and ``--quick`` end to end through the real path
(the ``lms_cache`` stage as a subprocess, the ONNX export, onnxruntime, ``birdops predict``, the
trainer). Only the figures' structure is checked: timings are never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from birdops.bench.common import Table
from birdops.bench.cuda import base_ast, cuda_configs
from birdops.bench.gpu import AUDIOSET_AST, gpu_profile_params, mit_shaped_checkpoint
from birdops.bench.growth import REPORT_MAX_RECORDING_SECONDS, write_scaled_params
from birdops.bench.main import PREDICT_BATCH_SIZE, SECTIONS, parse_args
from birdops.bench.timing import interleaved, percentile, rate_summary
from birdops.bench.train import clip_shape, random_data
from birdops.config import VARIANTS, load_params
from birdops.models.factory import build_model
from birdops.models.pretrained import load_pretrained

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
    assert parse_args([]).scales == [1, 4, 16] and parse_args([]).cuda_batches == [32, 64, 128]
    for bad in (
        ["--sections", "nope"],
        ["--raw", "somewhere"],
        ["--model", "m.onnx"],
        ["--repeats", "0"],
        ["--scales", "1,x"],
        ["--scales", "0"],
        ["--growth-steps", "0"],
        ["--cuda-batches", "32,x"],
        ["--cuda-batches", "0"],
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
    background = load_params(ROOT / "params.yaml").data.background_synthetic
    assert scaled.data.background_synthetic.recordings == 4 * background.recordings  # cached alike
    assert scaled.train_full == load_params(ROOT / "params.yaml").train_full  # only the corpus changes


def run_bench(args: list[str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``birdops bench ARGS`` in a process of its own, from the repository root."""
    command = [sys.executable, "-m", "birdops.cli", "bench", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, check=False)


@pytest.mark.slow
def test_quick_bench_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = run_bench(["--quick", "--out", str(out)], timeout_s=1200)
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
    work = cache["work_per_file"]  # every recording decoded, each part of its work measured
    assert work["files"] == cache["recordings"]
    assert set(work["cpu_ms_per_file"]) == {"decode", "activity", "features", "partial_write"}
    assert all(ms > 0 for ms in work["cpu_ms_per_file"].values())
    assert "where a recording's time goes" in done.stdout

    (model,) = sections["model"]["variants"].values()  # --quick: the exported variant only
    assert model["providers"] == ["CPUExecutionProvider"] and model["batch_size"] == 16
    for side in ("onnxruntime", "pytorch"):
        assert len(model[side]["calls"]) == 3 and model[side]["p99_ms"] >= model[side]["p50_ms"] > 0
        assert model["cpu_ms_1_thread"][side] > 0
    assert model["parity_digits"] > 4 and model["top1_agreement"] == 1.0  # the same model on both

    predict = sections["predict"]
    assert predict["sample_rate_hz"] == 44100 and len(predict["seconds"]) == 3
    assert predict["x_real_time"] > 0 and predict["peak_rss_mib_max"] > 10 and predict["rows"] > 0
    assert predict["batch_size"] == PREDICT_BATCH_SIZE  # what birdops predict runs by default

    train = sections["train"]["variants"]
    assert set(train) == set(VARIANTS)
    for row in train.values():
        assert len(row["seconds"]) == 3 and row["samples_per_s"] > 0 and row["attention"] == "eager"

    assert "skipped" in sections["cuda"] or set(sections["cuda"]) == {"train", "onnx"}
    # a timing record of this machine: never a DVC output
    assert not (ROOT / "metrics" / "bench.json").exists()


@pytest.mark.parametrize(("preset", "frames"), [("seed", 173), ("seed", 1024), ("ast", 398), ("mfcc", 2)])
def test_random_training_data_has_the_shape_asked_for(preset: str, frames: int) -> None:
    """The training sections time frame counts no 4 s clip has (the report's padded 1024): the data
    the trainer builds its model from must say that shape."""
    params = load_params(ROOT / "params.yaml").train_full
    params = params.model_copy(update={"model": params.model.model_copy(update={"features": preset})})
    n_bins = clip_shape(preset, 4.0)[0]
    data = random_data(params, (n_bins, frames), num_classes=3, clips=4)
    assert data.shape.features == (n_bins, frames) == data.train.features.shape[1:]


def test_the_gpu_rows_train_the_base_ast_on_real_length_clips() -> None:
    """The CUDA section's configurations, checked where no GPU is: the 86M AST on the 173 frames of a
    real 4 s clip, in bf16, fed by the GPU profile's loader workers."""
    assert clip_shape("seed", 4.0) == (128, 173)
    full = load_params(ROOT / "params.yaml").train_full
    sdpa = base_ast(full, attention="sdpa", compile_model=True)
    assert (sdpa.model.arch, sdpa.model.size, sdpa.model.patch_stride) == ("ast", "base", 10)
    assert (sdpa.precision, sdpa.attention, sdpa.compile_model, sdpa.num_workers) == ("bf16", "sdpa", True, 4)
    assert sdpa.optim == full.optim and sdpa.augment == full.augment  # the full variant's recipe otherwise


def test_the_gpu_section_times_sdpa_compiled_at_batch_32_64_and_128() -> None:
    full = load_params(ROOT / "params.yaml").train_full
    configs = cuda_configs(full, 173, [398, 1024], [32, 64, 128], use_compile=True)
    assert list(configs) == [
        "eager",
        "sdpa",
        "sdpa+compile",
        "sdpa+compile batch 64",
        "sdpa+compile batch 128",
        "eager 398 frames",
        "eager 1024 frames",
    ]
    for name in ("sdpa+compile", "sdpa+compile batch 64", "sdpa+compile batch 128"):
        params, frames = configs[name]
        assert (params.attention, params.compile_model, params.precision, frames) == (
            "sdpa",
            True,
            "bf16",
            173,
        )
        assert (params.model.size, params.model.patch_stride) == ("base", 10)
    assert [configs[n][0].batch_size for n in configs] == [32, 32, 32, 64, 128, 32, 32]
    plain = cuda_configs(full, 173, [], [32, 64], use_compile=False)
    assert list(plain) == ["eager", "sdpa", "sdpa batch 64"] and not plain["sdpa batch 64"][0].compile_model


def test_without_a_gpu_the_cuda_section_says_it_is_skipped(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the section runs")
    out = tmp_path / "bench.json"
    done = run_bench(["--sections", "cuda", "--out", str(out)], timeout_s=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped: no CUDA device" in done.stdout
    assert json.loads(out.read_text())["sections"]["cuda"] == {"skipped": "no CUDA device"}


def test_the_gpu_profile_fine_tunes_from_an_mit_shaped_checkpoint(tmp_path: Path) -> None:
    """The README's recipe from a checkpoint laid out as MIT/ast-finetuned-audioset-10-10-0.4593 is
    (1024 frames, 527 classes, the Hugging Face names): the position embedding is sliced to the ast
    preset's 398 frames and the head replaced, as with the real one (a tiny AST here)."""
    tiny = AUDIOSET_AST.model_copy(update={"size": "tiny"})
    checkpoint = mit_shaped_checkpoint(tmp_path / "mit", tiny)
    config = json.loads((checkpoint / "config.json").read_text())
    assert (config["max_length"], config["num_mel_bins"], len(config["id2label"])) == (1024, 128, 527)
    assert (config["frequency_stride"], config["time_stride"]) == (10, 10)
    full = load_params(ROOT / "params.yaml").train_full
    params = gpu_profile_params(full, checkpoint)
    assert (params.model.size, params.model.features, params.model.pretrained) == (
        "base",
        "ast",
        str(checkpoint),
    )
    assert (params.batch_size, params.num_workers, params.attention, params.compile_model) == (
        32,
        4,
        "sdpa",
        True,
    )
    assert (params.optim.backbone_lr, params.optim.head_lr, params.precision) == (5e-5, 1e-3, "bf16")
    model = build_model(tiny.model_copy(update={"pretrained": str(checkpoint)}), 20, 128, 398)
    load_pretrained(model, str(checkpoint))
    assert model.backbone.embeddings.position_embeddings.shape[1] == 2 + 12 * 39  # 128 x 398, stride 10
