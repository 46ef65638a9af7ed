"""The real DAG, run by real DVC on a tiny configuration in a temporary git repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from birdops.evaluate import layout

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def tiny_params() -> dict[str, Any]:
    """The real params.yaml shrunk so the whole DAG runs in about a minute on 2 cores."""
    params: dict[str, Any] = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["synthetic"].update(
        species=4,
        recordings=28,
        recordists=8,
        min_recording_seconds=3.0,
        max_recording_seconds=6.0,
        confusable_pairs=1,
        corrupt_files=1,
    )
    params["data"]["background_synthetic"].update(
        recordings=9, sites=3, min_recording_seconds=3.0, max_recording_seconds=6.0
    )
    params["soundscapes"].update(count={"val": 1, "test": 1}, seconds=20.0)
    params["lms_cache"].update(workers=1, max_clips_per_recording=2, background_clips_per_recording=2)
    params["pretrain"]["corpus"].update(
        clip_seconds=6.0, stems_per_class=1, val_stems_per_class=1, val_clips=8
    )
    params["pretrain"].update(steps=2, batch_size=4, eval_every=1)
    for variant in ("train_phase2b", "train_baseline", "train_full"):
        params[variant].update(epochs=2, batch_size=8)
    params["export_onnx"].update(parity_clips=4)
    return params


def dvc(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("dag")
    for name in ("birdops", "pipeline"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", repo / "dvc.yaml")
    init_project(repo)
    return repo


def init_project(repo: Path) -> None:
    """Make ``repo`` (the code and a dvc.yaml already in it) a git + DVC project with tiny params."""
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    (repo / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    (repo / "metrics").mkdir()
    git(repo, "init", "-q")
    git(repo, "config", "user.email", "test@example.com")
    git(repo, "config", "user.name", "test")
    dvc(repo, "init", "-q")
    # the plot templates and the page's layout (.dvc/config names it)
    shutil.copytree(ROOT / ".dvc" / "plots", repo / ".dvc" / "plots")
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")


def test_data_stages_build_and_are_then_up_to_date(repo: Path) -> None:
    dvc(repo, "repro", "prepare", "lms_cache")
    manifest = (repo / "data/prepared/manifest.csv").read_text().splitlines()
    assert len(manifest) > 10
    assert list((repo / "data/lms/seed").glob("train-*.npy"))
    data = json.loads((repo / "metrics/data.json").read_text())
    cache = json.loads((repo / "metrics/cache.json").read_text())
    assert data and cache
    again = dvc(repo, "repro", "prepare", "lms_cache")
    assert "didn't change" in again or "up to date" in again
    assert "Running stage" not in again


def test_the_whole_dag_trains_evaluates_and_exports(repo: Path) -> None:
    dvc(repo, "repro")
    checkpoint = sorted(p.name for p in (repo / "models/pretrain").iterdir())
    assert checkpoint == ["config.json", "model.safetensors"]
    assert json.loads((repo / "metrics/pretrain.json").read_text())["steps"] == 2
    for variant in ("phase2b", "baseline", "full"):
        assert (repo / f"models/{variant}/model.safetensors").is_file()
        assert (repo / f"metrics/{variant}/metrics.json").is_file()  # dvclive summary
        assert list((repo / f"metrics/{variant}/plots/metrics").rglob("*.tsv"))  # curves
        assert (repo / f"metrics/eval/{variant}/confusion.png").is_file()
    best = json.loads((repo / "metrics/best.json").read_text())
    assert best["variant"] in ("phase2b", "baseline", "full")
    onnx_summary = json.loads((repo / "metrics/onnx.json").read_text())
    assert onnx_summary["fp32_gate_passed"] is True
    assert (repo / "models/export/model.onnx").is_file()
    assert list((repo / "models/export/model_repository").glob("*/config.pbtxt"))
    for variant in ("phase2b", "baseline", "full"):
        found = json.loads((repo / f"metrics/{variant}.json").read_text())
        assert 0.0 <= found["false_alarms"] <= 1.0
    field = json.loads((repo / "metrics/field.json").read_text())
    assert field["test_recordings"] > 0 and 0.0 <= field["background_windows_flagged"] <= 1.0

    # `dvc metrics show`: the headline files only, one row per variant with the same keys, and the
    # exported variant; the other summaries on demand
    shown = json.loads(dvc(repo, "metrics", "show", "--json"))
    files = {path: found["data"] for path, found in next(iter(shown.values()))["data"].items()}
    assert sorted(files) == sorted(f"metrics/{name}.json" for name in ("phase2b", "baseline", "full", "best"))
    keys = {path: set(data) for path, data in files.items()}
    assert keys["metrics/phase2b.json"] == keys["metrics/baseline.json"] == keys["metrics/full.json"]
    assert {"accuracy", "f1_macro", "cmap", "false_alarms"} <= keys["metrics/full.json"]
    assert files["metrics/best.json"] == {"variant": best["variant"], "val_cmap": best["val_cmap"]}
    table = dvc(repo, "metrics", "show")
    assert len(table.splitlines()) == 5 and max(map(len, table.splitlines())) <= 120, table
    on_demand = json.loads(dvc(repo, "metrics", "show", "--json", "metrics/eval/full/details.json"))
    assert "test_clip" in json.dumps(on_demand)
    assert "Running stage" not in dvc(repo, "repro")
    check_plots(repo)


def check_plots(repo: Path) -> None:
    """`dvc plots show`: the training curves first, then the comparisons, then each variant's detail;
    every plot with a title and named axes, and the page laid out by .dvc/plots/page.html."""
    rendered = json.loads(dvc(repo, "plots", "show", "--json"))["data"]
    titles = [plot["content"]["title"]["text"] for plots in rendered.values() for plot in plots]
    assert titles[:4] == [
        "Training loss per epoch (each variant's own loss)",
        "Validation loss per epoch (each variant's own loss)",
        "Validation accuracy per epoch (early stopping keeps the best)",
        "Validation F1 macro per epoch",
    ]
    assert titles[4].startswith("Test metrics by variant") and titles[5].startswith("Each generation")
    assert [t.split(":")[0] for t in titles[-3:]] == ["phase2b", "baseline", "full"]
    assert len(titles) == 11
    curve = next(iter(rendered.values()))[0]["content"]
    assert curve["encoding"]["x"]["title"] == "epoch" and curve["encoding"]["color"]["field"] == "variant"
    # the template reads the variant from the first folder of the path DVC gives each row
    variants = {row["filename"].split("/")[0] for row in curve["data"]["values"]}
    assert variants == {"phase2b", "baseline", "full"}
    dvc(repo, "plots", "show", "-o", "page")
    page = (repo / "page" / "index.html").read_text()
    assert "birdops: the three variants" in page and page.count("vegaEmbed(") == 11


def test_a_param_change_shows_in_metrics_diff(repo: Path) -> None:
    if not (repo / "dvc.lock").exists():
        pytest.skip("needs the DAG run of the test above")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tiny DAG")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train_full"]["epochs"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = dvc(repo, "repro")
    assert "Running stage 'train_full'" in out and "Running stage 'train_phase2b'" not in out
    assert "train_full.epochs" in dvc(repo, "params", "diff", "HEAD", "--md")
    diff = json.loads(dvc(repo, "metrics", "diff", "HEAD", "--json"))
    # only headline files: full's row, and best.json's where the choice or its value moved
    assert "metrics/full.json" in diff and set(diff) <= {"metrics/full.json", "metrics/best.json"}, diff
    assert set(diff["metrics/full.json"]) <= {*layout.HEADLINE}, diff


def changed_stages(repo: Path) -> set[str]:
    """The stages ``dvc status`` reports as changed (a stage name, then what changed)."""
    status = json.loads(dvc(repo, "status", "--json"))
    return {name.split(":")[-1] for name in status}


def test_editing_imported_code_reruns_exactly_the_stages_that_import_it(repo: Path) -> None:
    if not (repo / "dvc.lock").exists():
        pytest.skip("needs the DAG run of the test above")
    assert changed_stages(repo) == set()
    frontend = repo / "birdops/features/frontend.py"
    original = frontend.read_text()
    frontend.write_text(original + "\n# an edit\n")
    assert changed_stages(repo) == {
        "lms_cache",
        "pretrain",
        "train_phase2b",
        "train_baseline",
        "train_full",
        "evaluate",
        "export_onnx",
    }
    frontend.write_text(original)
    assert changed_stages(repo) == set()
    plots = repo / "birdops/evaluate/plots.py"
    plots.write_text(plots.read_text() + "\n# an edit\n")
    assert changed_stages(repo) == {"evaluate"}
    out = dvc(repo, "repro")
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # the outputs came out the same, so nothing downstream of evaluate has anything to do
    assert ran == {"evaluate"}, out
    assert "Running stage" not in dvc(repo, "repro")


def test_experiments_command_runs_a_plan_and_writes_its_tables(repo: Path) -> None:
    """`birdops experiments` queues the plan with real `dvc exp run --queue`, runs it and writes the
    document's tables from `dvc exp show`; the workspace is left as it was."""
    if not (repo / "dvc.lock").exists():
        pytest.skip("needs the DAG run of the tests above")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "state before the experiments")
    (repo / "docs").mkdir(exist_ok=True)
    plan = {
        "experiments": [
            {
                "name": "one-epoch",
                "note": "phase2b for 1 epoch",
                "group": "seeds",
                "variants": ["phase2b"],
                "set": {"train_phase2b.epochs": 1},
            }
        ]
    }
    (repo / "docs/plan.yaml").write_text(yaml.safe_dump(plan))
    from birdops.evaluate.experiments import BEGIN, END

    (repo / "docs/results.md").write_text(f"# Results\n\n{BEGIN}\n{END}\n\nprose\n")
    lock = (repo / "dvc.lock").read_text()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    command = ["experiments", "--plan", "docs/plan.yaml", "--doc", "docs/results.md"]
    done = subprocess.run(
        [sys.executable, "-m", "birdops.cli", *command],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = (repo / "docs/results.md").read_text()
    assert text.startswith("# Results\n\n") and text.endswith("\n\nprose\n")
    row = next(line for line in text.splitlines() if line.startswith("| one-epoch"))
    assert "| phase2b |" in row and row.rstrip().endswith("| 1 / 1 |"), row  # kept epoch 1 of 1 run
    assert any(line.startswith("| default (the committed run) | phase2b |") for line in text.splitlines())
    assert "seeds: 2 runs" in text
    # the README's `dvc exp show` view, as markdown: the experiment's row and the exported variant
    from birdops.evaluate.experiments import exp_show_command

    assert f"`{exp_show_command()}`" in text
    view = [line for line in text.splitlines() if "[one-epoch]" in line]
    assert len(view) == 1 and "train_phase2b.epochs" in text and "| variant" in text, text
    assert (repo / "dvc.lock").read_text() == lock  # the experiment ran off to the side
