"""The writer of a database directory: it alone takes the lock, recovers, reconciles, publishes, adds and removes.

``DatabaseWriter.open(path)`` (``FilterDB.open(path, "a")``) creates the directory if needed,
takes the writer lock (:mod:`filterdb.lock`) and then calls :meth:`DatabaseWriter.recover`, the
one named step that finishes what a killed build left: its temporary files are removed and a
master that does not describe the shards on disk is brought up to date (or, with
``rebuild=True``, a damaged one is written anew from the shards). A model is committed when its
shard is renamed into place (:mod:`filterdb.shards`); :meth:`_publish` then appends it to the
master, or rewrites the master when models went away (:mod:`filterdb.master`). The writer reads
what it holds through the same API as a reader (:mod:`filterdb.directory`).
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from filterdb import integrity, schema
from filterdb.atomic import remove_stale_temps
from filterdb.directory import DirectoryReading
from filterdb.errors import FilterDBError
from filterdb.h5table import read_table
from filterdb.integrity import DamagedDatabaseError
from filterdb.layout import check_layout
from filterdb.lock import WriterLock
from filterdb.master import (
    INDEX_COLUMNS,
    MASTER_NAME,
    MASTER_VERSION,
    MasterState,
    append_master,
    empty_frame,
    global_rows,
    is_current,
    read_layer_digests,
    read_spans,
    read_state,
    spans,
    write_master,
)
from filterdb.shards import (
    SHARD_DIR,
    layer_digests,
    list_shards,
    read_verified_shard,
    recorded_identity,
    shard_facts,
    shard_path,
    verify_shard,
    write_shard,
)


@dataclass
class Pending:
    """A model stored since the last publish: its tables (shard-local rows), shard identity and data offsets."""
    models: pd.DataFrame
    layers: pd.DataFrame
    stat: tuple[int, int]  # (size, mtime_ns) of the shard file
    offsets: dict[str, int]  # kernel -> byte offset of its filters in the shard
    digest: int  # the shard's own digest (integrity.combine of its tables' and layers' digests)
    layer_digests: np.ndarray  # uint64, one per row of ``layers``: each layer's filter digest (0: none recorded)


class DatabaseWriter(DirectoryReading):
    """A database directory open for writing, holding its writer lock. Open with ``DatabaseWriter.open(path)``."""

    mode = "a"

    def __init__(self, path: str | os.PathLike):
        """Take the writer lock of an existing directory; nothing is read or written yet: :meth:`recover`,
        which ``open`` calls, reads the published master and brings it up to date."""
        super().__init__(Path(path))
        self._lock: WriterLock | None = WriterLock(self.path)
        self._unpublished = False  # the shards changed since the master file was written
        self._publish_every: float | None = None  # seconds, inside batch(); None: after every change
        self._published_at = time.monotonic()
        self._adopting = False  # shards come from other processes: the folder's mtime proves nothing
        # the published master (state), what changed since (pending, dropped), the tables (lazy)
        self._pending: dict[str, Pending] = {}
        self._dropped: set[str] = set()
        self._rewrite = False  # the master must be written whole (none yet, format 1.0, models removed)
        self._base: tuple[pd.DataFrame, pd.DataFrame] | None = None  # tables of the published master
        self._view: tuple[pd.DataFrame, pd.DataFrame] | None = None
        self._base_digests: np.ndarray | None = None  # the published master's /layer_digests
        self._base_spans: dict[tuple[str, str], tuple[int, int]] | None = None
        self._ids: tuple[MasterState, set[str]] | None = None
        self._state: MasterState | None = None
        self._heal: set[str] = set()  # models whose damaged shard the caller will extract again (``open(heal=)``)
        self.damaged: dict[str, str] = {}  # model_id -> the one-line damage of its shard, found on open

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "a", *, heal: Iterable[str] = ()) -> DatabaseWriter:
        """Open a database directory for writing (created if missing), recovered (:meth:`recover`).

        ``heal``: model ids the caller is about to extract again (a build's specs). A shard of one of them
        that changed since the master and is damaged does not stop the open: the model keeps its rows, its
        damage is in :attr:`damaged` and :meth:`add_extracted` replaces the shard. Any other damaged shard
        is a ``DamagedDatabaseError`` naming it, as before."""
        if mode != "a":
            raise ValueError(f"a writer opens with mode 'a', not {mode!r}; read with filterdb.open_database(path)")
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise FilterDBError(f"{path} is a file, not a filterdb database directory (an export is read only); "
                                "choose another --db path")
        if path.is_dir():
            check_layout(path)
        try:
            (path / SHARD_DIR).mkdir(parents=True, exist_ok=True)
            probe = path / f".write-test.{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as exc:
            raise FilterDBError(f"cannot write to database directory {path} ({exc.strerror}); "
                                "choose a writable --db path") from exc
        master = path / MASTER_NAME
        if master.is_dir():
            raise DamagedDatabaseError(f"{master}: is a directory, not the master file; {integrity.REPAIR_HINT}")
        writer = cls(path)
        writer._heal = set(heal)
        try:
            writer.recover()
        except BaseException:
            writer.close()
            raise
        return writer

    def recover(self, *, rebuild: bool = False) -> None:
        """Finish what a killed build left: remove its temporary files (the model in flight, never
        complete) and bring the master up to date with the shards on disk, reading only the shards
        that changed; ``rebuild``: the master is damaged, write it anew from every shard. A current
        master is left as it is, even if it does not vouch for the folder (readers then list it):
        opening for writing changes nothing on disk until a model changes."""
        remove_stale_temps(self.path / SHARD_DIR)
        remove_stale_temps(self.path)
        self._state = None if rebuild else read_state(self.path)
        if self._state is None or not is_current(self.path, self._state, list_shards(self.path)):
            self._reconcile()
            self._publish()

    def _reconcile(self) -> None:
        """Bring the tables up to date with the shard files on disk, reading only the shards that changed."""
        state = self._state
        if state is None or state.version != MASTER_VERSION:
            self._rewrite, known = True, {}  # no usable index: every shard is read
        else:
            known = self._known()
        on_disk = list_shards(self.path)
        missing = sorted(set(known) - set(on_disk))
        if missing:  # a shard the master lists is gone: never silently a model less
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise DamagedDatabaseError(f"{shard_path(self.path, missing[0])}: the shard file of model(s) {shown} is "
                                       f"missing (the master lists it); {integrity.REPAIR_HINT}, then 'filterdb build' "
                                       "extracts it again")
        fresh = []
        for mid in sorted(set(on_disk) - {m for m in known if on_disk.get(m) == known[m]}):
            try:
                models, layers, offsets, identity = read_verified_shard(shard_path(self.path, mid))
            except DamagedDatabaseError as exc:
                if mid not in known or mid not in self._heal:
                    raise
                self.damaged[mid] = str(exc)  # kept as the master has it until the caller extracts it again
                continue
            fresh.append((models["key"].iloc[0], mid, models, layers, offsets, identity))
        for mid in known:
            if on_disk.get(mid) != known[mid] and mid not in self.damaged:  # replaced behind our back (a build
                self._drop(mid)                                              # killed before its publish)
        for _, mid, models, layers, offsets, identity in sorted(fresh, key=lambda item: item[0]):
            self._pending[mid] = Pending(models, layers, on_disk[mid], offsets, identity.digest,
                                         _digests_of(identity, layers))
        self._changed_tables()

    def _known(self) -> dict[str, tuple[int, int]]:
        """model_id -> (size, mtime_ns) of the shard behind every model of the current tables."""
        index = self._state.index if self._state is not None and not self._rewrite else empty_frame(INDEX_COLUMNS)
        known = {mid: stat for mid, stat in zip(index["model_id"], zip(index["size"].tolist(),
                                                                        index["mtime_ns"].tolist()))
                 if mid not in self._dropped}
        known.update({mid: part.stat for mid, part in self._pending.items()})
        return known

    def _known_digests(self) -> dict[str, int]:
        """model_id -> the recorded shard digest of every model of the current tables (0: none recorded)."""
        index = self._state.index if self._state is not None and not self._rewrite else empty_frame(INDEX_COLUMNS)
        digests = {mid: int(d, 16) if d else 0 for mid, d in zip(index["model_id"], index["digest"])
                   if mid not in self._dropped}
        digests.update({mid: part.digest for mid, part in self._pending.items()})
        return digests

    def close(self) -> None:
        try:
            if self._unpublished and self._lock is not None:
                self._publish()
        finally:
            super().close()
            if self._lock is not None:
                self._lock.release()
                self._lock = None

    # ---------------------------------------------------------------- the tables as they are now

    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        if self._view is None:
            base_models, base_layers = self._base_tables()
            if self._dropped:
                base_models = base_models[~base_models["model_id"].isin(self._dropped)]
                base_layers = base_layers[~base_layers["model_id"].isin(self._dropped)]
            parts = list(self._pending.values())
            models = pd.concat([base_models, *(p.models for p in parts)]) if parts else base_models
            models.index = pd.Index(models["model_id"].to_numpy(dtype=object), dtype=object)
            layers = pd.concat([base_layers, *(p.layers for p in parts)], ignore_index=True) if parts else base_layers
            self._view = models, global_rows(layers, {})
        return self._view

    def _base_tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The tables of the published master (read once, when first needed)."""
        if self._base is None:
            if self._rewrite:
                self._base = empty_frame(schema.MODEL_COLUMNS, "model_id"), empty_frame(schema.LAYER_COLUMNS)
            else:
                with h5py.File(self.path / MASTER_NAME, "r") as f:
                    self._base = (read_table(f["models"], schema.MODEL_COLUMNS),
                                  read_table(f["layers"], schema.LAYER_COLUMNS))
        return self._base

    def _view_digests(self) -> np.ndarray:
        """The filter digest of each row of the current layer table (0 where unknown), built like ``_tables``."""
        _, base_layers = self._base_tables()
        if self._base_digests is None:
            self._base_digests = np.zeros(len(base_layers), np.uint64)
            if not self._rewrite and len(base_layers):
                with h5py.File(self.path / MASTER_NAME, "r") as f:
                    found = read_layer_digests(f, len(base_layers))
                self._base_digests = found if found is not None else self._recorded_digests(base_layers)
        base = self._base_digests
        if self._dropped:
            base = base[~base_layers["model_id"].isin(self._dropped).to_numpy()]
        return np.concatenate([base, *(p.layer_digests for p in self._pending.values())]).astype(np.uint64)

    def _recorded_digests(self, layers: pd.DataFrame) -> np.ndarray:
        """Each layer row's digest as its shard records it (0 where a shard cannot say): for a master written
        before /layer_digests, read once from every shard, so that the master is rewritten with them."""
        out = np.zeros(len(layers), np.uint64)
        first = layers.groupby(["model_id", "kernel"], sort=False)["start"].transform("min")
        local = layers.assign(start=layers["start"] - first, stop=layers["stop"] - first)
        for model_id, rows in local.groupby("model_id", sort=False).indices.items():
            try:
                with h5py.File(self.shard_path(model_id), "r") as f:
                    out[rows] = layer_digests(f, local.iloc[rows])
            except (OSError, KeyError, ValueError):
                pass  # read through the shard's own records, which name the damage
        return out

    def filters(self, kernel: str = "3x3") -> h5py.Dataset:
        """The virtual dataset of all filters of one kernel size (the master is published first)."""
        if self._unpublished:
            self._publish()
        return self._master_dataset(kernel)

    def shard_problems(self, model_ids: Iterable[str], *, full: bool = False) -> dict[str, str]:
        """model_id -> the one-line damage of its shard, for each of ``model_ids`` (models of this database)
        whose shard is not whole: what :meth:`open` found (it read the tables of every shard changed since
        the master), else the shard's size, model id and recorded ``shard_digest`` against what the index
        records (one open, its root attributes: ``filterdb.shards.recorded_identity``); ``full``: the shard
        read whole, its tables and every layer's filters checked against their digests
        (``filterdb.shards.verify_shard``). Without ``full`` neither the tables nor a filter byte are read,
        so a change inside them under an unchanged size and mtime goes unseen here (a reader still refuses
        damaged filters)."""
        sizes, digests = {mid: stat[0] for mid, stat in self._known().items()}, self._known_digests()
        problems = {}
        for mid in model_ids:
            if mid in self.damaged:
                problems[mid] = self.damaged[mid]
                continue
            path = self.shard_path(mid)
            try:
                identity = verify_shard(path) if full else recorded_identity(path)
            except DamagedDatabaseError as exc:
                problems[mid] = str(exc)
                continue
            if mid in sizes and identity.size != sizes[mid]:
                problems[mid] = str(integrity.damaged(path, f"the shard of model {mid} is {identity.size} bytes, "
                                                            f"not the {sizes[mid]} the master records"))
            elif digests.get(mid) and identity.digest != digests[mid]:
                problems[mid] = str(integrity.damaged(path, f"the shard of model {mid} is not the one the master "
                                                            "records"))
        return problems

    def has_model(self, model_id: str) -> bool:
        return model_id in self._pending or (model_id not in self._dropped and not self._rewrite
                                             and self._state is not None
                                             and model_id in self._index_ids())

    def _index_ids(self) -> set[str]:
        state = self._state
        assert state is not None, "the writer's master state is loaded on open"
        if self._ids is None or self._ids[0] is not state:
            self._ids = (state, set(state.index["model_id"]))
        return self._ids[1]

    def _expected_digest(self, model_id: str) -> int | None:
        """The digest the index (or this writer) records of the model's shard; None where none is recorded."""
        part = self._pending.get(model_id)
        if part is not None:
            return part.digest
        if self._state is not None and not self._rewrite and "digest" in self._state.index:
            index = self._state.index
            found = index["digest"].to_numpy()[index["model_id"].to_numpy() == model_id]
            if len(found) and found[0]:
                return int(found[0], 16)
        return None

    def _offsets(self) -> dict[tuple[str, str], int]:
        if self._base_spans is None:
            self._base_spans = {}
            if not self._rewrite and (self.path / MASTER_NAME).exists():
                with h5py.File(self.path / MASTER_NAME, "r") as f:
                    self._base_spans = read_spans(f)
        offsets = {key: offset for key, (_, offset) in self._base_spans.items() if key[0] not in self._dropped}
        offsets.update({(mid, k): o for mid, part in self._pending.items() for k, o in part.offsets.items()})
        return offsets

    # ---------------------------------------------------------------- writing

    def register_shards(self) -> None:
        """Pick up shards written by other processes (build workers) and rewrite the master."""
        self._adopting = True
        self._reconcile()
        self._unpublished = True
        self._publish()

    @contextmanager
    def batch(self, max_delay: float = 10.0) -> Iterator[DatabaseWriter]:
        """Within the block, rewrite the master file at most every ``max_delay`` seconds, and on exit.

        Builds add models in a batch: the master is then published once per interval
        instead of once per model. Nothing is less safe: the shards are the database, a
        reader sees the last master written, and a process killed inside the block leaves
        a master that the next open brings up to date. This object's own tables are always current.
        """
        before = self._publish_every
        self._publish_every = max_delay
        try:
            yield self
        finally:
            self._publish_every = before
            if before is None:
                self._adopting = False  # the workers are done: the final master may vouch for the folder
                if self._unpublished:
                    self._publish()

    def _changed_tables(self) -> None:
        self._view = None
        self._spans = None

    def _changed(self) -> None:
        """The shards changed: publish now, or later inside ``batch``."""
        self._changed_tables()
        self._unpublished = True
        if self._publish_every is None or time.monotonic() - self._published_at >= self._publish_every:
            self._publish()

    def _drop(self, model_id: str) -> None:
        """Forget a model of the tables (its shard is gone or about to be replaced)."""
        if self._pending.pop(model_id, None) is None:
            self._dropped.add(model_id)
        self._changed_tables()

    def _publish(self) -> None:
        """Write the master: append what was added since the last one, or rewrite it when models went away."""
        clean = not self._adopting
        state = self._state
        # A master without /layer_digests (written before it had them) is rewritten once, with them.
        if self._rewrite or self._dropped or state is None or not state.has_layer_digests:
            models, layers = self._tables()
            stats = {**self._known()}
            index = _index_rows(models, layers, stats, self._known_digests(), first_layer=0)
            span_rows = spans(layers, _by_model(self._offsets()))
            self._state = write_master(self.path, models, layers, index, span_rows, self._view_digests(), clean=clean)
            self._base = models, layers
            self._base_spans = None
        else:
            parts = list(self._pending.values())
            models = pd.concat([p.models for p in parts]) if parts else empty_frame(schema.MODEL_COLUMNS, "model_id")
            layers = global_rows(pd.concat([p.layers for p in parts], ignore_index=True) if parts
                                 else empty_frame(schema.LAYER_COLUMNS), state.totals)
            index = _index_rows(models, layers, {mid: part.stat for mid, part in self._pending.items()},
                                {mid: part.digest for mid, part in self._pending.items()}, first_layer=state.n_layers)
            span_rows = spans(layers, {mid: part.offsets for mid, part in self._pending.items()})
            digests = np.concatenate([np.zeros(0, np.uint64), *(p.layer_digests for p in parts)]).astype(np.uint64)
            self._state = append_master(self.path, state, models, layers, index, span_rows, digests, clean=clean)
            self._base = self._view if self._view is not None else None
            if self._base_spans is not None:
                self._base_spans.update({(m, k): (s, o) for m, k, s, o in
                                         zip(span_rows["model_id"], span_rows["kernel"], span_rows["start"].tolist(),
                                             span_rows["offset"].tolist())})
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pending, self._dropped, self._rewrite = {}, set(), False
        self._base_digests = None
        self._unpublished = False
        self._published_at = time.monotonic()

    def adopt_shard(self, model_id: str) -> None:
        """Register a shard that another process (a build worker) wrote into this database."""
        self._adopting = True
        models, layers, offsets, identity = read_verified_shard(self.shard_path(model_id))
        self._add(model_id, models, layers, offsets, identity.digest, _digests_of(identity, layers))

    def add_extracted(self, record: dict, layers: list) -> str:
        """Store an extracted model (a complete model-table row and its ``ExtractedLayer`` list); returns its model_id."""
        self._forget_shard(record["model_id"])
        path, models, layer_rows = write_shard(self.path, record, layers)
        offsets, digest, digests = shard_facts(path, layer_rows)
        self._add(record["model_id"], models, layer_rows, offsets, digest,
                  digests if digests is not None else np.zeros(len(layer_rows), np.uint64))
        return record["model_id"]

    def _add(self, model_id: str, models: pd.DataFrame, layers: pd.DataFrame, offsets: dict[str, int],
             digest: int, layer_digests: np.ndarray) -> None:
        stat = self.shard_path(model_id).stat()
        self._forget_shard(model_id)
        if self.has_model(model_id):
            self._drop(model_id)  # re-extracted: the new rows go last
        self.damaged.pop(model_id, None)
        self._pending[model_id] = Pending(models, layers, (stat.st_size, stat.st_mtime_ns), offsets, digest,
                                          layer_digests)
        self._changed()

    def remove_model(self, model_id: str) -> None:
        if not self.has_model(model_id):
            raise FilterDBError(f"no model {model_id} in {self.path}; 'filterdb info' lists the models")
        self._forget_shard(model_id)
        self._drop(model_id)
        self._changed_tables()
        self._publish()  # the master first: a kill before the unlink leaves a shard the next open adopts again
        self.shard_path(model_id).unlink()


def _digests_of(identity: integrity.ShardIdentity, layers: pd.DataFrame) -> np.ndarray:
    found = identity.layer_digests
    return found if found is not None else np.zeros(len(layers), np.uint64)


def _by_model(offsets: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (mid, kernel), offset in offsets.items():
        out.setdefault(mid, {})[kernel] = offset
    return out


def _index_rows(models: pd.DataFrame, layers: pd.DataFrame, stats: dict[str, tuple[int, int]],
                digests: dict[str, int], first_layer: int) -> pd.DataFrame:
    """The index rows of ``models`` (in order): shard file, its size and mtime, its rows in /layers, its digest."""
    ids = models["model_id"].to_numpy(dtype=object)
    counts = layers["model_id"].value_counts().reindex(ids, fill_value=0).to_numpy(np.int64)
    stops = first_layer + np.cumsum(counts)
    return pd.DataFrame({
        "model_id": ids, "file": [f"{SHARD_DIR}/{mid}.h5" for mid in ids],
        "size": np.array([stats[mid][0] for mid in ids], np.int64),
        "mtime_ns": np.array([stats[mid][1] for mid in ids], np.int64),
        "layer_start": stops - counts, "layer_stop": stops,
        "digest": [f"{digests[mid]:016x}" if digests.get(mid) else "" for mid in ids],
    })


def recover(db_dir: str | os.PathLike, *, rebuild: bool = False) -> None:
    """Take the writer lock of ``db_dir``, :meth:`DatabaseWriter.recover` it and let go: a
    :class:`FilterDBError` when another writer holds the lock or the directory cannot be written now."""
    writer = DatabaseWriter(Path(db_dir))
    try:
        writer.recover(rebuild=rebuild)
    finally:
        writer.close()
