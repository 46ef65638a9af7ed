"""A trained classifier on disk: ``model.safetensors`` + ``config.json``, nothing pickled.

``config.json`` holds a :class:`ClassifierInfo`: everything needed to rebuild the model with
``build_model`` (never a pretrained download) and to feed it (labels, feature preset and spec,
clip length, input shape), plus a short summary of the training run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from birdops.config import ModelParams
from birdops.files import atomic_path, write_json_atomic
from birdops.models.factory import build_model

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class ClassifierInfo:
    """What a saved classifier is: its variant, architecture, labels and input."""

    variant: str
    model: dict[str, Any]  # ModelParams.model_dump()
    labels: tuple[str, ...]  # class names in logit order
    feature_preset: str  # birdops.features preset: seed | ast | mfcc
    feature_spec: dict[str, Any]  # FeatureSpec.to_dict() of that preset
    clip_seconds: float
    n_bins: int  # F of the (B, F, T) input
    n_frames: int  # T of the (B, F, T) input
    # training summary (absent for a model that was not trained by birdops.train)
    best_epoch: int | None = None  # 1-based epoch whose weights were kept
    best_metric: str | None = None  # the early-stopping metric, e.g. val_accuracy
    best_value: float | None = None
    epochs_run: int | None = None

    @property
    def model_params(self) -> ModelParams:
        return ModelParams(**self.model)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown classifier config keys: {unknown}")
        return cls(**{**data, "labels": tuple(data["labels"])})


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


def load_classifier(
    directory: str | Path, device: str | torch.device = "cpu"
) -> tuple[nn.Module, ClassifierInfo]:
    """The classifier saved in ``directory``, in eval mode on ``device``, and its info."""
    directory = Path(directory)
    info = read_info(directory)
    model = build_model(info.model_params, info.num_classes, info.n_bins, info.n_frames)
    model.load_state_dict(load_file(str(directory / WEIGHTS_FILE)), strict=True)
    return model.to(device).eval(), info


def read_info(directory: str | Path) -> ClassifierInfo:
    """The ``config.json`` of a saved classifier."""
    path = Path(directory) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{path}: not a saved birdops classifier ({err})") from err
    return ClassifierInfo.from_dict(data)
