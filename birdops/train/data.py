"""Training data: the cached feature splits as torch datasets, and deterministic epoch samplers.

A training item is ``(features (F, T) float32, label index, weights (C,) float32)``: the label is -1
for a background clip (no species present), and a weight of 0 leaves a class out of a sigmoid loss
for that clip (a background species of its recording, xeno-canto's ``also``). The training set is the
``train`` clips, then their noisy copies when a variant reads them (``train-mixed``, ``train-mixed2``,
..., each row for row), then the training background clips; :class:`MixingSampler` visits every clean
or background item once an epoch and reads one of a clean clip's noisy copies instead with the
variant's probability.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from birdops.config import TrainParams
from birdops.contracts import (
    background_split,
    labels_path,
    manifest_path,
    mixed_split,
    read_labels,
    read_manifest,
)
from birdops.features.shards import Clips, load_split, read_features_info
from birdops.featurespec import ClipShape, FeatureSpec
from birdops.train.state import derive_seed


class Split(Protocol):
    """What training reads from a cached split (``birdops.features.shards.CachedSplit``)."""

    @property
    def features(self) -> Clips: ...  # (N, F, T) float16: the cache's shards, read on demand

    @property
    def labels(self) -> np.ndarray: ...  # (N,) int64 label indices

    @property
    def ids(self) -> list[str]: ...  # (N,) the recording of each clip


@dataclass(frozen=True)
class TrainData:
    """The train and validation splits of one feature preset, with what a saved model must record."""

    train: Split
    val: Split
    labels: tuple[str, ...]  # class names, index order
    preset: str
    spec: FeatureSpec
    clip_seconds: float
    train_mixed: tuple[Split, ...] | None = None  # the noisy copies of the train clips, each row for row
    background: Split | None = None  # training background clips (label -1)
    # recording id -> the class indices of its background species (xeno-canto's ``also``)
    secondary: dict[str, tuple[int, ...]] | None = None

    @property
    def shape(self) -> ClipShape:
        """A clip's samples and features' ``(F, T)``, the shape of every split's rows."""
        return self.spec.clip_shape(self.clip_seconds)


def load_train_data(
    prepared_dir: str | Path, lms_dir: str | Path, preset: str, params: TrainParams | None = None
) -> TrainData:
    """Labels from ``<prepared>/labels.json``, the train/val splits of ``<lms>/<preset>`` and, as
    ``params`` asks, the training background clips, the noisy copies and the background species.
    Raises ValueError naming the split a variant needs when the cache lacks it."""
    labels = read_labels(labels_path(prepared_dir))
    train, val = (load_split(lms_dir, preset, split) for split in ("train", "val"))
    extra = _extra_splits(prepared_dir, lms_dir, preset, params, labels) if params is not None else {}
    for name, split in (("train", train), ("val", val)):
        if len(split.labels) == 0:
            raise ValueError(f"{lms_dir}/{preset}: the {name} split is empty")
        if int(split.labels.max()) >= len(labels):
            raise ValueError(f"{lms_dir}/{preset}/{name}: label index beyond the {len(labels)} labels")
    return TrainData(
        train=train,
        val=val,
        labels=labels,
        preset=preset,
        spec=train.spec,
        clip_seconds=train.clip_seconds,
        **extra,
    )


def _extra_splits(
    prepared_dir: str | Path, lms_dir: str | Path, preset: str, params: TrainParams, labels: tuple[str, ...]
) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    needs = [("background", background_split("train"), params.background)]
    needs.append(("train_mixed", mixed_split("train"), params.augment.background_mix.enabled))
    for field, split_name, wanted in needs:
        if not wanted:
            continue
        split = load_split(lms_dir, preset, split_name)
        if len(split.labels) == 0:
            raise ValueError(
                f"{lms_dir}/{preset}: the {split_name} split is empty, and this variant trains on it "
                f"(background / augment.background_mix): cache background recordings or turn it off"
            )
        extra[field] = split
    if "train_mixed" in extra:  # every noisy copy the cache holds
        copies = read_features_info(Path(lms_dir) / preset).background_mix.copies
        later = [load_split(lms_dir, preset, mixed_split("train", copy)) for copy in range(1, copies)]
        extra["train_mixed"] = (extra["train_mixed"], *later)
    if params.loss.secondary_species == "mask":
        index = {label: i for i, label in enumerate(labels)}
        extra["secondary"] = {
            row.id: tuple(index[label] for label in row.also_labels if label in index)
            for row in read_manifest(manifest_path(prepared_dir))
            if row.split == "train" and row.also_labels
        }
    return extra


class FeatureDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Item ``i`` of one or more splits, one after the other, as ``(features (F, T) float32, label
    index, weights (C,) float32)``; ``secondary`` (recording id -> class indices) weighs those classes 0
    in every clip of that recording."""

    def __init__(
        self, splits: Sequence[Split], num_classes: int, secondary: dict[str, tuple[int, ...]] | None = None
    ) -> None:
        self.parts = [split.features for split in splits]
        self.starts = np.cumsum([0] + [len(split.labels) for split in splits])  # (P + 1,)
        self.labels = np.concatenate([np.asarray(s.labels, dtype=np.int64) for s in splits])
        self.weights = np.ones((len(self.labels), num_classes), dtype=np.float32)
        if secondary:
            ids = [clip for split in splits for clip in split.ids]
            for row, recording in enumerate(ids):
                self.weights[row, list(secondary.get(recording, ()))] = 0.0

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        part = int(np.searchsorted(self.starts, index, side="right")) - 1
        clip = np.asarray(self.parts[part][index - self.starts[part]], dtype=np.float32)  # (F, T)
        label = torch.tensor(self.labels[index], dtype=torch.int64)
        return torch.from_numpy(clip), label, torch.from_numpy(self.weights[index])


@dataclass(frozen=True)
class TrainingSet:
    """The training dataset ``[train | train-mixed | background]`` (the parts a variant reads) and
    where each part starts."""

    dataset: FeatureDataset
    clean: int  # train clips: items [0, clean)
    mixed: int  # their noisy copies (a multiple of clean): items [clean, clean + mixed), copy after copy
    background: int  # background clips: the last items

    @property
    def item_labels(self) -> np.ndarray:
        """``(clean + background,)`` the labels of what an epoch visits: clean clips, then background."""
        labels = self.dataset.labels
        return np.concatenate([labels[: self.clean], labels[self.clean + self.mixed :]])


def training_set(data: TrainData) -> TrainingSet:
    """The training items of ``data``: its train clips, their noisy copies and its background clips."""
    splits = [data.train]
    for index, copy in enumerate(data.train_mixed or ()):
        if len(copy.labels) != len(data.train.labels):
            raise ValueError(
                f"{mixed_split('train', index)} holds {len(copy.labels)} clips, not one noisy copy of each "
                f"of the {len(data.train.labels)} train clips, row for row: rebuild the cache"
            )
        splits.append(copy)
    if data.background is not None:
        splits.append(data.background)
    clean = len(data.train.labels)
    return TrainingSet(
        dataset=FeatureDataset(splits, len(data.labels), data.secondary),
        clean=clean,
        mixed=clean * len(data.train_mixed or ()),
        background=len(data.background.labels) if data.background is not None else 0,
    )


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
            shifted = self.labels - self.labels.min()  # background (-1) counts as one more class
            counts = torch.bincount(shifted).double()  # (C,)
            weights = 1.0 / counts[shifted]  # (N,)
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
    header = [data.labels, data.preset, data.spec.to_dict(), data.clip_seconds]
    digest.update(json.dumps(header, sort_keys=True).encode())
    if data.secondary:
        digest.update(json.dumps(sorted(data.secondary.items())).encode())
    background = [data.background] if data.background is not None else []
    splits = [data.train, data.val, *(data.train_mixed or ()), *background]
    for split in splits:
        digest.update(repr(split.features.shape).encode())
        digest.update(np.ascontiguousarray(split.labels, dtype=np.int64).tobytes())
        for start in range(0, len(split.features), 256):  # chunks: memory-mapped shards stay on disk
            digest.update(np.ascontiguousarray(split.features[start : start + 256]).tobytes())
    return digest.hexdigest()


class MixingSampler(EpochSampler):
    """An epoch over a :class:`TrainingSet`: every clean clip once (shuffled, or drawn by class with
    ``balanced``, as :class:`EpochSampler` does), each read as one of its noisy copies (drawn) instead
    with probability ``mixed_prob``, and ``background_share`` x the clean count of background clips,
    drawn without replacement anew each epoch, all in one shuffled order. Every draw comes from
    ``(seed, epoch)`` only. Yields dataset indices."""

    def __init__(
        self, items: TrainingSet, seed: int, mixed_prob: float, background_share: float = 1.0, **kwargs: Any
    ) -> None:
        super().__init__(items.dataset.labels[: items.clean], seed, **kwargs)
        self.clean, self.mixed = items.clean, items.mixed
        self.mixed_prob = mixed_prob if items.mixed else 0.0
        self.background = items.background
        self.background_per_epoch = min(items.background, round(background_share * items.clean))

    def epoch_indices(self) -> torch.Tensor:
        clean = super().epoch_indices()  # (N,) in [0, clean)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch, 2))
        noisy = torch.rand(len(clean), generator=generator, dtype=torch.float64) < self.mixed_prob
        copies = self.mixed // self.clean if self.mixed else 0
        if copies > 1:  # which copy: copy j of clip i is item (j + 1) * clean + i
            noisy = noisy.long() * (1 + torch.randint(copies, (len(clean),), generator=generator))
        indices = clean + self.clean * noisy.long()
        if not self.background_per_epoch:
            return indices
        first_background = self.clean + self.mixed
        background = torch.randperm(self.background, generator=generator)[: self.background_per_epoch]
        joined = torch.cat([indices, first_background + background])
        return joined[torch.randperm(len(joined), generator=generator)]

    def __len__(self) -> int:
        n = len(self.labels) + self.background_per_epoch
        return math.ceil(n / self.world_size) if self.even else len(range(self.rank, n, self.world_size))
