"""Temporary files anywhere in a database directory: a killed writer's, or files no writer made.

Every filterdb writer writes ``.<name>.<pid>.tmp`` beside its target (``filterdb.atomic``,
``filterdb.shards``) and renames it into place when complete. A file of that form whose process
is gone can never be completed; a ``*.tmp`` file of another form was not written by filterdb.
:func:`find_strays` lists both (a live process's file is a write in progress and is left out),
for ``filterdb verify`` to report and ``--repair`` to move into ``quarantine/``;
:func:`remove_dead_temps` is what a parallel or Dask build runs when it ends, for its workers'
temporary shards.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from filterdb.atomic import TMP_SUFFIX

QUARANTINE_DIR = "quarantine"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)" + re.escape(TMP_SUFFIX) + "$")


@dataclass(frozen=True)
class Stray:
    path: Path
    reason: str


def temp_pid(name: str) -> int | None:
    """The writer's process id in a temporary file's name ``.<name>.<pid>.tmp``; None for another form."""
    match = _TEMP.match(name)
    return int(match["pid"]) if match else None


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def find_strays(db_dir: str | os.PathLike) -> list[Stray]:
    """Every temporary file under ``db_dir`` (outside ``quarantine/``) that no running process is
    writing, in path order, each with why it is there."""
    db_dir = Path(db_dir)
    found = []
    for root, dirs, files in os.walk(db_dir):
        if Path(root) == db_dir and QUARANTINE_DIR in dirs:
            dirs.remove(QUARANTINE_DIR)
        for name in files:
            if not name.endswith(TMP_SUFFIX):
                continue
            pid = temp_pid(name)
            if pid is None:
                reason = "is a temporary file that no filterdb writer leaves (a stray file)"
            elif pid_alive(pid):
                continue  # a write in progress
            else:
                reason = f"is a temporary file of process {pid}, which is no longer running (never completed)"
            found.append(Stray(Path(root) / name, reason))
    return sorted(found, key=lambda s: s.path)


def remove_dead_temps(directory: str | os.PathLike) -> list[Path]:
    """Remove the ``.<name>.<pid>.tmp`` files in ``directory`` whose process is gone; the paths removed."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(os.fspath(directory)))
    except OSError:
        return removed
    for entry in entries:
        pid = temp_pid(entry.name)
        if pid is None or pid_alive(pid) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass  # no permission: not ours to force; verify names it
    return removed
