"""Builders of small on-disk worlds (raw recordings, prepared manifest, feature cache) for tests."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from birdops.config import LmsCacheParams
from birdops.features.cache import build_cache

MANIFEST_COLUMNS = ["id", "local_path", "label", "label_index", "split", "rec", "q", "length_s"]


def write_prepared_and_cache(
    root: Path, rows: Iterable[Sequence[object]], labels: Sequence[str], clip_seconds: float
) -> None:
    """``root/prepared`` (manifest of ``rows`` in ``MANIFEST_COLUMNS`` order, labels.json) for the
    recordings already under ``root/raw``, then the real ``seed`` cache in ``root/lms``."""
    prepared = root / "prepared"
    prepared.mkdir()
    with (prepared / "manifest.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    (prepared / "labels.json").write_text(json.dumps(list(labels)))
    params = LmsCacheParams(presets=["seed"], clip_seconds=clip_seconds, max_clips_per_recording=2, workers=1)
    build_cache(root / "raw", prepared / "manifest.csv", root / "lms", params)
