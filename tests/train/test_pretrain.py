"""The pretraining stand-in: generated sound scenes, an AST pretrained on them in the Hugging Face layout,
loaded back by transformers as a user loads the real AudioSet checkpoint, and fine-tuned through
``model.pretrained`` (strict load, position embedding sliced to the shorter clip, new head)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from params_yaml import section
from safetensors.torch import load_file
from transformers import ASTForAudioClassification
from worlds import model_params

from birdops.config import PretrainParams
from birdops.data.sounds import SOUND_CLASSES, render_stem
from birdops.features.frontend import LogMelFrontEnd, build_frontend
from birdops.models.factory import build_model
from birdops.models.pretrained import POSITION_KEY, load_pretrained
from birdops.train import pretrain as pretraining
from birdops.train.pretrain import MelScenes, features_from_mel_power, pretrain, render_scenes

SAMPLE_RATE_HZ = 22050


def tiny_params(**changes: object) -> PretrainParams:
    corpus = section(
        "pretrain.corpus", seed=3, clip_seconds=3.0, stems_per_class=1, val_stems_per_class=1, val_clips=8
    )
    model = model_params(patch_stride=16)
    fields = {"corpus": corpus, "model": model, "steps": 4, "batch_size": 4, "eval_every": 2, **changes}
    return section("pretrain", **fields)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pretrain") / "model"
    result = pretrain(tiny_params(), out)
    assert result.steps == 4 and len(result.history) == 2 and 0.0 <= result.val_map <= 1.0
    return out


@pytest.mark.parametrize("index", range(len(SOUND_CLASSES)))
def test_every_sound_class_renders_a_distinct_finite_recording(index: int) -> None:
    wave = render_stem(index, seed=1, index=0, seconds=2.0, sample_rate_hz=SAMPLE_RATE_HZ)
    assert wave.shape == (2 * SAMPLE_RATE_HZ,) and wave.dtype == np.float32
    assert np.isfinite(wave).all() and np.abs(wave).max() > 0.1
    again = render_stem(index, seed=1, index=0, seconds=2.0, sample_rate_hz=SAMPLE_RATE_HZ)
    other = render_stem(index, seed=1, index=1, seconds=2.0, sample_rate_hz=SAMPLE_RATE_HZ)
    assert np.array_equal(wave, again)  # a pure function of (seed, class, index)
    assert not np.array_equal(wave, other)  # every recording of a class draws its own parameters


def test_scenes_are_multi_label_mixtures_with_the_front_ends_features() -> None:
    frontend = build_frontend("seed")
    assert isinstance(frontend, LogMelFrontEnd)
    scenes = render_scenes(tiny_params(), frontend, first_stem=0, count=1)
    assert isinstance(scenes, MelScenes) and scenes.num_classes == len(SOUND_CLASSES)
    mel, labels = scenes.batch(np.random.default_rng(0), 64)
    n_frames = frontend.num_frames(3 * SAMPLE_RATE_HZ)
    assert mel.shape == (64, 128, n_frames) and labels.shape == (64, len(SOUND_CLASSES))
    per_scene = labels.sum(dim=1)
    assert per_scene.min() >= 1 and per_scene.max() <= 3 and len(set(per_scene.tolist())) == 3
    # one source and no shift or gain: the scene's features are the front end's on the recording itself
    wave = torch.from_numpy(render_stem(4, 3, 0, 3.0, SAMPLE_RATE_HZ))[None]
    with torch.no_grad():
        direct = frontend(wave)
        split = features_from_mel_power(frontend, frontend.mel_power(wave))
    torch.testing.assert_close(split, direct)


def scenes_one_by_one(
    scenes: MelScenes, rng: np.random.Generator, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scenes of ``MelScenes.batch`` mixed one source at a time, as the stage first did."""
    classes, per_class, _, frames = scenes.stems.shape
    mels = torch.zeros((size, *scenes.stems.shape[2:]))
    labels = torch.zeros((size, classes))
    for b in range(size):
        count = int(rng.integers(1, scenes.max_sources + 1))
        for c in rng.choice(classes, size=count, replace=False):
            source = torch.roll(scenes.stems[c, rng.integers(per_class)], int(rng.integers(frames)), dims=-1)
            if rng.random() < 1 / 3:
                length = int(rng.integers(max(1, round(0.3 * frames)), frames + 1))
                start = int(rng.integers(0, frames - length + 1))
                gate = torch.zeros(frames)
                gate[start : start + length] = torch.from_numpy(np.hanning(length + 2)[1:-1] ** 0.5).float()
                source = source * gate
            mels[b] += source * float(10 ** (rng.uniform(-12.0, 0.0) / 10))
            labels[b, c] = 1.0
        bed = torch.roll(scenes.beds[rng.integers(len(scenes.beds))], int(rng.integers(frames)), dims=-1)
        mels[b] += bed * float(10 ** (-rng.uniform(15.0, 35.0) / 10))
    return mels, labels


def test_batched_scenes_are_bit_identical_to_mixing_one_source_at_a_time() -> None:
    """The batched mixing draws the same numbers in the same order and adds the same float32 terms in
    the same order: the pretraining data, and so the checkpoint, do not change by a bit."""
    frontend = build_frontend("seed")
    assert isinstance(frontend, LogMelFrontEnd)
    scenes = render_scenes(tiny_params(), frontend, first_stem=0, count=2)
    for seed in range(6):
        mel, labels = scenes.batch(np.random.default_rng(seed), 16)
        expected_mel, expected_labels = scenes_one_by_one(scenes, np.random.default_rng(seed), 16)
        assert torch.equal(mel, expected_mel) and torch.equal(labels, expected_labels)


def test_the_checkpoint_is_what_transformers_loads_as_an_audioset_model(checkpoint: Path) -> None:
    assert sorted(p.name for p in checkpoint.iterdir()) == ["config.json", "model.safetensors"]
    hf = ASTForAudioClassification.from_pretrained(checkpoint, use_safetensors=True)
    config = hf.config
    assert (
        config.id2label == dict(enumerate(SOUND_CLASSES))
        and config.problem_type == "multi_label_classification"
    )
    fine_tune_frames = build_frontend("seed").num_frames(4 * SAMPLE_RATE_HZ)
    assert config.max_length == build_frontend("seed").num_frames(3 * SAMPLE_RATE_HZ)
    features = torch.randn(2, config.max_length, config.num_mel_bins)
    assert hf(input_values=features).logits.shape == (2, len(SOUND_CLASSES))
    assert json.loads((checkpoint / "config.json").read_text())["architectures"] == [
        "ASTForAudioClassification"
    ]
    assert fine_tune_frames > config.max_length  # this tiny corpus's clips are short; the default's are 10 s


def test_fine_tuning_loads_it_strictly_with_sliced_positions_and_a_new_head(checkpoint: Path) -> None:
    n_frames = build_frontend("seed").num_frames(2 * SAMPLE_RATE_HZ)  # shorter than the 3 s pretraining clip
    model = build_model(
        model_params(patch_stride=16),
        5,
        128,
        n_frames,
    )
    load_pretrained(model, str(checkpoint))
    saved = load_file(str(checkpoint / "model.safetensors"))
    hf_positions = saved["audio_spectrogram_transformer.embeddings.position_embeddings"]  # (1, 2 + 8 * t, H)
    positions = model.state_dict()[POSITION_KEY]
    t_old, t_new = (hf_positions.shape[1] - 2) // 8, (positions.shape[1] - 2) // 8
    assert t_new < t_old
    start = t_old // 2 - t_new // 2
    grid = hf_positions[:, 2:].reshape(1, 8, t_old, -1)[:, :, start : start + t_new].reshape(1, 8 * t_new, -1)
    torch.testing.assert_close(positions, torch.cat([hf_positions[:, :2], grid], dim=1))
    key = "audio_spectrogram_transformer.encoder.layer.0.attention.attention.query.weight"
    ours = model.state_dict()["backbone.layers.0.attention.q_proj.weight"]  # transformers renames on save
    torch.testing.assert_close(ours, saved[key])
    assert model.state_dict()["classifier.dense.weight"].shape[0] == 5  # a new head for the 5 classes


def test_an_interrupted_run_resumes_to_the_same_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    params = tiny_params()
    whole = tmp_path / "whole"
    pretrain(params, whole)
    real_save = pretraining.save_state

    def save_then_die(*args: object, **kwargs: object) -> None:
        real_save(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt  # killed right after the first checkpoint (step 2 of 4)

    monkeypatch.setattr(pretraining, "save_state", save_then_die)
    interrupted = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        pretrain(params, interrupted)
    assert (interrupted / "state").is_dir()
    monkeypatch.setattr(pretraining, "save_state", real_save)
    result = pretrain(params, interrupted)
    assert result.resumed_steps == 2 and not (interrupted / "state").exists()
    assert (interrupted / "model.safetensors").read_bytes() == (whole / "model.safetensors").read_bytes()


def test_params_refuse_a_pretrained_or_non_ast_model() -> None:
    with pytest.raises(ValueError, match="arch must be ast"):
        tiny_params(model=model_params("vit"))
    with pytest.raises(ValueError, match="pretrained null"):
        tiny_params(model=model_params(pretrained="MIT/ast"))
