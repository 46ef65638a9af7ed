"""DVC stage ``background``: the embedded background corpus, field sites without any target species.

``python -m pipeline.background --out data/background``. Like ``corpus``, the folder is the stage's
output and holds nothing else. A user's own background recordings live in a folder of their own, which
the DAG reads when ``data.background`` names it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from birdops.data.background import generate_background
from pipeline._common import setup

log = logging.getLogger("pipeline.background")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder of the generated background corpus")
    args = parser.parse_args(argv)
    data = setup().data
    generate_background(data.background_synthetic, data.seed, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
