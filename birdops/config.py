"""Typed parameters: ``params.yaml`` parsed into frozen pydantic models.

Every section rejects unknown keys, so a typo in ``params.yaml`` fails loudly with the key's path.
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


def _xeno_canto_formats() -> dict[AudioFormat, float]:
    return {"mp3": 0.7, "wav": 0.1, "flac": 0.1, "ogg": 0.1}


class SyntheticParams(Section):
    """Size and shape of the embedded, generated xeno-canto-like corpus."""

    species: int = Field(20, ge=2)
    recordings: int = Field(360, ge=4)
    recordists: int = Field(60, ge=1)
    min_recording_seconds: float = Field(3.0, gt=0)
    max_recording_seconds: float = Field(30.0, gt=0)
    sample_rate_hz: int = Field(32000, ge=8000)
    confusable_pairs: int = Field(3, ge=0)
    # class sizes follow a Zipf-like law: size_k ~ 1 / k**long_tail_exponent, smallest class >= 2
    long_tail_exponent: float = Field(1.0, ge=0)
    snr_db_range: tuple[float, float] = (-5.0, 30.0)
    # share of each container format; mp3 dominates, as on xeno-canto
    formats: dict[AudioFormat, float] = Field(default_factory=_xeno_canto_formats)
    corrupt_files: int = Field(2, ge=0)  # deliberately broken files, to exercise error paths

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

    species: list[str] = Field(default_factory=list)  # scientific names, "Genus species"
    min_quality: Quality = "C"
    max_per_species: int = Field(150, ge=1)
    requests_per_second: float = Field(1.0, gt=0)
    api_url: str = "https://xeno-canto.org/api/3/recordings"


class DataParams(Section):
    # the raw folder the DAG reads (dvc.yaml: ${data.raw}): the corpus stage's generated data/synthetic,
    # or a folder of the user's recordings (birdops fetch / brought; `dvc add`), which no stage writes
    raw: str = Field("data/synthetic", min_length=1)
    seed: int = 7
    synthetic: SyntheticParams = SyntheticParams()
    xeno_canto: XenoCantoParams = XenoCantoParams()


# ------------------------------------------------------------------------------------------ prepare
class SplitParams(Section):
    val_fraction: float = Field(0.15, gt=0, lt=0.5)
    test_fraction: float = Field(0.15, gt=0, lt=0.5)


class PrepareParams(Section):
    min_quality: Quality = "D"  # grades worse than this are rejected
    min_seconds: float = Field(1.0, ge=0)
    max_seconds: float = Field(900.0, gt=0)
    min_per_class: int = Field(2, ge=1)
    small_classes: Literal["drop", "merge"] = "drop"  # merge: into one "other" class
    seed: int = 13
    split: SplitParams = SplitParams()


# ---------------------------------------------------------------------------------------- lms_cache
class ActivityParams(Section):
    """Segment choice: windows whose energy above the high-pass band is highest."""

    highpass_hz: float = Field(500.0, ge=0)
    frame_seconds: float = Field(0.05, gt=0)
    # a window is "active" when its energy is this many dB over the recording's noise floor
    min_snr_db: float = 3.0


class LmsCacheParams(Section):
    presets: list[Preset] = Field(default_factory=lambda: list[Preset](["seed", "mfcc"]))
    clip_seconds: float = Field(4.0, gt=0)
    max_clips_per_recording: int = Field(3, ge=1)
    workers: int = Field(2, ge=1)
    shard_max_clips: int = Field(4096, ge=1)
    activity: ActivityParams = ActivityParams()


# -------------------------------------------------------------------------------------------- train
class ModelParams(Section):
    arch: Literal["ast", "vit"] = "ast"
    # tiny/small: CPU-friendly; base: the 86M AudioSet architecture (AST) / ViT-B/16 (vit)
    size: Literal["tiny", "small", "base"] = "tiny"
    features: Preset = "seed"
    pretrained: str | None = None  # local directory or hub id
    dropout: float = Field(0.0, ge=0, lt=1)
    patch_stride: int = Field(10, ge=1)  # AST patch overlap: 16x16 patches every `stride` bins/frames


class OptimParams(Section):
    backbone_lr: float = Field(5e-5, gt=0)
    head_lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)


class ScheduleParams(Section):
    kind: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = Field(0.0, ge=0)  # off by default: warmup diverged in the report
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class LossParams(Section):
    kind: Literal["focal", "cross_entropy"] = "focal"
    gamma: float = Field(2.0, ge=0)
    alpha: float | None = None


class SpecAugmentParams(Section):
    enabled: bool = False
    freq_mask_bins: int = Field(15, ge=0)
    time_mask_frames: int = Field(35, ge=0)
    num_masks: int = Field(1, ge=0)
    prob: float = Field(0.8, ge=0, le=1)


class MixupParams(Section):
    enabled: bool = False
    alpha: float = Field(0.4, gt=0)
    prob: float = Field(0.6, ge=0, le=1)


class AugmentParams(Section):
    spec_augment: SpecAugmentParams = SpecAugmentParams()
    mixup: MixupParams = MixupParams()


class EarlyStoppingParams(Section):
    metric: Literal["val_accuracy", "val_f1_macro", "val_loss"] = "val_accuracy"
    patience: int = Field(7, ge=1)


class TrainParams(Section):
    """One training variant (train_phase2b / train_baseline / train_full)."""

    model: ModelParams = ModelParams()
    optim: OptimParams = OptimParams()
    schedule: ScheduleParams = ScheduleParams()
    loss: LossParams = LossParams()
    augment: AugmentParams = AugmentParams()
    early_stopping: EarlyStoppingParams = EarlyStoppingParams()
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    effective_batch_size: int | None = None  # gradient accumulation up to this many samples
    grad_clip_norm: float | None = 1.0
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, fp32 on CPU
    balanced_sampling: bool = False
    seed: int = 42
    num_workers: int = Field(0, ge=0)
    deterministic: bool = True
    # GPU training near the chip; the defaults leave CPU results as they were
    attention: Literal["eager", "sdpa"] = "eager"  # training's kernel; a saved model rebuilds eager
    compile_model: bool = False  # torch.compile the model for the training steps
    fused_adamw: Literal["auto", "on", "off"] = "auto"  # auto: the fused kernel on CUDA only
    prefetch_factor: int = Field(2, ge=1)  # batches each DataLoader worker loads ahead (num_workers > 0)

    @model_validator(mode="after")
    def _check(self) -> TrainParams:
        eff = self.effective_batch_size
        if eff is not None and eff % self.batch_size:
            raise ValueError("effective_batch_size must be a multiple of batch_size")
        return self


# ----------------------------------------------------------------------------------------- pretrain
class SceneCorpusParams(Section):
    """The generated pretraining corpus (``birdops.data.sounds``): one-class recordings mixed into scenes."""

    seed: int = 11
    clip_seconds: float = Field(10.0, gt=0)  # AudioSet's clip length; longer than the fine-tuning clip
    stems_per_class: int = Field(16, ge=1)  # training recordings of each sound class
    val_stems_per_class: int = Field(4, ge=1)  # held-out recordings the validation scenes are mixed from
    max_sources: int = Field(3, ge=1)  # classes per scene: 1 to this many
    val_clips: int = Field(256, ge=1)


class PretrainParams(Section):
    """The ``pretrain`` stage: an AST pretrained on generated scenes, the embedded stand-in for AudioSet."""

    corpus: SceneCorpusParams = SceneCorpusParams()
    model: ModelParams = ModelParams(arch="ast", size="small", features="seed", patch_stride=16)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-2, ge=0)
    steps: int = Field(600, ge=1)  # optimizer steps, each on a fresh batch of scenes
    batch_size: int = Field(16, ge=1)
    eval_every: int = Field(100, ge=1)  # steps between validations (and resume checkpoints)
    grad_clip_norm: float | None = 1.0
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> PretrainParams:
        if self.model.arch != "ast" or self.model.pretrained is not None:
            raise ValueError("pretrain.model: arch must be ast, pretrained null (this stage makes them)")
        return self


# ----------------------------------------------------------------------------------------- evaluate
class EvaluateParams(Section):
    window_seconds: float | None = None  # None: the model's clip length
    hop_seconds: float = Field(2.0, gt=0)
    batch_size: int = Field(32, ge=1)
    # validation metric that picks the variant to export (never a test metric)
    select_metric: Literal["accuracy", "f1_macro", "map"] = "f1_macro"
    # 95% intervals and paired comparisons: resamples of the test recordings (birdops.evaluate.uncertainty)
    bootstrap_draws: int = Field(1000, ge=100)
    bootstrap_seed: int = 0


# -------------------------------------------------------------------------------------- export_onnx
class ExportParams(Section):
    opset: int = Field(18, ge=17)
    parity_clips: int = Field(32, ge=1)
    # limits on max |logit diff| relative to the logits' scale (birdops.export.parity.logit_scale)
    fp32_max_rel_diff: float = Field(1e-3, gt=0)
    fp32_min_top1_agreement: float = Field(1.0, ge=0, le=1)
    fp16: bool = False
    fp16_max_rel_diff: float = Field(2e-2, gt=0)
    fp16_min_top1_agreement: float = Field(0.98, ge=0, le=1)
    int8: bool = False
    int8_max_rel_diff: float = Field(1e-1, gt=0)
    int8_min_top1_agreement: float = Field(0.9, ge=0, le=1)
    triton_model_name: str = "birdops"
    triton_max_batch_size: int = Field(64, ge=1)


# ---------------------------------------------------------------------------------------- the tree
class Params(Section):
    """The whole ``params.yaml``; construct through :func:`load_params`."""

    data: DataParams = DataParams()
    prepare: PrepareParams = PrepareParams()
    lms_cache: LmsCacheParams = LmsCacheParams()
    pretrain: PretrainParams = PretrainParams()
    train_phase2b: TrainParams = TrainParams()
    train_baseline: TrainParams = TrainParams()
    train_full: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    export_onnx: ExportParams = ExportParams()

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
        lines.append(f"  {key} = {e.get('input')!r}: {e['msg']}")
    return "\n".join(lines)
