"""DVC stage ``soundscapes``: long soundscapes of a split's recordings over its background, with their
true events, for detection metrics, calibration and thresholds.

``python -m pipeline.soundscapes --raw data/synthetic --background data/background --prepared
data/prepared --out data/soundscapes`` writes ``<out>/<split>/SC-<split>-<NNN>.flac``,
``<out>/soundscapes.csv`` and ``<out>/annotations.csv`` for every split in ``soundscapes.splits``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from birdops.contracts import ManifestError
from birdops.data.metadata import DataError
from birdops.data.soundscapes import build_soundscapes
from pipeline._common import setup

log = logging.getLogger("pipeline.soundscapes")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="raw folder the manifest paths start from")
    parser.add_argument(
        "--background", type=Path, required=True, help="folder background.csv paths start from"
    )
    parser.add_argument(
        "--prepared", type=Path, required=True, help="prepared folder: manifest.csv, background.csv"
    )
    parser.add_argument("--out", type=Path, required=True, help="soundscapes folder to write")
    args = parser.parse_args(argv)
    params = setup().soundscapes
    try:
        summary = build_soundscapes(args.raw, args.background, args.prepared, args.out, params)
    except (DataError, ManifestError) as err:
        log.error("soundscapes: %s", err)
        return 1
    log.info("soundscapes: %s", summary.to_dict())
    return 0


if __name__ == "__main__":
    sys.exit(main())
