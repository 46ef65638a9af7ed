"""What every section of ``birdops bench`` shares: its result and tables, its errors, the formats of
its cells, and running a stage or command as a timed subprocess.

Every comparison is measured side by side in the same run, in interleaved rounds
(:mod:`birdops.bench.timing`), and reported as the median of the rounds with the ratio between the
sides.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TAIL_CHARS = 2000  # of a failed subprocess's stderr, in the error


class BenchError(RuntimeError):
    """A benchmark failed (a stage or command exited with an error, an input is missing)."""


class Unavailable(BenchError):
    """A benchmark needs what this machine lacks (a GPU, onnxruntime's CUDA provider)."""


@dataclass(frozen=True)
class Table:
    """What a section prints: a title, column names and rows of formatted cells."""

    title: str
    columns: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)

    def render(self) -> str:
        if not self.rows:  # a skipped or failed section: its title says why
            return self.title
        cells = [self.columns, *self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.title]
        for n, row in enumerate(cells):
            padded = [
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ]
            lines.append("  ".join(padded))
            if n == 0:
                lines.append("  ".join("-" * w for w in widths))
        return "\n".join(lines)


@dataclass(frozen=True)
class Section:
    """A section's figures (its part of the JSON) and the tables it prints."""

    result: dict[str, Any]
    tables: tuple[Table, ...]


def fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def ratio(value: float) -> str:
    return f"{value:.2f}x"


def skipped(reason: str) -> Section:
    return Section({"skipped": reason}, (Table(f"skipped: {reason}", ()),))


def failed(reason: str) -> Section:
    return Section({"failed": reason}, (Table(f"failed: {reason}", ()),))


def run_section(measure: Callable[[], Section]) -> Section:
    """``measure()``, or a skipped section naming the reason when this machine cannot run it."""
    try:
        return measure()
    except Unavailable as err:
        return skipped(str(err))


def stage_env() -> dict[str, str]:
    """The environment for ``python -m pipeline.lms_cache``: this one, with the folder holding the
    ``pipeline`` package first on ``PYTHONPATH`` (the stage's process then runs this checkout)."""
    spec = importlib.util.find_spec("pipeline")
    if spec is None or spec.origin is None:
        raise BenchError("the pipeline package (the DVC stages) is not importable; run from the repository")
    root = str(Path(spec.origin).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


@dataclass(frozen=True)
class Timed:
    """A command's wall seconds, CPU seconds (its own and its reaped workers', from ``wait4``) and
    standard output."""

    wall_s: float
    cpu_s: float
    stdout: str


def run_timed(command: list[str], cwd: Path, what: str) -> Timed:
    """Run ``command`` in ``cwd`` with :func:`stage_env`; :class:`BenchError` when it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=stage_env(), stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        code = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        if code:
            raise BenchError(f"{what} exited with {code}: {err.read()[-TAIL_CHARS:]}")
        return Timed(wall, usage.ru_utime + usage.ru_stime, out.read())
