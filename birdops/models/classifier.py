"""Waveforms in, logits out: the feature front end followed by the spectrogram classifier.

This is the module that recording-level evaluation runs and that the ONNX export traces, so the
features a deployed model sees are computed by exactly the code the cache used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from birdops.features.frontend import build_frontend
from birdops.models.checkpoint import ClassifierInfo, load_classifier


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


def load_waveform_classifier(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[WaveformClassifier, ClassifierInfo]:
    """The classifier saved in ``directory`` behind its own front end, in eval mode, and its info.

    Refuses a front end whose settings differ from those the model was trained on (the preset's
    code changed since), since the model would then see features it never learnt.
    """
    model, info = load_classifier(directory, device)
    frontend = build_frontend(info.feature_preset)
    if frontend.spec.to_dict() != info.feature_spec:
        raise ValueError(
            f"{directory}: the {info.feature_preset!r} front end is now {frontend.spec.to_dict()}, "
            f"but the model was trained on {info.feature_spec}; retrain it"
        )
    clip_samples = round(info.clip_seconds * frontend.spec.sample_rate_hz)
    if frontend.num_frames(clip_samples) != info.n_frames:
        raise ValueError(
            f"{directory}: a {info.clip_seconds} s clip gives {frontend.num_frames(clip_samples)} frames, "
            f"the model takes {info.n_frames}"
        )
    return WaveformClassifier(frontend, model).to(device).eval(), info
