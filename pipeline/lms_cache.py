"""DVC stage ``lms_cache``: decode every prepared recording, choose its clips, cache their features.

``python -m pipeline.lms_cache --raw data/synthetic --background data/background --prepared data/prepared
--out data/lms --summary metrics/cache.json`` writes ``<out>/<preset>/`` (float16 shards, ``index.csv``,
``features.json``) for every preset in ``params.yaml``'s ``lms_cache.presets``, ``<out>/failed.csv``
and the cache metrics to ``--summary``. An interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from birdops.contracts import background_manifest_path, manifest_path
from birdops.features.cache import RUN_KEY, build_cache
from birdops.files import write_json_atomic
from pipeline._common import setup, write_run_record

log = logging.getLogger("pipeline.lms_cache")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="raw folder the manifest paths start from")
    parser.add_argument("--background", type=Path, required=True, help="folder of background recordings")
    parser.add_argument("--prepared", type=Path, required=True, help="prepared folder with manifest.csv")
    parser.add_argument("--out", type=Path, required=True, help="feature cache folder to write")
    parser.add_argument("--summary", type=Path, required=True, help="cache metrics JSON to write")
    args = parser.parse_args(argv)
    params = setup().lms_cache
    summary = build_cache(
        args.raw,
        manifest_path(args.prepared),
        args.out,
        params,
        background_dir=args.background,
        background_manifest=background_manifest_path(args.prepared),
    )
    run = summary.pop(RUN_KEY)
    write_json_atomic(args.summary, summary)
    write_run_record("lms_cache", run)
    log.info(
        "lms_cache: %d/%d recordings cached (%.1f%%), %d failed; %d processed in %.1f s (%.1f files/s)",
        summary["recordings"]["cached"],
        summary["recordings"]["manifest"],
        summary["coverage_percent"],
        summary["recordings"]["failed"],
        run["processed_this_run"],
        run["wall_seconds"],
        run["files_per_second"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
