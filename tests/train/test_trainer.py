"""The trainer on tiny in-memory data: optimizer groups, schedule, best epoch, resume, early stop."""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from params_yaml import merged, section
from safetensors.torch import load_file
from worlds import model_params, spec_of_shape

import birdops.train.trainer as trainer
from birdops.config import OptimParams, ScheduleParams, TrainParams
from birdops.contracts import read_info
from birdops.models.checkpoint import load_classifier
from birdops.models.factory import build_model, is_head
from birdops.train.data import EpochSampler, FeatureDataset, MixingSampler, TrainData, training_set
from birdops.train.distributed import DistContext
from birdops.train.optim import lr_factor, make_optimizer
from birdops.train.trainer import (
    accumulation_steps,
    autocast_dtype,
    make_loader,
    presence,
    train,
    use_fused_adamw,
)

N_BINS, N_FRAMES, CLASSES = 32, 40, 3


@dataclass(frozen=True)
class ArraySplit:
    features: np.ndarray  # (N, F, T) float16
    labels: np.ndarray  # (N,) int64

    @property
    def ids(self) -> list[str]:
        return [f"XC{i // 2}" for i in range(len(self.labels))]  # two clips a recording


def make_split(n: int, seed: int) -> ArraySplit:
    """Class k is a bright band of frequency rows around 8 + 8k, in noise: easy to learn."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % CLASSES
    features = rng.normal(0.0, 1.0, (n, N_BINS, N_FRAMES))
    for i, label in enumerate(labels):
        features[i, 6 + 8 * label : 10 + 8 * label] += 2.5
    return ArraySplit(features.astype(np.float16), labels)


def train_data(train: int, val: int, labels: tuple[str, ...] = ("a", "b", "c")) -> TrainData:
    """``train`` and ``val`` clips of :func:`make_split` (seeds 0 and 1) of 4 s ``seed`` features."""
    spec = spec_of_shape("seed", N_BINS, N_FRAMES)
    return TrainData(make_split(train, 0), make_split(val, 1), labels, "seed", spec, clip_seconds=4.0)


@pytest.fixture(scope="module")
def data() -> TrainData:
    return train_data(48, 24, ("Alpha one", "Beta two", "Gamma three"))


def params(**overrides: Any) -> TrainParams:
    base: dict[str, Any] = {
        "model": {"arch": "ast", "size": "tiny", "features": "seed", "pretrained": None, "patch_stride": 10},
        "optim": {"backbone_lr": 3e-3, "head_lr": 3e-3, "weight_decay": 1e-2},
        "epochs": 3,
        "batch_size": 8,
        "seed": 5,
    }
    return section("train_baseline", **merged(base, overrides))


FULL = {
    "model": {"arch": "ast", "size": "tiny", "features": "seed", "patch_stride": 10, "dropout": 0.1},
    "augment": {
        "spec_augment": {"enabled": True, "freq_mask_bins": 4, "time_mask_frames": 6, "prob": 0.8},
        "mixup": {"enabled": True, "alpha": 0.4, "prob": 0.6},
    },
    "effective_batch_size": 16,  # two micro-batches per step
}


def read_tsv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ------------------------------------------------------------------------------------- optimizer
def test_discriminative_learning_rates_land_in_the_right_groups() -> None:
    model = build_model(
        model_params(),
        CLASSES,
        N_BINS,
        N_FRAMES,
    )
    optimizer = make_optimizer(model, OptimParams(backbone_lr=5e-5, head_lr=1e-3, weight_decay=0.01))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"backbone", "backbone_no_decay", "head", "head_no_decay"}
    for name, group in groups.items():
        members = [names[id(p)] for p in group["params"]]
        assert all(is_head(n) == name.startswith("head") for n in members), name
        assert group["lr"] == group["base_lr"] == (1e-3 if name.startswith("head") else 5e-5)
        assert group["weight_decay"] == (0.0 if name.endswith("no_decay") else 0.01)
    # biases, norms and embedding tokens take no weight decay; linear weights do
    no_decay = {names[id(p)] for n in ("backbone_no_decay", "head_no_decay") for p in groups[n]["params"]}
    assert "classifier.dense.bias" in no_decay and "classifier.layernorm.weight" in no_decay
    assert "backbone.embeddings.position_embeddings" in no_decay
    assert "backbone.layers.0.attention.q_proj.weight" not in no_decay
    assert [names[id(p)] for p in groups["head"]["params"]] == ["classifier.dense.weight"]
    # every parameter exactly once
    counted = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(counted) == sorted(names)


def test_learning_rate_schedule() -> None:
    cosine = ScheduleParams(kind="cosine", warmup_epochs=0.0, min_lr_ratio=0.1)
    assert lr_factor(0, 100, 0, cosine) == 1.0  # no warmup: the first step at the full rate
    assert lr_factor(50, 100, 0, cosine) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_factor(100, 100, 0, cosine) == pytest.approx(0.1)
    assert lr_factor(10, 110, 10, cosine) == 1.0  # cosine starts after the warmup
    assert [lr_factor(s, 110, 4, cosine) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(73, 100, 0, ScheduleParams(kind="constant", warmup_epochs=0.0, min_lr_ratio=0.0)) == 1.0


def test_accumulation_reaches_the_effective_batch() -> None:
    assert accumulation_steps(params(batch_size=8, effective_batch_size=32), world_size=1) == 4
    assert accumulation_steps(params(batch_size=8, effective_batch_size=32), world_size=2) == 2
    assert accumulation_steps(params(batch_size=8), world_size=4) == 1
    with pytest.raises(ValueError, match="not a multiple"):
        accumulation_steps(params(batch_size=8, effective_batch_size=24), world_size=2)


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu() -> None:
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda", 0)) is torch.bfloat16
    assert autocast_dtype("fp16", torch.device("cpu")) is torch.float16
    assert autocast_dtype("fp32", torch.device("cuda", 0)) is None


# --------------------------------------------------------------------------------------- sampling
def test_epoch_sampler_is_a_function_of_seed_and_epoch() -> None:
    labels = np.array([0] * 30 + [1] * 6 + [2] * 4)
    sampler = EpochSampler(labels, seed=3, shuffle=True)
    sampler.set_epoch(2)
    first = list(sampler)
    assert sorted(first) == list(range(40))
    again = EpochSampler(labels, seed=3, shuffle=True)
    again.set_epoch(2)
    assert list(again) == first  # a resumed run sees the same order
    again.set_epoch(3)
    assert list(again) != first
    # balanced: each class about a third of the draws although class 0 has 75% of the clips
    balanced = EpochSampler(np.repeat(labels, 50), seed=3, shuffle=True, balanced=True)
    counts = np.bincount(np.repeat(labels, 50)[list(balanced)], minlength=3) / (40 * 50)
    np.testing.assert_allclose(counts, [1 / 3] * 3, atol=0.03)


def test_epoch_sampler_deals_indices_to_ranks() -> None:
    labels = np.zeros(11, dtype=np.int64)
    shards = [list(EpochSampler(labels, 0, shuffle=True, rank=r, world_size=3)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded so every rank steps the same number of times
    assert set().union(*shards) == set(range(11))
    val = [EpochSampler(labels, 0, shuffle=False, even=False, rank=r, world_size=3) for r in range(3)]
    assert sorted(i for sampler in val for i in sampler) == list(range(11))  # evaluation: each clip once
    assert [len(sampler) for sampler in val] == [4, 4, 3]


def background_split(n: int, seed: int) -> ArraySplit:
    """Noise with a bright band between the classes' bands: no species."""
    rng = np.random.default_rng(seed)
    features = rng.normal(0.0, 1.0, (n, N_BINS, N_FRAMES))
    features[:, 26:30] += 2.5
    return ArraySplit(features.astype(np.float16), np.full(n, -1, dtype=np.int64))


def with_background(data: TrainData) -> TrainData:
    """``data`` with 12 background clips, a noisy copy of each train clip and recording XC0's clips
    having class 2 as a background species."""
    noisy = ArraySplit((data.train.features.astype(np.float32) + 0.5).astype(np.float16), data.train.labels)
    return replace(data, background=background_split(12, 7), train_mixed=(noisy,), secondary={"XC0": (2,)})


def test_mixing_sampler_visits_clean_and_background_items_and_swaps_in_copies() -> None:
    base = train_data(40, 4)
    items = training_set(with_background(base))
    assert (items.clean, items.mixed, items.background) == (40, 40, 12) and len(items.dataset) == 92
    sampler = MixingSampler(items, seed=3, mixed_prob=0.5, background_share=0.25, shuffle=True)
    sampler.set_epoch(1)
    order = list(sampler)
    assert len(order) == len(sampler) == 40 + 10
    clean_item = [i if i < 40 else i - 40 for i in order if i < 80]
    assert sorted(clean_item) == list(range(40))  # each train clip once, clean or as its copy
    background = [i for i in order if i >= 80]
    assert len(background) == len(set(background)) == 10 and set(background) <= set(range(80, 92))
    swapped = sum(40 <= i < 80 for i in order)
    assert 10 <= swapped <= 30
    again = MixingSampler(items, seed=3, mixed_prob=0.5, background_share=0.25, shuffle=True)
    again.set_epoch(1)
    assert list(again) == order  # a function of (seed, epoch): a resumed run reads the same items
    again.set_epoch(2)
    assert {i for i in again if i >= 80} != set(background)  # another draw of background each epoch
    never = MixingSampler(items, seed=3, mixed_prob=0.0, background_share=0.0, shuffle=True)
    never.set_epoch(1)
    assert sorted(never) == list(range(40))  # neither copies nor background: the clean epoch
    plain = EpochSampler(base.train.labels, 3, shuffle=True)
    plain.set_epoch(1)
    assert list(never) == list(plain)  # the same order as a variant without background
    # an item: features, label (-1 for background), weights (0 for a recording's background species)
    _, label, weights = items.dataset[85]
    assert int(label) == -1 and weights.tolist() == [1.0, 1.0, 1.0]
    _, label, weights = items.dataset[1]  # train clip 1 is recording XC0's
    assert weights.tolist() == [1.0, 1.0, 0.0] and int(label) == 1
    copies = with_background(base).train_mixed
    assert copies is not None
    copy = copies[0]
    np.testing.assert_array_equal(items.dataset[41][0].numpy(), copy.features[1].astype(np.float32))
    assert presence(torch.tensor([2, -1]), 3).tolist() == [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]]


def test_mixing_sampler_draws_among_several_noisy_copies() -> None:
    """With three noisy copies of each train clip (items 40-79, 80-119, 120-159: copy after copy, row
    for row), a clip read noisy is read as any of its copies; each clip is still visited once."""
    base = train_data(40, 4)
    copies = tuple(
        ArraySplit((base.train.features.astype(np.float32) + k).astype(np.float16), base.train.labels)
        for k in (1, 2, 3)
    )
    items = training_set(replace(base, background=background_split(12, 7), train_mixed=copies))
    assert (items.clean, items.mixed, items.background) == (40, 120, 12) and len(items.dataset) == 172
    np.testing.assert_array_equal(
        items.dataset[2 * 40 + 5][0].numpy(), copies[1].features[5].astype(np.float32)
    )
    seen: set[int] = set()
    for epoch in range(4):
        sampler = MixingSampler(items, seed=3, mixed_prob=0.9, background_share=0.25, shuffle=True)
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert sorted(i % 40 for i in order if i < 160) == list(range(40))  # each clip once
        assert {i for i in order if i >= 160} <= set(range(160, 172))
        seen |= {i // 40 for i in order if 40 <= i < 160}
    assert seen == {1, 2, 3}  # every copy is read
    with pytest.raises(ValueError, match="row for row"):
        training_set(replace(base, train_mixed=(copies[0], make_split(39, 0))))


def test_a_sigmoid_model_learns_to_say_none_on_background(data: TrainData, tmp_path: Path) -> None:
    """Trained with background clips as all-negative targets, the model's scores on unseen background
    stay low while the species are still recognised; the saved model says it reads logits as sigmoids."""
    run = params(
        epochs=4, loss={"kind": "focal_bce", "gamma": 2.0, "alpha": None, "secondary_species": "mask"}
    )
    result = train(run, with_background(data), tmp_path / "out", None, "baseline")
    assert result.info.activation == "sigmoid" and read_info(tmp_path / "out").activation == "sigmoid"
    assert result.history[-1]["val/accuracy"] > 0.8
    model = load_classifier(tmp_path / "out", with_frontend=False).model
    with torch.no_grad():
        unseen = torch.sigmoid(model(torch.from_numpy(background_split(16, 99).features.astype(np.float32))))
        species = torch.sigmoid(model(torch.from_numpy(data.val.features.astype(np.float32))))
    truth = species[torch.arange(len(species)), torch.from_numpy(data.val.labels)]  # (24,)
    loudest = unseen.max(dim=1).values  # (16,) each background clip's highest species score
    # the focal loss keeps scores near the middle (calibration spreads them): what matters is the order
    assert float(truth.mean() - loudest.mean()) > 0.15
    ranked_above = (truth[:, None] > loudest[None, :]).float().mean()
    assert float(ranked_above) > 0.9


# ------------------------------------------------------------------------------------------ train
def test_training_keeps_the_best_epoch_and_logs_every_epoch(data: TrainData, tmp_path: Path) -> None:
    result = train(params(epochs=4), data, tmp_path / "out", tmp_path / "live", variant="baseline")
    history = result.history
    assert len(history) == 4 and result.resumed_epochs == 0
    accuracies = [row["val/accuracy"] for row in history]
    assert result.info.best_epoch == int(np.argmax(accuracies)) + 1  # the first best epoch
    assert max(accuracies) > 0.8  # the bands are easy to tell apart
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    # the cosine schedule steps per optimizer step: 48 clips / batch 8 = 6 steps an epoch, 24 in all
    for epoch, row in enumerate(history):
        last_step = 6 * (epoch + 1) - 1
        expected = 3e-3 * lr_factor(
            last_step, 24, 0, ScheduleParams(kind="cosine", warmup_epochs=0.0, min_lr_ratio=0.0)
        )
        assert row["lr/head"] == pytest.approx(expected) and row["lr/backbone"] == pytest.approx(expected)

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # state/ removed
    saved = load_classifier(out, with_frontend=False)
    model, info = saved.model, saved.info
    assert info.labels == data.labels and info.shape.features == (N_BINS, N_FRAMES)
    assert info.best_metric == "val_accuracy" and info.best_value == max(accuracies)
    with torch.no_grad():
        logits = model(torch.from_numpy(data.val.features.astype(np.float32)))
    saved_accuracy = float((logits.argmax(dim=1).numpy() == data.val.labels).mean())
    assert saved_accuracy == pytest.approx(history[info.best_epoch - 1]["val/accuracy"])

    live = tmp_path / "live"
    metrics = json.loads((live / "metrics.json").read_text())
    assert metrics["step"] == 3 and metrics["best"]["epoch"] == info.best_epoch
    rows = read_tsv(live / "plots/metrics/val/accuracy.tsv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    assert [float(r["accuracy"]) for r in rows] == pytest.approx(accuracies)
    for name in ("train/loss", "train/accuracy", "val/loss", "val/f1_macro", "lr/backbone", "lr/head"):
        assert len(read_tsv(live / f"plots/metrics/{name}.tsv")) == 4, name
    assert not (live / "dvc.yaml").exists()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_result(
    data: TrainData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = params(**FULL)
    reference = train(run, data, tmp_path / "a", tmp_path / "live-a", variant="full")

    original = trainer.save_state

    def save_then_die(directory: Path, state: Any, *args: Any) -> None:
        original(directory, state, *args)
        if state.epoch == 1:
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(trainer, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(run, data, tmp_path / "b", tmp_path / "live-b", variant="full")
    assert (tmp_path / "b/state/last.safetensors").exists()
    assert not (tmp_path / "b/model.safetensors").exists()
    assert len(read_tsv(tmp_path / "live-b/plots/metrics/val/loss.tsv")) == 1
    monkeypatch.setattr(trainer, "save_state", original)

    resumed = train(run, data, tmp_path / "b", tmp_path / "live-b", variant="full")
    assert resumed.resumed_epochs == 1
    assert resumed.history == reference.history
    assert resumed.info == reference.info
    weights_a = load_file(tmp_path / "a/model.safetensors")
    weights_b = load_file(tmp_path / "b/model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
    # the curves have each epoch once, with the same values
    for name in ("val/loss", "train/loss", "lr/head"):
        rows_a = read_tsv(tmp_path / f"live-a/plots/metrics/{name}.tsv")
        rows_b = read_tsv(tmp_path / f"live-b/plots/metrics/{name}.tsv")
        assert [(r["step"], r[name.split("/")[1]]) for r in rows_a] == [
            (r["step"], r[name.split("/")[1]]) for r in rows_b
        ]
    assert not (tmp_path / "b/state").exists()


def test_a_state_from_other_params_is_ignored(
    data: TrainData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = trainer.save_state

    def save_then_die(directory: Path, state: Any, *args: Any) -> None:
        original(directory, state, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(params(epochs=2), data, tmp_path / "out", None, variant="baseline")
    monkeypatch.setattr(trainer, "save_state", original)
    changed = params(epochs=2, optim={"backbone_lr": 1e-3, "head_lr": 1e-2, "weight_decay": 0.0})
    with caplog.at_level(logging.WARNING):
        result = train(changed, data, tmp_path / "out", None, variant="baseline")
    assert result.resumed_epochs == 0
    assert "ignoring resume state" in caplog.text and "other params or data" in caplog.text


def test_an_unreadable_state_is_ignored(
    data: TrainData, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "out/state").mkdir(parents=True)
    (tmp_path / "out/state/last.safetensors").write_bytes(b"\x00 half a file")
    with caplog.at_level(logging.WARNING):
        result = train(params(epochs=1), data, tmp_path / "out", None, variant="baseline")
    assert result.resumed_epochs == 0 and "ignoring unreadable resume state" in caplog.text
    assert not (tmp_path / "out/state").exists()


def test_early_stopping_ends_the_run_after_patience(data: TrainData, tmp_path: Path) -> None:
    # a learning rate too small to change a prediction: the accuracy of epoch 1 is never beaten
    frozen = params(
        epochs=6,
        optim={"backbone_lr": 1e-12, "head_lr": 1e-12, "weight_decay": 0.0},
        early_stopping={"metric": "val_accuracy", "patience": 2},
    )
    result = train(frozen, data, tmp_path / "out", None, variant="baseline")
    assert len({row["val/accuracy"] for row in result.history}) == 1
    assert len(result.history) == result.info.epochs_run == 3  # epoch 1, then two without improvement
    assert result.info.best_epoch == 1
    # on the loss, lower is better: a run whose loss only grows keeps its first epoch too
    assert trainer.improved(0.5, 0.6, larger_is_better=False)
    assert not trainer.improved(0.7, 0.6, larger_is_better=False)
    assert trainer.improved(0.7, None, larger_is_better=True)


def test_balanced_sampling_and_bf16_run(data: TrainData, tmp_path: Path) -> None:
    result = train(
        params(epochs=1, balanced_sampling=True, precision="bf16", schedule={"kind": "constant"}),
        data,
        tmp_path / "out",
        None,
        variant="baseline",
    )
    row = result.history[0]
    assert math.isfinite(row["train/loss"]) and math.isfinite(row["val/loss"])
    assert row["lr/backbone"] == row["lr/head"] == 3e-3


def test_gradient_accumulation_matches_the_large_batch(data: TrainData, tmp_path: Path) -> None:
    # same clips in the same order: two accumulated micro-batches of 8 make one step of 16
    runs = {
        "large": params(epochs=1, batch_size=16),
        "accumulated": params(epochs=1, batch_size=8, effective_batch_size=16),
        "small": params(epochs=1, batch_size=8),
    }
    weights = {}
    for name, run in runs.items():
        train(run, data, tmp_path / name, None, variant="baseline")
        weights[name] = load_file(tmp_path / name / "model.safetensors")
    for key, value in weights["large"].items():
        torch.testing.assert_close(weights["accumulated"][key], value, rtol=1e-4, atol=1e-5)
    assert any(not torch.allclose(weights["small"][k], v, atol=1e-4) for k, v in weights["large"].items())


# ------------------------------------------------------------------------------ GPU-side settings
def test_gpu_settings_default_to_the_cpu_results() -> None:
    defaults = section(
        "train_baseline", model={"size": "tiny", "pretrained": None, "patch_stride": 10}, epochs=10
    )
    assert (defaults.attention, defaults.compile_model, defaults.fused_adamw) == ("eager", False, "auto")
    assert not use_fused_adamw(defaults, torch.device("cpu"))  # CPU runs keep their results
    assert use_fused_adamw(defaults, torch.device("cuda", 0))
    assert not use_fused_adamw(params(fused_adamw="off"), torch.device("cuda", 0))
    model = build_model(
        model_params(),
        CLASSES,
        N_BINS,
        N_FRAMES,
    )
    assert (
        make_optimizer(model, OptimParams(backbone_lr=5e-5, head_lr=1e-3, weight_decay=1e-2)).defaults[
            "fused"
        ]
        is None
    )
    assert (
        make_optimizer(
            model, OptimParams(backbone_lr=5e-5, head_lr=1e-3, weight_decay=1e-2), fused=True
        ).defaults["fused"]
        is True
    )


def test_the_loader_keeps_its_workers_and_prefetches(data: TrainData) -> None:
    sampler = EpochSampler(data.train.labels, 0, shuffle=True)
    dataset = FeatureDataset([data.train], CLASSES)
    cpu, cuda = (DistContext(0, 1, torch.device(name)) for name in ("cpu", "cuda"))
    in_process = make_loader(dataset, sampler, params(), cpu)
    assert in_process.num_workers == 0 and not in_process.persistent_workers and not in_process.pin_memory
    workers = make_loader(dataset, sampler, params(num_workers=2, prefetch_factor=4), cuda)
    assert workers.persistent_workers and workers.pin_memory and workers.prefetch_factor == 4


def test_sdpa_training_matches_eager_training(data: TrainData, tmp_path: Path) -> None:
    """The attention kernel changes rounding only: the same run, the same curve and weights that load
    into the eager model."""
    runs = {name: params(epochs=1, attention=name) for name in ("eager", "sdpa")}
    results = {name: train(run, data, tmp_path / name, None, "baseline") for name, run in runs.items()}
    for key in ("train/loss", "val/loss"):
        assert results["sdpa"].history[0][key] == pytest.approx(results["eager"].history[0][key], rel=1e-4)
    eager = load_file(tmp_path / "eager" / "model.safetensors")
    for key, value in load_file(tmp_path / "sdpa" / "model.safetensors").items():
        torch.testing.assert_close(value, eager[key], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_compiled_model_trains_the_same_run(
    data: TrainData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.compile (inductor, here on CPU) runs the training steps; evaluation, the saved weights
    and their names are the plain model's."""
    # a cache of its own: inductor's shared one (/tmp/torchinductor_<user>) may hold another
    # environment's compiled kernels, and loading one of those crashed the interpreter (SIGBUS)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    plain = train(params(epochs=1), data, tmp_path / "plain", None, variant="baseline")
    compiled = train(params(epochs=1, compile_model=True), data, tmp_path / "compiled", None, "baseline")
    assert compiled.history[0]["train/loss"] == pytest.approx(plain.history[0]["train/loss"], rel=1e-3)
    weights = load_file(tmp_path / "compiled" / "model.safetensors")
    assert set(weights) == set(load_file(tmp_path / "plain" / "model.safetensors"))
    model = load_classifier(tmp_path / "compiled", with_frontend=False).model
    assert not any("_orig_mod" in name for name in model.state_dict())
