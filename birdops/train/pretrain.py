"""Pretraining the AST on generated sound scenes: the embedded stand-in for the AudioSet checkpoint.

The report fine-tunes ``MIT/ast-finetuned-audioset-10-10-0.4593``, an AST trained on AudioSet's
10 s multi-label clips. Offline, :func:`pretrain` makes the same kind of checkpoint from the
generated corpus of :mod:`birdops.data.sounds`: an AST of the configured size on 10 s clips
(``max_length`` longer than the 4 s fine-tuning clip), trained multi-label (binary cross-entropy per
class, as AudioSet models are) on fresh scenes every step, and saved in the Hugging Face layout
(``config.json`` with its own ``id2label`` + ``model.safetensors``) that
``ASTForAudioClassification.from_pretrained`` reads. The fine-tuning stages load it through
``model.pretrained`` exactly as they would load the real one (``birdops.models.pretrained``).

Scenes are mixed in the mel-power domain: every single-class recording ("stem") goes through the
front end's STFT and mel filterbank once; a scene adds its sources' mel power spectrograms (shifted
in time, gated, scaled) and the background's, then takes the front end's own dB conversion and
per-clip normalisation. Adding powers is exact for the expectation over independent sources'
phases (the cross terms average out); it makes a fresh batch cost microseconds instead of an STFT
of 10 s per clip, so every step sees new mixtures.

Each batch is a pure function of ``(seed, step)``, so an interrupted run resumes from its last
saved state (``state/``) and ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn
from transformers import ASTForAudioClassification

from birdops.config import OptimParams, PretrainParams, ScheduleParams
from birdops.data.noise import colored_noise
from birdops.data.sounds import SOUND_CLASSES, render_stem
from birdops.features.frontend import LogMelFrontEnd, build_frontend
from birdops.models.factory import ASTClassifier, build_model
from birdops.train.optim import lr_factor, make_optimizer
from birdops.train.state import TrainState, derive_seed, hash_text, load_state, save_state

log = logging.getLogger(__name__)

STATE_DIR = "state"
HF_BACKBONE_PREFIX = "audio_spectrogram_transformer."  # ASTForAudioClassification's backbone name


@dataclass(frozen=True)
class PretrainResult:
    """How pretraining went: the validation scores after the last step, and the history."""

    steps: int
    val_map: float  # macro mean average precision over the classes, on held-out scenes
    val_loss: float
    history: list[dict[str, float]]  # one row per evaluation
    resumed_steps: int  # steps restored from a resume state (0: a fresh run)


# ------------------------------------------------------------------------------------- the scenes
class MelScenes:
    """Scenes mixed from stems' mel power spectrograms ``(C, S, M, T)`` over background beds ``(B, M, T)``."""

    def __init__(self, stems: torch.Tensor, beds: torch.Tensor, max_sources: int) -> None:
        self.stems, self.beds = stems, beds
        self.max_sources = min(max_sources, stems.shape[0])

    @property
    def num_classes(self) -> int:
        return int(self.stems.shape[0])

    def batch(self, rng: np.random.Generator, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mel power (size, M, T), labels (size, C))`` of ``size`` fresh scenes.

        A scene holds one to ``max_sources`` distinct classes, each a random stem of its class shifted
        circularly to a random start, at -12 to 0 dB, a third of the time present over only a stretch
        (30 % to all of the clip, faded in and out); over a background bed 15-35 dB down.

        Every draw is made first, scene by scene in a fixed order; then the sources of all scenes are
        shifted, gated and scaled in a few batched operations and added up, per scene, in the order
        they were drawn and the bed last (one source slot at a time: an absent source adds 0), so the
        sums are those of adding the scenes' sources one by one.
        """
        mix = self._draw(rng, size)
        frames = self.stems.shape[-1]
        gates = torch.ones((len(mix.stems), frames))  # (S, T): 1 where a source is not gated
        for row, (start, length) in mix.gates.items():  # a gated source is silent outside its stretch
            gates[row] = 0.0
            gates[row, start : start + length] = torch.from_numpy(np.hanning(length + 2)[1:-1] ** 0.5).float()
        sources = _rolled(self.stems.flatten(0, 1)[torch.tensor(mix.stems)], mix.shifts)  # (S, M, T)
        sources = sources * gates[:, None, :] * _column(mix.gains)  # (S, M, T), in that order
        mels = torch.zeros((size, *self.stems.shape[2:]))  # (size, M, T)
        for slot in range(self.max_sources):  # a scene's first source, then its second, ...
            rows = [row for row, (_, s) in enumerate(mix.slots) if s == slot]
            scenes = torch.tensor([mix.slots[row][0] for row in rows], dtype=torch.int64)
            mels.index_add_(0, scenes, sources[rows])  # each scene at most once: mels[scene] + source
        beds = _rolled(self.beds[torch.tensor(mix.beds)], mix.bed_shifts) * _column(
            mix.bed_gains
        )  # (size, M, T)
        labels = torch.zeros((size, self.num_classes))
        for scene, classes in enumerate(mix.classes):
            labels[scene, classes] = 1.0
        return mels + beds, labels

    def _draw(self, rng: np.random.Generator, size: int) -> _Mix:
        """Every random choice of ``size`` scenes, in the order the scenes use them."""
        classes, per_class, _, frames = self.stems.shape
        mix = _Mix()
        for scene in range(size):
            count = int(rng.integers(1, self.max_sources + 1))
            chosen = [int(c) for c in rng.choice(classes, size=count, replace=False)]
            for slot, c in enumerate(chosen):
                mix.slots.append((scene, slot))
                mix.stems.append(c * per_class + int(rng.integers(per_class)))
                mix.shifts.append(int(rng.integers(frames)))
                if rng.random() < 1 / 3:
                    length = int(rng.integers(max(1, round(0.3 * frames)), frames + 1))
                    mix.gates[len(mix.stems) - 1] = (int(rng.integers(0, frames - length + 1)), length)
                mix.gains.append(float(10 ** (rng.uniform(-12.0, 0.0) / 10)))  # a power gain
            mix.classes.append(chosen)
            mix.beds.append(int(rng.integers(len(self.beds))))
            mix.bed_shifts.append(int(rng.integers(frames)))
            mix.bed_gains.append(float(10 ** (-rng.uniform(15.0, 35.0) / 10)))
        return mix


@dataclass
class _Mix:
    """The draws of a batch of scenes; one entry per source (``slots`` ... ``gains``) or per scene."""

    slots: list[tuple[int, int]] = field(default_factory=list)  # (scene, position among its sources)
    stems: list[int] = field(default_factory=list)  # class * stems_per_class + stem
    shifts: list[int] = field(default_factory=list)  # circular shift, frames
    gates: dict[int, tuple[int, int]] = field(default_factory=dict)  # source -> (start, length) frames
    gains: list[float] = field(default_factory=list)
    classes: list[list[int]] = field(default_factory=list)  # per scene
    beds: list[int] = field(default_factory=list)  # per scene
    bed_shifts: list[int] = field(default_factory=list)
    bed_gains: list[float] = field(default_factory=list)


def _rolled(spectra: torch.Tensor, shifts: list[int]) -> torch.Tensor:
    """``torch.roll(spectra[i], shifts[i], dims=-1)`` of every ``spectra (N, M, T)``, in one gather."""
    frames = spectra.shape[-1]
    source_frames = (torch.arange(frames)[None, :] - torch.tensor(shifts)[:, None]) % frames  # (N, T)
    return torch.gather(spectra, 2, source_frames[:, None, :].expand_as(spectra))


def _column(gains: list[float]) -> torch.Tensor:
    """``(N, 1, 1)`` float32 gains: each rounded to float32 as a Python float multiplying a tensor is."""
    return torch.tensor(gains, dtype=torch.float32)[:, None, None]


def features_from_mel_power(frontend: LogMelFrontEnd, mel: torch.Tensor) -> torch.Tensor:
    """The front end's features of a mixed mel power spectrogram ``(B, M, T)``: dB, DCT, normalisation."""
    return frontend.from_db_mel(frontend.db_of_mel_power(mel))


def render_scenes(params: PretrainParams, frontend: LogMelFrontEnd, first_stem: int, count: int) -> MelScenes:
    """Stems ``first_stem .. first_stem + count - 1`` of every class and 16 beds, as mel power."""
    corpus, rate = params.corpus, frontend.spec.sample_rate_hz
    num_samples = frontend.spec.clip_shape(corpus.clip_seconds).samples
    with torch.no_grad():
        stems = torch.stack(
            [
                frontend.mel_power(
                    torch.from_numpy(
                        np.stack(
                            [
                                render_stem(c, corpus.seed, first_stem + i, corpus.clip_seconds, rate)
                                for i in range(count)
                            ]
                        )
                    )
                )
                for c in range(len(SOUND_CLASSES))
            ]
        )  # (C, count, M, T)
        rng = np.random.default_rng([corpus.seed, len(SOUND_CLASSES), first_stem])
        beds = np.stack([colored_noise(num_samples, float(rng.uniform(1.0, 2.0)), rng) for _ in range(16)])
        return MelScenes(stems, frontend.mel_power(torch.from_numpy(beds)), corpus.max_sources)


# -------------------------------------------------------------------------------------- training
def pretrain(params: PretrainParams, out_dir: str | Path) -> PretrainResult:
    """Pretrain an AST on generated scenes; write ``config.json`` + ``model.safetensors`` to ``out_dir``."""
    out_dir = Path(out_dir)
    torch.manual_seed(params.seed)
    frontend = build_frontend(params.model.features)
    if not isinstance(frontend, LogMelFrontEnd):
        raise ValueError(
            f"pretrain.model.features must be a log-mel preset (seed, mfcc), got {params.model.features}"
        )
    spec, corpus = frontend.spec, params.corpus
    shape = spec.clip_shape(corpus.clip_seconds)
    started = time.monotonic()
    train_scenes = render_scenes(params, frontend, 0, corpus.stems_per_class)
    val_scenes = render_scenes(params, frontend, corpus.stems_per_class, corpus.val_stems_per_class)
    val_mel, val_labels = val_scenes.batch(np.random.default_rng([corpus.seed, 1]), corpus.val_clips)
    val_features = features_from_mel_power(frontend, val_mel)
    log.info(
        "pretrain corpus: %d classes x %d + %d stems of %.0f s rendered in %.1f s",
        len(SOUND_CLASSES),
        corpus.stems_per_class,
        corpus.val_stems_per_class,
        corpus.clip_seconds,
        time.monotonic() - started,
    )

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(params.model, len(SOUND_CLASSES), *shape.features)
    assert isinstance(model, ASTClassifier)
    model.to(device)
    optimizer = make_optimizer(
        model, OptimParams(backbone_lr=params.lr, head_lr=params.lr, weight_decay=params.weight_decay)
    )
    schedule = ScheduleParams(kind="cosine", warmup_epochs=0.0, min_lr_ratio=0.0)
    loss_fn = nn.BCEWithLogitsLoss()

    state_dir = out_dir / STATE_DIR
    fingerprint = hash_text(params.model_dump_json())
    state = TrainState(fingerprint=fingerprint)
    snapshot = load_state(state_dir, fingerprint)
    if snapshot is not None:
        state = snapshot.state
        model.load_state_dict(snapshot.model)
        optimizer.load_state_dict(snapshot.optimizer)
        log.info("resuming pretraining after step %d of %d (from %s)", state.step, params.steps, state_dir)
    resumed = state.step

    while state.step < params.steps:
        model.train()
        factor = lr_factor(state.step, params.steps, 0, schedule)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        mel, labels = train_scenes.batch(
            np.random.default_rng(derive_seed(params.seed, state.step)), params.batch_size
        )
        loss = loss_fn(model(features_from_mel_power(frontend, mel).to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if params.grad_clip_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip_norm)
        optimizer.step()
        state.step += 1
        if state.step % params.eval_every == 0 or state.step == params.steps:
            row = {
                "step": float(state.step),
                "train_loss": float(loss.detach()),
                **_validate(model, val_features, val_labels, loss_fn),
            }
            state.history.append(row)
            log.info(
                "pretrain step %d/%d: %s", state.step, params.steps, {k: round(v, 4) for k, v in row.items()}
            )
            save_state(
                state_dir, state, model.state_dict(), {}, optimizer.state_dict()
            )  # no "best": the last

    last = state.history[-1]
    save_hf_checkpoint(model, out_dir, list(SOUND_CLASSES))
    shutil.rmtree(state_dir, ignore_errors=True)
    return PretrainResult(
        steps=state.step,
        val_map=last["val_map"],
        val_loss=last["val_loss"],
        history=state.history,
        resumed_steps=resumed,
    )


def _validate(
    model: nn.Module, features: torch.Tensor, labels: torch.Tensor, loss_fn: nn.Module, batch_size: int = 64
) -> dict[str, float]:
    """Loss and macro mAP on the held-out scenes."""
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        starts = range(0, len(features), batch_size)
        logits = torch.cat([model(features[i : i + batch_size].to(device)).cpu() for i in starts])
    present = labels.sum(dim=0) > 0  # a class with no positive has no average precision
    val_map = average_precision_score(labels[:, present].numpy(), logits[:, present].numpy(), average="macro")
    return {"val_loss": float(loss_fn(logits, labels)), "val_map": float(val_map)}


def save_hf_checkpoint(model: ASTClassifier, out_dir: Path, labels: list[str]) -> None:
    """Save as ``ASTForAudioClassification.save_pretrained`` does: ``config.json`` + ``model.safetensors``,
    with the sound classes as ``id2label`` and multi-label classification as the problem type."""
    config = model.config.__class__.from_dict(model.config.to_dict())
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.problem_type = "multi_label_classification"
    config.architectures = ["ASTForAudioClassification"]
    hf = ASTForAudioClassification(config)
    renamed = {
        (HF_BACKBONE_PREFIX + k.removeprefix("backbone.") if k.startswith("backbone.") else k): v
        for k, v in model.state_dict().items()
    }
    hf.load_state_dict({k: v.cpu() for k, v in renamed.items()}, strict=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(out_dir, safe_serialization=True)
