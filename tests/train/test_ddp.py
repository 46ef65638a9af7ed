"""``python -m pipeline.train`` on a feature cache written to disk: in this process, and under torchrun
with two CPU processes (DDP over gloo)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from params_yaml import section
from worlds import features_info, model_params, spec_of_shape

from birdops.contracts import MANIFEST_COLUMNS, mixed_split
from birdops.features.shards import INDEX_COLUMNS, write_features_info
from birdops.models.checkpoint import load_classifier
from pipeline import train as train_stage

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["Alpha one", "Beta two", "Gamma three"]
N_BINS, N_FRAMES = 32, 40


def write_cache(root: Path, preset: str, sizes: dict[str, int]) -> None:
    """A cache in the documented layout: shards, index.csv, features.json; class k is a bright band."""
    folder = root / preset
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    index = []
    for split, n in sizes.items():
        background = split.startswith("background-")  # no species: label -1, no band
        labels = np.full(n, -1) if background else np.arange(n) % len(LABELS)
        features = rng.normal(0.0, 1.0, (n, N_BINS, N_FRAMES))
        for i, label in enumerate(labels):
            if label >= 0:
                features[i, 6 + 8 * label : 10 + 8 * label] += 2.5
        shard = f"{split}-000.npy"
        np.save(folder / shard, features.astype(np.float16))
        index += [
            {
                "id": f"{split.split('-mixed')[0]}{i // 2}",  # a copy is its clip's recording
                "split": split,
                "shard": shard,
                "row": i,
                "label_index": int(label),
                "start_s": 0.0,
            }
            for i, label in enumerate(labels)
        ]
    with (folder / "index.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS)
        writer.writeheader()
        writer.writerows(index)
    write_features_info(folder, features_info(spec_of_shape(preset, N_BINS, N_FRAMES), 4.0))


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A stage's working directory: params.yaml, data/prepared/labels.json and data/lms/seed."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train_full"].update(
        model=model_params().model_dump(),
        epochs=2,
        batch_size=4,
        effective_batch_size=8,
    )
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "data/prepared").mkdir(parents=True)
    (tmp_path / "data/prepared/labels.json").write_text(json.dumps(LABELS))
    (tmp_path / "data/prepared/manifest.csv").write_text(",".join(MANIFEST_COLUMNS) + "\n")
    # train_full reads the training background and the noisy copies too (params.yaml)
    sizes = {"train": 24, "val": 9, "test": 6, "background-train": 8}
    sizes |= {mixed_split("train", copy): 24 for copy in range(section("lms_cache").background_mix.copies)}
    write_cache(tmp_path / "data/lms", "seed", sizes)
    return tmp_path


ARGS = ["--variant", "full", "--prepared", "data/prepared", "--lms", "data/lms"]
ARGS += ["--out", "models/full", "--live", "metrics/full"]


def check_outputs(workdir: Path) -> dict[str, float]:
    saved = load_classifier(workdir / "models/full", with_frontend=False)
    model, info = saved.model, saved.info
    assert info.variant == "full" and list(info.labels) == LABELS
    assert info.feature_preset == "seed" and info.feature_spec == spec_of_shape("seed", N_BINS, N_FRAMES)
    assert (*info.shape.features, info.clip_seconds) == (N_BINS, N_FRAMES, 4.0)
    with torch.no_grad():
        logits = model(torch.randn(5, N_BINS, N_FRAMES))
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()
    assert not (workdir / "models/full/state").exists()
    metrics: dict[str, float] = json.loads((workdir / "metrics/full/metrics.json").read_text())
    assert metrics["step"] == 1  # two epochs, logged once each
    assert (workdir / "metrics/full/plots/metrics/val/accuracy.tsv").is_file()
    return metrics


def test_the_stage_trains_from_the_cache_on_disk(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a fresh git repository without commits, where dvclive's repository hooks would fail
    subprocess.run(["git", "init", "-q"], cwd=workdir, check=True)
    monkeypatch.chdir(workdir)
    assert train_stage.main(ARGS) == 0
    check_outputs(workdir)
    assert not (workdir / ".dvc").exists()  # nothing initialised behind the user's back


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_two_processes_under_torchrun(workdir: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        "pipeline.train",
        *ARGS,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "rank 0 of 2 on cpu (gloo)" in result.stderr and "rank 1 of 2 on cpu (gloo)" in result.stderr
    metrics = check_outputs(workdir)
    # 9 validation clips dealt 5 + 4 to the ranks and gathered again: accuracy is a multiple of 1/9
    assert float(metrics["val"]["accuracy"]) * 9 == pytest.approx(
        round(float(metrics["val"]["accuracy"]) * 9)
    )
    # only rank 0 logged the epochs
    assert result.stderr.count("epoch 2/2") == 1
