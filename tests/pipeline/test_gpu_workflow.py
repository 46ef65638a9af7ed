"""The GPU runner's workflow (``.github/workflows/gpu-repro.yml``) runs what the README documents: its
set-up command, and the GPU profile's overrides exactly. (``actionlint`` checks the file itself, in
``.ci/run``.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = ROOT / ".github/workflows/gpu-repro.yml"


def steps() -> dict[str, str]:
    """The workflow's steps by name -> their ``run`` script."""
    workflow: dict[str, Any] = yaml.safe_load(WORKFLOW.read_text())
    job = workflow["jobs"]["repro"]
    return {step["name"]: step.get("run", "") for step in job["steps"] if "name" in step}


def readme_gpu_profile() -> str:
    """The first code block of the README's "The GPU profile" section."""
    section = (ROOT / "README.md").read_text().split("## The GPU profile", 1)[1]
    return section.split("```", 2)[1]


def overrides(script: str) -> tuple[list[str], list[str]]:
    """``(the variants the loop goes over, every -S value)``, quotes left out."""
    variants = re.findall(r"for v in ([^;]+);", script)
    values = [value.strip("'\")") for value in re.findall(r"-S\s+(\S+)", script)]
    return [name for line in variants for name in line.split()], values


def test_the_gpu_profile_is_the_readmes() -> None:
    run = steps()["Reproduce as a DVC experiment"]
    variants, values = overrides(run)
    assert (variants, values) == overrides(readme_gpu_profile())
    assert variants == ["train_baseline", "train_full"] and "lms_cache.presets=[seed,mfcc,ast]" in values
    assert 'dvc exp run --name "$EXPERIMENT" "${S[@]}"' in run


def test_the_runner_installs_with_the_readmes_command_and_pushes_what_it_pulled() -> None:
    by_name = steps()
    assert 'pip install -c requirements.lock -e ".[dev]"' in (ROOT / "README.md").read_text()
    assert (
        'pip install -c requirements.lock -e ".[dev]"'
        in by_name["Install (the README's set-up command, in a virtual environment)"]
    )
    assert "birdops pull" in by_name["Pull what the branch's dvc.lock names"]
    push = by_name["Push the outputs and the experiment"]
    assert "dvc push" in push and 'dvc exp push origin "$EXPERIMENT"' in push
    assert 'birdops report --diff "origin/$BASE"' in by_name["Report against the base branch"]
