"""DVC stages train_phase2b / train_baseline / train_full: train one variant on the feature cache.

    python -m pipeline.train --variant full --prepared data/prepared --lms data/lms \\
        --out models/full --live metrics/full

The same command runs on several GPUs under ``torchrun --nproc_per_node N -m pipeline.train ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from birdops.config import VARIANTS
from birdops.train.data import load_train_data
from birdops.train.trainer import train
from pipeline._common import setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.train", description="Train one model variant.")
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument("--prepared", required=True, type=Path, help="prepare's folder (labels.json)")
    parser.add_argument("--lms", required=True, type=Path, help="the feature cache root")
    parser.add_argument("--out", required=True, type=Path, help="model folder to write")
    parser.add_argument("--live", required=True, type=Path, help="dvclive folder for the training curves")
    args = parser.parse_args(argv)
    params = setup().variant(args.variant)
    data = load_train_data(args.prepared, args.lms, params.model.features, params)
    train(params, data, args.out, args.live, variant=args.variant)
    return 0


if __name__ == "__main__":
    sys.exit(main())
