"""Resume state: one safetensors file per run, rewritten atomically after every epoch.

The file holds tensors only (``model/*`` current weights, ``best/*`` best weights so far,
``optim/<param index>/<name>`` the optimizer's per-parameter state) and, in its string metadata,
one JSON document with everything else: the fingerprint of params + data, the epoch and step
counts, the metric history, early stopping, the optimizer's param groups and the grad scaler.
Nothing is pickled. The file is written to a temporary name and renamed, so a run killed at any
moment leaves either the previous epoch's state or the new one, never half of each.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from birdops.files import atomic_path

log = logging.getLogger(__name__)

STATE_FILE = "last.safetensors"
Tensors = dict[str, torch.Tensor]


@dataclass
class TrainState:
    """What a run has done so far; ``epoch`` epochs are complete."""

    fingerprint: str
    epoch: int = 0
    step: int = 0  # optimizer steps taken
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    best_value: float | None = None
    best_epoch: int = 0  # 1-based; 0: none yet
    bad_epochs: int = 0  # epochs since the best one
    scaler: dict[str, Any] = field(default_factory=dict)  # GradScaler.state_dict() (fp16 only)


@dataclass(frozen=True)
class Snapshot:
    """A state read back from disk: the scalars plus the tensors to put back."""

    state: TrainState
    model: Tensors
    best: Tensors
    optimizer: dict[str, Any]  # an optimizer.state_dict()


def save_state(
    directory: Path,
    state: TrainState,
    model: Tensors,
    best: Tensors,
    optimizer: dict[str, Any],
) -> None:
    """Write the resume state for ``state.epoch`` completed epochs into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    tensors: Tensors = {f"model/{k}": v for k, v in model.items()}
    tensors.update({f"best/{k}": v for k, v in best.items()})
    for index, per_param in optimizer["state"].items():
        for name, value in per_param.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {name!r} is not a tensor; cannot store it without pickle")
            tensors[f"optim/{index}/{name}"] = value
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    meta = {"state": dataclasses.asdict(state), "param_groups": optimizer["param_groups"]}
    with atomic_path(directory / STATE_FILE) as temp:
        save_file(tensors, str(temp), metadata={"birdops": json.dumps(meta)})


def load_state(directory: Path, fingerprint: str) -> Snapshot | None:
    """The saved state in ``directory`` if it belongs to this run (same fingerprint), else None."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["birdops"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
    except (OSError, KeyError, ValueError, SafetensorError) as err:
        log.warning("ignoring unreadable resume state %s: %s", path, err)
        return None
    state = TrainState(**meta["state"])
    if state.fingerprint != fingerprint:
        log.warning(
            "ignoring resume state %s: it was written for other params or data (fingerprint %s, now %s); "
            "starting over",
            path,
            state.fingerprint,
            fingerprint,
        )
        return None
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            optim_state.setdefault(int(index), {})[name] = value
    return Snapshot(
        state=state,
        model=_with_prefix(tensors, "model/"),
        best=_with_prefix(tensors, "best/"),
        optimizer={"state": optim_state, "param_groups": meta["param_groups"]},
    )


def _with_prefix(tensors: Tensors, prefix: str) -> Tensors:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


# ------------------------------------------------- what makes a run repeatable, and resumable
def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from a tuple of integers (base seed, epoch, rank...)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(2, dtype=np.uint32).view(np.uint64)[0] >> 1)


def hash_text(text: str) -> str:
    """A short digest of ``text``: the fingerprint a resume state is checked against."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
