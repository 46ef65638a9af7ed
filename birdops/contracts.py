"""What the stages hand each other on disk, in one place: file names, the rows and files they read
back, and the exported model's metadata. Nothing here imports torch, numpy or onnxruntime, so the
serving path can use it too.

- *prepared folder* (``prepare``'s output): ``manifest.csv`` (one :class:`ManifestRow` a recording,
  :func:`read_manifest` / :func:`write_manifest`), ``labels.json`` (class names in index order,
  :func:`read_labels` / :func:`write_labels`), ``rejected.csv`` and ``class_splits.json``. A row's
  ``local_path`` is relative to the raw folder; :meth:`ManifestRow.audio_path` resolves it and
  refuses one that leads outside that folder (prepare checked the paths, but a link may have changed
  since).
  ``background.csv`` lists the accepted background recordings (audio without any target species) in
  the same row type, ``label`` empty and ``label_index`` :data:`BACKGROUND_INDEX`; their ``local_path``
  is relative to the background folder.
- *cache folder* (``lms_cache``'s output): ``<preset>/index.csv``, ``<preset>/features.json`` and
  ``failed.csv``; background clips are cached as their own splits, ``background-<split>``
  (:func:`background_split`). The shards, ``index.csv`` and ``features.json`` are read and written by
  :mod:`birdops.features.shards` (they need numpy).
- *soundscapes folder* (``soundscapes``'s output): long mixtures of a split's recordings over its
  background, ``<split>/<name>.flac``, listed in ``soundscapes.csv`` (:data:`SOUNDSCAPE_COLUMNS`) with
  their true events in ``annotations.csv`` (:data:`ANNOTATION_COLUMNS`): :func:`read_soundscapes` /
  :func:`write_soundscapes`, one :class:`Soundscape` a file.
- *model folder* (a trained classifier): ``model.safetensors`` and ``config.json``, which holds a
  :class:`ClassifierInfo` (:func:`read_info`), its front end's settings a
  :class:`birdops.featurespec.FeatureSpec`.
- *metrics folder* (``evaluate``'s output): ``best.json``, the variant chosen for export and its
  validation value (:class:`Best`, :func:`write_best` / :func:`read_best`: the export, ``birdops
  report`` and the benchmarks read it), and ``eval/<variant>/calibration.json`` (:func:`read_scoring`).
- *exported model*: one ``.onnx`` file, input :data:`INPUT_NAME` float32 ``[batch, samples]``, output
  :data:`OUTPUT_NAME` float32 ``[batch, classes]`` and, in exports that have it, the pooled embedding
  :data:`EMBEDDING_NAME` float32 ``[batch, dim]`` (:class:`Embedding`), and ``birdops.*`` metadata
  props (:class:`ModelMetadata`; ``birdops.window_seconds`` is the clip length the model was trained
  on).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from birdops.featurespec import ClipShape, FeatureSpec
from birdops.files import write_csv_atomic, write_json_atomic

if TYPE_CHECKING:
    from birdops.config import ModelParams

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
    "also",
)
OPTIONAL_MANIFEST_COLUMNS = frozenset({"also"})  # read as empty when a manifest lacks them
REJECTED_COLUMNS: tuple[str, ...] = ("id", "local_path", "reason")
BACKGROUND_FILE = "background.csv"  # the accepted background recordings, ManifestRow rows
BACKGROUND_INDEX = -1  # label_index of a background recording or clip: no target species

# ------------------------------------------------------------------------------------- cache folder
INDEX_FILE = "index.csv"  # in <cache>/<preset>/
FEATURES_FILE = "features.json"  # in <cache>/<preset>/
FAILED_FILE = "failed.csv"  # in <cache>/
BACKGROUND_SPLIT_PREFIX = "background-"  # background clips of split s are the cache split background-s
MIXED_SPLIT_SUFFIX = "-mixed"  # noisy copies of split s's clips, row for row: the cache split s-mixed

# -------------------------------------------------------------------------------- soundscapes folder
SOUNDSCAPES_FILE = "soundscapes.csv"
ANNOTATIONS_FILE = "annotations.csv"
SOUNDSCAPE_COLUMNS: tuple[str, ...] = ("file", "split", "duration_s")  # file: relative to the folder
ANNOTATION_COLUMNS: tuple[str, ...] = ("file", "start_s", "end_s", "label")  # one true event a row

# ------------------------------------------------------------------------------------ metrics folder
EVAL_DIR = "eval"  # per-variant tables: <metrics>/eval/<variant>/
BEST_FILE = "best.json"  # the variant chosen for export (evaluate -> export, report, bench): Best
# where the DAG writes them (dvc.yaml): the default of the commands run by hand from the repository
# root (`birdops report`, `experiments`, `bench`); stages take every path from their command line
METRICS_DIR = "metrics"
BEST_METRICS = f"{METRICS_DIR}/{BEST_FILE}"
BEST_VALUE_PREFIX = "val_"  # best.json's value key: val_<selection metric>
# a variant's calibration and per-species thresholds, chosen on validation (evaluate -> export)
CALIBRATION_FILE = "calibration.json"

# ------------------------------------------------------------------------------------- model folder
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"

# ---------------------------------------------------------------------------------- exported model
MODEL_FILE = "model.onnx"  # in the export folder (beside model.fp16.onnx, model.int8.onnx)
# where the export_onnx stage writes it (dvc.yaml): `birdops serve` and `birdops predict` load it by default
EXPORTED_MODEL = f"models/export/{MODEL_FILE}"
INPUT_NAME = "waveform"
OUTPUT_NAME = "logits"
EMBEDDING_NAME = "embedding"  # the second output: what the final linear layer reads, [batch, dim]
# metadata_props keys of the exported model (written by birdops.export.onnx_export)
LABELS_KEY = "birdops.labels"
SAMPLE_RATE_KEY = "birdops.sample_rate_hz"
WINDOW_KEY = "birdops.window_seconds"
FEATURES_KEY = "birdops.features"
VARIANT_KEY = "birdops.variant"
MODEL_SHA256_KEY = "birdops.model_sha256"
# how logits become scores (optional: an export without them scores with an uncalibrated softmax)
ACTIVATION_KEY = "birdops.activation"  # "sigmoid", "softmax" or "softmax_background"
CALIBRATION_KEY = "birdops.calibration"  # JSON {"scale": a, "bias": b}: activation(a * logits + b)
THRESHOLDS_KEY = "birdops.thresholds"  # JSON list, one calibrated-score threshold per label
# the embedding output (optional: an export without it has none): JSON {"output": name, "dim": D}
EMBEDDING_KEY = "birdops.embedding"
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


class BestError(ValueError):
    """A ``best.json`` is unreadable or malformed."""


# ----------------------------------------------------------------------------------------- manifest
def manifest_path(prepared_dir: str | Path) -> Path:
    """Where ``prepare`` writes the manifest in ``prepared_dir``."""
    return Path(prepared_dir) / MANIFEST_FILE


def labels_path(prepared_dir: str | Path) -> Path:
    """Where ``prepare`` writes the class names in ``prepared_dir``."""
    return Path(prepared_dir) / LABELS_FILE


def background_manifest_path(prepared_dir: str | Path) -> Path:
    """Where ``prepare`` lists the accepted background recordings in ``prepared_dir``."""
    return Path(prepared_dir) / BACKGROUND_FILE


def background_split(split: str) -> str:
    """The cache split that holds the background clips of ``split`` (one of :data:`SPLITS`)."""
    return f"{BACKGROUND_SPLIT_PREFIX}{split}"


def mixed_split(split: str, copy: int = 0) -> str:
    """The cache split that holds noisy copy ``copy`` of ``split``'s clips, in the same row order:
    ``train-mixed``, then ``train-mixed2``, ``train-mixed3``, ..."""
    return f"{split}{MIXED_SPLIT_SUFFIX}{copy + 1 if copy else ''}"


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
    # other species heard in the recording (xeno-canto's ``also``) that are classes too, "; "-joined
    also: str = ""

    @property
    def also_labels(self) -> tuple[str, ...]:
        return tuple(label for label in self.also.split("; ") if label)

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
        missing = [
            c
            for c in MANIFEST_COLUMNS
            if c not in (reader.fieldnames or ()) and c not in OPTIONAL_MANIFEST_COLUMNS
        ]
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
        also=row.get("also") or "",
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


# -------------------------------------------------------------------------------- soundscapes folder
class SoundscapeError(ValueError):
    """A soundscapes folder's ``soundscapes.csv`` or ``annotations.csv`` is unreadable or malformed."""


@dataclass(frozen=True)
class SoundscapeEvent:
    """One true event of a soundscape: ``label`` (a class name) sounds from ``start_s`` to ``end_s``."""

    start_s: float
    end_s: float
    label: str


@dataclass(frozen=True)
class Soundscape:
    """One long recording with its true events (a row of ``soundscapes.csv`` and its annotations)."""

    file: str  # relative to the soundscapes folder, with "/" separators: <split>/<name>.flac
    split: str  # one of SPLITS
    duration_s: float
    events: tuple[SoundscapeEvent, ...]  # by start time

    def audio_path(self, folder: str | Path) -> Path:
        """``folder / file``; :class:`PathEscapeError` when it lies outside ``folder``."""
        path = Path(folder) / self.file
        relative = PurePosixPath(self.file)
        if relative.is_absolute() or ".." in relative.parts or not is_inside(path, Path(folder)):
            raise PathEscapeError(f"{self.file} resolves outside {folder}")
        return path


def write_soundscapes(folder: str | Path, soundscapes: Iterable[Soundscape]) -> None:
    """Write ``soundscapes.csv`` and ``annotations.csv`` (one row an event) into ``folder``."""
    soundscapes = list(soundscapes)
    write_csv_atomic(
        Path(folder) / SOUNDSCAPES_FILE,
        SOUNDSCAPE_COLUMNS,
        ({"file": s.file, "split": s.split, "duration_s": s.duration_s} for s in soundscapes),
    )
    rows = ({"file": s.file, **asdict(e)} for s in soundscapes for e in s.events)
    write_csv_atomic(Path(folder) / ANNOTATIONS_FILE, ANNOTATION_COLUMNS, rows)


def read_soundscapes(folder: str | Path) -> list[Soundscape]:
    """The soundscapes of a folder, in ``soundscapes.csv`` order, each with its events by start time.
    :class:`SoundscapeError` names the file and row of a missing column, a malformed number, an
    unknown split or file, or an event outside its soundscape."""
    folder = Path(folder)
    listed: dict[str, tuple[str, float]] = {}
    for row in _csv_rows(folder / SOUNDSCAPES_FILE, SOUNDSCAPE_COLUMNS):
        if row["split"] not in SPLITS:
            raise SoundscapeError(
                f"{folder / SOUNDSCAPES_FILE}: {row['file']} has unknown split {row['split']!r}"
            )
        listed[row["file"]] = (row["split"], _number(folder / SOUNDSCAPES_FILE, row, "duration_s"))
    events: dict[str, list[SoundscapeEvent]] = {name: [] for name in listed}
    for row in _csv_rows(folder / ANNOTATIONS_FILE, ANNOTATION_COLUMNS):
        where = folder / ANNOTATIONS_FILE
        start_s, end_s = _number(where, row, "start_s"), _number(where, row, "end_s")
        if row["file"] not in listed or not 0 <= start_s < end_s <= listed[row["file"]][1]:
            raise SoundscapeError(f"{where}: event {start_s}-{end_s} s of {row['file']!r} lies outside it")
        events[row["file"]].append(SoundscapeEvent(start_s, end_s, row["label"]))
    return [
        Soundscape(name, split, duration_s, tuple(sorted(events[name], key=lambda e: (e.start_s, e.end_s))))
        for name, (split, duration_s) in listed.items()
    ]


def _csv_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in columns if c not in (reader.fieldnames or ())]
            if missing:
                raise SoundscapeError(f"{path}: it lacks the column(s) {', '.join(missing)}")
            return list(reader)
    except OSError as err:
        raise SoundscapeError(f"{path}: cannot read it: {err}") from err


def _number(path: Path, row: Mapping[str, str], column: str) -> float:
    try:
        value = float(row[column])
    except ValueError as err:
        raise SoundscapeError(f"{path}: {row['file']}: {column}: {err}") from err
    if not math.isfinite(value):
        raise SoundscapeError(f"{path}: {row['file']}: {column} is not finite")
    return value


# ------------------------------------------------------------------------------------- model folder
@dataclass(frozen=True)
class ClassifierInfo:
    """What a saved classifier is (its ``config.json``): its variant, architecture, labels and input,
    enough to rebuild the model with ``build_model`` (never a pretrained download) and to feed it,
    plus a short summary of the training run.

    The input shape is the feature spec's for a clip of ``clip_seconds`` (:attr:`shape`); the file
    also holds it as ``n_bins`` and ``n_frames``, which :meth:`from_dict` checks against the spec."""

    variant: str
    model: dict[str, Any]  # ModelParams.model_dump()
    labels: tuple[str, ...]  # class names in logit order
    feature_preset: str  # birdops.features preset: seed | ast | mfcc
    feature_spec: FeatureSpec  # that preset's settings when the model was trained
    clip_seconds: float  # the length of the clips it was trained on (the exported window)
    # training summary (absent for a model that was not trained by birdops.train)
    best_epoch: int | None = None  # 1-based epoch whose weights were kept
    best_metric: str | None = None  # the early-stopping metric, e.g. val_accuracy
    best_value: float | None = None
    epochs_run: int | None = None
    # how the logits read: "softmax" (one of the species) or "sigmoid" (each species present or not)
    activation: str = "softmax"

    @property
    def model_params(self) -> ModelParams:
        # imported here: serving reads the contracts and never needs the params' pydantic models
        # (importing them is a third of `birdops predict`'s start-up)
        from birdops.config import ModelParams

        # a model saved before the noise floor existed read its features as they were: no floor
        return ModelParams(**{"noise_floor_quantile": None, **self.model})

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def shape(self) -> ClipShape:
        """A clip's samples and the ``(F, T)`` of the ``(B, F, T)`` input the model takes."""
        return self.feature_spec.clip_shape(self.clip_seconds)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` content: the fields, with the input shape after ``clip_seconds`` and
        the labels also as Hugging Face's ``id2label`` / ``label2id`` (so its tools name the classes,
        not ``LABEL_0``...)."""
        data: dict[str, Any] = {}
        for name, value in dataclasses.asdict(self).items():
            data[name] = value
            if name == "clip_seconds":
                data |= dict(zip(SHAPE_KEYS, self.shape.features, strict=True))
        data["labels"] = list(self.labels)
        return {**data, **hf_label_maps(self.labels)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierInfo:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k: v for k, v in data.items() if k not in (*HF_LABEL_KEYS, *SHAPE_KEYS)}
        unknown = sorted(set(fields) - names)
        if unknown:
            raise ValueError(f"unknown classifier config keys: {unknown}")
        spec = FeatureSpec.from_dict(fields["feature_spec"])
        info = cls(**{**fields, "labels": tuple(fields["labels"]), "feature_spec": spec})
        stored = tuple(data.get(key) for key in SHAPE_KEYS)
        if stored != info.shape.features:
            raise ValueError(
                f"the classifier config's input shape {stored} is not its feature spec's for a "
                f"{info.clip_seconds} s clip, {info.shape.features}"
            )
        maps = {k: data[k] for k in HF_LABEL_KEYS if k in data}
        if maps and maps != {k: v for k, v in hf_label_maps(info.labels).items() if k in maps}:
            raise ValueError("the classifier config's id2label/label2id disagree with its labels")
        return info


SHAPE_KEYS = ("n_bins", "n_frames")  # config.json's record of ClassifierInfo.shape
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
ACTIVATIONS: tuple[str, ...] = ("sigmoid", "softmax", "softmax_background")


@dataclass(frozen=True)
class Scoring:
    """How an exported model's logits become the scores a user reads and thresholds.

    ``score = activation(scale * logits + bias)``: ``sigmoid`` gives each species its own probability
    (a window may hold none), ``softmax`` a distribution over the species, ``softmax_background`` one
    over the species and "none of them" (:func:`birdops.scores.scores`). ``scale`` and ``bias`` are
    the calibration fitted on validation (1 and 0: none). ``thresholds`` holds one calibrated-score
    threshold per label, chosen on validation; a species is reported in a window when its score
    reaches its threshold. The default is what an export without these props means: an uncalibrated
    softmax with no thresholds.
    """

    activation: str = "softmax"
    scale: float = 1.0
    bias: float = 0.0
    thresholds: tuple[float, ...] | None = None

    def to_props(self) -> dict[str, str]:
        props = {
            ACTIVATION_KEY: self.activation,
            CALIBRATION_KEY: json.dumps({"scale": self.scale, "bias": self.bias}),
        }
        if self.thresholds is not None:
            props[THRESHOLDS_KEY] = json.dumps(list(self.thresholds))
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], num_labels: int) -> Scoring:
        """The scoring props (absent ones take the defaults); ValueError names a malformed one."""
        activation = props.get(ACTIVATION_KEY, cls.activation)
        if activation not in ACTIVATIONS:
            raise ValueError(f"{ACTIVATION_KEY} must be one of {', '.join(ACTIVATIONS)}, not {activation!r}")
        calibration = json.loads(props.get(CALIBRATION_KEY, '{"scale": 1.0, "bias": 0.0}'))
        if not isinstance(calibration, dict) or set(calibration) != {"scale", "bias"}:
            raise ValueError(f'{CALIBRATION_KEY} must be a JSON object {{"scale": a, "bias": b}}')
        scale, bias = float(calibration["scale"]), float(calibration["bias"])
        if not (math.isfinite(scale) and scale > 0 and math.isfinite(bias)):
            raise ValueError(f"{CALIBRATION_KEY}: the scale must be finite and positive, the bias finite")
        thresholds = None
        if THRESHOLDS_KEY in props:
            thresholds = tuple(float(t) for t in json.loads(props[THRESHOLDS_KEY]))
            if len(thresholds) != num_labels or not all(0.0 <= t <= 1.0 for t in thresholds):
                raise ValueError(f"{THRESHOLDS_KEY} must hold one threshold in [0, 1] per label")
        return cls(activation, scale, bias, thresholds)


def read_scoring(path: str | Path, num_labels: int) -> Scoring:
    """The :class:`Scoring` a ``calibration.json`` holds (``activation``, ``scale``, ``bias``,
    ``thresholds``); :class:`MetadataError` names the file and what is wrong."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        props = {
            ACTIVATION_KEY: data["activation"],
            CALIBRATION_KEY: json.dumps({"scale": data["scale"], "bias": data["bias"]}),
            THRESHOLDS_KEY: json.dumps(data["thresholds"]),
        }
        return Scoring.from_props(props, num_labels)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise MetadataError(f"{path}: not a usable calibration: {err}") from err


@dataclass(frozen=True)
class Embedding:
    """An exported model's embedding output: the graph output ``output``, float32 ``[batch, dim]``, one
    row per window, the pooled vector the model's final linear layer reads (``logits = e @ W.T + b``)."""

    dim: int
    output: str = EMBEDDING_NAME

    def to_props(self) -> dict[str, str]:
        return {EMBEDDING_KEY: json.dumps({"output": self.output, "dim": self.dim})}

    @classmethod
    def from_props(cls, props: Mapping[str, str]) -> Embedding | None:
        """The embedding prop, None when absent (an export from before embeddings); ValueError names a
        malformed one."""
        if EMBEDDING_KEY not in props:
            return None
        data = json.loads(props[EMBEDDING_KEY])
        if not isinstance(data, dict) or set(data) != {"output", "dim"}:
            raise ValueError(f'{EMBEDDING_KEY} must be a JSON object {{"output": name, "dim": D}}')
        output, dim = data["output"], data["dim"]
        if not (isinstance(output, str) and output and type(dim) is int and dim > 0):  # bool is not a dim
            raise ValueError(
                f"{EMBEDDING_KEY}: the output must be a non-empty name, the dim a positive integer"
            )
        return cls(dim, output)


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported model says about itself; ``to_props``/``from_props`` are the file format.

    ``window_seconds`` (``birdops.window_seconds``) is the length of the clips the model was trained
    on (:attr:`ClassifierInfo.clip_seconds`): the graph's fixed input is that many seconds at the
    spec's rate. ``birdops.sample_rate_hz`` repeats the spec's rate, so a reader of the file needs no
    JSON for it; :meth:`from_props` checks the two agree."""

    labels: tuple[str, ...]  # class names in logit order
    window_seconds: float  # the input's fixed length, in seconds: the model's training clip length
    features: FeatureSpec  # the front end inside the graph (documentation: the graph computes it)
    variant: str
    model_sha256: str  # SHA-256 of the trained weights file the export holds (models/<variant>/)
    scoring: Scoring = Scoring()  # activation, calibration and per-species thresholds
    embedding: Embedding | None = None  # the embedding output; None: the graph gives logits only

    @property
    def sample_rate_hz(self) -> int:
        """Of the waveform input."""
        return self.features.sample_rate_hz

    @property
    def window_samples(self) -> int:
        return self.features.clip_shape(self.window_seconds).samples

    def to_props(self) -> dict[str, str]:
        """The ``birdops.*`` metadata props, every value a string (JSON for lists and dicts)."""
        return {
            LABELS_KEY: json.dumps(list(self.labels)),
            SAMPLE_RATE_KEY: str(self.sample_rate_hz),
            WINDOW_KEY: repr(float(self.window_seconds)),
            FEATURES_KEY: json.dumps(self.features.to_dict(), sort_keys=True),
            VARIANT_KEY: self.variant,
            MODEL_SHA256_KEY: self.model_sha256,
            **self.scoring.to_props(),
            **(self.embedding.to_props() if self.embedding is not None else {}),
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
            spec = FeatureSpec.from_dict(features)
            sample_rate_hz = int(props[SAMPLE_RATE_KEY])
            window_seconds = float(props[WINDOW_KEY])
            scoring = Scoring.from_props(props, len(labels))
            embedding = Embedding.from_props(props)
        except (ValueError, TypeError) as err:  # json.JSONDecodeError is a ValueError too
            raise MetadataError(f"{source}: malformed birdops metadata: {err}") from err
        if sample_rate_hz <= 0 or not window_seconds > 0:
            raise MetadataError(f"{source}: sample rate and window length must be positive")
        if sample_rate_hz != spec.sample_rate_hz:
            raise MetadataError(
                f"{source}: {SAMPLE_RATE_KEY} is {sample_rate_hz}, its {FEATURES_KEY} say "
                f"{spec.sample_rate_hz}"
            )
        return cls(
            labels=tuple(labels),
            window_seconds=window_seconds,
            features=spec,
            variant=props[VARIANT_KEY],
            model_sha256=props[MODEL_SHA256_KEY],
            scoring=scoring,
            embedding=embedding,
        )


# ------------------------------------------------------------------------------------ metrics folder
@dataclass(frozen=True)
class Best:
    """The variant the evaluate stage chose for export (``metrics/best.json``): ``variant`` and its
    validation value of the selection ``metric`` (``cmap``, ``f1_macro``, ...)."""

    variant: str
    metric: str
    value: float

    @property
    def key(self) -> str:
        """The value's key in ``best.json``: ``val_<metric>``, a key no other metrics file has, so
        ``dvc exp show`` gives it a short column and sorts by it (``--sort-by val_cmap``)."""
        return f"{BEST_VALUE_PREFIX}{self.metric}"


def write_best(path: str | Path, best: Best) -> None:
    """Write ``best.json``: ``{"variant": ..., "val_<metric>": value}`` (replaced atomically)."""
    write_json_atomic(path, {"variant": best.variant, best.key: best.value})


def read_best(path: str | Path) -> Best:
    """The :class:`Best` of a ``best.json``; :class:`BestError` names the file and what is wrong
    (unreadable, no non-empty ``variant``, not exactly one numeric ``val_<metric>``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BestError(f"{path}: cannot read the chosen variant: {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("variant"), str) or not data["variant"]:
        raise BestError(f"{path}: 'variant' must be a non-empty string")
    values = [(key, value) for key, value in data.items() if key.startswith(BEST_VALUE_PREFIX)]
    if len(values) != 1 or set(data) != {"variant", values[0][0]}:
        raise BestError(f"{path}: expected 'variant' and one val_<metric> value, found {sorted(data)}")
    key, value = values[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BestError(f"{path}: {key} must be a number, not {value!r}")
    return Best(data["variant"], key.removeprefix(BEST_VALUE_PREFIX), float(value))
