"""birdops.files on real files: what each writer puts on disk, and what an interrupted write leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from birdops.files import (
    atomic_path,
    swap_folder,
    temporary_path,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_writers_create_parents_and_write_exact_bytes(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "a" / "x.json", {"name": "Turdus merula é", "n": [1, 2.5]})
    assert (tmp_path / "a" / "x.json").read_bytes() == (
        '{\n  "name": "Turdus merula é",\n  "n": [\n    1,\n    2.5\n  ]\n}\n'.encode()
    )
    write_csv_atomic(
        tmp_path / "b" / "x.csv", ["id", "reason"], [{"id": "XC1", "reason": "a, b", "extra": 1}, {}]
    )
    assert (tmp_path / "b" / "x.csv").read_bytes() == b'id,reason\r\nXC1,"a, b"\r\n,\r\n'
    write_text_atomic(tmp_path / "c" / "x.md", "é\n")
    assert (tmp_path / "c" / "x.md").read_bytes() == "é\n".encode()
    write_bytes_atomic(tmp_path / "d" / "x.bin", b"\x00\x01")
    assert (tmp_path / "d" / "x.bin").read_bytes() == b"\x00\x01"
    for folder in "abcd":
        assert leftovers(tmp_path / folder) == []


def test_a_new_write_replaces_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    write_json_atomic(target, [1])
    write_json_atomic(target, [2])
    assert target.read_text() == "[\n  2\n]\n" and leftovers(tmp_path) == []


def test_atomic_path_hands_a_file_name_to_writers_that_want_one(tmp_path: Path) -> None:
    target = tmp_path / "x.npy"
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    with atomic_path(target) as temp:
        assert temp == temporary_path(target)
        assert temp.parent == tmp_path and temp.name.startswith(".x.npy.") and temp.name.endswith(".tmp")
        assert str(os.getpid()) in temp.name  # two processes never share a temporary file
        with open(temp, "wb") as handle:
            np.save(handle, array)
        assert not target.exists()  # a reader sees nothing until the block ends
    np.testing.assert_array_equal(np.load(target), array)
    assert leftovers(tmp_path) == []


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "x.csv"
    write_csv_atomic(target, ["a"], [{"a": 1}])
    before = target.read_bytes()

    def rows() -> Iterator[dict[str, int]]:
        yield {"a": 2}
        raise RuntimeError("the source broke")

    with pytest.raises(RuntimeError, match="the source broke"):
        write_csv_atomic(target, ["a"], rows())
    assert target.read_bytes() == before and leftovers(tmp_path) == []

    with pytest.raises(KeyboardInterrupt), atomic_path(target) as temp:
        temp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == before and leftovers(tmp_path) == []


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    target.mkdir()  # a folder in the way: the rename fails
    with pytest.raises(OSError):
        write_json_atomic(target, {})
    assert target.is_dir() and leftovers(tmp_path) == []


def test_a_killed_process_leaves_the_old_file_intact(tmp_path: Path) -> None:
    target = tmp_path / "x.bin"
    write_bytes_atomic(target, b"old")
    script = (
        "import os, sys\n"
        "from birdops.files import atomic_path\n"
        "with atomic_path(sys.argv[1]) as temp:\n"
        "    temp.write_bytes(b'half of the new')\n"
        "    os._exit(9)\n"  # no clean-up runs, as under SIGKILL
    )
    done = subprocess.run([sys.executable, "-c", script, str(target)], check=False)
    assert done.returncode == 9
    assert target.read_bytes() == b"old"
    assert len(leftovers(tmp_path)) == 1  # hidden, ending in .tmp: what stale-file sweeps delete


def test_swap_folder_replaces_the_target_and_removes_the_old_one(tmp_path: Path) -> None:
    staging, target, old = tmp_path / "t.assembling", tmp_path / "t", tmp_path / "t.old"
    staging.mkdir()
    (staging / "f").write_text("new")
    target.mkdir()
    (target / "f").write_text("previous")
    old.mkdir()  # left by an interrupted swap
    swap_folder(staging, target, old)
    assert (target / "f").read_text() == "new"
    assert not staging.exists() and not old.exists()

    staging.mkdir()
    (staging / "g").write_text("first")
    swap_folder(staging, tmp_path / "fresh", old)  # no target yet
    assert (tmp_path / "fresh" / "g").read_text() == "first" and not old.exists()
