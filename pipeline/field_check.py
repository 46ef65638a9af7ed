"""DVC stage ``field_check``: the exported model as ``birdops predict`` serves it, on held-out audio.

``python -m pipeline.field_check --model models/export/model.onnx --raw data/synthetic --background
data/background --prepared data/prepared --summary metrics/field.json`` writes the share of test
background windows given a species row and the test recordings' file-level recall, clean and over
test background (:mod:`birdops.serve.field_check`). ``--split val`` gives the same figures on the
validation recordings and background, to compare training recipes without reading test.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from birdops.files import write_json_atomic
from birdops.providers import CPU_PROVIDER
from birdops.serve.field_check import check
from birdops.serve.inference import Classifier
from pipeline._common import setup

log = logging.getLogger("pipeline.field_check")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="the exported model (.onnx)")
    parser.add_argument("--raw", type=Path, required=True, help="raw folder the manifest paths start from")
    parser.add_argument("--background", type=Path, required=True, help="folder of background recordings")
    parser.add_argument("--prepared", type=Path, required=True, help="prepared folder (the manifests)")
    parser.add_argument("--summary", type=Path, required=True, help="metrics JSON to write")
    parser.add_argument("--split", choices=("val", "test"), default="test", help="the audio to check on")
    args = parser.parse_args(argv)
    params = setup().field_check
    # the CPU provider: the figures must not depend on whether this machine has a GPU
    classifier = Classifier.load(args.model, providers=[CPU_PROVIDER])
    summary = check(classifier, args.raw, args.background, args.prepared, params, args.split)
    write_json_atomic(args.summary, summary)
    log.info("field check: %s", summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
