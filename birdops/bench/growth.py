"""``birdops bench --sections growth``: how each stage's cost and memory grow with the corpus.

For each factor of ``--scales`` (1, 4, 16) a corpus is generated with ``data.synthetic`` scaled --
``factor`` times the recordings and recordists; above 1x the report's lengths (3 to 60 s,
log-uniform: 19 s on average, against 12 s for the embedded default) -- into a folder of its own
with its own ``params.yaml``, and the stages run on it as processes of their own:

- ``corpus``, ``background`` (``data.background_synthetic.recordings`` scaled alike), ``prepare``,
  ``lms_cache``, ``soundscapes`` (a fixed count: they do not grow with the corpus): the DVC stages
  themselves (``python -m pipeline.*``);
- ``train``: :mod:`birdops.bench.train_run` -- the training stage's reading and fingerprinting of
  the whole cache, then ``--growth-steps`` steps of the ``full`` variant's trainer and one
  validation pass over the whole validation split (time-boxed: an epoch at 16x is an hour on 2
  cores);
- ``evaluate``: the ``evaluate`` stage for a seeded ``phase2b`` model (every cached test and
  validation clip, every test recording decoded and windowed, calibration and the detection metrics
  on the background clips and soundscapes);
- ``export``: the ``export_onnx`` stage on that model (its parity gate reads the cache);
- ``predict``: ``birdops predict`` on every test recording.

Each process's CPU seconds (its own and its workers', from ``wait4``) and peak RSS (the largest of
its own ``VmHWM`` and its workers' ``ru_maxrss``, written by the process as it exits) are recorded,
with the wall seconds. CPU time per unit -- recording, training sample, test recording -- is the
figure to compare across scales: on a shared machine wall time also counts the waits for a core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from birdops.bench.common import BenchError, Section, Table, fmt, stage_env
from birdops.bench.inputs import saved_model
from birdops.config import load_params
from birdops.contracts import BEST_METRICS, EVAL_DIR, METRICS_DIR, labels_path, read_labels, read_manifest
from birdops.files import write_json_atomic

REPORT_MAX_RECORDING_SECONDS = 60.0  # the report's corpus: 3 to 60 s recordings (README, "Real recordings")
TRAIN_VARIANT = "full"  # the heaviest step: AST, SpecAugment, MixUp
EVALUATE_VARIANT = "phase2b"  # the exported variant of the default DAG
TAIL_CHARS = 2000

# `python -c WRAPPER PEAK_FILE MODULE ARGS...`: runs `python -m MODULE ARGS...`, then writes its own
# peak RSS and its reaped workers' (KiB). The parent's ru_maxrss cannot tell the child's peak: Linux
# carries into a child the peak of the memory its parent had when it was spawned.
WRAPPER = """
import json, re, resource, runpy, sys
peak_file, module = sys.argv[1], sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
code = 0
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as stop:
    code = stop.code
finally:
    status = open("/proc/self/status").read()
    peaks = {
        "self_kib": int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)),
        "workers_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }
    open(peak_file, "w").write(json.dumps(peaks))
sys.exit(code)
"""


@dataclass(frozen=True)
class StageRun:
    """How one stage process went."""

    wall_s: float
    cpu_s: float  # user + system, the process's and its reaped workers'
    peak_rss_mib: float  # the largest process's peak
    stdout: str


def run_measured(cwd: Path, module: str, args: list[str], name: str) -> StageRun:
    """Run ``python -m module args`` in ``cwd`` (this checkout's ``pipeline`` first on the path)."""
    peak_file, out_file, log_file = (cwd / f"{name}.{ext}" for ext in ("peak", "out", "log"))
    command = [sys.executable, "-c", WRAPPER, str(peak_file), module, *args]
    with out_file.open("w") as out, log_file.open("w") as log:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=stage_env(), stdout=out, stderr=log)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise BenchError(f"{name} exited with {process.returncode}: {log_file.read_text()[-TAIL_CHARS:]}")
    peaks = json.loads(peak_file.read_text())
    return StageRun(
        wall_s=wall,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mib=max(peaks["self_kib"], peaks["workers_kib"]) / 1024,
        stdout=out_file.read_text(),
    )


def write_scaled_params(params_path: Path, factor: int, folder: Path) -> dict[str, Any]:
    """``folder/params.yaml``: ``params_path`` with ``data.synthetic`` scaled ``factor`` times (the
    report's recording lengths above 1x); returns the scaled ``data.synthetic``."""
    tree = yaml.safe_load(params_path.read_text())
    synthetic = tree["data"]["synthetic"]
    synthetic["recordings"] *= factor
    synthetic["recordists"] *= factor
    tree["data"]["background_synthetic"]["recordings"] *= factor
    if factor > 1:
        synthetic["max_recording_seconds"] = REPORT_MAX_RECORDING_SECONDS
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(tree, sort_keys=False))
    load_params(folder / "params.yaml")  # the scaled file is a valid one
    return dict(synthetic)


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def scale_figures(params_path: Path, factor: int, folder: Path, steps: int) -> dict[str, Any]:
    """:func:`measure_scale`'s figures, kept in ``folder/growth.json``: a run given the same
    ``--work-dir`` again reuses the scales it finished (16x alone takes most of an hour)."""
    record = folder / "growth.json"
    if record.is_file():
        kept: dict[str, Any] = json.loads(record.read_text())
        if kept.get("train_steps") == steps and kept.get("params") == params_path.read_text():
            return dict(kept["figures"])
    figures = measure_scale(params_path, factor, folder, steps)
    write_json_atomic(record, {"train_steps": steps, "params": params_path.read_text(), "figures": figures})
    return figures


def measure_scale(params_path: Path, factor: int, folder: Path, steps: int) -> dict[str, Any]:
    """Every stage on the corpus ``factor`` times the default; the figures of each."""
    synthetic = write_scaled_params(params_path, factor, folder)
    runs: dict[str, StageRun] = {}
    runs["corpus"] = run_measured(folder, "pipeline.corpus", ["--out", "raw"], "corpus")
    runs["background"] = run_measured(folder, "pipeline.background", ["--out", "background"], "background")
    sources = ["--raw", "raw", "--background", "background"]
    runs["prepare"] = run_measured(
        folder, "pipeline.prepare", [*sources, "--out", "prepared", "--summary", "data.json"], "prepare"
    )
    runs["lms_cache"] = run_measured(
        folder,
        "pipeline.lms_cache",
        [*sources, "--prepared", "prepared", "--out", "lms", "--summary", "cache.json"],
        "lms_cache",
    )
    runs["soundscapes"] = run_measured(
        folder,
        "pipeline.soundscapes",
        [*sources, "--prepared", "prepared", "--out", "soundscapes"],
        "soundscapes",
    )
    data_paths = ["--raw", "raw", "--prepared", "prepared", "--lms", "lms"]
    runs["train"] = run_measured(
        folder,
        "birdops.bench.train_run",
        ["--variant", TRAIN_VARIANT, "--prepared", "prepared", "--lms", "lms", "--steps", str(steps)],
        "train",
    )
    labels = read_labels(labels_path(folder / "prepared"))
    model_dir = saved_model(load_params(folder / "params.yaml"), EVALUATE_VARIANT, labels, folder / "models")
    runs["evaluate"] = run_measured(
        folder,
        "pipeline.evaluate",
        [
            "--models",
            str(model_dir),
            *data_paths,
            "--background",
            "background",
            "--soundscapes",
            "soundscapes",
            "--out",
            METRICS_DIR,
        ],
        "evaluate",
    )
    runs["export"] = run_measured(
        folder,
        "pipeline.export_onnx",
        [
            "--best",
            BEST_METRICS,
            "--eval",
            f"{METRICS_DIR}/{EVAL_DIR}",
            "--models",
            "models",
            *data_paths,
            "--out",
            "export",
            "--summary",
            "onnx.json",
        ],
        "export",
    )
    manifest = read_manifest(folder / "prepared" / "manifest.csv")
    background = read_manifest(folder / "prepared" / "background.csv")
    test = [row for row in manifest if row.split == "test"]
    runs["predict"] = run_measured(
        folder,
        "birdops.cli",
        [
            "predict",
            *[str(row.audio_path(folder / "raw")) for row in test],
            "--model",
            "export/model.onnx",
            "--output",
            "predict.csv",
            "--threads",
            str(os.cpu_count() or 1),
            "--device",
            "cpu",
        ],
        "predict",
    )
    train = json.loads(runs["train"].stdout.strip().splitlines()[-1])
    evaluation = json.loads((folder / METRICS_DIR / EVAL_DIR / EVALUATE_VARIANT / "details.json").read_text())
    units = {
        "corpus": synthetic["recordings"],
        "background": len(background),
        "prepare": synthetic["recordings"],
        "lms_cache": len(manifest) + len(background),
        "soundscapes": 1,
        "train": train["samples"],
        "evaluate": evaluation["n_test_recordings"],
        "export": 1,
        "predict": len(test),
    }
    stages = {
        name: {
            "wall_s": run.wall_s,
            "cpu_s": run.cpu_s,
            "peak_rss_mib": run.peak_rss_mib,
            "units": units[name],
            "cpu_ms_per_unit": 1000 * run.cpu_s / max(units[name], 1),
        }
        for name, run in runs.items()
    }
    # the parts of a training run: per sample of the steps, per clip read and validated
    stages["train"]["steps_cpu_ms_per_sample"] = 1000 * train["train_cpu_s"] / max(train["samples"], 1)
    clips = train["train_clips"] + train["val_clips"]
    stages["train"]["load_cpu_ms_per_clip"] = 1000 * train["load_cpu_s"] / max(clips, 1)
    stages["train"]["val_cpu_ms_per_clip"] = 1000 * train["val_cpu_s"] / max(train["val_clips"], 1)
    return {
        "factor": factor,
        "recordings": synthetic["recordings"],
        "accepted": len(manifest),
        "background_recordings": len(background),
        "audio_hours": sum(row.length_s for row in manifest) / 3600,
        "max_recording_seconds": synthetic["max_recording_seconds"],
        "raw_mib": folder_mib(folder / "raw"),
        "lms_mib": folder_mib(folder / "lms"),
        "train_run": train,
        "evaluate_counts": {k: evaluation[k] for k in ("n_test_recordings", "n_test_clips", "n_val_clips")},
        "stages": stages,
    }


UNITS = {
    "corpus": "recording",
    "background": "recording",
    "prepare": "recording",
    "lms_cache": "recording",  # species and background
    "soundscapes": "run",
    "train": "sample",  # the whole run, reading the cache included, per training sample
    "evaluate": "test recording",
    "export": "run",
    "predict": "test recording",
}


def growth_section(params_path: Path, scales: list[int], work_dir: Path, steps: int) -> Section:
    """Every stage at each scale (see the module docstring); the tables of CPU per unit, wall
    seconds and peak RSS."""
    results = [scale_figures(params_path, factor, work_dir / f"x{factor}", steps) for factor in scales]
    heads = tuple(f"{r['factor']}x" for r in results)
    sizes = ", ".join(
        f"{r['factor']}x: {r['accepted']} recordings, {r['audio_hours']:.1f} h, {r['lms_mib']:.0f} MiB cached"
        for r in results
    )
    cpu = Table(f"growth, CPU ms per unit ({sizes})", ("stage", "unit", *heads))
    wall = Table(
        "growth, wall seconds (a shared machine: CPU time is the figure to compare)", ("stage", *heads)
    )
    peak = Table("growth, peak RSS MiB (the largest process)", ("stage", *heads))
    for name, unit in UNITS.items():
        cpu.rows.append((name, unit, *(fmt(r["stages"][name]["cpu_ms_per_unit"]) for r in results)))
        wall.rows.append((name, *(fmt(r["stages"][name]["wall_s"]) for r in results)))
        peak.rows.append((name, *(fmt(r["stages"][name]["peak_rss_mib"], 0) for r in results)))
    for key, label, unit in (
        ("steps_cpu_ms_per_sample", "train: the steps", "sample"),
        ("load_cpu_ms_per_clip", "train: read + fingerprint", "clip"),
        ("val_cpu_ms_per_clip", "train: validation", "val clip"),
    ):
        cpu.rows.append((label, unit, *(fmt(r["stages"]["train"][key]) for r in results)))
    return Section({"scales": results, "train_steps": steps}, (cpu, wall, peak))
