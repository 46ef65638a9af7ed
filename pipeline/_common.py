"""What every stage shares: logging set-up, loading ``params.yaml`` from the working directory, and
the record of how a run went.

A stage's results (DVC outputs, ``metrics/``) depend only on its inputs and parameters, so a re-run
reproduces them byte for byte. How the run went -- seconds, throughput, work resumed from an
interrupted run -- differs on every run: it goes to ``runs/<stage>.json`` (and the log), which
neither Git nor DVC tracks.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from birdops.config import Params, load_params
from birdops.files import write_json_atomic

RUNS_DIR = Path("runs")
# libraries whose INFO lines describe their own internals (the ONNX exporter's passes), not the stage
QUIET_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "matplotlib", "urllib3")


def setup() -> Params:
    """Configure logging and load ``params.yaml`` (DVC runs stages from the repository root)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return load_params("params.yaml")


def write_run_record(stage: str, record: dict[str, Any]) -> Path:
    """Write how this run of ``stage`` went to ``runs/<stage>.json``; returns the path."""
    path = RUNS_DIR / f"{stage}.json"
    write_json_atomic(path, record)
    return path
