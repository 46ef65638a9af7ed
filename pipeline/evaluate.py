"""DVC stage evaluate: clip- and recording-level metrics of every variant, and the best one.

    python -m pipeline.evaluate --models models/phase2b models/baseline models/full \\
        --raw data/synthetic --background data/background --prepared data/prepared --lms data/lms \\
        --soundscapes data/soundscapes --out metrics

Writes ``<out>/<variant>.json`` (the headline), ``<out>/best.json`` and ``<out>/eval/`` (each
variant's details and tables, the comparisons, the selection): see :mod:`birdops.evaluate.layout`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from birdops.evaluate.scoring import Inputs
from birdops.evaluate.stage import evaluate_models
from pipeline._common import setup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.evaluate", description="Evaluate variants.")
    parser.add_argument("--models", required=True, nargs="+", type=Path, help="model folders, oldest first")
    parser.add_argument("--raw", required=True, type=Path, help="raw corpus folder (the audio)")
    parser.add_argument("--background", required=True, type=Path, help="background recordings folder")
    parser.add_argument("--soundscapes", required=True, type=Path, help="the soundscapes stage's folder")
    parser.add_argument("--prepared", required=True, type=Path, help="prepare's folder (manifest, labels)")
    parser.add_argument("--lms", required=True, type=Path, help="the feature cache root")
    parser.add_argument("--out", required=True, type=Path, help="metrics folder to write")
    args = parser.parse_args(argv)
    params = setup().evaluate
    device = "cuda" if torch.cuda.is_available() else "cpu"
    inputs = Inputs(args.raw, args.background, args.prepared, args.lms, args.soundscapes)
    evaluate_models(args.models, inputs, args.out, params, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
