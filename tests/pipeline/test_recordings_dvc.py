"""A user's recordings are never a stage output: real DVC in a temporary repository, as the README runs it.

The recordings live in ``recordings/`` (``birdops fetch --out recordings``, or brought in its layout),
tracked with ``dvc add recordings``; the DAG reads them when ``data.raw`` names them. After every DVC
command the README documents, every recording is still there, byte for byte.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_dvc_e2e import dvc, git, init_project, tiny_params
from xenocanto import KEY, FakeXenoCanto, audio_file

from birdops.config import SyntheticParams
from birdops.data.metadata import read_metadata
from birdops.data.synthetic import generate_corpus

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

RECORDINGS = "recordings"
ON_RECORDINGS = ("-S", f"data.raw={RECORDINGS}")


DATA_STAGES = ("corpus", "background", "prepare")  # the stages that read or write raw folders, in seconds


def make_repo(path: Path) -> Path:
    """The project's real data stages, as dvc.yaml defines them, with its params.yaml shrunk to a tiny
    corpus, in a new repository. The later stages are left out so that ``dvc checkout`` and
    ``dvc exp apply`` find every output of the pipeline in the cache (nothing here trains)."""
    for name in ("birdops", "pipeline"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert "${data.raw}" in stages["prepare"]["deps"]
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {name: stages[name] for name in DATA_STAGES}}))
    init_project(path)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "project")
    return path


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path, with its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def track(repo: Path, message: str) -> None:
    """What the README says to do with recordings: ``dvc add`` them and commit the pointer."""
    dvc(repo, "add", RECORDINGS)
    git(repo, "add", f"{RECORDINGS}.dvc", ".gitignore")
    git(repo, "commit", "-q", "-m", message)


def prepared_ids(repo: Path) -> set[str]:
    lines = (repo / "data/prepared/manifest.csv").read_text().splitlines()
    return {line.split(",")[0] for line in lines[1:]}


def recording_ids(folder: Path) -> set[str]:
    return {row["id"] for row in read_metadata(folder / "metadata.csv")}


def wait_for_queue(repo: Path, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = dvc(repo, "queue", "status")
        if not any(word in status for word in ("Queued", "Running")):
            assert "Failed" not in status, status
            return
        time.sleep(2)
    raise AssertionError(f"the queue did not finish in {timeout_s} s:\n{dvc(repo, 'queue', 'status')}")


def test_user_recordings_survive_every_documented_dvc_command(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    user = tiny_params()["data"]["synthetic"] | {"corrupt_files": 0}
    generate_corpus(SyntheticParams(**user), 99, repo / RECORDINGS)  # stands in for real recordings
    before = snapshot(repo / RECORDINGS)
    embedded = SyntheticParams(**tiny_params()["data"]["synthetic"])
    generate_corpus(embedded, tiny_params()["data"]["seed"], tmp_path / "embedded")
    assert not recording_ids(tmp_path / "embedded") & recording_ids(repo / RECORDINGS)  # told apart by id
    assert "metadata.csv" in before and len(before) > 20
    track(repo, "recordings")

    def still_there(after: str) -> None:
        assert snapshot(repo / RECORDINGS) == before, f"the recordings changed after {after}"

    dvc(repo, "exp", "run", *ON_RECORDINGS)
    still_there("dvc exp run -S")
    assert prepared_ids(repo) <= recording_ids(repo / RECORDINGS)

    dvc(repo, "exp", "run", "--queue", "-n", "queued", *ON_RECORDINGS, "-S", "prepare.seed=14")
    dvc(repo, "queue", "start")
    wait_for_queue(repo)
    still_there("dvc exp run --queue + dvc queue start")

    dvc(repo, "exp", "apply", "queued")
    still_there("dvc exp apply")
    assert yaml.safe_load((repo / "params.yaml").read_text())["data"]["raw"] == RECORDINGS

    dvc(repo, "checkout")
    still_there("dvc checkout")
    dvc(repo, "repro")
    still_there("dvc repro")
    assert prepared_ids(repo) <= recording_ids(repo / RECORDINGS)

    # Back to the embedded corpus: its own folder, holding it alone; the recordings stay as they are.
    dvc(repo, "exp", "run", "-S", "data.raw=data/synthetic")
    still_there("switching back to data/synthetic")
    synthetic = repo / "data/synthetic"
    assert set(snapshot(synthetic)) == {"metadata.csv"} | {
        row["local_path"] for row in read_metadata(synthetic / "metadata.csv")
    }
    assert prepared_ids(repo) <= recording_ids(synthetic)
    dvc(repo, "checkout")
    still_there("dvc checkout on the embedded corpus")


SPECIES = ["Turdus merula", "Parus major", "Turdus philomelos"]
STALL = "3001"  # the last species' only recording: the download is cut off in the middle of it


def fetch_command(state: FakeXenoCanto) -> list[str]:
    return [
        sys.executable,
        "-m",
        "birdops.cli",
        "fetch",
        "--species",
        *SPECIES,
        "--out",
        RECORDINGS,
        "--api-url",
        f"{state.base_url}/api/3/recordings",
        "--rate",
        "500",
        "--retries",
        "2",
        "--backoff",
        "0.01",
        "--timeout",
        "30",
    ]


def test_an_interrupted_download_resumes_across_experiments(server: FakeXenoCanto, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["prepare"]["min_seconds"] = 0.1  # the fake API's recordings are 0.5 s long
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(repo, "commit", "-q", "-am", "short recordings")
    env = {**os.environ, "XC_API_KEY": KEY}
    server.files[STALL] = audio_file("wav", 3001) * 40  # large enough that part of it reaches the disk
    server.stall_id = STALL

    fetch = subprocess.Popen(
        fetch_command(server), cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert server.stalled.wait(60), "the download never reached the stalled recording"
    time.sleep(0.5)  # the first half is written
    fetch.kill()  # interrupted in the middle of a file
    fetch.wait(30)
    assert fetch.stderr is not None
    fetch.stderr.close()
    part = repo / RECORDINGS / "audio" / f"XC{STALL}.wav.part"
    assert part.is_file() and 0 < part.stat().st_size < len(server.files[STALL])
    fetched = snapshot(repo / RECORDINGS)
    first_ids = recording_ids(repo / RECORDINGS)
    assert first_ids == {"1001", "1002", "1003", "1004", "2001", "2002"}

    track(repo, "recordings, part one")
    dvc(repo, "exp", "run", *ON_RECORDINGS)
    assert snapshot(repo / RECORDINGS) == fetched
    assert prepared_ids(repo) <= first_ids

    server.release.set()
    resumed = subprocess.run(
        fetch_command(server), cwd=repo, env=env, capture_output=True, text=True, check=False
    )
    assert resumed.returncode == 0, resumed.stderr
    complete = repo / RECORDINGS / "audio" / f"XC{STALL}.wav"
    assert not part.exists() and complete.read_bytes() == server.files[STALL]
    assert server.ranges.get(STALL, "").startswith("bytes=") and server.ranges[STALL] != "bytes=0-"
    now = snapshot(repo / RECORDINGS)
    kept = {name: digest for name, digest in fetched.items() if not name.endswith((".part", ".csv"))}
    assert {name: now[name] for name in kept} == kept  # every file fetched before is there, unchanged
    assert recording_ids(repo / RECORDINGS) == first_ids | {STALL}

    track(repo, "recordings, complete")
    dvc(repo, "exp", "run", *ON_RECORDINGS)
    assert snapshot(repo / RECORDINGS) == now
    assert server.served_twice() == []  # nothing was downloaded twice
