"""The README's results are the ones in ``metrics/``: its block is what ``birdops report
--update-readme`` writes from them, so a figure typed by hand, or left from an older run, fails here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from birdops.config import VARIANTS
from birdops.evaluate import report

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_results_block_matches_metrics() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(ROOT)  # the block names paths relative to the repository
        expected = report.readme_block(Path("metrics"), VARIANTS)
    assert report.replace_readme_block(text, expected) == text, (
        "README.md's results differ from metrics/: run `birdops report --update-readme README.md`"
    )


def test_update_readme_rewrites_only_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = tmp_path / "metrics"
    row = {"accuracy": 0.5, "f1_macro": 0.25, "f1_weighted": 0.4, "map": 0.3, "top5_accuracy": 0.9}
    ci = {"accuracy_low": 0.4, "accuracy_high": 0.6, "f1_macro_low": 0.2, "f1_macro_high": 0.3}
    for i, variant in enumerate(VARIANTS):
        details = {
            "val_clip": row,
            "test_clip": {**row, "accuracy": 0.5 + i / 10},
            "test_clip_ci95": ci,
            "test_recording": row,
            "n_test_clips": 9,
            "n_test_recordings": 4,
        }
        (metrics / "eval" / variant).mkdir(parents=True)
        (metrics / "eval" / variant / "details.json").write_text(json.dumps(details))
    (metrics / "best.json").write_text(json.dumps({"variant": "full", "val_f1_macro": 0.25}))
    (metrics / "data.json").write_text(
        json.dumps(
            {
                "classes": 3,
                "recordings": 12,
                "accepted": 11,
                "splits": {"train": 7, "val": 2, "test": 2},
                "audio_hours": {"train": 0.5, "val": 0.1, "test": 0.1},
            }
        )
    )
    pair = {
        "n_test_clips": 9,
        "n_test_recordings": 4,
        "accuracy_diff": 0.1,
        "accuracy_diff_low": -0.2,
        "accuracy_diff_high": 0.3,
        "accuracy_p_value": 0.5,
        "accuracy_verdict": "within noise",
        "f1_macro_diff": 0.0,
        "f1_macro_diff_low": -0.1,
        "f1_macro_diff_high": 0.1,
        "f1_macro_verdict": "within noise",
    }
    (metrics / "eval" / "comparisons.json").write_text(json.dumps({"full_vs_baseline": pair}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\n{report.README_BEGIN}\nold figures\n{report.README_END}\n\nafter\n")
    monkeypatch.chdir(tmp_path)
    assert report.main(["--update-readme", "README.md"]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\n") and text.endswith("\n\nafter\n") and "old figures" not in text
    assert "| full (" in text and "70.00% (+10.00 pp)" in text and "train/val/test 7/2/2" in text
    assert "![full confusion matrix](metrics/eval/full/confusion.png)" in text
    assert "Exported model: `full`, chosen by validation f1 macro (0.2500)." in text
    assert "- full: test accuracy 40.0–60.0%, F1 macro 0.200–0.300" in text
    assert "- full against baseline, on the same 9 test clips: test accuracy +10.0 pp" in text
    assert "(95% interval -20.0 to +30.0 pp, p = 0.5): within noise" in text
    assert report.main(["--update-readme", "README.md"]) == 0 and readme.read_text() == text  # idempotent
    readme.write_text("no markers\n")
    assert report.main(["--update-readme", "README.md"]) == 1
