"""What the stages hand each other on disk, in one place: file names, the rows and files they read
back, and the exported model's metadata. Nothing here imports torch, numpy or onnxruntime, so the
serving path can use it too.

- *prepared folder* (``prepare``'s output): ``manifest.csv`` (one :class:`ManifestRow` a recording,
  :func:`read_manifest` / :func:`write_manifest`), ``labels.json`` (class names in index order,
  :func:`read_labels` / :func:`write_labels`), ``rejected.csv`` and ``class_splits.json``. A row's
  ``local_path`` is relative to the raw folder; :meth:`ManifestRow.audio_path` resolves it and
  refuses one that leads outside that folder (prepare checked the paths, but a link may have changed
  since).
- *cache folder* (``lms_cache``'s output): ``<preset>/index.csv``, ``<preset>/features.json`` and
  ``failed.csv``.
- *model folder* (a trained classifier): ``model.safetensors`` and ``config.json``, which holds a
  :class:`ClassifierInfo` (:func:`read_info`).
- *exported model*: one ``.onnx`` file, input :data:`INPUT_NAME` float32 ``[batch, samples]``, output
  :data:`OUTPUT_NAME` float32 ``[batch, classes]``, and ``birdops.*`` metadata props
  (:class:`ModelMetadata`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from birdops.config import ModelParams
from birdops.files import write_csv_atomic, write_json_atomic

# ---------------------------------------------------------------------------------- prepared folder
MANIFEST_FILE = "manifest.csv"
LABELS_FILE = "labels.json"
REJECTED_FILE = "rejected.csv"
CLASS_SPLITS_FILE = "class_splits.json"  # recordings per class and split
SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_COLUMNS: tuple[str, ...] = (
    "id",
    "local_path",
    "label",
    "label_index",
    "split",
    "rec",
    "q",
    "length_s",
)
REJECTED_COLUMNS: tuple[str, ...] = ("id", "local_path", "reason")

# ------------------------------------------------------------------------------------- cache folder
INDEX_FILE = "index.csv"  # in <cache>/<preset>/
FEATURES_FILE = "features.json"  # in <cache>/<preset>/
FAILED_FILE = "failed.csv"  # in <cache>/

# ------------------------------------------------------------------------------------- model folder
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# ---------------------------------------------------------------------------------- exported model
MODEL_FILE = "model.onnx"  # in the export folder (beside model.fp16.onnx, model.int8.onnx)
# where the export_onnx stage writes it (dvc.yaml); `birdops serve` and `birdops predict` load it by default
EXPORTED_MODEL = f"models/export/{MODEL_FILE}"
INPUT_NAME = "waveform"
OUTPUT_NAME = "logits"
# metadata_props keys of the exported model (written by birdops.export.onnx_export)
LABELS_KEY = "birdops.labels"
SAMPLE_RATE_KEY = "birdops.sample_rate_hz"
WINDOW_KEY = "birdops.window_seconds"
FEATURES_KEY = "birdops.features"
VARIANT_KEY = "birdops.variant"
MODEL_SHA256_KEY = "birdops.model_sha256"
REQUIRED_KEYS = (LABELS_KEY, SAMPLE_RATE_KEY, WINDOW_KEY, FEATURES_KEY, VARIANT_KEY, MODEL_SHA256_KEY)
# written by the export for the record; serving does not need them
OPSET_KEY = "birdops.opset"
EXPORTER_KEY = "birdops.exporter"


class ManifestError(ValueError):
    """A prepared folder's ``manifest.csv`` or ``labels.json`` is unreadable or malformed."""


class PathEscapeError(ValueError):
    """A manifest path leads outside the raw folder (absolute, ``..``, or through a symbolic link)."""


class MetadataError(ValueError):
    """An exported model's ``birdops.*`` metadata is missing or malformed."""


# ----------------------------------------------------------------------------------------- manifest
def manifest_path(prepared_dir: str | Path) -> Path:
    """Where ``prepare`` writes the manifest in ``prepared_dir``."""
    return Path(prepared_dir) / MANIFEST_FILE


def labels_path(prepared_dir: str | Path) -> Path:
    """Where ``prepare`` writes the class names in ``prepared_dir``."""
    return Path(prepared_dir) / LABELS_FILE


@dataclass(frozen=True)
class ManifestRow:
    """One accepted recording (a row of ``manifest.csv``)."""

    id: str
    local_path: str  # relative to the raw folder
    label: str
    label_index: int
    split: str  # one of SPLITS
    rec: str  # recordist
    q: str  # quality grade
    length_s: float  # the audio's true duration

    def audio_path(self, raw_dir: str | Path) -> Path:
        """``raw_dir / local_path``; :class:`PathEscapeError` when it lies outside ``raw_dir``
        (an absolute ``local_path`` or one with ``..`` always does; links are resolved)."""
        raw_dir = Path(raw_dir)
        relative = PurePosixPath(self.local_path.strip().replace("\\", "/"))
        path = raw_dir / self.local_path
        if relative.is_absolute() or ".." in relative.parts or not is_inside(path, raw_dir):
            raise PathEscapeError(f"{self.id}: {self.local_path} resolves outside {raw_dir}")
        return path


def is_inside(path: Path, folder: Path) -> bool:
    """Whether ``path``, every symbolic link resolved, lies inside ``folder`` (itself resolved)."""
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):  # a symlink loop
        return False


def write_manifest(path: str | Path, rows: Iterable[ManifestRow]) -> None:
    """Write ``rows`` as ``manifest.csv`` (:data:`MANIFEST_COLUMNS`), replaced atomically."""
    write_csv_atomic(path, MANIFEST_COLUMNS, (asdict(row) for row in rows))


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """The rows of a ``manifest.csv``, in file order. :class:`ManifestError` names the file and the
    row when a column is missing, a number is malformed or a split is unknown."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ManifestError(f"{path}: not a manifest, it lacks the column(s) {', '.join(missing)}")
        return [_manifest_row(path, row) for row in reader]


def _manifest_row(path: Path, row: Mapping[str, str]) -> ManifestRow:
    if row["split"] not in SPLITS:
        raise ManifestError(f"{path}: recording {row['id']} has unknown split {row['split']!r}")
    try:
        label_index, length_s = int(row["label_index"]), float(row["length_s"])
    except ValueError as err:
        raise ManifestError(f"{path}: recording {row['id']}: {err}") from err
    return ManifestRow(
        id=row["id"],
        local_path=row["local_path"],
        label=row["label"],
        label_index=label_index,
        split=row["split"],
        rec=row["rec"],
        q=row["q"],
        length_s=length_s,
    )


def write_labels(path: str | Path, labels: Sequence[str]) -> None:
    """Write the class names, in index order, as a JSON list (replaced atomically)."""
    write_json_atomic(path, list(labels))


def read_labels(path: str | Path) -> tuple[str, ...]:
    """The class names in index order, from a ``labels.json``."""
    path = Path(path)
    try:
        labels = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: cannot read the labels: {err}") from err
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise ManifestError(f"{path}: the labels must be a JSON list of strings")
    return tuple(labels)


# ------------------------------------------------------------------------------------- model folder
@dataclass(frozen=True)
class ClassifierInfo:
    """What a saved classifier is (its ``config.json``): its variant, architecture, labels and input,
    enough to rebuild the model with ``build_model`` (never a pretrained download) and to feed it,
    plus a short summary of the training run."""

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
        """The ``config.json`` content, with the labels also as Hugging Face's ``id2label`` /
        ``label2id`` (so its tools name the classes, not ``LABEL_0``...)."""
        data = dataclasses.asdict(self)
        data["labels"] = list(self.labels)
        return {**data, **hf_label_maps(self.labels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k not in HF_LABEL_KEYS}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(f"unknown classifier config keys: {unknown}")
        info = cls(**{**fields, "labels": tuple(fields["labels"])})
        maps = {k: data[k] for k in HF_LABEL_KEYS if k in data}
        if maps and maps != {k: v for k, v in hf_label_maps(info.labels).items() if k in maps}:
            raise ValueError("the classifier config's id2label/label2id disagree with its labels")
        return info


HF_LABEL_KEYS = ("id2label", "label2id")


def hf_label_maps(labels: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``{"id2label": {"0": label, ...}, "label2id": {label: 0, ...}}``, as Hugging Face configs write
    them (JSON object keys are strings)."""
    return {
        "id2label": {str(index): label for index, label in enumerate(labels)},
        "label2id": {label: index for index, label in enumerate(labels)},
    }


def read_info(directory: str | Path) -> ClassifierInfo:
    """The ``config.json`` of the classifier saved in ``directory``."""
    path = Path(directory) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise FileNotFoundError(f"{path}: not a saved birdops classifier ({err})") from err
    return ClassifierInfo.from_dict(data)


# ---------------------------------------------------------------------------------- exported model
@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model says about itself; ``to_props``/``from_props`` are the file format."""

    labels: tuple[str, ...]  # class names in logit order
    sample_rate_hz: int  # of the waveform input
    window_seconds: float  # the input's fixed length, in seconds
    features: Mapping[str, Any]  # the front end's FeatureSpec dict (documentation; the graph computes it)
    variant: str
    model_sha256: str  # SHA-256 of the trained weights file the export holds (models/<variant>/)

    @property
    def window_samples(self) -> int:
        return round(self.window_seconds * self.sample_rate_hz)

    def to_props(self) -> dict[str, str]:
        """The ``birdops.*`` metadata props, every value a string (JSON for lists and dicts)."""
        return {
            LABELS_KEY: json.dumps(list(self.labels)),
            SAMPLE_RATE_KEY: str(self.sample_rate_hz),
            WINDOW_KEY: repr(float(self.window_seconds)),
            FEATURES_KEY: json.dumps(dict(self.features), sort_keys=True),
            VARIANT_KEY: self.variant,
            MODEL_SHA256_KEY: self.model_sha256,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse the metadata props; :class:`MetadataError` names the missing or malformed key."""
        missing = [key for key in REQUIRED_KEYS if key not in props]
        if missing:
            raise MetadataError(f"{source}: not a birdops export, metadata lacks {', '.join(missing)}")
        try:
            labels = json.loads(props[LABELS_KEY])
            if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
                raise ValueError(f"{LABELS_KEY} must be a non-empty JSON list of strings")
            if len(set(labels)) != len(labels):
                raise ValueError(f"{LABELS_KEY} has duplicate labels")
            features = json.loads(props[FEATURES_KEY])
            if not isinstance(features, dict):
                raise ValueError(f"{FEATURES_KEY} must be a JSON object")
            sample_rate_hz = int(props[SAMPLE_RATE_KEY])
            window_seconds = float(props[WINDOW_KEY])
        except ValueError as err:  # json.JSONDecodeError is a ValueError too
            raise MetadataError(f"{source}: malformed birdops metadata: {err}") from err
        if sample_rate_hz <= 0 or not window_seconds > 0:
            raise MetadataError(f"{source}: sample rate and window length must be positive")
        return cls(
            labels=tuple(labels),
            sample_rate_hz=sample_rate_hz,
            window_seconds=window_seconds,
            features=features,
            variant=props[VARIANT_KEY],
            model_sha256=props[MODEL_SHA256_KEY],
        )
