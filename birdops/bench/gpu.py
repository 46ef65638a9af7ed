"""The GPU profile's own run in ``birdops bench --sections cuda``: the README's recipe -- the base AST
on the ``ast`` preset, fine-tuned from an AudioSet-shaped checkpoint with SDPA attention, a compiled
step, bf16 and loader workers -- for one epoch on the bench's small corpus.

Offline, the checkpoint is *MIT-shaped*: an AST of ``MIT/ast-finetuned-audioset-10-10-0.4593``'s
architecture (base size, 128 bins, 1024 frames, patch stride 10, 527 AudioSet classes) with seeded
weights, saved in the Hugging Face layout that ``model.pretrained`` reads. So the run goes through the
real path -- the position embedding sliced from 1024 frames to the clip's, the head replaced -- at
the real size and speed, without a download; only what the weights know differs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from birdops.bench.common import Section, Table, fmt
from birdops.bench.cuda import BASE_AST
from birdops.bench.inputs import Corpus
from birdops.config import LmsCacheParams, ModelParams, TrainParams
from birdops.contracts import manifest_path
from birdops.features.cache import build_cache
from birdops.models.factory import ASTClassifier, build_model
from birdops.train.data import load_train_data
from birdops.train.pretrain import save_hf_checkpoint
from birdops.train.trainer import train

AUDIOSET_CLASSES = 527
AUDIOSET_FRAMES = 1024  # the checkpoint's max_length: 10.24 s of 10 ms frames
AUDIOSET_AST = BASE_AST.model_copy(update={"features": "ast"})  # on the preset the checkpoint learnt


def mit_shaped_checkpoint(folder: Path, model: ModelParams = AUDIOSET_AST) -> Path:
    """Save a seeded AST of ``model``'s architecture on 128 bins x 1024 frames with 527 classes in
    the Hugging Face layout (``config.json`` + ``model.safetensors``); returns ``folder``."""
    torch.manual_seed(0)
    ast = build_model(model, AUDIOSET_CLASSES, 128, AUDIOSET_FRAMES)
    assert isinstance(ast, ASTClassifier)
    save_hf_checkpoint(ast, folder, [f"AudioSet class {i}" for i in range(AUDIOSET_CLASSES)])
    return folder


def gpu_profile_params(full: TrainParams, checkpoint: Path, epochs: int = 1) -> TrainParams:
    """The README's GPU profile of the ``full`` variant: the base AST on the ``ast`` preset from
    ``checkpoint``, the report's rates, batch 32, 4 loader workers, SDPA, a compiled step, bf16."""
    model = AUDIOSET_AST.model_copy(update={"pretrained": str(checkpoint), "dropout": full.model.dropout})
    return full.model_copy(
        update={
            "model": model,
            "optim": full.optim.model_copy(update={"backbone_lr": 5e-5, "head_lr": 1e-3}),
            "epochs": epochs,
            "batch_size": 32,
            "num_workers": 4,
            "attention": "sdpa",
            "compile_model": True,
            "precision": "bf16",
        }
    )


def gpu_profile_section(
    corpus: Corpus, cache_params: LmsCacheParams, full: TrainParams, work: Path
) -> Section:
    """One epoch of the GPU profile on ``corpus`` (its ``ast`` features cached first): wall seconds
    (compilation included) and training clips per second."""
    lms = work / "lms_ast"
    build_cache(
        corpus.raw_dir,
        manifest_path(corpus.prepared_dir),
        lms,
        cache_params.model_copy(update={"presets": ["ast"], "workers": 4}),
    )
    checkpoint = mit_shaped_checkpoint(work / "mit-shaped-ast")
    params = gpu_profile_params(full, checkpoint)
    data = load_train_data(corpus.prepared_dir, lms, "ast")
    started = time.perf_counter()
    result = train(params, data, work / "gpu_profile_model", None, "full")
    seconds = time.perf_counter() - started
    clips, epochs = len(data.train.labels), len(result.history)
    figures: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "train_clips": clips,
        "val_clips": len(data.val.labels),
        "frames": data.shape.n_frames,
        "epochs": epochs,
        "wall_s": seconds,
        "clips_per_s_with_compile": clips * epochs / seconds,
        "history": result.history,
    }
    table = Table(
        f"GPU profile, one epoch on {torch.cuda.get_device_name(0)}: base AST from an MIT-shaped checkpoint, "
        f"ast preset ({data.shape.n_frames} frames), bf16, SDPA, compiled, batch 32",
        ("", "value"),
        [
            ("train / val clips", f"{clips} / {len(data.val.labels)}"),
            ("wall s (compilation and validation included)", fmt(seconds, 1)),
            ("train clips / wall s", fmt(figures["clips_per_s_with_compile"], 1)),
        ],
    )
    return Section(figures, (table,))
