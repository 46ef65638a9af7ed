"""Initialise a freshly built classifier from a pretrained transformers checkpoint.

The architecture always comes from ``ModelParams`` (so ``load_classifier`` can rebuild a trained
model from its config alone); the checkpoint must have that architecture: every config field that
changes what the backbone computes (:data:`AST_ARCHITECTURE`, :data:`VIT_ARCHITECTURE`: sizes, patch
and strides, mel bins, but also ``hidden_act``, ``layer_norm_eps`` and ``qkv_bias``, which birdops
leaves at transformers' defaults) must equal the built model's, else it is refused naming each field.
Only the position embedding is adapted to the real clip length:

- ``ast``: the embedding is ``[cls, dist, f_dim * t_dim patch grid]``. As the original AST code
  (YuanGongND/ast, ``src/models/ast_models.py``) does for the AudioSet checkpoint, a shorter clip
  takes the *middle* ``t_dim`` columns of the grid (start ``t_old // 2 - t_new // 2``), a longer
  one interpolates the grid bilinearly; the frequency axis must match (same bins and stride).
- ``vit``: the ``[cls, h * w grid]`` embedding is interpolated bilinearly to the new grid and an
  RGB patch projection is summed over its input channels (the AST recipe for ImageNet weights).

Loading is strict: every key but the head's (``classifier.*``) must be in the checkpoint with the same
shape. The head is always the new model's, freshly initialised, even when the checkpoint's has as
many classes (fine-tuning AudioSet's 527 classes onto 527 species must not start from AudioSet's
head; the original AST code builds a new head too). Weights are read from safetensors only: no
pickle is ever loaded; a folder with only ``pytorch_model.bin`` is refused with the command that
converts it safely (``birdops convert-checkpoint``, :mod:`birdops.models.convert`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from transformers import ASTConfig, ASTForAudioClassification, PreTrainedConfig, ViTConfig, ViTModel

from birdops.models.factory import ASTClassifier, ViTClassifier, is_head

log = logging.getLogger(__name__)

StateDict = dict[str, torch.Tensor]
POSITION_KEY = "backbone.embeddings.position_embeddings"
PATCH_KEY = "backbone.embeddings.patch_embeddings.projection.weight"
SAFE_WEIGHTS = "model.safetensors"
PICKLED_WEIGHTS = "pytorch_model.bin"

# The config fields that change what the backbone computes, each with what sets it in birdops. The
# others are adapted (AST max_length, ViT image_size and num_channels: the position embedding and
# patch projection), training-only (dropout), initialisation-only (initializer_range) or parts birdops
# does not build (ViT's pooler and masked-image decoder stride); tests/models/test_pretrained.py holds
# every field of ASTConfig and ViTConfig to one of the two lists.
_SIZE_HINT = "set model.size to the checkpoint's size"
_FIXED_HINT = (
    "birdops builds transformers' default; a checkpoint with another value cannot be fine-tuned here"
)
_SHARED_ARCHITECTURE = {
    "hidden_size": _SIZE_HINT,
    "num_hidden_layers": _SIZE_HINT,
    "num_attention_heads": _SIZE_HINT,
    "intermediate_size": _SIZE_HINT,
    "hidden_act": _FIXED_HINT,
    "layer_norm_eps": _FIXED_HINT,
    "qkv_bias": _FIXED_HINT,
}
AST_ARCHITECTURE: dict[str, str] = {
    **_SHARED_ARCHITECTURE,
    "patch_size": "birdops's AST patches are 16x16, the AudioSet checkpoint's",
    "frequency_stride": "set model.patch_stride to the checkpoint's stride",
    "time_stride": "set model.patch_stride to the checkpoint's stride",
    "num_mel_bins": "use the checkpoint's feature preset (model.features)",
}
VIT_ARCHITECTURE: dict[str, str] = {**_SHARED_ARCHITECTURE, "patch_size": "model.size sets the ViT patch"}


class PretrainedError(RuntimeError):
    """A pretrained checkpoint is unavailable or does not fit the configured model."""


def load_pretrained(model: nn.Module, source: str) -> None:
    """Fill ``model`` (from ``build_model``) in place with the weights of ``source``.

    ``source`` is a local directory (``config.json`` + ``model.safetensors``, as written by
    ``save_pretrained`` or ``hf download``) or a Hugging Face hub id, looked up in the local cache
    first and downloaded only when the hub is reachable and ``HF_HUB_OFFLINE`` is not set.
    """
    if isinstance(model, ASTClassifier):
        state = _ast_state(source, model.config)
    elif isinstance(model, ViTClassifier):
        state = _vit_state(source, model.config)
    else:
        raise TypeError(f"cannot load pretrained weights into {type(model).__name__}")
    load_backbone_strict(model, state, source)
    log.info("initialised the backbone from %s; a new head", source)


def load_backbone_strict(model: nn.Module, state: StateDict, source: str) -> None:
    """Copy ``state``'s backbone into ``model``: all non-head keys must match; the head (``classifier.*``)
    keeps its fresh initialisation whatever ``state`` holds."""
    target = model.state_dict()
    missing = sorted(k for k in target if k not in state and not is_head(k))
    unexpected = sorted(k for k in state if k not in target and not is_head(k))
    mismatched = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in target.items()
        if k in state and not is_head(k) and state[k].shape != v.shape
    )
    if missing or unexpected or mismatched:
        raise PretrainedError(
            f"{source} does not fit the configured model (check model.size and model.patch_stride): "
            f"missing {_some(missing)}; unexpected {_some(unexpected)}; shape mismatch {_some(mismatched)}"
        )
    merged = {**target, **{k: v for k, v in state.items() if not is_head(k)}}
    model.load_state_dict(merged, strict=True)


def check_architecture(
    source: PreTrainedConfig, target: PreTrainedConfig, fields: dict[str, str], origin: str
) -> None:
    """The checkpoint's config (``source``) must equal the built model's (``target``) in every field of
    ``fields`` (name -> what sets it); :class:`PretrainedError` names each one that differs."""
    differ = [
        f"{name}: checkpoint {getattr(source, name)!r}, model {getattr(target, name)!r} ({hint})"
        for name, hint in fields.items()
        if getattr(source, name) != getattr(target, name)
    ]
    if differ:
        raise PretrainedError(
            f"{origin} has another architecture than the configured model: {'; '.join(differ)}"
        )


def _some(items: list[str], shown: int = 5) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return f"{items[:shown]}{more}"


# ---------------------------------------------------------------------------------------- reading
def _read_ast(source: str) -> tuple[StateDict, ASTConfig]:
    hf = _from_pretrained(ASTForAudioClassification, source)
    assert isinstance(hf, ASTForAudioClassification)
    state = {_rename(k, "audio_spectrogram_transformer.", "backbone."): v for k, v in hf.state_dict().items()}
    return state, hf.config


def _read_vit(source: str) -> tuple[StateDict, ViTConfig]:
    hf = _from_pretrained(ViTModel, source, add_pooling_layer=False)
    assert isinstance(hf, ViTModel)
    return {f"backbone.{k}": v for k, v in hf.state_dict().items()}, hf.config


def _from_pretrained(
    cls: type[ASTForAudioClassification | ViTModel], source: str, **kwargs: Any
) -> nn.Module:
    """``cls.from_pretrained`` from safetensors only, the local cache first; clear errors offline."""
    path = Path(source).expanduser()
    is_dir = path.is_dir()
    if not is_dir and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise PretrainedError(
            f"model.pretrained: {source} is neither a directory nor a hub id ('owner/name'); point it at "
            "a folder holding config.json and model.safetensors, or set it to null to train from scratch"
        )
    if is_dir and not (path / SAFE_WEIGHTS).is_file() and (path / PICKLED_WEIGHTS).is_file():
        raise PretrainedError(
            f"{source} holds its weights only as {PICKLED_WEIGHTS}, a pickle, which birdops never loads "
            f"(unpickling can run code). Convert it once with `birdops convert-checkpoint {path}`: it reads "
            f"the tensors with torch.load(weights_only=True), which refuses anything but tensors, and "
            f"writes {SAFE_WEIGHTS} beside it"
        )
    # a hub id: the local cache first, the network only when allowed
    attempts = [True] if is_dir or _hub_offline() else [True, False]
    error: OSError | None = None
    for local_only in attempts:
        try:
            model, info = cls.from_pretrained(  # type: ignore[misc]  # a tuple with output_loading_info
                str(path) if is_dir else source,
                local_files_only=local_only,
                use_safetensors=True,  # never unpickle a .bin checkpoint
                attn_implementation="eager",
                output_loading_info=True,
                **kwargs,
            )
        except OSError as err:
            error = err
            continue
        if info["missing_keys"] or info["mismatched_keys"]:
            raise PretrainedError(f"{source}: incomplete checkpoint: {info}")
        out: nn.Module = model
        return out
    raise PretrainedError(
        f"pretrained weights {source!r} are not available here (offline, or no model.safetensors). "
        f"On a machine with network run `hf download {source} --local-dir pretrained/{path.name}` and set "
        "model.pretrained to that folder (or pre-fill the Hugging Face cache, HF_HOME); if the folder then "
        f"holds only {PICKLED_WEIGHTS}, run `birdops convert-checkpoint pretrained/{path.name}`. Or set "
        f"model.pretrained: null to train from scratch. Cause: {error}"
    ) from error


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}


def _rename(key: str, old_prefix: str, new_prefix: str) -> str:
    return new_prefix + key[len(old_prefix) :] if key.startswith(old_prefix) else key


# ------------------------------------------------------------------------------------- adaptation
def _ast_state(source: str, target: ASTConfig) -> StateDict:
    state, config = _read_ast(source)
    check_architecture(config, target, AST_ARCHITECTURE, source)
    return _adapt_ast(state, config, target)


def _vit_state(source: str, target: ViTConfig) -> StateDict:
    state, config = _read_vit(source)
    check_architecture(config, target, VIT_ARCHITECTURE, source)
    return _adapt_vit(state, config, target)


def _adapt_ast(state: StateDict, config: ASTConfig, target: ASTConfig) -> StateDict:
    """``state`` with its position embedding adapted to ``target``'s clip length (the frequency grid is
    the same: :data:`AST_ARCHITECTURE` was checked)."""
    f_old, t_old = _ast_grid(config)
    _, t_new = _ast_grid(target)
    state = dict(state)
    state[POSITION_KEY] = adapt_ast_positions(state[POSITION_KEY], f_old, t_old, t_new)
    return state


def adapt_ast_positions(positions: torch.Tensor, f_dim: int, t_old: int, t_new: int) -> torch.Tensor:
    """``(1, 2 + f_dim * t_old, H)`` -> ``(1, 2 + f_dim * t_new, H)``: middle slice or bilinear stretch."""
    tokens, grid = positions[:, :2], positions[:, 2:]
    hidden = positions.shape[-1]
    grid = grid.transpose(1, 2).reshape(1, hidden, f_dim, t_old)  # (1, H, f, t_old), patches are f-major
    if t_new <= t_old:
        start = t_old // 2 - t_new // 2
        grid = grid[:, :, :, start : start + t_new]
    else:
        grid = F.interpolate(grid, size=(f_dim, t_new), mode="bilinear")
    grid = grid.reshape(1, hidden, f_dim * t_new).transpose(1, 2)  # (1, f * t_new, H)
    return torch.cat([tokens, grid], dim=1).contiguous()


def _ast_grid(config: ASTConfig) -> tuple[int, int]:
    patch = int(config.patch_size)  # type: ignore[arg-type]
    f_dim = (config.num_mel_bins - patch) // config.frequency_stride + 1
    t_dim = (config.max_length - patch) // config.time_stride + 1
    return f_dim, t_dim


def _adapt_vit(state: StateDict, config: ViTConfig, target: ViTConfig) -> StateDict:
    """``state`` with its patch projection summed to one channel and its position grid stretched to
    ``target``'s image (:data:`VIT_ARCHITECTURE` was checked)."""
    state = dict(state)
    # an RGB projection (H, 3, p, p) becomes the one-channel (H, 1, p, p) by summing its channels
    state[PATCH_KEY] = state[PATCH_KEY].sum(dim=1, keepdim=True)
    old, new = _vit_grid(config), _vit_grid(target)
    positions = state[POSITION_KEY]  # (1, 1 + h * w, H)
    if old != new:
        hidden = positions.shape[-1]
        grid = positions[:, 1:].transpose(1, 2).reshape(1, hidden, *old)
        grid = F.interpolate(grid, size=new, mode="bilinear").reshape(1, hidden, new[0] * new[1])
        state[POSITION_KEY] = torch.cat([positions[:, :1], grid.transpose(1, 2)], dim=1).contiguous()
    return state


def _vit_grid(config: ViTConfig) -> tuple[int, int]:
    size = config.image_size
    height, width = (size, size) if isinstance(size, int) else size
    patch = int(config.patch_size)  # type: ignore[arg-type]
    return height // patch, width // patch
