"""The code's shape, read from the source: which rooms import which, the largest files and functions,
and the project files the most DVC stages list as deps (editing one re-runs them all).

``python tests/code_map.py [ROOT]`` prints it for a checkout (default: this one), so two revisions can be
compared side by side (``git worktree add /tmp/before <rev>; python tests/code_map.py /tmp/before``).
``tests/test_architecture.py`` holds the room map to the arrows read here.
"""

from __future__ import annotations

import ast
import statistics
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parents[1]
TOP = 10


def sources(root: Path) -> list[Path]:
    """Every Python file of the package and the stages."""
    return sorted([*(root / "birdops").rglob("*.py"), *(root / "pipeline").rglob("*.py")])


def module_name(root: Path, path: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def room(module: str) -> str:
    """``pipeline``, ``birdops`` (the package's own ``__init__``) or the subpackage / top-level module."""
    parts = module.split(".")
    if parts[0] == "pipeline":
        return "pipeline"
    if len(parts) == 1 or parts[1] == "__version__":
        return "birdops"
    return parts[1]


def project_imports(path: Path) -> set[str]:
    """The ``birdops``/``pipeline`` modules ``path`` imports (``from birdops import x`` is ``birdops.x``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module == "birdops":
                found.update(f"birdops.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
    return {name for name in found if name.split(".")[0] in ("birdops", "pipeline")}


def room_graph(root: Path) -> dict[str, dict[str, set[str]]]:
    """room -> imported room -> the modules of the room that import it."""
    edges: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in sources(root):
        module = module_name(root, path)
        for name in project_imports(path):
            if room(name) != room(module):
                edges[room(module)][room(name)].add(module)
    return edges


@dataclass(frozen=True)
class Function:
    where: str  # path:line
    name: str
    lines: int


def functions(root: Path) -> list[Function]:
    """Every function and method, with its length in lines (decorators and docstring included)."""
    found = []
    for path in sources(root):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                where = f"{path.relative_to(root)}:{node.lineno}"
                found.append(Function(where, node.name, node.end_lineno - first + 1))
    return found


def stages(root: Path) -> dict[str, dict[str, object]]:
    stages: dict[str, dict[str, object]] = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return stages


def stage_deps(root: Path) -> Counter[str]:
    """Project file -> how many stages of ``dvc.yaml`` list it as a dep."""
    return Counter(
        dep
        for stage in stages(root).values()
        for dep in stage.get("deps", [])  # type: ignore[attr-defined]
        if str(dep).startswith(("birdops/", "pipeline/"))
    )


def report(root: Path) -> str:
    lines = [f"# code map of {root}", "", "## rooms: room -> the rooms it imports (modules importing them)"]
    for source, targets in sorted(room_graph(root).items()):
        arrows = ", ".join(f"{t} ({len(m)})" for t, m in sorted(targets.items()))
        lines.append(f"{source:<12} -> {arrows}")
    sizes = sorted(
        ((len(p.read_text().splitlines()), p.relative_to(root)) for p in sources(root)), reverse=True
    )
    lines += ["", f"## files: {len(sizes)}, {sum(n for n, _ in sizes)} lines; the {TOP} largest"]
    lines += [f"{n:>5}  {p}" for n, p in sizes[:TOP]]
    funcs = sorted(functions(root), key=lambda f: -f.lines)
    median = statistics.median(f.lines for f in funcs)
    lines += ["", f"## functions: {len(funcs)}, median {median:g} lines; the {TOP} longest"]
    lines += [f"{f.lines:>5}  {f.name}  ({f.where})" for f in funcs[:TOP]]
    deps = stage_deps(root).most_common()
    lines += ["", f"## stage deps: the files the most of the {len(stages(root))} stages list"]
    lines += [f"{n:>5}  {path}" for path, n in deps if not path.endswith("__init__.py")][:TOP]
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else HERE))
