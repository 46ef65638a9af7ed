"""What the README and docs/ quote exists: every file path and every ``birdops.*`` name in backticks,
and every stage of ``dvc.yaml`` in the README's drawing and table of the DAG. Where one fails, the
code moved and the page did not (or the page names something that never was)."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest
import yaml

from birdops import contracts

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md"])
QUOTED = re.compile(r"`([^`\n]+)`")
# a path of the repository: one of its top-level folders, then a name with no placeholder in it
PATH = re.compile(r"^(?:birdops|pipeline|tests|docs|benchmarks|\.ci|\.github)/[\w./-]*$")
NAME = re.compile(r"^birdops(?:\.\w+)+$")


def quoted(page: Path) -> list[str]:
    """Every backticked token of ``page``, a call's arguments cut off (``f(x)`` is ``f``)."""
    tokens = []
    for text in QUOTED.findall(page.read_text()):
        for token in text.split():
            tokens.append(token.split("(")[0].rstrip(".,:;"))
    return tokens


def quotes(pattern: re.Pattern[str]) -> list[tuple[str, str]]:
    return sorted(
        {(str(page.relative_to(ROOT)), t) for page in PAGES for t in quoted(page) if pattern.match(t)}
    )


@cache
def top_level_names(path: Path) -> frozenset[str]:
    """The names a module defines at its top level and in its classes (``Class.method`` as well)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            if isinstance(node, ast.ClassDef):
                names.update(
                    f"{node.name}.{item.name}"
                    for item in node.body
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef))
                )
                names.update(
                    f"{node.name}.{item.target.id}"
                    for item in node.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                )
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return frozenset(names)


def metadata_keys() -> set[str]:
    """The exported model's metadata keys (``birdops.labels``, ...): quoted as names of their own."""
    keys = vars(contracts).items()
    return {value for key, value in keys if key.endswith("_KEY") and isinstance(value, str)}


def resolves(name: str) -> bool:
    """``birdops.a.b.c``: a metadata key, or the longest prefix that is a module and the rest a name
    it defines."""
    if name in metadata_keys():
        return True
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if module.is_file():
            rest = ".".join(parts[cut:])
            return not rest or rest in top_level_names(module)
    return False


@pytest.mark.parametrize(("page", "path"), quotes(PATH))
def test_a_quoted_path_exists(page: str, path: str) -> None:
    assert (ROOT / path).exists(), f"{page} quotes `{path}`, which does not exist"


@pytest.mark.parametrize(("page", "name"), quotes(NAME))
def test_a_quoted_name_exists(page: str, name: str) -> None:
    assert resolves(name), f"{page} quotes `{name}`, which no module defines"


def the_pipeline_section() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme.split("\n## The pipeline\n", 1)[1].split("\n## ", 1)[0]


@pytest.mark.parametrize("stage", sorted(yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]))
def test_the_readme_draws_and_describes_every_stage(stage: str) -> None:
    section = the_pipeline_section()
    drawing = section.split("```", 2)[1]
    assert re.search(rf"(?<![\w-]){stage}(?![\w-])", drawing), f"the README's DAG drawing lacks `{stage}`"
    assert f"| `{stage}` |" in section, f"the README's stage table lacks `{stage}`"
