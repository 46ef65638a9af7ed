"""Choosing among evaluated variants and comparing them: reads scores and details, runs no model.

- :func:`compare_generations`: each variant against the one before it, paired on the same test clips
  (bootstrap differences over recordings, :mod:`birdops.evaluate.uncertainty`);
- :func:`select_best`: the variant with the highest *validation* ``select_metric`` (the test split
  never chooses a model), ties broken by the other validation metrics (``birdops.contracts.write_best`` writes
  its ``best.json``);
- :func:`write_tables`: ``eval/comparisons.json`` and the long tables DVC's plots read.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from birdops import metrics
from birdops.config import EvaluateParams
from birdops.evaluate import layout, uncertainty
from birdops.evaluate.results import Scored, VariantEvaluation
from birdops.files import write_csv_atomic, write_json_atomic

log = logging.getLogger(__name__)


def compare_generations(results: Mapping[str, VariantEvaluation], params: EvaluateParams) -> dict[str, Any]:
    """Each variant against the one before it (in evaluation order), paired on the same test clips:
    ``{"<b>_vs_<a>": {metric_diff, metric_diff_low, metric_diff_high, metric_p_value, metric_verdict}}``
    (``b - a``; the verdict says whether the 95% interval holds 0)."""
    names = list(results)
    out: dict[str, Any] = {}
    for a, b in itertools.pairwise(names):
        first, second = results[a].test_clip, results[b].test_clip
        order_a, order_b = _clip_order(first), _clip_order(second)
        if set(order_a) != set(order_b):
            log.warning("%s and %s were tested on different clips: no paired comparison", a, b)
            continue
        index_b = np.array([order_b[key] for key in order_a])
        diffs = uncertainty.paired(
            metrics.predictions(first.scores),
            metrics.predictions(second.scores)[index_b],
            first.labels,
            first.groups,
            first.scores.shape[1],
            params.bootstrap_draws,
            params.bootstrap_seed,
        )
        row: dict[str, Any] = {"n_test_clips": len(first.labels), "n_test_recordings": len(set(first.groups))}
        for metric, d in diffs.items():
            row |= {
                f"{metric}_diff": d.value,
                f"{metric}_diff_low": d.interval.low,
                f"{metric}_diff_high": d.interval.high,
                f"{metric}_p_value": d.p_value,
                f"{metric}_verdict": verdict(d),
            }
        out[f"{b}_vs_{a}"] = row
    return out


def verdict(difference: uncertainty.Difference) -> str:
    """``within noise`` when the 95% interval of the difference holds 0, else ``better`` or ``worse``."""
    if difference.within_noise:
        return "within noise"
    return "better" if difference.value > 0 else "worse"


def _clip_order(scored: Scored) -> dict[tuple[str, int], int]:
    """(recording, occurrence) -> row: the same clip of two variants' caches, whatever the row order."""
    seen: dict[str, int] = {}
    order = {}
    for row, group in enumerate(scored.groups.tolist()):
        seen[group] = seen.get(group, -1) + 1
        order[(group, seen[group])] = row
    return order


# validation metrics that break a tie on the selection metric, in this order
TIE_BREAKERS: tuple[str, ...] = ("f1_macro", "map", "accuracy")


def select_best(summaries: Mapping[str, Mapping[str, Any]], metric: str) -> dict[str, Any]:
    """The variant with the highest validation ``metric`` (:func:`validation_key`) of its details.

    Ties (common on small validation sets) are broken by the other validation metrics of
    ``TIE_BREAKERS``, then by the order of ``summaries`` (the first wins). Returns the selection
    record ``{"variant", "metric", "value", "candidates", "decided_by"}``; test metrics are never read.
    """
    if not summaries:
        raise ValueError("no evaluated variant to choose from")
    order = (metric, *(m for m in TIE_BREAKERS if m != metric))

    def key(name: str) -> tuple[float, ...]:
        return tuple(validation_value(summaries[name], m) for m in order)

    best = max(summaries, key=key)  # max keeps the first of equal keys
    candidates = {name: validation_value(summary, metric) for name, summary in summaries.items()}
    tied = [name for name, value in candidates.items() if value == candidates[best]]
    if all(value == 0.0 for value in candidates.values()):
        decided_by = "order (every variant scores 0)"
        log.warning(
            "every variant has %s = 0: %s is chosen by order alone, not by quality; "
            "the models have not learnt to separate the classes",
            validation_key(metric),
            best,
        )
    elif len(tied) > 1:
        splitter = next((m for m in order[1:] if len({key(n)[order.index(m)] for n in tied}) > 1), None)
        decided_by = f"tie on {metric} between {', '.join(tied)}: " + (
            f"broken by val_clip.{splitter}" if splitter else "equal on every tie-breaker, the first in order"
        )
        log.warning("%s", decided_by)
    else:
        decided_by = metric
    return {
        "variant": best,
        "metric": validation_key(metric),
        "value": candidates[best],
        "candidates": candidates,
        "decided_by": decided_by,
    }


def validation_key(metric: str) -> str:
    """Where a selection metric lives in a variant's details: ``val_detection.cmap`` for the detection
    cmAP, ``val_clip.<metric>`` for a clip metric."""
    return f"{layout.validation_section(metric)}.{metric}"


def validation_value(summary: Mapping[str, Any], metric: str) -> float:
    """A variant's validation ``metric`` from its details (:func:`validation_key` says where)."""
    return float(summary[layout.validation_section(metric)][metric])


# ------------------------------------------------------------------------------- tables for plots
def test_metric_rows(summaries: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``eval/test_metrics.csv``: one row per variant and headline test metric (``variant, metric,
    value, low, high``), with the 95% interval where one was measured (clip accuracy and F1 macro)
    and empty bounds elsewhere: the comparison DVC's plots draw."""
    rows = []
    for variant, details in summaries.items():
        ci = details.get("test_clip_ci95", {})
        for name, value in layout.headline(details).items():
            low, high = ci.get(f"{name}_low", ""), ci.get(f"{name}_high", "")
            rows.append({"variant": variant, "metric": name, "value": value, "low": low, "high": high})
    return rows


def paired_rows(comparisons: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``eval/paired.csv``: each paired comparison's difference and 95% interval per metric
    (``comparison, metric, difference, low, high, verdict``), for DVC's plots."""
    rows = []
    for pair, found in comparisons.items():
        newer, older = pair.split("_vs_")
        for metric in ("accuracy", "f1_macro"):
            rows.append(
                {
                    "comparison": f"{newer} - {older}",
                    "metric": metric,
                    "difference": found[f"{metric}_diff"],
                    "low": found[f"{metric}_diff_low"],
                    "high": found[f"{metric}_diff_high"],
                    "verdict": found[f"{metric}_verdict"],
                }
            )
    return rows


def write_tables(
    summaries: Mapping[str, Mapping[str, Any]], comparisons: Mapping[str, Mapping[str, Any]], folder: Path
) -> None:
    """``comparisons.json`` and the long tables of :func:`test_metric_rows` and :func:`paired_rows`."""
    write_json_atomic(folder / layout.COMPARISONS_FILE, comparisons)
    fields = ["variant", "metric", "value", "low", "high"]
    write_csv_atomic(folder / layout.TEST_METRICS_FILE, fields, test_metric_rows(summaries))
    fields = ["comparison", "metric", "difference", "low", "high", "verdict"]
    write_csv_atomic(folder / layout.PAIRED_FILE, fields, paired_rows(comparisons))
