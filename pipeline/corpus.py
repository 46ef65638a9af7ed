"""DVC stage ``corpus``: the raw folder (audio + ``metadata.csv``) from the generator or xeno-canto.

``python -m pipeline.corpus --out data/raw``; ``data.source`` picks the source. With ``xeno-canto`` and
``download: false`` the folder is only checked: it must already hold a readable ``metadata.csv``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from birdops.data.fetch import fetch_corpus
from birdops.data.metadata import METADATA_FILE, DataError, read_metadata
from birdops.data.synthetic import generate_corpus
from pipeline._common import setup

log = logging.getLogger("pipeline.corpus")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="raw folder to write")
    args = parser.parse_args(argv)
    data = setup().data
    try:
        if data.source == "synthetic":
            log.info("corpus: %s", generate_corpus(data.synthetic, data.seed, args.out).to_dict())
        elif data.xeno_canto.download:
            fetch_corpus(data.xeno_canto, args.out)
        else:
            rows = read_metadata(args.out / METADATA_FILE)
            log.info("corpus: using %d recordings already in %s (download: false)", len(rows), args.out)
    except DataError as err:
        log.error("corpus: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
