"""DVC stage export_onnx: the best variant as a self-describing ONNX model, gated on parity.

    python -m pipeline.export_onnx --best metrics/best.json --eval metrics/eval --models models \\
        --raw data/synthetic \\
        --prepared data/prepared --lms data/lms --out models/export --summary metrics/onnx.json

Writes ``<out>/model.onnx`` (+ ``model.fp16.onnx`` with ``fp16: true``), ``<out>/model_repository/``
and the summary; exits 1 when a parity gate fails (the summary is still written, for the record).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from birdops.export.onnx_export import export_best
from birdops.files import write_json_atomic
from pipeline._common import setup, write_run_record

log = logging.getLogger("pipeline.export_onnx")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.export_onnx", description="Export to ONNX.")
    parser.add_argument("--best", required=True, type=Path, help="evaluate's best.json (the variant)")
    parser.add_argument(
        "--eval", required=True, type=Path, help="evaluate's per-variant folder (calibration)"
    )
    parser.add_argument("--models", required=True, type=Path, help="folder of the variants' model folders")
    parser.add_argument("--raw", required=True, type=Path, help="raw corpus folder (validation audio)")
    parser.add_argument("--prepared", required=True, type=Path, help="prepare's folder (the manifest)")
    parser.add_argument("--lms", required=True, type=Path, help="the feature cache root (validation clips)")
    parser.add_argument("--out", required=True, type=Path, help="export folder to write")
    parser.add_argument("--summary", required=True, type=Path, help="metrics JSON to write")
    args = parser.parse_args(argv)
    params = setup().export_onnx
    result = export_best(
        args.best, args.eval, args.models, args.raw, args.prepared, args.lms, args.out, params
    )
    write_json_atomic(args.summary, dict(result.summary))
    write_run_record("export_onnx", dict(result.measured))
    if not result.passed:
        failed = ", ".join(gate.name for gate in result.gates if not gate.passed)
        log.error("export rejected: the %s parity gate failed (see %s)", failed, args.summary)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
