"""Typed parameters: ``params.yaml`` parsed into frozen pydantic models.

Every section rejects unknown keys, so a typo in ``params.yaml`` fails loudly with the key's path,
and no field has a default in code: ``params.yaml`` sets every key, and one left out fails with its
path (``train_full.epochs: Field required``), so a value never depends on whether its key is present.
``params.yaml`` is the only source: DVC records its values in ``dvc.lock``, so a value that changes
results must reach a stage through the file (or ``dvc exp run -S section.key=value``), never through
the environment. An environment variable shaped like an override (``BIRDOPS_<SECTION>__<KEY>``) is
refused with a message naming the ``-S`` to use. Library code receives the section it needs, never
the tree.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

Preset = Literal["seed", "ast", "mfcc"]
Quality = Literal["A", "B", "C", "D", "E"]


class Section(BaseModel):
    """Base of every params section: immutable, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


# --------------------------------------------------------------------------------------------- data
AudioFormat = Literal["mp3", "wav", "flac", "ogg"]


class SyntheticParams(Section):
    """Size and shape of the embedded, generated xeno-canto-like corpus."""

    species: int = Field(..., ge=2)
    recordings: int = Field(..., ge=4)
    recordists: int = Field(..., ge=1)
    min_recording_seconds: float = Field(..., gt=0)
    max_recording_seconds: float = Field(..., gt=0)
    sample_rate_hz: int = Field(..., ge=8000)
    confusable_pairs: int = Field(..., ge=0)
    # class sizes follow a Zipf-like law: size_k ~ 1 / k**long_tail_exponent, smallest class >= 2
    long_tail_exponent: float = Field(..., ge=0)
    snr_db_range: tuple[float, float]
    # share of each container format; mp3 dominates, as on xeno-canto
    formats: dict[AudioFormat, float]
    corrupt_files: int = Field(..., ge=0)  # deliberately broken files, to exercise error paths

    @model_validator(mode="after")
    def _check(self) -> SyntheticParams:
        if self.min_recording_seconds > self.max_recording_seconds:
            raise ValueError("min_recording_seconds must be <= max_recording_seconds")
        if self.recordings < 2 * self.species:
            raise ValueError("recordings must be at least 2 per species")
        if self.snr_db_range[0] > self.snr_db_range[1]:
            raise ValueError("snr_db_range must be [low, high]")
        if any(share < 0 for share in self.formats.values()) or sum(self.formats.values()) <= 0:
            raise ValueError("formats: shares must be >= 0 and add up to more than 0")
        return self


class XenoCantoParams(Section):
    """What `birdops fetch` downloads by default (its flags override these)."""

    species: list[str]  # scientific names, "Genus species"
    min_quality: Quality
    max_per_species: int = Field(..., ge=1)
    requests_per_second: float = Field(..., gt=0)
    api_url: str
    # the longest Retry-After (429/503) waited out; a longer one stops the fetch
    max_retry_after_seconds: float = Field(..., ge=0)


class DataParams(Section):
    # the raw folder the DAG reads (dvc.yaml: ${data.raw}): the corpus stage's generated data/synthetic,
    # or a folder of the user's recordings (birdops fetch / brought; `dvc add`), which no stage writes
    raw: str = Field(..., min_length=1)
    seed: int
    synthetic: SyntheticParams
    xeno_canto: XenoCantoParams


# ------------------------------------------------------------------------------------------ prepare
class SplitParams(Section):
    val_fraction: float = Field(..., gt=0, lt=0.5)
    test_fraction: float = Field(..., gt=0, lt=0.5)


class PrepareParams(Section):
    min_quality: Quality  # grades worse than this are rejected
    min_seconds: float = Field(..., ge=0)
    max_seconds: float = Field(..., gt=0)
    min_per_class: int = Field(..., ge=1)
    small_classes: Literal["drop", "merge"]  # merge: into one "other" class
    seed: int
    split: SplitParams


# ---------------------------------------------------------------------------------------- lms_cache
class ActivityParams(Section):
    """Segment choice: windows whose energy above the high-pass band is highest."""

    highpass_hz: float = Field(..., ge=0)
    frame_seconds: float = Field(..., gt=0)
    # a window is "active" when its energy is this many dB over the recording's noise floor
    min_snr_db: float


class LmsCacheParams(Section):
    presets: list[Preset]
    clip_seconds: float = Field(..., gt=0)
    max_clips_per_recording: int = Field(..., ge=1)
    workers: int = Field(..., ge=1)
    shard_max_clips: int = Field(..., ge=1)
    activity: ActivityParams


# -------------------------------------------------------------------------------------------- train
class ModelParams(Section):
    arch: Literal["ast", "vit"]
    # tiny/small: CPU-friendly; base: the 86M AudioSet architecture (AST) / ViT-B/16 (vit)
    size: Literal["tiny", "small", "base"]
    features: Preset
    pretrained: str | None  # local directory or hub id
    dropout: float = Field(..., ge=0, lt=1)
    patch_stride: int = Field(..., ge=1)  # AST patch overlap: 16x16 patches every `stride` bins/frames


class OptimParams(Section):
    backbone_lr: float = Field(..., gt=0)
    head_lr: float = Field(..., gt=0)
    weight_decay: float = Field(..., ge=0)


class ScheduleParams(Section):
    kind: Literal["cosine", "constant"]
    warmup_epochs: float = Field(..., ge=0)  # 0 in params.yaml: warmup diverged in the report
    min_lr_ratio: float = Field(..., ge=0, le=1)


class LossParams(Section):
    kind: Literal["focal", "cross_entropy"]
    gamma: float = Field(..., ge=0)
    alpha: float | None


class SpecAugmentParams(Section):
    enabled: bool
    freq_mask_bins: int = Field(..., ge=0)
    time_mask_frames: int = Field(..., ge=0)
    num_masks: int = Field(..., ge=0)
    prob: float = Field(..., ge=0, le=1)


class MixupParams(Section):
    enabled: bool
    alpha: float = Field(..., gt=0)
    prob: float = Field(..., ge=0, le=1)


class AugmentParams(Section):
    spec_augment: SpecAugmentParams
    mixup: MixupParams


class EarlyStoppingParams(Section):
    metric: Literal["val_accuracy", "val_f1_macro", "val_loss"]
    patience: int = Field(..., ge=1)


class TrainParams(Section):
    """One training variant (train_phase2b / train_baseline / train_full)."""

    model: ModelParams
    optim: OptimParams
    schedule: ScheduleParams
    loss: LossParams
    augment: AugmentParams
    early_stopping: EarlyStoppingParams
    epochs: int = Field(..., ge=1)
    batch_size: int = Field(..., ge=1)
    effective_batch_size: int | None  # gradient accumulation up to this many samples
    grad_clip_norm: float | None
    precision: Literal["auto", "fp32", "bf16", "fp16"]  # auto: bf16 on CUDA, fp32 on CPU
    balanced_sampling: bool
    seed: int
    num_workers: int = Field(..., ge=0)
    deterministic: bool
    # GPU training near the chip; params.yaml's values leave CPU results as they were
    attention: Literal["eager", "sdpa"]  # training's kernel; a saved model rebuilds eager
    compile_model: bool  # torch.compile the model for the training steps
    fused_adamw: Literal["auto", "on", "off"]  # auto: the fused kernel on CUDA only
    prefetch_factor: int = Field(..., ge=1)  # batches each DataLoader worker loads ahead (num_workers > 0)

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        eff = self.effective_batch_size
        if eff is not None and eff % self.batch_size:
            raise ValueError("effective_batch_size must be a multiple of batch_size")
        return self


# ----------------------------------------------------------------------------------------- pretrain
class SceneCorpusParams(Section):
    """The generated pretraining corpus (``birdops.data.sounds``): one-class recordings mixed into scenes."""

    seed: int
    clip_seconds: float = Field(..., gt=0)  # AudioSet's clip length; longer than the fine-tuning clip
    stems_per_class: int = Field(..., ge=1)  # training recordings of each sound class
    val_stems_per_class: int = Field(..., ge=1)  # held-out recordings the validation scenes are mixed from
    max_sources: int = Field(..., ge=1)  # classes per scene: 1 to this many
    val_clips: int = Field(..., ge=1)


class PretrainParams(Section):
    """The ``pretrain`` stage: an AST pretrained on generated scenes, the embedded stand-in for AudioSet."""

    corpus: SceneCorpusParams
    model: ModelParams
    lr: float = Field(..., gt=0)
    weight_decay: float = Field(..., ge=0)
    steps: int = Field(..., ge=1)  # optimizer steps, each on a fresh batch of scenes
    batch_size: int = Field(..., ge=1)
    eval_every: int = Field(..., ge=1)  # steps between validations (and resume checkpoints)
    grad_clip_norm: float | None
    seed: int

    @model_validator(mode="after")
    def _check(self) -> PretrainParams:
        if self.model.arch != "ast" or self.model.pretrained is not None:
            raise ValueError("pretrain.model: arch must be ast, pretrained null (this stage makes them)")
        return self


# ----------------------------------------------------------------------------------------- evaluate
class EvaluateParams(Section):
    window_seconds: float | None  # None: the model's clip length
    hop_seconds: float = Field(..., gt=0)
    batch_size: int = Field(..., ge=1)
    # validation metric that picks the variant to export (never a test metric)
    select_metric: Literal["accuracy", "f1_macro", "map"]
    # 95% intervals and paired comparisons: resamples of the test recordings (birdops.evaluate.uncertainty)
    bootstrap_draws: int = Field(..., ge=100)
    bootstrap_seed: int


# -------------------------------------------------------------------------------------- export_onnx
class ExportParams(Section):
    opset: int = Field(..., ge=17)
    parity_clips: int = Field(..., ge=1)
    # limits on max |logit diff| relative to the logits' scale (birdops.export.parity.logit_scale)
    fp32_max_rel_diff: float = Field(..., gt=0)
    fp32_min_top1_agreement: float = Field(..., ge=0, le=1)
    fp16: bool
    fp16_max_rel_diff: float = Field(..., gt=0)
    fp16_min_top1_agreement: float = Field(..., ge=0, le=1)
    int8: bool
    int8_max_rel_diff: float = Field(..., gt=0)
    int8_min_top1_agreement: float = Field(..., ge=0, le=1)
    triton_model_name: str
    triton_max_batch_size: int = Field(..., ge=1)


# ---------------------------------------------------------------------------------------- the tree
class Params(Section):
    """The whole ``params.yaml``; construct through :func:`load_params`."""

    data: DataParams
    prepare: PrepareParams
    lms_cache: LmsCacheParams
    pretrain: PretrainParams
    train_phase2b: TrainParams
    train_baseline: TrainParams
    train_full: TrainParams
    evaluate: EvaluateParams
    export_onnx: ExportParams

    def variant(self, name: str) -> TrainParams:
        """The training section of a variant: ``phase2b``, ``baseline`` or ``full``."""
        section = getattr(self, f"train_{name}", None)
        if not isinstance(section, TrainParams):
            raise KeyError(f"unknown variant {name!r}; expected one of {', '.join(VARIANTS)}")
        return section


VARIANTS = ("phase2b", "baseline", "full")


class ParamsError(ValueError):
    """``params.yaml`` (or an override) is invalid; the message names the key and the value."""


ENV_PREFIX = "BIRDOPS_"


def refuse_env_overrides(environ: Mapping[str, str] | None = None) -> None:
    """Raise :class:`ParamsError` when the environment holds a ``BIRDOPS_<SECTION>__<KEY>`` variable:
    DVC would record ``params.yaml``'s value in ``dvc.lock``, not the one that made the output."""
    environ = os.environ if environ is None else environ
    sections = {name.upper() for name in Params.model_fields}
    found = sorted(
        name
        for name in environ
        if name.startswith(ENV_PREFIX)
        and name[len(ENV_PREFIX) :].split("__")[0] in sections
        and "__" in name[len(ENV_PREFIX) :]
    )
    if found:
        keys = {name: name[len(ENV_PREFIX) :].lower().replace("__", ".") for name in found}
        hints = ", ".join(f"{name} -> -S {key}={environ[name]}" for name, key in keys.items())
        raise ParamsError(
            f"parameters come only from params.yaml, so that dvc.lock records the values that made the "
            f"results; unset {', '.join(found)} and edit params.yaml or run `dvc exp run -S ...` ({hints})"
        )


def load_params(path: str | Path = "params.yaml") -> Params:
    """``params.yaml`` as :class:`Params`; refuses environment overrides (:func:`refuse_env_overrides`)."""
    refuse_env_overrides()
    path = Path(path)
    try:
        raw: Any = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParamsError(f"{path}: cannot read parameters: {err}") from err
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params(**raw)
    except ValidationError as err:
        raise ParamsError(f"{path}: invalid parameters:\n{_describe(err)}") from None


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "missing":  # the input is the enclosing mapping: naming the key says it all
            lines.append(f"  {key}: {e['msg']} (set it in params.yaml: no parameter has a default)")
        else:
            lines.append(f"  {key} = {e.get('input')!r}: {e['msg']}")
    return "\n".join(lines)
