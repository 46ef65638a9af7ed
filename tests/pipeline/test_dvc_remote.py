"""Sharing data through a DVC remote, end to end with real DVC: a directory remote in a temporary
folder (a real DVC remote, as an NFS mount on a runner would be), the project's data stages.

``dvc repro`` and ``dvc push`` in one repository; a fresh ``git clone`` that runs ``dvc pull`` has
every output, byte for byte, and ``dvc status`` / ``dvc repro`` find nothing to do. Then an object
goes missing from the remote: ``dvc pull`` in another fresh clone fails naming only its hash,
``birdops pull`` names the output whose data is missing, and what it says puts it back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_dvc_e2e import dvc, git
from test_recordings_dvc import make_repo, snapshot

from birdops.remote import object_path

pytestmark = pytest.mark.slow

OUTPUTS = ("data/synthetic", "data/background", "data/prepared")  # the data stages' DVC-cached outputs


def clone(repo: Path, to: Path) -> Path:
    subprocess.run(["git", "clone", "-q", str(repo), str(to)], check=True, capture_output=True)
    return to


def run(repo: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """A command in ``repo`` that may fail: its exit status and output are the test's to check."""
    return subprocess.run(list(command), cwd=repo, capture_output=True, text=True, check=False)


def birdops_pull(repo: Path) -> subprocess.CompletedProcess[str]:
    return run(repo, sys.executable, "-m", "birdops.cli", "pull")


def remote_object(remote: Path, md5: str) -> Path:
    return remote / object_path(md5)


def tracked_md5(repo: Path, path: str) -> str:
    """The md5 DVC records for ``path``: a file inside an output, or a directory output's listing."""
    parent, _, _ = path.rpartition("/")
    listing = json.loads(dvc(repo, "list", ".", *([parent] if parent else []), "--dvc-only", "--json"))
    return next(str(entry["md5"]) for entry in listing if entry["path"] == path.rpartition("/")[2])


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A repository whose data stages ran and whose outputs were pushed to a directory remote:
    ``(repository, remote folder)``."""
    root = tmp_path_factory.mktemp("remote")
    repo, remote = make_repo(root / "repo"), root / "storage"
    dvc(repo, "remote", "add", "--default", "storage", str(remote))
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the data stages' results and the remote")
    dvc(repo, "push")
    return repo, remote


def test_a_fresh_clone_pulls_every_output_and_has_nothing_to_reproduce(
    pushed: tuple[Path, Path], tmp_path: Path
) -> None:
    repo, _ = pushed
    fresh = clone(repo, tmp_path / "clone")
    assert not any((fresh / output).exists() for output in OUTPUTS)
    pulled = birdops_pull(fresh)
    assert pulled.returncode == 0, pulled.stderr
    for output in OUTPUTS:
        assert snapshot(fresh / output) == snapshot(repo / output), output
    assert "Data and pipelines are up to date" in dvc(fresh, "status")
    again = dvc(fresh, "repro")
    assert "Running stage" not in again and "Data and pipelines are up to date" in again


def test_a_file_missing_from_the_remote_is_named_and_put_back(
    pushed: tuple[Path, Path], tmp_path: Path
) -> None:
    """DVC names only the missing object's hash; ``birdops pull`` names the file, and how to put it
    back: ``dvc push`` alone does not, while the directory's listing is on the remote."""
    repo, remote = pushed
    missing = "data/prepared/manifest.csv"
    md5, listing = tracked_md5(repo, missing), tracked_md5(repo, "data/prepared")
    remote_object(remote, md5).unlink()

    plain = run(clone(repo, tmp_path / "plain"), sys.executable, "-m", "dvc", "pull")
    assert plain.returncode != 0 and md5 in plain.stderr and missing not in plain.stderr
    named = birdops_pull(clone(repo, tmp_path / "named"))
    assert named.returncode == 1
    assert f"{missing} (md5 {md5}), a file of the directory output data/prepared" in named.stderr
    assert f"delete {object_path(listing)} under the remote's URL first" in named.stderr

    dvc(repo, "push")
    assert not remote_object(remote, md5).exists()  # the directory counts as complete
    remote_object(remote, listing).unlink()  # as the message says
    dvc(repo, "push")
    assert remote_object(remote, md5).exists()
    assert birdops_pull(clone(repo, tmp_path / "again")).returncode == 0


def test_a_directory_listing_missing_from_the_remote_is_named(
    pushed: tuple[Path, Path], tmp_path: Path
) -> None:
    repo, remote = pushed
    listing = tracked_md5(repo, "data/prepared")
    assert listing.endswith(".dir")
    remote_object(remote, listing).unlink()
    named = birdops_pull(clone(repo, tmp_path / "named"))
    assert named.returncode == 1
    assert f"data/prepared (md5 {listing}): the listing of a directory output" in named.stderr
    dvc(repo, "push")  # sends the listing again
    assert birdops_pull(clone(repo, tmp_path / "again")).returncode == 0
