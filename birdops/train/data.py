"""Training data: the cached feature splits as torch datasets, and a deterministic epoch sampler."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from birdops.contracts import labels_path, read_labels
from birdops.features.cache import Clips, load_split
from birdops.train.state import derive_seed


class Split(Protocol):
    """What training reads from a cached split (``birdops.features.cache.CachedSplit``)."""

    @property
    def features(self) -> Clips: ...  # (N, F, T) float16: the cache's shards, read on demand

    @property
    def labels(self) -> np.ndarray: ...  # (N,) int64 label indices


@dataclass(frozen=True)
class TrainData:
    """The train and validation splits of one feature preset, with what a saved model must record."""

    train: Split
    val: Split
    labels: tuple[str, ...]  # class names, index order
    preset: str
    spec: dict[str, Any]  # FeatureSpec.to_dict()
    clip_seconds: float

    @property
    def n_bins(self) -> int:
        return int(self.train.features.shape[1])

    @property
    def n_frames(self) -> int:
        return int(self.train.features.shape[2])


def load_train_data(prepared_dir: str | Path, lms_dir: str | Path, preset: str) -> TrainData:
    """Labels from ``<prepared>/labels.json`` and the train/val splits of ``<lms>/<preset>``."""
    labels = read_labels(labels_path(prepared_dir))
    train, val = (load_split(lms_dir, preset, split) for split in ("train", "val"))
    for name, split in (("train", train), ("val", val)):
        if len(split.labels) == 0:
            raise ValueError(f"{lms_dir}/{preset}: the {name} split is empty")
        if int(split.labels.max()) >= len(labels):
            raise ValueError(f"{lms_dir}/{preset}/{name}: label index beyond the {len(labels)} labels")
    if train.features.shape[1:] != val.features.shape[1:]:
        raise ValueError(f"train {train.features.shape} and val {val.features.shape} clips differ in shape")
    return TrainData(
        train=train,
        val=val,
        labels=labels,
        preset=preset,
        spec=train.spec.to_dict(),
        clip_seconds=float(train.clip_seconds),
    )


class FeatureDataset(Dataset[tuple[torch.Tensor, int]]):
    """Clip ``i`` of a split as ``(features (F, T) float32, label index)``."""

    def __init__(self, split: Split) -> None:
        self.features = split.features
        self.labels = np.asarray(split.labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        clip = np.asarray(self.features[index], dtype=np.float32)  # (F, T), float16 on disk
        return torch.from_numpy(clip), int(self.labels[index])


class EpochSampler(Sampler[int]):
    """The clip indices one rank visits in one epoch, a function of ``(seed, epoch)`` only.

    ``shuffle``: a random permutation; ``balanced``: ``N`` draws with replacement, each class
    equally likely (weights ``1 / class count``); neither: the split in order. Indices are dealt
    round-robin to ``world_size`` ranks as ``DistributedSampler`` does; with ``even`` the list is
    first padded by wrapping around so every rank gets the same count (DDP training needs it),
    without it (evaluation) every clip is visited exactly once. Because nothing but the seed and
    the epoch number decides the order, a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(
        self,
        labels: np.ndarray,
        seed: int,
        *,
        shuffle: bool,
        balanced: bool = False,
        even: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.seed, self.shuffle, self.balanced, self.even = seed, shuffle, balanced, even
        self.rank, self.world_size = rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_indices(self) -> torch.Tensor:
        """``(N,)`` int64: this epoch's order for all ranks together (before dealing)."""
        n = len(self.labels)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        if self.balanced:
            counts = torch.bincount(self.labels).double()  # (C,)
            weights = 1.0 / counts[self.labels]  # (N,)
            return torch.multinomial(weights, n, replacement=True, generator=generator)
        if self.shuffle:
            return torch.randperm(n, generator=generator)
        return torch.arange(n)

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        if self.even and len(indices) % self.world_size:
            indices = torch.cat([indices, indices[: self.world_size - len(indices) % self.world_size]])
        return iter(indices[self.rank :: self.world_size].tolist())

    def __len__(self) -> int:
        n = len(self.labels)
        if self.even:
            return math.ceil(n / self.world_size)
        return len(range(self.rank, n, self.world_size))


def data_fingerprint(data: TrainData) -> str:
    """A hash of everything in the data that training depends on: labels, spec and every clip."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(
        json.dumps([data.labels, data.preset, data.spec, data.clip_seconds], sort_keys=True).encode()
    )
    for split in (data.train, data.val):
        digest.update(repr(split.features.shape).encode())
        digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).tobytes())
        for start in range(0, len(split.features), 256):  # chunks: memory-mapped shards stay on disk
            digest.update(np.ascontiguousarray(split.features[start : start + 256]).tobytes())
    return digest.hexdigest()
