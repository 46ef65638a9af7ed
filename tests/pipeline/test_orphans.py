"""A stage that is killed takes its worker processes with it (``birdops.procs``).

The real ``python -m pipeline.lms_cache`` runs with two pool workers on a prepared corpus, gets
SIGKILL in the middle of its run, and then: no process it started is left, nothing is written any
more, and a re-run completes a cache identical to an uninterrupted run's.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import soundfile as sf
import yaml
from worlds import MANIFEST_COLUMNS, calls_wave

from birdops.procs import die_with_parent, process_alive

REPO = Path(__file__).resolve().parents[2]
RECORDINGS = 48
STAGE_TIMEOUT_S = 240.0


def prepared_world(root: Path) -> None:
    """``root/raw`` (WAV recordings with calls), ``root/background`` (noise), ``root/prepared``'s
    ``manifest.csv`` and ``background.csv``, and a ``params.yaml``
    whose ``lms_cache`` section uses two workers."""
    audio = root / "raw" / "audio"
    audio.mkdir(parents=True)
    (root / "prepared").mkdir()
    rows = []
    for i in range(RECORDINGS):
        rate_hz = (22050, 32000, 16000)[i % 3]
        wave = calls_wave(12.0, rate_hz, [1.0 + (i % 7), 9.0 - (i % 5)], seed=i)
        sf.write(audio / f"r{i:03d}.wav", wave, rate_hz)
        split = ("train", "train", "val", "test")[i % 4]
        rows.append(
            [
                str(100 + i),
                f"audio/r{i:03d}.wav",
                f"Genus species{i % 3}",
                i % 3,
                split,
                f"recordist {i}",
                "A",
                12.0,
            ]
        )
    with open(root / "prepared" / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    background_rows = []  # site noise, a site per split: clips and noisy copies of the train clips
    (root / "background" / "audio").mkdir(parents=True)
    for i, split in enumerate(("train", "train", "val", "test")):
        noise = 0.05 * np.random.default_rng(1000 + i).standard_normal(16000 * 10).astype(np.float32)
        sf.write(root / "background" / "audio" / f"b{i}.wav", noise, 16000)
        background_rows.append([f"BG{i}", f"audio/b{i}.wav", "", -1, split, f"site-{i}", "", 10.0])
    with open(root / "prepared" / "background.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(background_rows)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["lms_cache"].update(presets=["seed", "mfcc"], workers=2, shard_max_clips=16)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def start_stage(root: Path, out: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIRDOPS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    command = [
        sys.executable,
        "-m",
        "pipeline.lms_cache",
        "--raw",
        "raw",
        "--background",
        "background",
        "--prepared",
        "prepared",
        "--out",
        out,
        "--summary",
        f"{out}.json",
    ]
    return subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(process: subprocess.Popen[bytes]) -> None:
    _, err = process.communicate(timeout=STAGE_TIMEOUT_S)
    assert process.returncode == 0, err.decode(errors="replace")[-4000:]


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def still_running(processes: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def work_files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def assert_identical(a: Path, b: Path) -> None:
    files = sorted(str(p.relative_to(a)) for p in a.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(b)) for p in b.rglob("*") if p.is_file())
    for name in files:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.slow
def test_a_killed_stage_leaves_no_worker_and_resumes_to_the_same_cache(tmp_path: Path) -> None:
    prepared_world(tmp_path)
    started = time.monotonic()
    finish(start_stage(tmp_path, "reference"))  # uninterrupted
    reference_s = time.monotonic() - started

    stage = start_stage(tmp_path, "lms")
    work = tmp_path / "lms" / ".work" / "seed"
    workers: list[psutil.Process] = []
    deadline = time.monotonic() + STAGE_TIMEOUT_S
    while time.monotonic() < deadline:  # mid-run: the first partials are written, the pool is up
        workers = [p for p in descendants(stage.pid) if p not in workers] + workers
        if work.is_dir() and len(list(work.glob("*.npz"))) >= 4:
            break
        assert stage.poll() is None, "the stage ended before it could be killed"
        time.sleep(0.02)
    workers += [p for p in descendants(stage.pid) if p not in workers]
    done_before_kill = len(list(work.glob("*.npz")))
    assert done_before_kill < RECORDINGS, "the run had finished: nothing was interrupted"
    assert len(workers) >= 2, [p.pid for p in workers]  # the pool workers (and the fork server)

    os.kill(stage.pid, signal.SIGKILL)
    stage.wait(timeout=10)
    gone_deadline = time.monotonic() + 10.0
    while still_running(workers) and time.monotonic() < gone_deadline:
        time.sleep(0.05)
    left = still_running(workers)
    assert not left, [(p.pid, p.cmdline()) for p in left]
    snapshot = work_files(tmp_path / "lms")
    time.sleep(1.0)
    assert work_files(tmp_path / "lms") == snapshot  # nobody is writing any more

    finish(start_stage(tmp_path, "lms"))  # resumes
    assert_identical(tmp_path / "reference", tmp_path / "lms")
    print(
        f"\nreference run {reference_s:.1f} s; killed after {done_before_kill}/{RECORDINGS} "
        f"partials with {len(workers)} child processes; none left"
    )
    shutil.rmtree(tmp_path / "raw")


def _orphan_child(queue_path: str) -> None:  # pragma: no cover - runs in the grandchild
    die_with_parent()
    Path(queue_path).write_text(str(os.getpid()))
    time.sleep(60)


@pytest.mark.slow
def test_die_with_parent_ends_a_child_whose_parent_is_killed(tmp_path: Path) -> None:
    """Unit level: a parent process starts a child that calls die_with_parent, then is SIGKILLed."""
    pid_file = tmp_path / "child.pid"
    code = (
        "import multiprocessing as mp, sys, time\n"
        "sys.path[:0] = sys.argv[2:]\n"
        "from test_orphans import _orphan_child\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=_orphan_child, args=(sys.argv[1],))\n"
        "    p.start(); time.sleep(60)\n"
    )
    parent = subprocess.Popen(
        [
            sys.executable,
            "-c",
            code,
            str(pid_file),
            str(Path(__file__).parent),
            str(Path(__file__).parents[1]),
        ]
    )
    try:
        deadline = time.monotonic() + 60
        while not pid_file.is_file() or not pid_file.read_text():
            assert time.monotonic() < deadline and parent.poll() is None
            time.sleep(0.05)
        child = int(pid_file.read_text())
        assert process_alive(child)
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 5
    while process_alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child)
