"""DVC stage ``prepare``: screen the raw corpus and the background recordings, drop or merge small
classes, split train/val/test.

``python -m pipeline.prepare --raw data/synthetic --background data/background --out data/prepared
--summary metrics/data.json`` writes ``manifest.csv``, ``background.csv``, ``labels.json`` and
``rejected.csv`` into ``--out`` and the data metrics to ``--summary``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from birdops.data.metadata import DataError
from birdops.data.prepare import log_summary, prepare_corpus, summarize, write_prepared
from birdops.files import write_json_atomic
from pipeline._common import setup

log = logging.getLogger("pipeline.prepare")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="raw folder with metadata.csv")
    parser.add_argument("--background", type=Path, required=True, help="folder of background recordings")
    parser.add_argument("--out", type=Path, required=True, help="prepared folder to write")
    parser.add_argument("--summary", type=Path, required=True, help="data metrics JSON to write")
    args = parser.parse_args(argv)
    params = setup().prepare
    try:
        prepared = prepare_corpus(args.raw, params, args.background)
    except DataError as err:
        log.error("prepare: %s", err)
        return 1
    write_prepared(prepared, args.out)
    summary = summarize(prepared)
    write_json_atomic(args.summary, summary)
    log_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
