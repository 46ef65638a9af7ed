"""``birdops report``: the side-by-side table, and ``--diff REV`` on a real temporary Git + DVC repo."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from birdops.evaluate import layout, report


def write_variant(folder: Path, name: str, val_acc: float, test_acc: float, f1m: float) -> None:
    """The evaluate stage's files of one variant: its details and its headline."""
    clip = {"accuracy": test_acc, "top5_accuracy": 0.9, "f1_macro": f1m, "f1_weighted": 0.5, "map": 0.4}
    data = {
        "test_clip": clip,
        "test_recording": {**clip, "accuracy": test_acc + 0.05},
        "val_clip": {**clip, "accuracy": val_acc},
        "n_test_clips": 120,
        "n_test_recordings": 40,
    }
    (folder / "eval" / name).mkdir(parents=True, exist_ok=True)
    (folder / "eval" / name / "details.json").write_text(json.dumps(data))
    (folder / f"{name}.json").write_text(json.dumps(layout.headline(data)))


def table_line(document: str, prefix: str) -> list[str]:
    """The cells of the first markdown table row starting with ``| prefix``."""
    line = next(line for line in document.splitlines() if line.startswith(f"| {prefix}"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def test_side_by_side_table_with_deltas_and_reference_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = tmp_path / "metrics"
    write_variant(metrics, "phase2b", 0.40, 0.41, 0.20)
    write_variant(metrics, "baseline", 0.50, 0.52, 0.30)
    write_variant(metrics, "full", 0.55, 0.5625, 0.3125)
    out = tmp_path / "out" / "report.md"
    assert report.main(["--metrics-dir", str(metrics), "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_text() == printed

    phase2b = table_line(printed, "phase2b")
    assert phase2b[1:4] == ["40.00%", "41.00%", "46.00%"]  # no previous generation: no delta
    baseline = table_line(printed, "baseline")
    assert baseline[2] == "52.00% (+11.00 pp)"
    assert baseline[4] == "0.3000 (+0.1000)"
    full = table_line(printed, "full")
    assert full[2] == "56.25% (+4.25 pp)"
    assert full[4] == "0.3125 (+0.0125)"
    assert full[6] == "0.4000 (+0.0000)"
    assert "120 clips / 40 recordings" in printed

    # the published figures, labelled as the original real-data results
    assert "original published results (real xeno-canto data" in printed
    ref_full = table_line(printed, "Phase 3 full — original report, real data")
    assert ref_full[1:3] == ["57.46% (+2.59 pp)", "57.28% (+2.77 pp)"]
    assert ref_full[4:7] == ["0.3572 (+0.0345)", "0.5691 (+0.0348)", "0.4308 (+0.0135)"]
    ref_2b = table_line(printed, "Phase 2B — original report, real data")
    assert ref_2b[1:5] == ["42.24%", "42.72%", "n/a", "0.2167"]
    ref_baseline = table_line(printed, "Phase 3 baseline — original report, real data")
    assert ref_baseline[2] == "54.51% (+11.79 pp)" and ref_baseline[5] == "0.5343"


def test_missing_variant_and_missing_metrics(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = tmp_path / "metrics"
    write_variant(metrics, "baseline", 0.5, 0.5, 0.3)
    assert report.main(["--metrics-dir", str(metrics)]) == 0
    printed = capsys.readouterr().out
    assert table_line(printed, "full")[1] == "not evaluated"
    assert table_line(printed, "baseline")[2] == "50.00%"  # phase2b missing: nothing to compare with
    assert report.main(["--metrics-dir", str(tmp_path / "nowhere")]) == 1


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def dvc_repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Git + DVC repository with metrics/full.json and params.yaml committed twice."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    subprocess.run([*report.dvc_command(), "init", "-q"], cwd=repo, check=True, capture_output=True)
    (repo / "dvc.yaml").write_text(
        "stages:\n  evaluate:\n    cmd: echo evaluate\n    params:\n      - evaluate\n"
        "    metrics:\n      - metrics/full.json:\n          cache: false\n"
    )
    (repo / "params.yaml").write_text("evaluate:\n  hop_seconds: 2.0\n  batch_size: 32\n")
    write_variant(repo / "metrics", "full", 0.5, 0.5, 0.25)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "v1")
    (repo / "params.yaml").write_text("evaluate:\n  hop_seconds: 1.0\n  batch_size: 32\n")
    write_variant(repo / "metrics", "full", 0.5, 0.625, 0.25)
    git(repo, "commit", "-qam", "v2")
    monkeypatch.chdir(repo)
    return repo


def test_diff_against_a_revision(dvc_repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert report.main(["--diff", "HEAD~1", "--output", "report.md"]) == 0
    printed = capsys.readouterr().out
    assert (dvc_repo / "report.md").read_text() == printed
    metrics_row = table_line(printed, "metrics/full.json | accuracy")
    assert metrics_row[2:5] == ["0.5", "0.625", "0.125"]  # old, new, delta
    # only the headline file is a DVC metric, and only what changed is listed
    rows = [line[2:] for line in printed.splitlines() if line.startswith("| metrics/")]
    listed = [table_line(printed, line)[:2] for line in rows]
    assert listed == [["metrics/full.json", "accuracy"]]
    params_row = table_line(printed, "params.yaml | evaluate.hop_seconds")
    assert params_row[2:4] == ["2.0", "1.0"]
    assert printed.index("## Metrics") < printed.index("## Parameters")
    # the workspace's variants follow, side by side
    assert table_line(printed, "full")[2] == "62.50%"


def test_diff_errors_are_clear(dvc_repo: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert report.main(["--diff", "no-such-branch"]) == 1
    assert "unknown Git revision 'no-such-branch'" in caplog.text
    assert report.main(["--diff", "HEAD"]) == 0  # nothing changed since HEAD is fine


def test_missing_dvc_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    with pytest.raises(report.ReportError, match="dvc is not installed"):
        report.dvc_command()
