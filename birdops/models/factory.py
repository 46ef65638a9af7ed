"""The one model factory: a spectrogram classifier ``(B, F, T) features -> (B, C) logits``.

Every classifier also gives its pooled embedding (:meth:`SpectrogramClassifier.forward_with_embedding`):
the ``(B, H)`` vector its final linear layer reads, ``logits = embedding @ W.T + b``. ``forward`` is
the logits of that same computation, so training and evaluation see the logits they always did.

Two architectures, both from transformers and both built from a typed config (never from the hub):
- ``ast``: the Audio Spectrogram Transformer. ``max_length`` is the real number of frames of a clip
  (4 s of ``seed`` features: 173), never the 1024 of AudioSet, so no compute is spent on padding.
- ``vit``: a Vision Transformer over MFCC "images" (the report's Phase 2B).

Every model is a backbone plus a head; the head's parameters are named ``classifier.*`` and
everything else (``backbone.*``) is backbone, which is what the trainer's discriminative learning
rates and any freezing by prefix rely on.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional as F
from transformers import ASTConfig, ASTModel, ViTConfig, ViTModel
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
    ASTMLPHead,
)

from birdops.config import ModelParams

HEAD_PREFIX = "classifier."
# attention kernels: eager exports to ONNX and is the fastest on CPU for short sequences; sdpa is
# PyTorch's scaled_dot_product_attention (flash / memory-efficient kernels on GPUs) for training
Attention = Literal["eager", "sdpa"]

# transformer sizes shared by both archs: tiny/small run on CPU, base is the 86M AudioSet AST / ViT-B/16
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128},
    "small": {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3, "intermediate_size": 768},
    "base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
}
# ViT patch side per size: 8 keeps enough tokens on a 40-coefficient MFCC image; base is ViT-B/16
VIT_PATCH: dict[str, int] = {"tiny": 8, "small": 8, "base": 16}
# AST patches are always 16x16 (the AudioSet checkpoint's); `patch_stride` sets their overlap
AST_PATCH = 16


def ast_config(
    cfg: ModelParams, num_classes: int, n_bins: int, n_frames: int, attention: Attention = "eager"
) -> ASTConfig:
    """The AST config for ``n_bins`` mel bins and ``n_frames`` frames (the real clip length)."""
    if n_bins < AST_PATCH or n_frames < AST_PATCH:
        raise ValueError(f"AST needs at least {AST_PATCH} bins and frames, got ({n_bins}, {n_frames})")
    return ASTConfig(
        **_transformer(cfg, num_classes, attention),
        patch_size=AST_PATCH,
        frequency_stride=cfg.patch_stride,
        time_stride=cfg.patch_stride,
        num_mel_bins=n_bins,
        max_length=n_frames,
    )


def vit_config(
    cfg: ModelParams, num_classes: int, n_bins: int, n_frames: int, attention: Attention = "eager"
) -> ViTConfig:
    """The ViT config for a one-channel image of ``(n_bins, n_frames)`` padded up to whole patches."""
    patch = VIT_PATCH[cfg.size]
    return ViTConfig(
        **_transformer(cfg, num_classes, attention),
        patch_size=patch,
        image_size=(_round_up(n_bins, patch), _round_up(n_frames, patch)),
        num_channels=1,
    )


def _transformer(cfg: ModelParams, num_classes: int, attention: Attention) -> dict[str, Any]:
    """Config fields both archs share: size, dropout, classes, attention kernel."""
    return {
        **SIZES[cfg.size],
        "hidden_dropout_prob": cfg.dropout,
        "attention_probs_dropout_prob": cfg.dropout,
        "num_labels": num_classes,
        "attn_implementation": attention,
    }


class SpectrogramClassifier(nn.Module):
    """A backbone plus a head whose last layer is one ``nn.Linear`` on a pooled ``(B, H)`` vector.

    Subclasses define :meth:`forward_with_embedding`; ``forward`` keeps its logits only, computed by
    the very same operations, so exposing the embedding leaves every model's logits bit-identical.
    """

    noise_floor_quantile: float | None = None

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits, _ = self.forward_with_embedding(features)  # (B, C)
        return logits

    def above_floor(self, features: torch.Tensor) -> torch.Tensor:
        """``features (B, F, T)`` less each bin's ``noise_floor_quantile`` over the frames (unchanged
        when it is None): a steady sound (wind, rain, an insect chorus, traffic) sits at its floor in
        every frame and goes to about 0, a call rises above it."""
        if self.noise_floor_quantile is None:
            return features
        k = round(self.noise_floor_quantile * (features.shape[-1] - 1)) + 1
        floor = torch.topk(features, k, dim=-1, largest=False).values[..., -1:]  # (B, F, 1)
        return features - floor

    def forward_with_embedding(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features (B, F, T)`` -> ``(logits (B, C), embedding (B, H))``: the embedding is what the
        final linear layer reads (``H`` = the transformer's hidden size)."""
        raise NotImplementedError


class ASTClassifier(SpectrogramClassifier):
    """AST backbone + the AST MLP head (LayerNorm, Linear) on the mean of the cls and dist tokens."""

    def __init__(self, config: ASTConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ASTModel(config)
        self.classifier = ASTMLPHead(config)
        init_head(self.classifier, config.initializer_range)
        # transformers zero-initialises these (they are meant to be loaded); from scratch, the original
        # AST (timm DeiT) draws them from N(0, 0.02), and the 128-bin models learn markedly faster
        embeddings = self.backbone.embeddings
        for tokens in (embeddings.position_embeddings, embeddings.cls_token, embeddings.distillation_token):
            nn.init.trunc_normal_(tokens, std=config.initializer_range)

    def forward_with_embedding(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.above_floor(features)  # (B, F, T); HF AST takes input_values (B, T, F)
        pooled = self.backbone(input_values=features.transpose(1, 2)).pooler_output  # (B, H)
        # ASTMLPHead.forward, step by step: its LayerNorm, then its Linear, which reads the embedding
        embedding: torch.Tensor = self.classifier.layernorm(pooled)  # (B, H)
        logits: torch.Tensor = self.classifier.dense(embedding)  # (B, C)
        return logits, embedding


class ViTClassifier(SpectrogramClassifier):
    """ViT backbone (no pooler) + a linear head on the final cls token, as ViTForImageClassification."""

    def __init__(self, config: ViTConfig, num_classes: int, n_bins: int, n_frames: int) -> None:
        super().__init__()
        self.config = config
        height, width = config.image_size  # type: ignore[misc]  # a tuple here, see vit_config
        # zero-pad the bottom/right edge up to whole patches rather than dropping coefficients/frames
        self.pad = (0, width - n_frames, 0, height - n_bins)
        self.backbone = ViTModel(config, add_pooling_layer=False)
        self.classifier = nn.Linear(config.hidden_size, num_classes)
        init_head(self.classifier, config.initializer_range)

    def forward_with_embedding(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        image = F.pad(self.above_floor(features), self.pad).unsqueeze(1)  # (B, 1, F', T')
        hidden = self.backbone(pixel_values=image).last_hidden_state  # (B, 1 + patches, H), final LayerNorm
        embedding = hidden[:, 0]  # (B, H): the cls token
        logits: torch.Tensor = self.classifier(embedding)  # (B, C)
        return logits, embedding


def build_model(
    cfg: ModelParams, num_classes: int, n_bins: int, n_frames: int, attention: Attention = "eager"
) -> SpectrogramClassifier:
    """A freshly initialised classifier ``(B, n_bins, n_frames) -> (B, num_classes)`` logits.

    Architecture only: ``cfg.pretrained`` is not read here (see ``birdops.models.pretrained``), so
    rebuilding a saved model never touches the network. ``attention`` picks the kernel, not the
    weights: the parameters and their names are the same for both, so weights trained with ``sdpa``
    load into the ``eager`` model that checkpoints, evaluation and the ONNX export build.
    """
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    model: SpectrogramClassifier
    if cfg.arch == "ast":
        model = ASTClassifier(ast_config(cfg, num_classes, n_bins, n_frames, attention))
    elif cfg.arch == "vit":
        model = ViTClassifier(
            vit_config(cfg, num_classes, n_bins, n_frames, attention), num_classes, n_bins, n_frames
        )
    else:
        raise ValueError(f"unknown model.arch {cfg.arch!r}")
    model.noise_floor_quantile = cfg.noise_floor_quantile
    return model


def init_head(head: nn.Module, std: float) -> None:
    """Transformers' initialisation for a new head: N(0, std) weights, zero biases, unit norms."""
    for module in head.modules():
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def is_head(parameter_name: str) -> bool:
    """Whether a parameter belongs to the classification head (``classifier.*``)."""
    return parameter_name.startswith(HEAD_PREFIX)


def _round_up(value: int, multiple: int) -> int:
    return math.ceil(value / multiple) * multiple
