"""Waveforms in, logits out: the feature front end followed by the spectrogram classifier.

This is the module that recording-level evaluation runs and that the ONNX export traces, so the
features a deployed model sees are computed by exactly the code the cache used.
"""

from __future__ import annotations

import torch
from torch import nn

from birdops.models.factory import SpectrogramClassifier


class WaveformClassifier(nn.Module):
    """``(B, S)`` float32 waveforms at the front end's sample rate -> ``(B, C)`` logits."""

    def __init__(self, frontend: nn.Module, model: SpectrogramClassifier) -> None:
        super().__init__()
        self.frontend = frontend
        self.model = model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        features = self.frontend(waveform)  # (B, F, T)
        out: torch.Tensor = self.model(features)  # (B, C)
        return out

    def forward_with_embedding(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, C), embedding (B, H))``: the logits of ``forward`` and the pooled vector the
        model's final linear layer reads (:meth:`SpectrogramClassifier.forward_with_embedding`)."""
        features = self.frontend(waveform)  # (B, F, T)
        return self.model.forward_with_embedding(features)


class WaveformEmbedder(nn.Module):
    """:meth:`WaveformClassifier.forward_with_embedding` as ``forward``: the module the ONNX export
    traces, for a graph with two outputs. It holds the same submodules under the same names
    (``frontend``, ``model``), so the graph's name scopes (which keep the front end float32 in the
    fp16 and int8 models) are those of the classifier."""

    def __init__(self, classifier: WaveformClassifier) -> None:
        super().__init__()
        self.frontend = classifier.frontend
        self.model = classifier.model

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.frontend(waveform)  # (B, F, T)
        return self.model.forward_with_embedding(features)  # (B, C), (B, H)
