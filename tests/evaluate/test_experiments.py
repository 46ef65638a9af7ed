"""``birdops experiments``' tables: seed summaries with and without the committed run, the three files
a figure comes from, and the files read from an experiment's commit (a real Git repository; no DVC)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from birdops.evaluate.experiments import DEFAULT_NAME, Plan, files_at, group_summary, results_table


def write_plan(path: Path) -> Plan:
    plan = {
        "groups": {"scratch": {"with_committed_run": False}},
        "experiments": [
            {"name": "seed-1", "group": "seeds", "set": {"train_full.seed": 1}},
            {"name": "scratch-a", "group": "scratch", "variants": ["full"], "set": {"train_full.seed": 1}},
            {"name": "scratch-b", "group": "scratch", "variants": ["full"], "set": {"train_full.seed": 2}},
        ],
    }
    path.write_text(yaml.safe_dump(plan))
    return Plan.read(path)


def row(accuracy: float) -> dict[str, float]:
    """A ``dvc exp show`` row as :func:`exp_rows` completes it: the headline (a DVC metric), the
    details and the trainer's summary (read from the experiment's commit)."""
    found: dict[str, float] = {}
    for v in ("phase2b", "baseline", "full"):
        found[f"metrics/{v}.json:accuracy"] = accuracy
        found[f"metrics/eval/{v}/details.json:test_recording.accuracy"] = accuracy / 2
        found[f"metrics/{v}/metrics.json:best.epoch"] = 3
        found[f"metrics/{v}/metrics.json:step"] = 9
    return found


def test_a_seed_group_counts_the_committed_run_and_a_kept_apart_group_does_not(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml")
    assert plan.without_committed_run == frozenset({"scratch"})
    rows = {DEFAULT_NAME: row(0.9), "seed-1": row(0.7), "scratch-a": row(0.4), "scratch-b": row(0.6)}
    seeds = group_summary(plan, rows, "seeds")
    assert seeds[0].startswith("| variant (seeds: 2 runs) | val acc | val cmAP | test acc (clip) |")
    # val acc and val cmAP are not in these rows; test acc (clip) from the headline, then (recording)
    # from the details
    full = "| full | n/a | n/a | 80.0% ± 14.1 pp | 40.0% ± 7.1 pp | n/a | n/a |"
    assert full in seeds, seeds
    scratch = group_summary(plan, rows, "scratch")
    assert scratch[0].startswith("| variant (scratch: 2 runs) |")
    assert [line.split(" | ")[0] for line in scratch[2:]] == ["| full"]  # only the variants it is about
    assert scratch[2].startswith("| full | n/a | n/a | 50.0% ± 14.1 pp |"), scratch
    table = results_table(plan, rows)
    assert table[2].endswith("| phase2b | n/a | n/a | 90.0% | 45.0% | n/a | n/a | 3 / 10 |"), table[2]


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@e", "-c", "user.name=t", *args], cwd=repo, check=True)


def test_files_at_reads_an_experiment_commit_as_exp_show_keys_its_metrics(tmp_path: Path) -> None:
    details = tmp_path / "metrics" / "eval" / "full" / "details.json"
    details.parent.mkdir(parents=True)
    details.write_text(json.dumps({"test_recording": {"accuracy": 0.5}, "n_test_clips": 7}))
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "one")
    details.write_text(json.dumps({"test_recording": {"accuracy": 0.75}}))  # the workspace: not read
    path = "metrics/eval/full/details.json"
    found = files_at(tmp_path, "HEAD", [path, "metrics/missing.json"])
    assert found == {f"{path}:test_recording.accuracy": 0.5, f"{path}:n_test_clips": 7}


def test_the_readme_and_results_page_give_the_view_birdops_experiments_writes() -> None:
    from birdops.evaluate.experiments import exp_show_command

    root = Path(__file__).resolve().parents[2]
    for doc in ("README.md", "docs/results.md"):
        assert f"\n{exp_show_command()}\n" in (root / doc).read_text(encoding="utf-8"), doc
