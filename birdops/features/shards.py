"""The feature cache's files, the one writer and reader of each; numpy only (no torch, no pool):
training, evaluation and the export read the cache through this module, and the ``lms_cache``
stage's builder (:mod:`birdops.features.cache`) writes it through it.

Layout of ``<cache>`` (``data/lms``), one folder per preset::

    <preset>/<split>-<NNN>.npy   float16 (N, F, T) C-ordered clips, at most ``shard_max_clips`` a shard
    <preset>/index.csv           INDEX_COLUMNS: id, split, shard, row, label_index, start_s (a row a clip)
    <preset>/features.json       FeaturesInfo: the spec, clip length and shape, and the cache's settings
    failed.csv                   id, local_path, reason (recordings that could not be cached)

- shards and ``index.csv``: :func:`write_shards` writes a split's clips as they come;
  :func:`load_split` reads a split's labels, ids and starts, and its clips from the shards on demand
  (:class:`ShardedClips`): a reader holds a batch of features, never a split.
- ``features.json``: :func:`write_features_info` / :func:`read_features_info`, one
  :class:`FeaturesInfo`; the clip's shape it records is checked against its spec on reading.
"""

from __future__ import annotations

import array
import contextlib
import csv
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from birdops.config import ActivityParams, BackgroundMixParams
from birdops.contracts import FEATURES_FILE, INDEX_FILE, ManifestRow
from birdops.featurespec import ClipShape, FeatureSpec
from birdops.files import atomic_path, write_text_atomic

INDEX_COLUMNS = ("id", "split", "shard", "row", "label_index", "start_s")
SHAPE_KEYS = ("clip_samples", "n_bins", "n_frames")  # features.json's record of FeaturesInfo.shape


# ------------------------------------------------------------------------------------ features.json
@dataclass(frozen=True)
class FeaturesInfo:
    """What ``<preset>/features.json`` says about a preset's cached clips: the front end's settings,
    the clip length (and so, by :meth:`FeatureSpec.clip_shape`, the clip's shape) and the cache
    settings the clips were chosen and mixed with."""

    spec: FeatureSpec
    clip_seconds: float
    max_clips_per_recording: int
    background_clips_per_recording: int
    background_mix: BackgroundMixParams
    activity: ActivityParams
    cache_format: int  # birdops.features.cache.CACHE_FORMAT of the run that built it

    @property
    def shape(self) -> ClipShape:
        """A clip's samples and the ``(F, T)`` of its features."""
        return self.spec.clip_shape(self.clip_seconds)

    def to_dict(self) -> dict[str, Any]:
        """The file's content, the shape after ``clip_seconds``."""
        shape = self.shape
        return {
            "spec": self.spec.to_dict(),
            "clip_seconds": self.clip_seconds,
            "clip_samples": shape.samples,
            "n_bins": shape.n_bins,
            "n_frames": shape.n_frames,
            "max_clips_per_recording": self.max_clips_per_recording,
            "background_clips_per_recording": self.background_clips_per_recording,
            "background_mix": self.background_mix.model_dump(),
            "activity": self.activity.model_dump(),
            "cache_format": self.cache_format,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeaturesInfo:
        """Inverse of :meth:`to_dict`; ValueError when a key is missing or unknown, or when the
        recorded shape is not the spec's for the clip length."""
        expected = {"spec", "clip_seconds", *SHAPE_KEYS, "max_clips_per_recording"}
        expected |= {"background_clips_per_recording", "background_mix", "activity", "cache_format"}
        if set(data) != expected:
            raise ValueError(
                f"features.json keys differ: unknown {sorted(set(data) - expected)}, "
                f"missing {sorted(expected - set(data))}"
            )
        info = cls(
            spec=FeatureSpec.from_dict(data["spec"]),
            clip_seconds=float(data["clip_seconds"]),
            max_clips_per_recording=int(data["max_clips_per_recording"]),
            background_clips_per_recording=int(data["background_clips_per_recording"]),
            background_mix=BackgroundMixParams.model_validate(data["background_mix"]),
            activity=ActivityParams.model_validate(data["activity"]),
            cache_format=int(data["cache_format"]),
        )
        stored = tuple(data[key] for key in SHAPE_KEYS)
        shape = info.shape
        if stored != (shape.samples, *shape.features):
            raise ValueError(
                f"features.json's {', '.join(SHAPE_KEYS)} {stored} are not its spec's for a "
                f"{info.clip_seconds} s clip, {(shape.samples, *shape.features)}"
            )
        return info


def write_features_info(folder: str | Path, info: FeaturesInfo) -> None:
    """Write ``<folder>/features.json`` (replaced atomically)."""
    # ASCII JSON (non-ASCII escaped), unlike birdops.files.write_json_atomic: the bytes earlier
    # caches hold
    write_text_atomic(Path(folder) / FEATURES_FILE, json.dumps(info.to_dict(), indent=2) + "\n")


def read_features_info(folder: str | Path) -> FeaturesInfo:
    """The :class:`FeaturesInfo` of ``<folder>/features.json``; ValueError names the file when it is
    malformed."""
    path = Path(folder) / FEATURES_FILE
    try:
        return FeaturesInfo.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: {err}") from err


# -------------------------------------------------------------------------------- shards and index
class Clips(Protocol):
    """What readers of a split's clips use: an ``(N, F, T)`` array's shape, dtype, length and rows.

    ``numpy.ndarray`` has it, and so has :class:`ShardedClips`, the cache's reader."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype[Any]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> Any: ...


class ShardedClips:
    """The ``(N, F, T)`` clips of a split stored in ``.npy`` shards, read on demand: indexing with an
    integer, a slice or a list of rows returns a fresh array of just those rows.

    Nothing is concatenated, and nothing is memory-mapped either: mapped pages count in a process's
    resident memory once touched, so one pass over a mapped split holds the whole split in RSS until
    the kernel needs the memory back. Rows are read with ``os.preadv`` straight into the returned
    array; the kernel's page cache, not the process, keeps what was read. A reader holds one open
    file per shard (opened on first use, and again in a forked or unpickled copy) and the rows it
    returns, whatever the split's size.
    """

    def __init__(self, paths: Sequence[Path], row_shape: tuple[int, ...], dtype: np.dtype[Any]) -> None:
        self.paths = tuple(Path(p) for p in paths)
        self.row_shape, self._dtype = tuple(row_shape), np.dtype(dtype)
        self.row_bytes = math.prod(self.row_shape) * self._dtype.itemsize
        counts, self.offsets = [], []
        for path in self.paths:
            shape, offset = _npy_layout(path, self.row_shape, self._dtype)
            counts.append(shape[0])
            self.offsets.append(offset)
        self.first_rows = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # (shards + 1,)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.first_rows[-1]), *self.row_shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._dtype

    @property
    def ndim(self) -> int:
        return 1 + len(self.row_shape)

    def __len__(self) -> int:
        return int(self.first_rows[-1])

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._read_range(start, max(start, stop))
            return self._read_rows(np.arange(start, stop, step))
        if isinstance(index, (int, np.integer)):
            row = int(index) + len(self) if index < 0 else int(index)
            if not 0 <= row < len(self):
                raise IndexError(f"row {index} is outside the {len(self)} clips")
            clip: np.ndarray = self._read_range(row, row + 1)[0]  # (F, T)
            return clip
        return self._read_rows(np.asarray(index, dtype=np.int64))

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """Every clip in one array (``np.asarray``): for small splits and tests only."""
        whole: np.ndarray = self[:] if dtype is None else self[:].astype(dtype)
        return whole

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fds": {}}  # a copy in another process opens its own files

    def _read_rows(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows (n,)`` in that order (negative ones count from the end), a run of
        consecutive rows in one read."""
        if rows.ndim != 1:
            raise IndexError(f"index rows with a 1-D list, not shape {rows.shape}")
        rows = np.where(rows < 0, rows + len(self), rows)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside the {len(self)} clips")
        out = np.empty((len(rows), *self.row_shape), dtype=self._dtype)
        start = 0
        while start < len(rows):
            stop = start + 1
            while stop < len(rows) and rows[stop] == rows[stop - 1] + 1:
                stop += 1
            self._read_into(out[start:stop], int(rows[start]))
            start = stop
        return out

    def _read_range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty((stop - start, *self.row_shape), dtype=self._dtype)
        self._read_into(out, start)
        return out

    def _read_into(self, out: np.ndarray, row: int) -> None:
        """Fill ``out (n, F, T)`` with rows ``row .. row + n - 1``, across shard boundaries."""
        done = 0
        while done < len(out):
            shard = int(np.searchsorted(self.first_rows, row + done, side="right")) - 1
            in_shard = row + done - int(self.first_rows[shard])
            count = min(len(out) - done, int(self.first_rows[shard + 1]) - (row + done))
            view = memoryview(out[done : done + count]).cast("B")  # type: ignore[arg-type]
            offset = self.offsets[shard] + in_shard * self.row_bytes
            while len(view):
                got = os.preadv(self._fd(shard), [view], offset)
                if got <= 0:
                    raise OSError(f"{self.paths[shard]}: the shard ends before its header says")
                view, offset = view[got:], offset + got
            done += count

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked copy (a DataLoader worker): its own descriptors
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            self._fds[shard] = os.open(self.paths[shard], os.O_RDONLY | os.O_CLOEXEC)
        return self._fds[shard]

    def __del__(self) -> None:
        if getattr(self, "_pid", None) == os.getpid():
            for fd in getattr(self, "_fds", {}).values():
                os.close(fd)


def _npy_layout(path: Path, row_shape: tuple[int, ...], dtype: np.dtype[Any]) -> tuple[tuple[int, ...], int]:
    """``(shape, data offset)`` of an ``.npy`` file, refused unless it is C-ordered ``(n, *row_shape)``
    of ``dtype``."""
    with path.open("rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        )
        shape, fortran_order, file_dtype = read_header(handle)
        offset = handle.tell()
    if file_dtype != dtype or tuple(shape[1:]) != row_shape:
        raise ValueError(f"{path}: holds {file_dtype} {shape}, expected {dtype} (n, *{row_shape})")
    if fortran_order:  # an earlier birdops's ``ast`` shards: a clip was spread over the whole file
        raise ValueError(f"{path}: a Fortran-ordered shard; build the cache again (dvc repro lms_cache)")
    return tuple(shape), offset


@dataclass(frozen=True)
class CachedSplit:
    """The cached clips of one split of one preset, in ``index.csv`` order.

    ``features`` is ``(N, F, T)`` float16 read from the split's shards on demand
    (:class:`ShardedClips`): a split of any size costs the reader its per-clip labels, ids and starts,
    never its features.
    """

    features: ShardedClips  # (N, F, T) float16
    labels: np.ndarray  # (N,) int64 label indices
    ids: list[str]  # (N,) recording id of each clip
    start_s: np.ndarray  # (N,) float64 start of each clip in its recording, seconds
    spec: FeatureSpec
    clip_seconds: float
    shards: tuple[Path, ...]  # the split's shard files, in row order


def load_split(lms_dir: str | Path, preset: str, split: str) -> CachedSplit:
    """Read split ``split`` of ``<lms_dir>/<preset>`` (see the module docstring for the layout).

    ``index.csv`` is read row by row; each shard's rows must be listed in order, all together."""
    folder = Path(lms_dir) / preset
    info = read_features_info(folder)
    labels, ids, starts = array.array("q"), [], array.array("d")
    shards: list[str] = []  # in index order
    rows_in: list[int] = []  # rows listed per shard
    with open(folder / INDEX_FILE, newline="") as handle:
        for r in csv.DictReader(handle):
            if r["split"] != split:
                continue
            if not shards or r["shard"] != shards[-1]:
                if r["shard"] in shards:
                    raise ValueError(f"{folder / INDEX_FILE}: the rows of {r['shard']} are not together")
                shards.append(r["shard"])
                rows_in.append(0)
            if int(r["row"]) != rows_in[-1]:
                raise ValueError(f"{folder / r['shard']}: index.csv rows are not 0, 1, 2, ... in order")
            rows_in[-1] += 1
            labels.append(int(r["label_index"]))
            ids.append(r["id"])
            starts.append(float(r["start_s"]))
    paths = tuple(folder / name for name in shards)
    features = ShardedClips(paths, info.shape.features, np.dtype(np.float16))
    held = np.diff(features.first_rows)  # (shards,) rows each shard holds
    for path, listed, count in zip(paths, rows_in, held, strict=True):
        if count != listed:
            raise ValueError(f"{path}: index.csv lists {listed} rows, the shard holds {count}")
    return CachedSplit(
        features=features,
        labels=np.frombuffer(labels, dtype=np.int64).copy(),
        ids=ids,
        start_s=np.frombuffer(starts, dtype=np.float64).copy(),
        spec=info.spec,
        clip_seconds=info.clip_seconds,
        shards=paths,
    )


def write_shards(
    folder: Path,
    split: str,
    clips: Iterator[tuple[ManifestRow, float, np.ndarray]],
    total: int,
    shard_max_clips: int,
    index: csv.DictWriter[str],
) -> int:
    """Write the ``total`` clips of ``clips`` into ``<split>-<NNN>.npy`` shards of at most
    ``shard_max_clips`` rows, each clip as it comes (a shard's header, written first, holds its row
    count), and their rows to ``index``; return the count. Shards are C-ordered ``(n, F, T)``: a
    clip is one contiguous run of bytes, which is what reading a row costs (the bytes are those
    ``np.save`` writes for the stacked clips)."""
    count = 0
    with contextlib.ExitStack() as shard:
        handle = None
        for recording, start_s, clip in clips:
            name = f"{split}-{count // shard_max_clips:03d}.npy"
            if count % shard_max_clips == 0:
                shard.close()  # the shard before, complete: renamed into place
                rows = min(shard_max_clips, total - count)
                handle = shard.enter_context(_npy_writer(folder / name, (rows, *clip.shape), clip.dtype))
            assert handle is not None
            handle.write(np.ascontiguousarray(clip).data)
            index.writerow(
                {
                    "id": recording.id,
                    "split": split,
                    "shard": name,
                    "row": count % shard_max_clips,
                    "label_index": recording.label_index,
                    "start_s": round(start_s, 6),
                }
            )
            count += 1
    if count != total:
        raise RuntimeError(f"{folder}: {split} has {count} clips, {total} were announced")
    return count


@contextlib.contextmanager
def _npy_writer(path: Path, shape: tuple[int, ...], dtype: np.dtype[Any]) -> Iterator[BinaryIO]:
    """A ``.npy`` file of a C-ordered ``shape`` array whose data the block writes after the header."""
    header = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(int(n) for n in shape),  # Python ints: the header holds their repr
    }
    with atomic_path(path) as temp, open(temp, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        yield handle
