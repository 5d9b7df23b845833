"""The layout of a database directory: ``filterdb.h5`` a file and ``shards`` a folder.

:func:`check_layout` runs before anything else is opened, so that a database whose layout is wrong
is one error naming the path, never read as an empty database. A master that is not a file is
read around (the shards rebuild it) only where there are shards to read: otherwise the result
would be empty.
"""
from __future__ import annotations

import os
from pathlib import Path

from filterdb.integrity import DamagedDatabaseError
from filterdb.master import MASTER_NAME
from filterdb.shards import SHARD_DIR


def _kind(path: Path) -> str:
    return "a directory" if path.is_dir() else "a file" if path.is_file() else "not a regular file"


def _has_shards(shards: Path) -> bool:
    try:
        with os.scandir(shards) as entries:
            return any(e.name.endswith(".h5") and not e.name.startswith(".") for e in entries)
    except OSError:
        return False


def check_layout(db_dir: str | os.PathLike) -> None:
    """``DamagedDatabaseError`` naming the path when ``db_dir``'s layout is wrong: ``shards`` that is
    not a folder, or a master that is not a file with no shard beside it to read instead."""
    db_dir = Path(db_dir)
    shards, master = db_dir / SHARD_DIR, db_dir / MASTER_NAME
    if os.path.lexists(shards) and not shards.is_dir():
        raise DamagedDatabaseError(f"{shards}: is {_kind(shards)}, not the folder of the database's shards; the "
                                   "models cannot be read: move it away and restore the folder from a copy, or "
                                   "rebuild the database with 'filterdb build'")
    if os.path.lexists(master) and not master.is_file() and not _has_shards(shards):
        raise DamagedDatabaseError(f"{master}: is {_kind(master)}, not the master file, and {shards} holds no shard "
                                   "to read instead; this is not a whole database: restore it from a copy or "
                                   "rebuild it with 'filterdb build'")
