"""The filter database: a directory of per-model shard files, one master HDF5 file and a writer lock.

Layout::

    <db>/filterdb.h5            master: /models, /layers, /shards (the index), /filters/<kernel>
    <db>/shards/<model_id>.h5   one model: /models (1 row), /layers, /filters/<kernel>
    <db>/.lock                  writers take an exclusive lock on it

A shard is written under a temporary name and renamed into place when complete (the
commit of a model, :mod:`filterdb.shards`); the master is derived from the shards and
published the same way (:mod:`filterdb.master`), so a build killed at any instant loses at
most the model in flight and readers always see a complete file. The master presents the
filters of all shards as one dataset per kernel size through HDF5 virtual datasets, so
``h5py.File("<db>/filterdb.h5")["filters/3x3"]`` is every 3x3 filter of every model,
(N, 3, 3) float32, a layer's rows at ``[start:stop]``. Reading a database needs h5py, numpy
and pandas only.

Who does what:

- :func:`open_database` opens for reading: a directory (:class:`filterdb.reader.DatabaseReader`)
  or a file that ``filterdb export`` wrote (:class:`filterdb.packed.PackedDB`), both
  :class:`filterdb.reading.DatabaseReading`.
- :class:`filterdb.writer.DatabaseWriter` (``FilterDB``, ``FilterDB.open(path, "a")``) alone takes
  the lock, recovers, reconciles, publishes, adds and removes.

Integrity (:mod:`filterdb.integrity`): every shard records the digests of its tables and of
each layer's filters, the master's index records each shard's digest and the master the
digests of its own tables. A reader verifies the master's tables on open and each layer's
filters before returning them; a missing, swapped or stray shard is an error on open. When the
master does not describe the shards (a killed build) or is damaged, ``open_database`` recovers
the directory in one visible step (:func:`filterdb.writer.recover`, as SQLite's reader rolls back
a hot journal; docs/integrity.md, "When a reader writes") when it can take the writer lock, and otherwise reads around the
master from the shards, with one line saying so. Damage is a :class:`DamagedDatabaseError`
naming the file and saying ``filterdb verify --repair``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, overload

from filterdb import integrity
from filterdb.errors import FilterDBError
from filterdb.integrity import DamagedDatabaseError, MasterDamaged
from filterdb.layout import check_layout
from filterdb.master import MASTER_NAME
from filterdb.reader import DatabaseReader, master_condition
from filterdb.reading import DatabaseReading
from filterdb.shards import SHARD_DIR
from filterdb.writer import DatabaseWriter, recover

FilterDB = DatabaseWriter  # the name the build, the tests and users' scripts write with: FilterDB.open(path, "a")

__all__ = ["DatabaseReader", "DatabaseReading", "DatabaseWriter", "FilterDB", "open_database", "recover"]


@overload
def open_database(path: str | os.PathLike, mode: Literal["r"] = "r") -> DatabaseReading: ...
@overload
def open_database(path: str | os.PathLike, mode: Literal["a"]) -> DatabaseWriter: ...
def open_database(path: str | os.PathLike, mode: str = "r") -> DatabaseReading | DatabaseWriter:
    """Open a filter database. ``mode`` "r": a directory or a file written by ``filterdb export``, read
    only (:class:`DatabaseReading`); "a": a directory for writing, created if missing (:class:`DatabaseWriter`)."""
    if mode == "a":
        return DatabaseWriter.open(path)
    if mode != "r":
        raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        from filterdb.packed import PackedDB
        return PackedDB(path)
    if path.is_dir():
        check_layout(path)
    if not (path / MASTER_NAME).exists() and not (path / SHARD_DIR).is_dir():
        from filterdb.paths import demo_db_path

        raise FilterDBError(f"{path} is not a filterdb database (no {MASTER_NAME}); build one with "
                            f"'filterdb build --leaderboard NAME --db {path}', or run 'filterdb demo' and pass "
                            f"--db {demo_db_path()}")
    condition, damage = master_condition(path)
    if condition == "ok":
        try:
            return DatabaseReader(path)
        except MasterDamaged as exc:
            condition, damage = "damaged", str(exc).split("; ")[0]
    return _open_unclean(path, condition, damage)


def _open_unclean(path: Path, condition: str, damage: str) -> DatabaseReader:
    """A directory whose master is stale (a build was killed, or is running, between a shard and the
    master), absent or damaged: recover it and read, or, where that is impossible now (a writer holds
    the lock, the directory is read-only or full), read the last complete master or the shards."""
    try:
        recover(path, rebuild=condition == "damaged")
        if condition == "damaged":
            integrity.notice(f"{damage}; rebuilding it from the shards (done)")
        return DatabaseReader(path)
    except MasterDamaged:
        pass
    except DamagedDatabaseError:
        raise  # a shard is missing, swapped or stray: no master can be built around it
    except FilterDBError:
        pass  # a writer is running (it will publish), or the directory cannot be written now
    if condition == "stale":
        try:
            return DatabaseReader(path)  # the last complete master
        except MasterDamaged as exc:
            damage = str(exc).split("; ")[0]
    if condition == "absent":
        integrity.notice(f"{path}: no master file yet (a build is under way?); reading the shards directly")
    else:
        integrity.notice(f"{damage}; reading the shards directly ({integrity.REPAIR_HINT})")
    return DatabaseReader(path, read_around=True)
