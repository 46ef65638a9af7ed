"""The experiment plan's groups: seed summaries with and without the committed run (no DVC needed)."""

from __future__ import annotations

from pathlib import Path

import yaml

from birdops.evaluate.experiments import DEFAULT_NAME, Plan, group_summary


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
    return {f"metrics/{v}.json:test_clip.accuracy": accuracy for v in ("phase2b", "baseline", "full")}


def test_a_seed_group_counts_the_committed_run_and_a_kept_apart_group_does_not(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml")
    assert plan.without_committed_run == frozenset({"scratch"})
    rows = {DEFAULT_NAME: row(0.9), "seed-1": row(0.7), "scratch-a": row(0.4), "scratch-b": row(0.6)}
    seeds = group_summary(plan, rows, "seeds")
    assert seeds[0].startswith("| variant (seeds: 2 runs) |")
    assert any(line.startswith("| full | n/a | 80.0% ± 14.1 pp |") for line in seeds), seeds
    scratch = group_summary(plan, rows, "scratch")
    assert scratch[0].startswith("| variant (scratch: 2 runs) |")
    assert [line.split(" | ")[0] for line in scratch[2:]] == ["| full"]  # only the variants it is about
    assert scratch[2].startswith("| full | n/a | 50.0% ± 14.1 pp |"), scratch
