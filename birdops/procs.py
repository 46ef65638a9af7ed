"""Worker processes that die with the process that started them.

A stage killed with ``kill -9`` cannot clean up: its pool workers would be re-parented to PID 1 and go
on computing and writing (and holding their memory). :func:`die_with_parent`, called first thing in a
worker (a pool ``initializer``), prevents that twice over:

- on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)``: the kernel kills the worker as soon as its parent
  exits (a ``fork`` or ``spawn`` pool, whose parent is the stage itself);
- everywhere, a daemon thread that checks every ``poll_seconds`` whether the direct parent changed (the
  worker was re-parented) or the stage process (``owner_pid``) is gone or a zombie, and then ends the
  worker with ``os._exit``. This is what ends ``forkserver`` workers: their parent is the fork
  server, which stays up as long as a worker holds its "alive" pipe, and exits once they are gone.
  It also covers a parent that died before the ``prctl`` call.

Results do not depend on any of this: it only decides when a worker stops.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
ORPHAN_EXIT_CODE = 70


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Linux: have the kernel send ``sig`` to this process when its parent exits; False elsewhere or
    when ``prctl`` is unavailable."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def process_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie (a killed process its own parent has not reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        # "<pid> (<comm>) <state> ...": the state follows the last ')'
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in {"Z", "X"}
    except (OSError, IndexError):
        return True  # no /proc: os.kill said it exists


def die_with_parent(owner_pid: int | None = None, poll_seconds: float = 0.5) -> None:
    """Make this (worker) process end when its parent or ``owner_pid`` (the stage) ends; see the module
    docstring. Call it in the worker, e.g. as (part of) a pool initializer."""
    parent_pid = os.getppid()
    owner = parent_pid if owner_pid is None else owner_pid
    set_parent_death_signal()
    if not (process_alive(owner) and process_alive(parent_pid)) or os.getppid() != parent_pid:
        os._exit(ORPHAN_EXIT_CODE)  # the parent died before the signal was armed
    watcher = threading.Thread(
        target=_watch, args=(parent_pid, owner, poll_seconds), name="parent-watch", daemon=True
    )
    watcher.start()


def _watch(parent_pid: int, owner_pid: int, poll_seconds: float) -> None:
    while True:
        time.sleep(poll_seconds)
        if os.getppid() != parent_pid or not process_alive(owner_pid):
            os._exit(ORPHAN_EXIT_CODE)
