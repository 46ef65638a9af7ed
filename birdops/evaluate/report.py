"""``birdops report``: the model generations side by side, and ``--diff REV`` for pull requests.

    birdops report [--metrics-dir metrics] [--output report.md]
    birdops report --diff origin/main [--output report.md]
    birdops report --update-readme README.md

The first form reads ``<metrics-dir>/eval/<variant>/details.json`` (written by the evaluate stage,
see :mod:`birdops.evaluate.layout`) for phase2b, baseline and full and prints a markdown table with
each generation's change against the one before, followed by the figures of the original report on
real xeno-canto data as clearly labelled reference rows. The second wraps ``dvc metrics diff REV
--md`` (the headline files: one line per changed figure) and ``dvc params diff REV --md`` into one
markdown document for a pull-request comment. The third rewrites the results block of the README
(between :data:`README_BEGIN` and :data:`README_END`) from ``metrics/``, so the figures a newcomer
reads are the ones ``dvc repro`` gives (``tests/evaluate/test_readme_results.py`` fails when they
disagree). The core package only (no torch, no scikit-learn): CI installs just ``birdops`` and
``dvc`` for it.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from birdops.config import VARIANTS
from birdops.contracts import BEST_FILE, EVAL_DIR, METRICS_DIR, BestError, read_best
from birdops.evaluate import layout
from birdops.files import write_text_atomic

log = logging.getLogger(__name__)

DESCRIPTIONS: dict[str, str] = {
    "phase2b": "Phase 2B: MFCC + ViT",
    "baseline": "Phase 3 baseline: log-mel + AST",
    "full": "Phase 3 full: log-mel + AST + SpecAugment + MixUp",
}


@dataclass(frozen=True)
class Column:
    """One table column: a value at ``section.key`` of a metrics file, shown as % or as a ratio."""

    title: str
    section: str
    key: str
    percent: bool


COLUMNS: tuple[Column, ...] = (
    Column("Val acc", "val_clip", "accuracy", True),
    Column("Test acc (clip)", "test_clip", "accuracy", True),
    Column("Test acc (recording)", "test_recording", "accuracy", True),
    Column("F1 macro", "test_clip", "f1_macro", False),
    Column("F1 weighted", "test_clip", "f1_weighted", False),
    Column("mAP", "test_clip", "map", False),
    Column("Top-5", "test_clip", "top5_accuracy", True),
)

# Field detection (birdops.evaluate.field): test soundscapes and test background recordings, windows
# scored with the calibration and thresholds chosen on validation (evaluate.field)
DETECTION_COLUMNS: tuple[Column, ...] = (
    Column("Val cmAP", "val_detection", "cmap", False),
    Column("cmAP", "detection", "cmap", False),
    Column("ROC-AUC", "detection", "roc_auc", False),
    Column("Precision", "detection", "precision", True),
    Column("Recall", "detection", "recall", True),
    Column("Background windows flagged", "detection", "background_windows_flagged", True),
    Column("ECE before", "detection", "ece_uncalibrated", False),
    Column("ECE after", "detection", "ece_calibrated", False),
)

# The original report's published results (PHASE3_RESULTS.md): real xeno-canto data, 89 species,
# 4-second clips. Fractions in [0, 1]; None where the report gives no figure.
PUBLISHED: dict[str, dict[str, dict[str, float | None]]] = {
    "phase2b": {
        "val_clip": {"accuracy": 0.4224},
        "test_clip": {"accuracy": 0.4272, "f1_macro": 0.2167, "f1_weighted": None, "map": None},
    },
    "baseline": {
        "val_clip": {"accuracy": 0.5487},
        "test_clip": {"accuracy": 0.5451, "f1_macro": 0.3227, "f1_weighted": 0.5343, "map": 0.4173},
    },
    "full": {
        "val_clip": {"accuracy": 0.5746},
        "test_clip": {"accuracy": 0.5728, "f1_macro": 0.3572, "f1_weighted": 0.5691, "map": 0.4308},
    },
}


class ReportError(RuntimeError):
    """The report cannot be made; the message says why (missing files, dvc, unknown revision)."""


# ------------------------------------------------------------------------------------ comparison
def details_path(metrics_dir: Path, variant: str) -> Path:
    return metrics_dir / EVAL_DIR / variant / layout.DETAILS_FILE


def read_variant_metrics(metrics_dir: Path, variants: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """The details (``eval/<variant>/details.json``) of each variant, or None where the file is missing."""
    found: dict[str, dict[str, Any] | None] = {}
    for variant in variants:
        path = details_path(metrics_dir, variant)
        try:
            found[variant] = json.loads(path.read_text())
        except FileNotFoundError:
            found[variant] = None
        except (OSError, json.JSONDecodeError) as err:
            raise ReportError(f"{path}: cannot read metrics: {err}") from err
    return found


def lookup(metrics: Mapping[str, Any] | None, column: Column) -> float | None:
    """The value of ``column`` in one metrics mapping, None when absent."""
    if metrics is None:
        return None
    value = metrics.get(column.section, {}).get(column.key)
    return None if value is None else float(value)


def format_cell(value: float | None, previous: float | None, percent: bool) -> str:
    """``54.51%`` / ``0.3227``, with the change against ``previous`` when both exist:
    percentage points for accuracies, plain difference for ratios."""
    if value is None:
        return "n/a"
    if percent:
        text = f"{100 * value:.2f}%"
        return text if previous is None else f"{text} ({100 * (value - previous):+.2f} pp)"
    text = f"{value:.4f}"
    return text if previous is None else f"{text} ({value - previous:+.4f})"


def table_rows(rows: Sequence[tuple[str, Mapping[str, Any] | None]], columns: Sequence[Column]) -> list[str]:
    """Markdown lines of a table: one row per ``(name, metrics)``, each cell with its change against
    the row above (the previous generation)."""
    lines = ["| Model | " + " | ".join(c.title for c in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    previous: Mapping[str, Any] | None = None
    for name, metrics in rows:
        if metrics is None:
            cells = ["not evaluated"] + [""] * (len(columns) - 1)
        else:
            cells = [format_cell(lookup(metrics, c), lookup(previous, c), c.percent) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
        previous = metrics
    return lines


def sizes_line(found: Mapping[str, Mapping[str, Any] | None]) -> str:
    """One sentence with the test-set sizes of the evaluated variants."""
    parts = [
        f"{variant}: {m.get('n_test_clips', '?')} clips / {m.get('n_test_recordings', '?')} recordings"
        for variant, m in found.items()
        if m is not None
    ]
    return "Test set sizes: " + "; ".join(parts) + "." if parts else ""


def interval_lines(found: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The 95% bootstrap intervals (over test recordings) of each variant's clip-level test accuracy
    and F1 macro, one bullet each."""
    lines = []
    for variant, m in found.items():
        ci = (m or {}).get("test_clip_ci95")
        if not ci:
            continue
        lines.append(
            f"- {variant}: test accuracy {100 * ci['accuracy_low']:.1f}–{100 * ci['accuracy_high']:.1f}%, "
            f"F1 macro {ci['f1_macro_low']:.3f}–{ci['f1_macro_high']:.3f}"
        )
    return ["95% intervals (bootstrap over test recordings):", "", *lines] if lines else []


def _block(lines: list[str]) -> list[str]:
    return [*lines, ""] if lines else []


def detection_lines(found: Mapping[str, Mapping[str, Any] | None]) -> list[str]:
    """The field-detection table: each variant's metrics on the test soundscapes and background."""
    rows = [(variant, m) for variant, m in found.items() if m is not None and "detection" in m]
    if not rows:
        return []
    hours = max(float(m["detection"].get("background_hours", 0.0)) for _, m in rows if m is not None)
    return [
        "Field detection: windows of the test soundscapes (species over site background, with true "
        f"events) and of the test background recordings ({60 * hours:.1f} min with no species), scored "
        "with each variant's calibration and thresholds chosen on validation (`evaluate.field`); ECE: "
        "top-label expected calibration error before and after calibration.",
        "",
        *table_rows(rows, DETECTION_COLUMNS),
    ]


def field_line(path: Path) -> list[str]:
    """The exported model through ``birdops predict``'s defaults on held-out audio (``field.json``)."""
    try:
        field = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: cannot read the field check: {err}") from err
    return [
        f"The exported model with `birdops predict`'s defaults: "
        f"{100 * field['background_windows_flagged']:.1f}% of {field['background_windows']} windows of "
        f"unseen background give a species row; file-level recall {100 * field['clean_file_recall']:.1f}% "
        f"on the {field['test_recordings']} test recordings, {100 * field['mixed_file_recall']:.1f}% with "
        f"them over unseen background at {field['mixed_snr_db']:g} dB "
        f"({100 * field['mixed_to_clean_recall']:.0f}% of clean)." + _ranking_clause(field)
    ]


def _ranking_clause(field: dict[str, Any]) -> str:
    """The field check's recalls by the ranking alone, where ``field.json`` has them (written since
    the field check counted them)."""
    if "clean_top1_file_recall" not in field:
        return ""
    return (
        f" By the ranking alone (a recording's species the top score of one of its windows, whatever "
        f"the thresholds): {100 * field['clean_top1_file_recall']:.1f}% clean, "
        f"{100 * field['mixed_top1_file_recall']:.1f}% over background "
        f"({100 * field['mixed_to_clean_top1_recall']:.0f}% of clean)."
    )


def read_comparisons(metrics_dir: Path) -> dict[str, Any]:
    path = metrics_dir / EVAL_DIR / layout.COMPARISONS_FILE
    try:
        found = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError) as err:
        raise ReportError(f"{path}: cannot read the comparisons: {err}") from err
    return found if isinstance(found, dict) else {}


def comparison_lines(comparisons: Mapping[str, Any]) -> list[str]:
    """Each paired comparison in words: the difference, its interval, and whether it is noise."""
    lines = []
    for pair, row in comparisons.items():
        newer, older = pair.split("_vs_")
        acc = (
            f"test accuracy {100 * row['accuracy_diff']:+.1f} pp (95% interval "
            f"{100 * row['accuracy_diff_low']:+.1f} to {100 * row['accuracy_diff_high']:+.1f} pp, "
            f"p = {row['accuracy_p_value']:.2g}): {row['accuracy_verdict']}"
        )
        f1 = (
            f"F1 macro {row['f1_macro_diff']:+.3f} ({row['f1_macro_diff_low']:+.3f} to "
            f"{row['f1_macro_diff_high']:+.3f}): {row['f1_macro_verdict']}"
        )
        lines.append(f"- {newer} against {older}, on the same {row['n_test_clips']} test clips: {acc}; {f1}.")
    if not lines:
        return []
    return [
        'Paired comparisons (each generation against the one before; "within noise": the interval '
        "holds 0, so this test set cannot tell the two apart):",
        "",
        *lines,
    ]


def comparison_markdown(
    found: Mapping[str, Mapping[str, Any] | None], comparisons: Mapping[str, Any] | None = None
) -> str:
    """The side-by-side report: this repository's variants, then the original report's figures."""
    ours = [(f"{variant} ({DESCRIPTIONS.get(variant, variant)})", m) for variant, m in found.items()]
    published = [
        (f"{DESCRIPTIONS[v].split(':')[0]} — original report, real data", PUBLISHED[v]) for v in PUBLISHED
    ]
    lines = [
        "## Model generations (this repository's run)",
        "",
        "Test metrics on the cached test clips unless marked *recording* (whole recordings, windows "
        "averaged). In parentheses: the change against the previous generation (accuracies in "
        "percentage points).",
        "",
        *table_rows(ours, COLUMNS),
        "",
        sizes_line(found),
        "",
        *_block(interval_lines(found)),
        *_block(comparison_lines(comparisons or {})),
        *_block(detection_lines(found)),
        "## Reference: original published results (real xeno-canto data, 89 species)",
        "",
        "Figures from the original Phase 3 report (`PHASE3_RESULTS.md`), **not** produced by this "
        "repository's run and not comparable one-to-one with a run on other data (e.g. the synthetic "
        "corpus). n/a: not reported.",
        "",
        *table_rows(published, COLUMNS),
        "",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ README
README_BEGIN = "<!-- results: generated from metrics/ by `birdops report --update-readme README.md` -->"
README_END = "<!-- end of results -->"


def readme_block(metrics_dir: Path, variants: Sequence[str]) -> str:
    """The README's results: the variants' table, the test-set sizes and the exported model's
    confusion matrix, from ``metrics_dir`` (the variants' details and ``best.json``)."""
    found = read_variant_metrics(metrics_dir, variants)
    if any(m is None for m in found.values()):
        missing = ", ".join(v for v, m in found.items() if m is None)
        raise ReportError(f"no metrics in {metrics_dir} for {missing}: run the evaluate stage first")
    try:
        best = read_best(metrics_dir / BEST_FILE)
    except BestError as err:
        raise ReportError(str(err)) from err
    variant, metric, value = best.variant, best.metric, best.value
    ours = [(f"{v} ({DESCRIPTIONS.get(v, v)})", m) for v, m in found.items()]
    lines = [
        README_BEGIN,
        "",
        data_line(metrics_dir / "data.json"),
        "",
        *table_rows(ours, COLUMNS),
        "",
        sizes_line(found),
        "",
        *_block(interval_lines(found)),
        *_block(comparison_lines(read_comparisons(metrics_dir))),
        *_block(detection_lines(found)),
        *_block(field_line(metrics_dir / "field.json")),
        f"Exported model: `{variant}`, chosen by validation {metric.replace('_', ' ')} "
        f"({value:.4f}). Its confusion matrix on the test clips, rows normalised "
        f"(`dvc plots show` renders all three):",
        "",
        f"![{variant} confusion matrix]({metrics_dir.as_posix()}/eval/{variant}/confusion.png)",
        "",
        README_END,
    ]
    return "\n".join(lines)


def data_line(path: Path) -> str:
    """One sentence on the corpus the results come from (``metrics/data.json`` of prepare)."""
    try:
        data = json.loads(path.read_text())
        splits = data["splits"]
        hours = sum(data["audio_hours"].values())
        return (
            f"Corpus: {data['classes']} species; {data['recordings']} recordings, {data['accepted']} "
            f"accepted ({hours:.2f} h of audio); train/val/test {splits['train']}/{splits['val']}/"
            f"{splits['test']} recordings."
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ReportError(f"{path}: cannot read the data summary: {err}") from err


def replace_readme_block(text: str, block: str) -> str:
    """``text`` with its results block replaced by ``block``; both markers must be there, once."""
    if text.count(README_BEGIN) != 1 or text.count(README_END) != 1:
        raise ReportError(f"the README must hold the markers {README_BEGIN!r} and {README_END!r} once each")
    head, rest = text.split(README_BEGIN)
    _, tail = rest.split(README_END)
    return head + block + tail


# ------------------------------------------------------------------------------------------ diff
def dvc_command() -> list[str]:
    """How to run dvc: this interpreter's ``dvc`` module, else a ``dvc`` on the PATH."""
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    found = shutil.which("dvc")
    if found is None:
        raise ReportError("dvc is not installed: pip install dvc (or birdops[train])")
    return [found]


def run_tool(command: Sequence[str], repo: Path) -> str:
    """stdout of ``command`` run in ``repo``; ReportError with its stderr when it fails."""
    try:
        done = subprocess.run(list(command), cwd=repo, capture_output=True, text=True, check=False)
    except FileNotFoundError as err:
        raise ReportError(f"cannot run {command[0]}: {err}") from err
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        raise ReportError(f"`{' '.join(command[-4:])}` failed in {repo}: {detail}")
    return done.stdout


def check_revision(rev: str, repo: Path) -> None:
    """Raise ReportError unless ``rev`` names a commit of the Git repository at ``repo``."""
    git = shutil.which("git")
    if git is None:
        raise ReportError("git is not installed; `--diff` compares against a Git revision")
    try:
        run_tool([git, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], repo)
    except ReportError as err:
        raise ReportError(f"unknown Git revision {rev!r} in {repo} (fetch it, or check the name)") from err


def diff_markdown(rev: str, repo: Path) -> str:
    """``dvc metrics diff REV --md`` and ``dvc params diff REV --md`` of ``repo``'s workspace against
    ``rev``, as one markdown document."""
    check_revision(rev, repo)
    dvc = dvc_command()
    metrics = run_tool([*dvc, "metrics", "diff", rev, "--md"], repo).strip()
    params = run_tool([*dvc, "params", "diff", rev, "--md"], repo).strip()
    return "\n".join(
        [
            f"## Metrics: `{rev}` → this change",
            "",
            metrics or "No metric changed.",
            "",
            f"## Parameters: `{rev}` → this change",
            "",
            params or "No parameter changed.",
            "",
        ]
    )


# ------------------------------------------------------------------------------------------- cli
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="birdops report", description="Compare model variants.")
    parser.add_argument(
        "--metrics-dir", type=Path, default=Path(METRICS_DIR), help="evaluate's output folder"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), help="variants, oldest first")
    parser.add_argument("--output", type=Path, help="also write the markdown to this file")
    parser.add_argument(
        "--update-readme", type=Path, metavar="README", help="rewrite the results block of this README"
    )
    parser.add_argument(
        "--diff",
        metavar="REV",
        help="compare the workspace's DVC metrics and params against Git revision REV",
    )
    return parser.parse_args(list(argv))


def build_report(args: argparse.Namespace) -> str:
    """The markdown document the arguments ask for."""
    found = read_variant_metrics(args.metrics_dir, args.variants)
    if args.diff:
        parts = ["# birdops: metrics and parameters diff", "", diff_markdown(args.diff, Path.cwd())]
        if any(m is not None for m in found.values()):
            parts.append(comparison_markdown(found, read_comparisons(args.metrics_dir)))
        return "\n".join(parts)
    if all(m is None for m in found.values()):
        raise ReportError(
            f"no metrics in {args.metrics_dir} for {', '.join(args.variants)}: run the evaluate stage first"
        )
    comparisons = read_comparisons(args.metrics_dir)
    field = field_line(args.metrics_dir / "field.json")
    return "\n".join(
        ["# birdops: model comparison", "", *_block(field), comparison_markdown(found, comparisons)]
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.update_readme is not None:
        try:
            text = args.update_readme.read_text(encoding="utf-8")
            block = readme_block(args.metrics_dir, args.variants)
            updated = replace_readme_block(text, block)
        except (OSError, ReportError) as err:
            log.error("%s", err)
            return 1
        write_text_atomic(args.update_readme, updated)
        log.info("%s: results block %s", args.update_readme, "unchanged" if updated == text else "updated")
        return 0
    try:
        document = build_report(args)
    except ReportError as err:
        log.error("%s", err)
        return 1
    sys.stdout.write(document)
    if args.output is not None:
        write_text_atomic(args.output, document)
        log.info("wrote %s", args.output)
    return 0
