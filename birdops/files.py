"""Every file birdops writes goes through here: a temporary file beside the target, then a rename,
so a reader (or an interrupted run) sees either the old file or the whole new one, never half of one.

- :func:`atomic_path`: the primitive, a context manager yielding the temporary path to hand to a
  writer that wants a file name (``safetensors.save_file``, ``onnx.save``, ``Figure.savefig``,
  ``np.save``); the rename happens when the block ends without an error, and the temporary file is
  deleted when it raises.
- :func:`write_bytes_atomic`, :func:`write_text_atomic`, :func:`write_json_atomic`,
  :func:`write_csv_atomic`: whole files from bytes, text, a JSON value or CSV rows;
  :func:`csv_rows_atomic`: a CSV written a row at a time.
- :func:`swap_folder`: a folder built beside its target (a staging folder) replaces the target.

Every function creates the target's parent folders. The temporary name, ``.<name>.<pid>.tmp``, is
hidden, ends in ``.tmp`` (what stale-file clean-ups look for) and differs between processes, so two
processes writing the same target never write into one temporary file.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"
# how tables that name files (birdops predict's, read back by birdops segments) encode the names:
# UTF-8, but a name that is not (an old memory card's Latin-1) keeps its own bytes, so the table
# names the file that exists
NAME_ERRORS = "surrogateescape"


def temporary_path(path: Path) -> Path:
    """The temporary file beside ``path`` that this process writes before renaming it onto ``path``."""
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s new content to; on a clean exit it replaces
    ``path`` (one rename), on an exception it is deleted and ``path`` is left as it was.

    The temporary name does not end in the target's suffix: a writer that picks its format from the
    file name (``Figure.savefig``) must be told the format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temporary_path(path)
    try:
        yield temp
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    try:
        os.replace(temp, path)
    except OSError:
        temp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write ``data`` as the whole content of ``path``."""
    with atomic_path(path) as temp:
        temp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` as UTF-8 (``Path.write_text``: ``\\n`` becomes the platform's line end)."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, value: Any) -> None:
    """Write ``value`` as indented UTF-8 JSON with a final newline."""
    write_text_atomic(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def write_csv_atomic(path: str | Path, fieldnames: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> None:
    """Write a CSV (the ``excel`` dialect: ``\\r\\n`` line ends, minimal quoting) with a header;
    keys outside ``fieldnames`` are ignored, missing ones written empty."""
    with csv_rows_atomic(path, fieldnames) as writer:
        writer.writerows(rows)


@contextmanager
def csv_rows_atomic(path: str | Path, fieldnames: Sequence[str]) -> Iterator[csv.DictWriter[str]]:
    """:func:`write_csv_atomic` a row at a time: the block writes rows as they are made (none is
    held), and the file replaces ``path`` when the block ends without an error."""
    with atomic_path(path) as temp, temp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(fieldnames), extrasaction="ignore", restval="")
        writer.writeheader()
        yield writer


def swap_folder(staging: Path, target: Path, old: Path) -> None:
    """Replace folder ``target`` by the complete folder ``staging`` (same file system).

    ``target`` is first renamed to ``old`` (a leftover ``old`` of an interrupted swap is deleted
    first), then ``staging`` to ``target``, then ``old`` is deleted: at every moment either the old
    or the new folder is complete, and a reader that finds no ``target`` finds it at ``old``."""
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)
