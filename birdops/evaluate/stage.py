"""The evaluate stage: score every trained variant, write its metrics, compare them and pick the best.

Outputs, under ``out_dir`` (:mod:`birdops.evaluate.layout`): ``<variant>.json`` (the headline, the
same few keys for every variant, for ``dvc metrics show`` and ``diff``), ``eval/<variant>/``
(``details.json`` with everything measured, per-class tables, DVC confusion data, PNG plots,
``calibration.json``: :mod:`birdops.evaluate.results`), ``eval/comparisons.json`` and the long tables
DVC's plots read, and ``best.json``: the variant with the highest *validation* ``select_metric`` (the
test split never chooses a model), with how it was chosen in ``eval/selection.json``
(:mod:`birdops.evaluate.selection`). The scores come from :mod:`birdops.evaluate.scoring`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from birdops.config import EvaluateParams
from birdops.contracts import BEST_FILE, EVAL_DIR, Best, labels_path, read_labels, write_best
from birdops.evaluate import layout, selection
from birdops.evaluate.results import VariantEvaluation, write_variant
from birdops.evaluate.scoring import Inputs, evaluate_variant, read_recordings
from birdops.files import write_json_atomic

log = logging.getLogger(__name__)


def evaluate_models(
    model_dirs: Sequence[Path],
    inputs: Inputs,
    out_dir: Path,
    params: EvaluateParams,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Evaluate every model folder (named after its variant, e.g. ``models/full``), write the outputs
    under ``out_dir`` and return the selection record (``eval/selection.json``)."""
    device = torch.device(device)
    labels = read_labels(labels_path(inputs.prepared_dir))
    recordings = read_recordings(inputs.prepared_dir, inputs.raw_dir, "test")
    summaries: dict[str, dict[str, Any]] = {}
    results: dict[str, VariantEvaluation] = {}
    for model_dir in model_dirs:
        name = model_dir.name
        results[name] = evaluate_variant(name, model_dir, inputs, recordings, labels, params, device)
        summaries[name] = write_variant(results[name], out_dir, params)
        log.info("%s: %s", name, json.dumps(layout.headline(summaries[name])))
    comparisons = selection.compare_generations(results, params)
    selection.write_tables(summaries, comparisons, out_dir / EVAL_DIR)
    for pair, found in comparisons.items():
        log.info(
            "%s: test accuracy %+.4f (95%% interval %+.4f..%+.4f, p %.3g): %s",
            pair,
            found["accuracy_diff"],
            found["accuracy_diff_low"],
            found["accuracy_diff_high"],
            found["accuracy_p_value"],
            found["accuracy_verdict"],
        )
    best = selection.select_best(summaries, params.select_metric)
    write_json_atomic(out_dir / EVAL_DIR / layout.SELECTION_FILE, best)
    write_best(out_dir / BEST_FILE, Best(best["variant"], params.select_metric, best["value"]))
    log.info("best variant by %s: %s (%.4f)", best["metric"], best["variant"], best["value"])
    return best
