"""DVC stage ``corpus``: the embedded, generated corpus (audio + ``metadata.csv``).

``python -m pipeline.corpus --out data/synthetic``. The folder is the stage's output and holds nothing
else: DVC may reset or regenerate it. Real recordings never come from a stage: ``birdops fetch`` (or the
user) writes them into a folder of their own, which the DAG only reads when ``data.raw`` names it.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from birdops.data.metadata import DataError
from birdops.data.synthetic import generate_corpus
from pipeline._common import setup

log = logging.getLogger("pipeline.corpus")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder of the generated corpus")
    args = parser.parse_args(argv)
    data = setup().data
    try:
        log.info("corpus: %s", generate_corpus(data.synthetic, data.seed, args.out).to_dict())
    except DataError as err:
        log.error("corpus: %s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
