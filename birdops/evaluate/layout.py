"""Where the evaluate stage's results live, and which of them are headline metrics.

Under the stage's ``--out`` folder (``metrics/``):

- ``<variant>.json``: the headline, :data:`HEADLINE`'s keys, flat and the same for every variant, so
  ``dvc metrics show`` prints one short row per variant and ``dvc metrics diff`` one line per change.
  Every key is a test-split figure: the report's clip metrics on the cached test clips, the
  detection metrics on the test soundscape and background windows.
- ``best.json``: the exported variant (``variant``) and its validation value of the selection metric
  (``val_cmap`` by default). No other file has that key, so ``dvc exp show`` names its column
  ``val_cmap``, not ``metrics/best.json:val_cmap``, and sorts by it with ``--sort-by val_cmap``.
- ``eval/<variant>/details.json``: everything measured for the variant (clip and recording levels,
  their bootstrap intervals, the sizes they rest on, detection on test and validation windows).
- ``eval/comparisons.json``: each generation against the one before, paired on the test clips.
- ``eval/selection.json``: how ``best.json`` was chosen (metric, candidates, what broke a tie).
- ``eval/test_metrics.csv`` and ``eval/paired.csv``: the same figures in long form, for DVC's plots.

Only the first two are declared as DVC metrics; the rest are plain outputs that ``dvc metrics show
<file>`` reads on demand. No torch here: ``birdops report`` and ``birdops experiments`` read it too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DETAILS_FILE = "details.json"
COMPARISONS_FILE = "comparisons.json"
SELECTION_FILE = "selection.json"
TEST_METRICS_FILE = "test_metrics.csv"
PAIRED_FILE = "paired.csv"

# headline key -> (section, key) of details.json; the order is the one the docs list them in. Short
# names keep `dvc metrics show` within 120 columns (tabulate gives a column its name's width + 4)
HEADLINE: dict[str, tuple[str, str]] = {
    "accuracy": ("test_clip", "accuracy"),
    "f1_macro": ("test_clip", "f1_macro"),
    "f1_weighted": ("test_clip", "f1_weighted"),
    "map": ("test_clip", "map"),
    "cmap": ("detection", "cmap"),
    "false_alarms": ("detection", "background_windows_flagged"),
}


def headline(details: Mapping[str, Any]) -> dict[str, float]:
    """The headline of one variant's details. A figure the details lack (``false_alarms``, the share of
    background windows flagged, when the test set has no background-only window) is left out, and DVC
    shows it as ``-``."""
    found = {}
    for name, (section, key) in HEADLINE.items():
        value = details.get(section, {}).get(key)
        if value is not None:
            found[name] = value
    return found


def validation_section(metric: str) -> str:
    """The details section a selection metric is read from: ``val_detection`` for the detection
    cmAP, ``val_clip`` for a clip metric (accuracy, f1_macro, map)."""
    return "val_detection" if metric == "cmap" else "val_clip"
