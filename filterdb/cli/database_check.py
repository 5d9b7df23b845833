"""Check every shard, the master and the metrics cache (``filterdb verify [--db] [--repair]``).

Every shard is read whole and checked against its digests (tables and each layer's
filters, ``filterdb.integrity``), the master against its own digest and against the shards
(which models it lists, which file belongs to which), the cache files against theirs. One
line per problem, then a summary; exit 0 only when the database is whole.

``--repair`` moves what is damaged or does not belong (shards, stray files, cache files, the
master) into ``<db>/quarantine/<UTC time>/`` (never deletes), rebuilds the master from the
good shards and the cache from their filters, and lists the models to extract again
(``filterdb build`` does it). It exits 0 only if nothing was lost.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py

from filterdb import integrity
from filterdb.atomic import TMP_SUFFIX
from filterdb.errors import FilterDBError
from filterdb.lock import LOCK_NAME, WriterLock
from filterdb.master import MASTER_NAME
from filterdb.shards import SHARD_DIR, verify_shard
from filterdb.store import FilterDB
from filterdb.strays import find_strays

QUARANTINE_DIR = "quarantine"
CACHE_DIR = "metrics"


@dataclass
class Problem:
    path: Path
    what: str
    quarantine: bool = True  # move the file aside on --repair (False: it is rewritten, or it is gone)
    lost_model: str = ""  # a model whose filters are gone with this file: to extract again


@dataclass
class Verification:
    db: Path
    problems: list[Problem] = field(default_factory=list)
    good_shards: dict[str, integrity.ShardIdentity] = field(default_factory=dict)
    models_in_master: dict[str, str] = field(default_factory=dict)  # model_id -> key (source:name)
    n_cache_files: int = 0

    @property
    def whole(self) -> bool:
        return not self.problems

    def add(self, path: Path, what: str, **kw) -> None:
        self.problems.append(Problem(Path(path), what, **kw))


def _master_models(master: Path) -> tuple[dict[str, integrity.ShardIdentity] | None, dict[str, str], str]:
    """The master's shard records (None if unusable), model_id -> key, and the reason it is unusable."""
    from filterdb import schema
    from filterdb.h5table import read_table
    from filterdb.master import INDEX_COLUMNS, SPAN_COLUMNS, check_tables

    if master.is_dir():
        return None, {}, "is a directory, not the master file"
    try:
        with h5py.File(master, "r") as f:
            if f.attrs.get("format") != schema.FORMAT_NAME:
                return None, {}, "is not a filterdb database file"
            models = read_table(f["models"], schema.MODEL_COLUMNS)
            layers = read_table(f["layers"], schema.LAYER_COLUMNS)
            keys = dict(zip(models["model_id"], models["key"]))
            if "shards" not in f:
                return None, keys, "has no checksums (format 1.0, written by an older filterdb)"
            index = read_table(f["shards"], INDEX_COLUMNS)
            check_tables(f, master, models, layers, index, read_table(f["spans"], SPAN_COLUMNS))
            records = {mid: integrity.ShardIdentity(mid, int(size), int(digest, 16) if digest else 0)
                       for mid, size, digest in zip(index["model_id"], index["size"], index["digest"])}
        return records, keys, ""
    except integrity.DamagedDatabaseError as exc:
        return None, {}, str(exc).split("; ")[0].removeprefix(f"{master}: ")
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
        return None, {}, f"cannot be read ({' '.join(str(exc).split())[:120]})"


def verify_database(db: Path) -> Verification:
    db = Path(db)
    if not db.is_dir():
        raise FilterDBError(f"{db} is not a filterdb database directory; give --db the database's folder")
    result = Verification(db)
    shard_dir = db / SHARD_DIR
    if shard_dir.exists() and not shard_dir.is_dir():
        result.add(shard_dir, "is a file, not the shards folder")
    elif shard_dir.is_dir():
        for path in sorted(shard_dir.iterdir()):
            if path.name.endswith(TMP_SUFFIX):
                continue  # a killed writer's temporary file; the next writer removes it
            if path.suffix != ".h5" or path.name.startswith(".") or not path.is_file():
                result.add(path, "is not a shard (a stray file in the shards folder)")
                continue
            try:
                result.good_shards[path.stem] = verify_shard(path)
            except FilterDBError as exc:
                result.add(path, str(exc).split("; ")[0].removeprefix(f"{path}: "), lost_model=path.stem)

    master = db / MASTER_NAME
    if master.exists() or master.is_symlink():
        records, keys, reason = _master_models(master)
        result.models_in_master = keys
        if records is None:
            result.add(master, f"the master {reason}; it is rebuilt from the shards")
        else:
            for mid in sorted(set(records) - set(result.good_shards)):
                if not (shard_dir / f"{mid}.h5").exists():
                    result.add(shard_dir / f"{mid}.h5", f"the shard of model {mid} ({keys.get(mid, '?')}) is missing",
                               quarantine=False, lost_model=mid)
            changed = {m for m in result.good_shards if records.get(m) != result.good_shards[m]}
            if changed:
                result.add(master, f"the master is out of date with {len(changed)} shard(s) (a build was "
                                   "interrupted); it is rewritten", quarantine=False)
    elif result.good_shards:
        result.add(master, "no master file; it is written from the shards", quarantine=False)
    for problem in result.problems:  # a stray file loses no model: only a damaged shard of a model the database has
        if problem.lost_model and not (problem.lost_model in result.models_in_master or (
                not result.models_in_master and re.fullmatch(r"[0-9a-f]{12}", problem.lost_model))):
            problem.lost_model = ""

    lock = db / LOCK_NAME
    if lock.exists() and not lock.is_file():
        result.add(lock, "the writer lock is not a file")
    for stray in find_strays(db):  # temporary files anywhere: a killed writer's, or no writer's
        result.add(stray.path, stray.reason)
    _verify_cache(result)
    return result


def _verify_cache(result: Verification) -> None:
    from filterdb.analysis import cache

    folder = result.db / CACHE_DIR
    if not folder.exists():
        return
    if not folder.is_dir():
        result.add(folder, "is not a folder (the metrics cache); it is rebuilt")
        return
    for path in sorted(folder.glob("*.json")):
        result.n_cache_files += 1
        problem = cache.check_file(path)
        if problem:
            result.add(path, f"{problem}; it is recomputed")
    snapshot = cache.snapshot_path(result.db)
    if snapshot.exists():
        problem = cache.check_snapshot(snapshot)
        if problem:
            result.add(snapshot, f"{problem}; it is rewritten")


def quarantine(db: Path, paths: list[Path]) -> Path:
    """Move files aside into <db>/quarantine/<UTC time>/, keeping their relative paths; return that folder."""
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    target = db / QUARANTINE_DIR / stamp
    for path in paths:
        dest = target / path.relative_to(db)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
    return target


def repair_database(result: Verification, echo=print) -> list[str]:
    """Quarantine, rebuild the master and the cache; return the models to extract again (ids with keys)."""
    db = result.db
    lock_path = db / LOCK_NAME
    moved = [p.path for p in result.problems if p.quarantine and (p.path.exists() or p.path.is_symlink())]
    if lock_path in moved:
        quarantine(db, [lock_path])
        moved.remove(lock_path)
    with WriterLock(db, busy="repair it once that ends"):
        master = db / MASTER_NAME
        if master not in moved and (master.exists() or master.is_symlink()) and any(
                p.lost_model or p.path == master for p in result.problems):
            moved.append(master)  # it lists models whose shards are gone: written anew below
        if moved:
            where = quarantine(db, moved)
            echo(f"moved {len(moved)} file(s) aside into {where}")
    with FilterDB.open(db, "a") as writer:
        n_models = len(writer.models)
    echo(f"master rebuilt: {n_models} model(s)")
    if n_models:
        from filterdb.analysis.metrics_table import database_metrics

        database_metrics(db)
        echo(f"metrics cache rebuilt for {n_models} model(s)")
    return [f"{mid} ({result.models_in_master.get(mid, 'key unknown')})"
            for mid in sorted({p.lost_model for p in result.problems if p.lost_model})]
