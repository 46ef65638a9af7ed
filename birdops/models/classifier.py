"""Waveforms in, logits out: the feature front end followed by the spectrogram classifier.

This is the module that recording-level evaluation runs and that the ONNX export traces, so the
features a deployed model sees are computed by exactly the code the cache used.
"""

from __future__ import annotations

import torch
from torch import nn


class WaveformClassifier(nn.Module):
    """``(B, S)`` float32 waveforms at the front end's sample rate -> ``(B, C)`` logits."""

    def __init__(self, frontend: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.frontend = frontend
        self.model = model

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        features = self.frontend(waveform)  # (B, F, T)
        out: torch.Tensor = self.model(features)  # (B, C)
        return out
