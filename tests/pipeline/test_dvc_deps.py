"""DVC sees every input: each stage's ``deps`` cover every project file its module imports.

DVC re-runs a stage only when one of its deps changed, so a project file a stage imports but does not
name leaves stale outputs behind that ``dvc status`` reports as up to date. The import closure is
computed statically from the source (``import`` and ``from ... import`` anywhere in a module,
relative imports resolved, every package ``__init__`` on the way down).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("birdops", "pipeline")


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports (``from a import b`` gives ``a`` and ``a.b``)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    if path.name == "__init__.py":
        package = ".".join(path.relative_to(ROOT).parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def only_docstring(path: Path) -> bool:
    """A module that holds nothing but its docstring cannot change what a stage computes."""
    body = ast.parse(path.read_text()).body
    return all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def import_closure(module: str) -> set[Path]:
    """The project files that importing ``module`` runs (docstring-only ``__init__`` files left out)."""
    seen: set[Path] = set()
    todo = [module]
    while todo:
        parts = todo.pop().split(".")
        if parts[0] not in PACKAGES:
            continue
        for i in range(1, len(parts) + 1):  # a package import runs each __init__ on the way down
            path = module_file(".".join(parts[:i]))
            if path is not None and path not in seen:
                seen.add(path)
                todo.extend(imported_names(path))
    return {path for path in seen if not only_docstring(path)}


def stages() -> dict[str, dict[str, object]]:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def covered(path: Path, deps: list[str]) -> bool:
    relative = path.relative_to(ROOT)
    return any(relative == Path(dep) or Path(dep) in relative.parents for dep in deps)


def stage_module(stage: dict[str, object]) -> str:
    match = re.search(r"python -m (\S+)", str(stage["cmd"]))
    assert match, f"stage command does not run a module: {stage['cmd']}"
    return match.group(1)


@pytest.mark.parametrize("name", sorted(stages()))
def test_stage_deps_cover_the_code_it_imports(name: str) -> None:
    stage = stages()[name]
    deps = [next(iter(d)) if isinstance(d, dict) else str(d) for d in stage.get("deps", [])]  # type: ignore[attr-defined]
    closure = import_closure(stage_module(stage))
    assert closure, f"{name}: found no project code for {stage_module(stage)}"
    missing = sorted(str(p.relative_to(ROOT)) for p in closure if not covered(p, deps))
    assert not missing, f"stage {name!r} imports files its deps do not name: {', '.join(missing)}"


def test_the_closure_follows_relative_and_package_imports(tmp_path: Path) -> None:
    """A sanity check of the checker itself on the real tree: the export stage reaches the front end
    (through the models package) and every stage reaches the params module."""
    closure = {str(p.relative_to(ROOT)) for p in import_closure("pipeline.export_onnx")}
    assert {"birdops/__init__.py", "birdops/config.py", "birdops/features/frontend.py"} <= closure
    assert "birdops/serve/app.py" not in closure  # what the stage does not import is not a dep
