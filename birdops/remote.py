"""``birdops pull``: ``dvc pull`` that names the outputs whose data the DVC remote lacks.

    birdops pull [dvc pull options and targets]

When an object is missing from the remote, ``dvc pull`` fails naming its hash (``failed to transfer
'3b5d...'``), or for a directory's listing the hash and the directory, and ``dvc status --cloud``
does not help: it takes a file missing from a directory whose listing is on the remote for one that
is there. This command runs ``dvc pull`` with the same arguments, passing its output through, and when
it fails on missing objects, maps their hashes to the workspace paths they belong to (the outputs,
and the files inside directory outputs) and says how to put them back: for a file of a directory,
``dvc push`` alone does not, since the directory's listing on the remote makes DVC take it for
complete. Exit status: ``dvc pull``'s (0 when it pulled everything), 1 when objects are missing.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence

# what dvc pull prints for an object it could not fetch (a file's md5, or a directory listing's .dir)
FAILED_TRANSFER = re.compile(r"failed to transfer '([0-9a-f]{32}(?:\.dir)?)'")
MISSING_CACHE_FILE = re.compile(r"^md5: ([0-9a-f]{32}(?:\.dir)?)$", re.MULTILINE)


def dvc(*args: str) -> list[str]:
    """The command line of this interpreter's DVC (birdops[train] installs it) with ``args``."""
    return [sys.executable, "-m", "dvc", *args]


def run_passing_through(command: list[str]) -> tuple[int, str]:
    """Run ``command``, copying its standard error to ours as it comes (standard output is inherited):
    ``(exit status, what it wrote to standard error)``."""
    lines: list[str] = []
    with subprocess.Popen(command, stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        for line in process.stderr:
            sys.stderr.write(line)
            lines.append(line)
    return process.returncode, "".join(lines)


def missing_hashes(pull_errors: str) -> list[str]:
    """The hashes of the objects ``dvc pull`` could not find, in the order it named them."""
    found = FAILED_TRANSFER.findall(pull_errors) + MISSING_CACHE_FILE.findall(pull_errors)
    return list(dict.fromkeys(found))


@dataclasses.dataclass(frozen=True)
class Tracked:
    """What the workspace's DVC files name: each md5 -> its paths, and each output -> its md5."""

    paths: dict[str, list[str]]
    outputs: dict[str, str]

    def directory_of(self, path: str) -> str | None:
        """The directory output ``path`` lies in, if any."""
        return next((out for out in self.outputs if path.startswith(f"{out}/")), None)


def tracked() -> Tracked:
    """The outputs (of ``dvc.lock`` and ``.dvc`` files, through DVC's ``Repo``) and the files inside
    directory outputs (``dvc list --recursive``, which needs every directory's listing: when one is
    missing, only the outputs are named)."""
    from dvc.repo import Repo  # imported only once a pull has failed

    paths: dict[str, list[str]] = defaultdict(list)
    outputs: dict[str, str] = {}
    with Repo(".") as repo:
        for out in repo.index.outs:
            if out.hash_info and out.hash_info.value:
                outputs[str(out)] = out.hash_info.value
                paths[out.hash_info.value].append(str(out))
    listed = subprocess.run(
        dvc("list", ".", "--dvc-only", "--recursive", "--json"), capture_output=True, text=True, check=False
    )
    if listed.returncode == 0:
        for entry in json.loads(listed.stdout):
            if entry.get("md5"):
                paths[entry["md5"]].append(entry["path"])
    return Tracked(dict(paths), outputs)


def object_path(md5: str) -> str:
    """Where DVC 3 keeps an object, under a remote's URL."""
    return f"files/md5/{md5[:2]}/{md5[2:]}"


def explain(hashes: list[str], known: Tracked) -> str:
    """The message for objects missing from the remote: the paths they hold, and how to put them back.

    ``dvc push`` takes a directory whose listing (``.dir``) is on the remote for complete, so it does
    not send a file of it that went missing: that listing has to go first."""
    lines = [f"birdops pull: the DVC remote lacks the data of {len(hashes)} object(s):"]
    stale_listings: dict[str, str] = {}
    for md5 in hashes:
        names = sorted(set(known.paths.get(md5, [])))
        if not names:
            lines.append(f"  md5 {md5} (no path in this workspace names it)")
        for name in names:
            directory = known.directory_of(name)
            if md5.endswith(".dir"):
                lines.append(f"  {name} (md5 {md5}): the listing of a directory output")
            elif directory is None:
                lines.append(f"  {name} (md5 {md5})")
            else:
                lines.append(f"  {name} (md5 {md5}), a file of the directory output {directory}")
                stale_listings[directory] = known.outputs[directory]
    lines.append("They were never pushed, or were removed from the remote.")
    for directory, listing in sorted(stale_listings.items()):
        lines.append(
            f"The remote still has the listing of {directory}, so `dvc push` takes it for complete and "
            f"sends nothing: delete {object_path(listing)} under the remote's URL first."
        )
    lines.append("`dvc push` from a workspace that has them sends them; `dvc repro` rebuilds them here.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    status, errors = run_passing_through(dvc("pull", *args))
    hashes = missing_hashes(errors) if status != 0 else []
    if hashes:
        print(explain(hashes, tracked()), file=sys.stderr)
        return 1
    return status
