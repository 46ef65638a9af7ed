"""The Docker images install what their jobs import: the ``train`` target can run every DVC stage
(onnxruntime included) and the ``serve`` target serves without torch; both from ``requirements.lock``.

Read statically: the Dockerfile's ``pip install`` lines name extras of ``pyproject.toml``; the
distributions those extras pull in (transitively, from the installed metadata) must provide every
third-party module that the code of each stage imports.
"""

from __future__ import annotations

import ast
import functools
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from test_dvc_deps import import_closure, stage_module, stages

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]["name"]


def targets() -> dict[str, str]:
    """Dockerfile target name -> the text of its stage."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\S+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def installed_extras(target: str) -> set[str]:
    """The extras of the project that ``pip install`` lines of ``target`` name (``".[a,b]"``)."""
    lines = [line for line in targets()[target].splitlines() if "pip install" in line]
    assert lines, f"target {target} installs nothing"
    assert all("-c " in line and "requirements.lock" in line for line in lines), (
        f"target {target}: every pip install must be constrained by requirements.lock: {lines}"
    )
    extras = {
        e.strip()
        for line in lines
        for group in re.findall(r"\[([\w,\s-]+)\]", line)
        for e in group.split(",")
    }
    return extras


@functools.cache
def _distributions(extras: frozenset[str]) -> frozenset[str]:
    return frozenset(_walk(extras))


def distributions(extras: set[str]) -> set[str]:
    return set(_distributions(frozenset(extras)))


def _walk(extras: frozenset[str]) -> set[str]:
    """Canonical names of every distribution installing the project with ``extras`` pulls in."""
    todo = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    optional = PYPROJECT["project"]["optional-dependencies"]
    for extra in extras:
        todo += [Requirement(r) for r in optional[extra]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = req.name.lower().replace("_", "-")
        if name == PROJECT:
            todo += [Requirement(r) for extra in req.extras for r in optional[extra]]
            continue
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(req.name) or []
        except metadata.PackageNotFoundError:
            continue
        for text in requires:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (req.extras or {""})):
                todo.append(sub)
    return seen


def third_party_imports(files: set[Path]) -> set[str]:
    names: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names.add(node.module.split(".")[0])
    return {
        n
        for n in names
        if n not in sys.stdlib_module_names and n not in ("birdops", "pipeline", "__future__")
    }


@functools.cache
def module_providers() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def providers(module: str) -> set[str]:
    return {d.lower().replace("_", "-") for d in module_providers().get(module, [])}


@pytest.mark.parametrize("name", sorted(stages()))
def test_the_train_image_has_every_package_a_stage_imports(name: str) -> None:
    have = distributions(installed_extras("train"))
    files = import_closure(stage_module(stages()[name]))
    missing = {m: sorted(providers(m)) for m in sorted(third_party_imports(files)) if not providers(m) & have}
    assert not missing, f"stage {name}: the train image lacks the packages of {missing}"


def test_the_serve_image_serves_without_torch() -> None:
    extras = installed_extras("serve")
    have = distributions(extras)
    assert "onnxruntime-gpu" in have and "torch" not in have, extras
    serving = import_closure("birdops.serve.app") | import_closure("birdops.serve.predict")
    missing = {m for m in third_party_imports(serving) if not providers(m) & have}
    assert not missing, f"the serve image lacks {missing}"


def test_the_checker_sees_a_missing_package() -> None:
    """Without the `train` extra, the export stage's torch and onnx are missing."""
    have = distributions(set())
    files = import_closure(stage_module(stages()["export_onnx"]))
    assert {m for m in third_party_imports(files) if not providers(m) & have} >= {"torch", "onnx"}
