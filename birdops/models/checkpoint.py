"""A trained classifier on disk (``model.safetensors`` + ``config.json``, nothing pickled): writing it,
and :func:`load_classifier`, the one way back (evaluation, the ONNX export and the benchmarks use it).

``config.json`` holds a :class:`birdops.contracts.ClassifierInfo`: everything needed to rebuild the
model with ``build_model`` (never a pretrained download) and to feed it (labels, feature preset and
spec, clip length, input shape), plus a short summary of the training run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from birdops.contracts import CONFIG_FILE, WEIGHTS_FILE, ClassifierInfo, read_info
from birdops.features.frontend import FrontEnd, build_frontend
from birdops.files import atomic_path, write_json_atomic
from birdops.models.classifier import WaveformClassifier
from birdops.models.factory import SpectrogramClassifier, build_model


def save_classifier(directory: str | Path, model: nn.Module, info: ClassifierInfo) -> None:
    """Write ``model.safetensors`` and ``config.json`` into ``directory`` (each replaced atomically)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # one metadata key only: safetensors writes the metadata map in hash order, which differs from
    # process to process, so two keys would make identical weights hash differently (the variant is
    # in config.json)
    with atomic_path(directory / WEIGHTS_FILE) as temp:
        save_file(state, str(temp), metadata={"format": "pt"})
    write_json_atomic(directory / CONFIG_FILE, info.to_dict())


@dataclass(frozen=True)
class SavedClassifier:
    """A classifier loaded by :func:`load_classifier`, in eval mode on its device."""

    directory: Path
    model: SpectrogramClassifier  # (B, F, T) features -> (B, C) logits (and the embedding)
    info: ClassifierInfo
    frontend: FrontEnd | None  # the preset's front end, checked against ``info``; None when not asked for

    def waveform_classifier(self) -> WaveformClassifier:
        """``(B, S)`` waveforms -> ``(B, C)`` logits: the checked front end followed by the model."""
        if self.frontend is None:
            raise ValueError(f"{self.directory}: the classifier was loaded without its front end")
        return WaveformClassifier(self.frontend, self.model).eval()


def load_classifier(
    directory: str | Path,
    device: str | torch.device = "cpu",
    *,
    with_frontend: bool = True,
    labels: Sequence[str] | None = None,
) -> SavedClassifier:
    """The classifier saved in ``directory``, in eval mode on ``device``.

    With ``with_frontend`` (the default) its preset's front end is built too, and refused (ValueError)
    when its settings differ from those the model was trained on (the preset's code changed since:
    the model would see features it never learnt). The model is built for the input shape of its
    spec and clip length (:attr:`ClassifierInfo.shape`, which ``config.json``'s ``n_bins`` and
    ``n_frames`` must agree with). With ``labels``, labels other than the model's are refused.
    """
    directory = Path(directory)
    info = read_info(directory)
    if labels is not None and tuple(labels) != info.labels:
        raise ValueError(
            f"{directory}: model {info.variant!r} was trained on {len(info.labels)} labels that differ "
            f"from the {len(labels)} given ones; retrain it"
        )
    model = build_model(info.model_params, info.num_classes, *info.shape.features)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    frontend = _checked_frontend(directory, info).to(device).eval() if with_frontend else None
    return SavedClassifier(directory, model.to(device).eval(), info, frontend)


def _checked_frontend(directory: Path, info: ClassifierInfo) -> FrontEnd:
    """The front end of ``info``'s preset, if it still computes the features the model was trained on
    (the same settings give the same clip shape: :meth:`birdops.featurespec.FeatureSpec.clip_shape`)."""
    frontend = build_frontend(info.feature_preset)
    if frontend.spec != info.feature_spec:
        raise ValueError(
            f"{directory}: model {info.variant!r} was trained on {info.feature_preset!r} features whose "
            f"settings differ from the current front end ({info.feature_spec.to_dict()}, now "
            f"{frontend.spec.to_dict()}); rebuild the cache and retrain it"
        )
    return frontend
