"""Pretrained initialisation: tiny "pretrained" checkpoints saved with save_pretrained, loaded offline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.nn import functional as F
from transformers import ASTConfig, ASTForAudioClassification, PretrainedConfig, ViTConfig, ViTModel
from worlds import model_params

from birdops.models.factory import ASTClassifier, ViTClassifier, build_model
from birdops.models.pretrained import (
    AST_ARCHITECTURE,
    VIT_ARCHITECTURE,
    PretrainedError,
    adapt_ast_positions,
    load_backbone_strict,
    load_pretrained,
)

TINY = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}
AST = model_params()
VIT = model_params("vit", "mfcc")
F_DIM, T_OLD = 12, 9  # 128 bins, max_length 100, 16x16 patches every 10: a 12 x 9 grid


@pytest.fixture(scope="module")
def ast_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny AST "pretrained" on 100 frames and 5 classes, with non-trivial position embeddings."""
    torch.manual_seed(0)
    config = ASTConfig(**TINY, num_mel_bins=128, max_length=100, num_labels=5)
    model = ASTForAudioClassification(config)
    with torch.no_grad():
        model.audio_spectrogram_transformer.embeddings.position_embeddings.normal_()
    path = tmp_path_factory.mktemp("ast-pretrained")
    model.save_pretrained(path)
    return path


def source_tensors(path: Path) -> dict[str, torch.Tensor]:
    model = ASTForAudioClassification.from_pretrained(path, local_files_only=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def grid(positions: torch.Tensor, f_dim: int) -> torch.Tensor:
    """(1, 2 + f*t, H) -> (H, f, t) patch grid (patches are ordered frequency-major)."""
    hidden = positions.shape[-1]
    return positions[0, 2:].T.reshape(hidden, f_dim, -1)


def test_shorter_clip_takes_the_middle_columns_like_the_original_ast(ast_checkpoint: Path) -> None:
    src = source_tensors(ast_checkpoint)
    model = build_model(AST, num_classes=3, n_bins=128, n_frames=40)  # t_dim = 3
    load_pretrained(model, str(ast_checkpoint))
    assert isinstance(model, ASTClassifier)

    old = src["audio_spectrogram_transformer.embeddings.position_embeddings"]
    new = model.backbone.embeddings.position_embeddings.detach()
    assert new.shape == (1, 2 + F_DIM * 3, 64)
    assert torch.equal(new[:, :2], old[:, :2])  # cls and distillation tokens
    start = T_OLD // 2 - 3 // 2  # YuanGongND/ast: 50 - int(t_dim / 2) on the 101-column AudioSet grid
    assert torch.equal(grid(new, F_DIM), grid(old, F_DIM)[:, :, start : start + 3])
    # every other backbone tensor is copied as it is
    for key, value in model.backbone.state_dict().items():
        if key != "embeddings.position_embeddings":
            assert torch.equal(value, src[f"audio_spectrogram_transformer.{key}"]), key
    # 3 classes instead of 5: a new head
    assert model.classifier.dense.weight.shape == (3, 64)
    assert torch.isfinite(model(torch.randn(2, 128, 40))).all()


def test_longer_clip_interpolates_each_frequency_row(ast_checkpoint: Path) -> None:
    src = source_tensors(ast_checkpoint)
    model = build_model(AST, num_classes=5, n_bins=128, n_frames=150)  # t_dim = 14 > 9
    new_head = {k: v.clone() for k, v in model.classifier.state_dict().items()}
    load_pretrained(model, str(ast_checkpoint))
    old = grid(src["audio_spectrogram_transformer.embeddings.position_embeddings"], F_DIM)  # (H, 12, 9)
    new = grid(model.backbone.embeddings.position_embeddings.detach(), F_DIM)  # (H, 12, 14)
    assert new.shape == (64, F_DIM, 14)
    expected = F.interpolate(old[None], size=(F_DIM, 14), mode="bilinear")[0]
    torch.testing.assert_close(new, expected, rtol=0, atol=0)
    # stretching along time only: each row stays within its own range
    assert (new.amax(-1) <= old.amax(-1) + 1e-6).all() and (new.amin(-1) >= old.amin(-1) - 1e-6).all()
    # 5 classes as in the checkpoint, and still a new head: fine-tuning never starts from its classes
    for key, value in model.classifier.state_dict().items():
        assert torch.equal(value, new_head[key]), key
    assert not torch.equal(model.classifier.dense.weight.detach(), src["classifier.dense.weight"])


def test_same_length_is_an_exact_copy() -> None:
    positions = torch.randn(1, 2 + 4 * 6, 8)
    assert torch.equal(adapt_ast_positions(positions, f_dim=4, t_old=6, t_new=6), positions)


def test_frequency_grid_must_match(ast_checkpoint: Path) -> None:
    model = build_model(AST, num_classes=3, n_bins=64, n_frames=40)
    with pytest.raises(
        PretrainedError, match=r"num_mel_bins: checkpoint 128, model 64 \(use the checkpoint's"
    ):
        load_pretrained(model, str(ast_checkpoint))


def test_architecture_must_match_the_checkpoint(ast_checkpoint: Path) -> None:
    model = build_model(AST.model_copy(update={"size": "small"}), num_classes=3, n_bins=128, n_frames=40)
    with pytest.raises(
        PretrainedError, match=r"hidden_size: checkpoint 64, model 192 \(set model.size.*; num_hidden_layers"
    ):
        load_pretrained(model, str(ast_checkpoint))


# every other ASTConfig / ViTConfig field: adapted, training- or initialisation-only, or not built
AST_NOT_COMPUTED = {"max_length", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range"}
VIT_NOT_COMPUTED = {
    "image_size",
    "num_channels",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "initializer_range",
    "encoder_stride",
    "pooler_output_size",
    "pooler_act",
}


def test_every_config_field_is_checked_or_known_not_to_change_the_backbone() -> None:
    """A field transformers adds to ASTConfig or ViTConfig fails here until it is placed in a list."""
    base = set(PretrainedConfig().to_dict())
    assert set(ASTConfig().to_dict()) - base == set(AST_ARCHITECTURE) | AST_NOT_COMPUTED
    assert set(ViTConfig().to_dict()) - base == set(VIT_ARCHITECTURE) | VIT_NOT_COMPUTED


# a checkpoint that differs from the tiny AST (128 bins, stride 10) in one field, and that field's value
AST_OTHER = {
    "hidden_act": "relu",
    "layer_norm_eps": 1e-6,
    "qkv_bias": False,
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "patch_size": 8,
    "frequency_stride": 12,
    "time_stride": 12,
    "num_mel_bins": 112,
}


@pytest.mark.parametrize("field", sorted(AST_OTHER))
def test_a_checkpoint_with_another_architecture_is_refused_by_name(tmp_path: Path, field: str) -> None:
    """Each field of AST_ARCHITECTURE, changed alone in a checkpoint saved in the hub's layout, is refused
    with its name and both values; none is silently replaced by birdops' value."""
    assert set(AST_OTHER) == set(AST_ARCHITECTURE)
    config = ASTConfig(**{**TINY, "num_mel_bins": 128, "max_length": 100, field: AST_OTHER[field]})
    ASTForAudioClassification(config).save_pretrained(tmp_path)
    model = build_model(AST, num_classes=3, n_bins=128, n_frames=40)
    theirs = getattr(config, field)
    ours = getattr(model.config, field)
    with pytest.raises(PretrainedError, match=rf"{field}: checkpoint {theirs!r}, model {ours!r} \("):
        load_pretrained(model, str(tmp_path))


def test_a_vit_checkpoint_with_another_layer_norm_is_refused(tmp_path: Path) -> None:
    source = ViTConfig(
        **TINY, image_size=32, patch_size=8, num_channels=3, layer_norm_eps=1e-6, hidden_act="relu"
    )
    ViTModel(source, add_pooling_layer=False).save_pretrained(tmp_path)
    model = build_model(VIT, 4, n_bins=40, n_frames=64)
    with pytest.raises(
        PretrainedError, match=r"hidden_act: checkpoint 'relu', model 'gelu'.*layer_norm_eps: "
    ):
        load_pretrained(model, str(tmp_path))


def test_strict_loading_names_missing_and_unexpected_keys() -> None:
    model = build_model(AST, num_classes=3, n_bins=128, n_frames=40)
    state = dict(model.state_dict())
    state.pop("backbone.layernorm.weight")
    state["backbone.extra.weight"] = torch.zeros(1)
    with pytest.raises(
        PretrainedError, match=r"missing \['backbone.layernorm.weight'\].*unexpected \['backbone.extra"
    ):
        load_backbone_strict(model, state, "test")
    # the head is never loaded: absent, or present with the model's shapes, it stays as initialised
    head_before = model.classifier.dense.weight.detach().clone()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("classifier.")}
    load_backbone_strict(model, state, "test")
    assert torch.equal(model.classifier.dense.weight, head_before)
    state = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    load_backbone_strict(model, state, "test")
    assert torch.equal(model.classifier.dense.weight, head_before)
    assert (model.backbone.layernorm.weight == 0.5).all()


def test_missing_weights_fail_with_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = build_model(AST, num_classes=3, n_bins=128, n_frames=40)
    with pytest.raises(PretrainedError, match="neither a directory nor a hub id"):
        load_pretrained(model, str(tmp_path / "no-such-dir"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-cache"))
    with pytest.raises(
        PretrainedError, match=r"not available here.*hf download MIT/ast-x .*model.pretrained: null"
    ):
        load_pretrained(model, "MIT/ast-x")


def test_a_directory_without_safetensors_is_refused_with_the_safe_conversion(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(ASTConfig(**TINY).to_json_string())
    (tmp_path / "pytorch_model.bin").write_bytes(b"a pickle we must never load")
    model = build_model(AST, num_classes=3, n_bins=128, n_frames=40)
    with pytest.raises(
        PretrainedError,
        match=rf"only as pytorch_model.bin.*`birdops convert-checkpoint {tmp_path}`.*weights_only=True",
    ):
        load_pretrained(model, str(tmp_path))
    (tmp_path / "pytorch_model.bin").unlink()
    with pytest.raises(PretrainedError, match="not available"):
        load_pretrained(model, str(tmp_path))


def test_vit_from_an_rgb_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = ViTModel(ViTConfig(**TINY, image_size=32, patch_size=8, num_channels=3), add_pooling_layer=False)
    source.save_pretrained(tmp_path)
    old = {k: v.detach().clone() for k, v in source.state_dict().items()}

    model = build_model(VIT, 4, n_bins=40, n_frames=64)
    load_pretrained(model, str(tmp_path))
    assert isinstance(model, ViTClassifier)
    new = model.backbone.state_dict()
    # RGB patch projection summed to one channel, as AST does with ImageNet weights
    proj = "embeddings.patch_embeddings.projection.weight"
    torch.testing.assert_close(new[proj], old[proj].sum(dim=1, keepdim=True), rtol=0, atol=0)
    # a 4 x 4 grid stretched to 5 x 8, the cls position kept
    positions = new["embeddings.position_embeddings"]
    assert positions.shape == (1, 1 + 5 * 8, 64)
    assert torch.equal(positions[:, :1], old["embeddings.position_embeddings"][:, :1])
    old_grid = old["embeddings.position_embeddings"][0, 1:].T.reshape(1, 64, 4, 4)
    expected = F.interpolate(old_grid, size=(5, 8), mode="bilinear").reshape(64, 40).T
    torch.testing.assert_close(positions[0, 1:], expected, rtol=0, atol=0)
    assert torch.equal(new["layers.0.attention.q_proj.weight"], old["layers.0.attention.q_proj.weight"])
    assert torch.isfinite(model(torch.randn(2, 40, 64))).all()
