"""The rooms of the package and their one-way arrows (docs/architecture.md, "Rooms and arrows").

A room is a subpackage of ``birdops`` (``data``, ``features``, ...), a top-level module of it
(``contracts``, ``windows``, ...) or ``pipeline``. The imports are read from the source, so a new
arrow fails here until the map (and the page) says why it is there.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
from code_map import project_imports, room_graph

ROOT = Path(__file__).resolve().parents[1]
BIRDOPS = ROOT / "birdops"

# the modules every room may use: parameters, atomic writes, the shared contracts and the feature
# settings they carry, none of which import torch
BASE = {"birdops", "config", "files", "contracts", "featurespec"}
ALLOWED: dict[str, set[str]] = {
    "config": set(),
    "files": set(),
    "featurespec": {"windows"},  # a clip's samples: the one seconds-to-samples rule
    "kernels": set(),
    "procs": set(),
    "audio": {"containers"},  # views of files whose headers mislead the decoder
    "containers": set(),
    "windows": set(),
    "scores": set(),
    "providers": set(),
    "mixing": {"windows"},
    "remote": set(),
    "contracts": {"config", "files", "featurespec"},  # the spec that config.json and the ONNX metadata hold
    "metrics": {"scores"},
    "detection": {"scores"},
    "data": BASE | {"audio", "features", "procs", "windows"},  # features: activity, for soundscape events
    "features": BASE | {"audio", "mixing", "procs", "windows"},  # mixing: background clips, noisy copies
    "models": BASE | {"features"},
    "train": BASE | {"data", "features", "metrics", "models"},  # data: the generated pretraining sounds
    "evaluate": BASE | {"audio", "detection", "features", "metrics", "models", "scores", "windows"},
    "export": BASE | {"audio", "features", "models", "providers", "windows"},
    "serve": BASE | {"audio", "mixing", "providers", "scores", "windows"},  # mixing: the field check
    "bench": BASE
    | {"audio", "data", "export", "features", "models", "providers", "serve", "train", "windows"},
    "cli": set(),  # it imports each subcommand's module by name, when that subcommand runs
    # serve: the field_check stage runs the exported model through predict's path
    "pipeline": BASE | {"data", "evaluate", "export", "features", "kernels", "providers", "serve", "train"},
}


@cache
def graph() -> dict[str, dict[str, set[str]]]:
    """room -> imported room -> the modules of the room that import it."""
    return room_graph(ROOT)


def test_every_room_is_on_the_map() -> None:
    rooms = {p.stem for p in BIRDOPS.glob("*.py")} | {p.parent.name for p in BIRDOPS.glob("*/__init__.py")}
    missing = rooms - {"__init__"} - set(ALLOWED)
    assert not missing, f"rooms missing from ALLOWED: {sorted(missing)}"


@pytest.mark.parametrize("source", sorted(ALLOWED))
def test_a_room_imports_only_what_the_map_allows(source: str) -> None:
    unexpected = {
        target: sorted(modules)
        for target, modules in graph()[source].items()
        if target not in ALLOWED[source]
    }
    assert not unexpected, f"{source} imports rooms the map does not allow: {unexpected}"


def test_the_arrows_go_one_way() -> None:
    """The allowed map has no cycle, so neither has the code."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", f"cycle: {' -> '.join([*path, node])}"
        state[node] = "open"
        for target in ALLOWED.get(node, set()) - {"birdops"}:
            visit(target, [*path, node])
        state[node] = "done"

    for node in ALLOWED:
        visit(node, [])


def test_only_prepare_reads_the_prepare_module() -> None:
    """The manifest is read through ``birdops.contracts``: ``birdops.data.prepare`` is the prepare
    stage's code (and the bench's, which runs that stage on its corpus)."""
    importers = sorted(
        str(path.relative_to(ROOT))
        for path in [*BIRDOPS.rglob("*.py"), *(ROOT / "pipeline").rglob("*.py")]
        if "birdops.data.prepare" in project_imports(path)
    )
    assert importers == ["birdops/bench/inputs.py", "pipeline/prepare.py"]
