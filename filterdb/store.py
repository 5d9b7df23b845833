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
(N, 3, 3) float32, a layer's rows at ``[start:stop]``. This module imports neither torch
nor the extraction code: reading a database needs h5py, numpy and pandas only. A file that
``filterdb export`` wrote is one read-only file instead (:mod:`filterdb.packed`); ``open_database``
opens either.

Integrity (:mod:`filterdb.integrity`): every shard records the digests of its tables and of
each layer's filters, the master's index records each shard's digest and the master the
digests of its own tables. A reader verifies the master's tables on open and each layer's
filters in :meth:`FilterDB._read_rows` before returning them; a missing, swapped or stray
shard is an error on open; a damaged master is rebuilt from the shards (or, when the
directory cannot be written now, read around: the tables come from the shards), with one
line saying so. Damage is a :class:`DamagedDatabaseError` naming the file and saying
``filterdb verify --repair``.
"""
from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from filterdb import integrity, schema
from filterdb.atomic import remove_stale_temps
from filterdb.errors import FilterDBError
from filterdb.h5table import read_table
from filterdb.integrity import DamagedDatabaseError, MasterDamaged
from filterdb.layout import check_layout
from filterdb.lock import WriterLock
from filterdb.master import (
    INDEX_COLUMNS,
    MASTER_NAME,
    MASTER_VERSION,
    SPAN_COLUMNS,
    MasterState,
    append_master,
    check_tables,
    empty_frame,
    global_rows,
    is_current,
    read_layer_digests,
    read_spans,
    read_state,
    spans,
    write_master,
)
from filterdb.shards import (  # noqa: F401
    FILTERS_ENCODING,
    SHARD_DIR,
    SHARD_ENCODING,
    TMP_SUFFIX,
    filter_offsets,
    layer_digests,
    list_shards,
    read_shard,
    read_shard_tables,
    read_verified_shard,
    root_attrs,
    shard_facts,
    shard_path,
    shard_writer,
    write_shard,
)
from filterdb.versions import check_readable


@dataclass
class Pending:
    """A model stored since the last publish: its tables (shard-local rows), shard identity and data offsets."""
    models: pd.DataFrame
    layers: pd.DataFrame
    stat: tuple[int, int]  # (size, mtime_ns) of the shard file
    offsets: dict[str, int]  # kernel -> byte offset of its filters in the shard
    digest: int  # the shard's own digest (integrity.combine of its tables' and layers' digests)
    layer_digests: np.ndarray  # uint64, one per row of ``layers``: each layer's filter digest (0: none recorded)


def _legacy_is_stale(path: Path) -> bool:
    """A format 1.0 master (no index): whether its model ids differ from the shard files on disk."""
    try:
        with h5py.File(path / MASTER_NAME, "r") as f:
            listed = set(f["models"]["model_id"].asstr()[()])
    except (OSError, KeyError):
        return True
    return set(list_shards(path)) != listed


class FilterDB:
    """A filter database directory. Open with ``open_database(path)`` (read) or ``FilterDB.open(path, "a")``."""

    def __init__(self, path: Path, mode: str, *, read_around: bool = False, rebuild: bool = False):
        self.path = Path(path)
        self.mode = mode
        self._read_around = read_around  # reading: the master is unusable, the tables come from the shards
        self._force_rebuild = rebuild  # writing: the master is damaged, rewrite it from the shards
        self._digests: dict[str, int] = {}  # reading: model_id -> the shard digest the master records
        self._checks: dict[str, integrity.ShardCheck] = {}  # model_id -> the digests of its open shard
        self._lock: WriterLock | None = None
        self._file: h5py.File | None = None
        self._shards: dict[str, h5py.File] = {}
        self._unpublished = False  # the shards changed since the master file was written
        self._publish_every: float | None = None  # seconds, inside batch(); None: after every change
        self._published_at = time.monotonic()
        self._adopting = False  # shards come from other processes: the folder's mtime proves nothing
        # writer: the published master (state), what changed since (pending, dropped), the tables (lazy)
        self._state: MasterState | None = None
        self._pending: dict[str, Pending] = {}
        self._dropped: set[str] = set()
        self._rewrite = False  # the master must be written whole (none yet, format 1.0, models removed)
        self._base: tuple[pd.DataFrame, pd.DataFrame] | None = None  # tables of the published master
        self._view: tuple[pd.DataFrame, pd.DataFrame] | None = None
        self._base_digests: np.ndarray | None = None  # the published master's /layer_digests (writer)
        self._layer_digests: np.ndarray | None = None  # reader: one per row of the layer table, or None
        self._digest_of: dict[tuple[str, int], tuple[int, int]] | None = None  # (kernel, start) -> (stop, digest)
        self._fds: dict[str, int] = {}  # model_id -> an open descriptor of its shard (reads through the master's records)
        self._indexed: dict[str, tuple[int, int]] = {}  # reader: model_id -> (size, mtime_ns) the index records
        self._spans: dict[tuple[str, str], tuple[int, int]] | None = None  # (model, kernel) -> (start, offset)
        self._base_spans: dict[tuple[str, str], tuple[int, int]] | None = None
        self._ids: tuple[MasterState, set[str]] | None = None
        self._names: tuple[pd.DataFrame, dict[str, str]] | None = None
        self._load()

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "FilterDB":
        """Open a database directory. ``mode``: "r" read only, "a" create if missing and write."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            if mode == "r":
                from filterdb.packed import PackedDB
                return PackedDB(path)  # type: ignore[return-value]
            raise FilterDBError(f"{path} is a file, not a filterdb database directory (an export is read only); "
                                "choose another --db path")
        if path.is_dir():
            check_layout(path)
        if mode == "r" and not (path / MASTER_NAME).exists() and not (path / SHARD_DIR).is_dir():
            from filterdb.paths import demo_db_path

            raise FilterDBError(f"{path} is not a filterdb database (no {MASTER_NAME}); build one with "
                                f"'filterdb build --leaderboard NAME --db {path}', or run 'filterdb demo' and pass "
                                f"--db {demo_db_path()}")
        if mode == "r":
            return cls._open_reader(path)
        if mode == "a":
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
        return cls(path, mode)

    @classmethod
    def _open_reader(cls, path: Path) -> "FilterDB":
        """Open for reading: a stale master is brought up to date, a damaged or missing one rebuilt from
        the shards; where that is impossible now (a writer holds the lock, the directory is read-only or
        full) the last complete master is read, or the shards themselves, with one line saying so."""
        master = path / MASTER_NAME
        state, damage = "ok", ""
        if master.is_dir():
            state, damage = "damaged", f"{master}: is a directory, not the master file"
        elif not master.exists():
            state = "absent"
        elif _is_stale(path):
            state = "stale"
        if state == "ok":
            try:
                return cls(path, "r")
            except MasterDamaged as exc:
                state, damage = "damaged", str(exc).split("; ")[0]
        try:  # a build was killed (or is running) between a shard and the master, or the master is damaged
            FilterDB(path, "a", rebuild=state == "damaged").close()
            if state == "damaged":
                integrity.notice(f"{damage}; rebuilding it from the shards (done)")
            return cls(path, "r")
        except MasterDamaged:
            pass
        except DamagedDatabaseError:
            raise  # a shard is missing, swapped or stray: no master can be built around it
        except FilterDBError:
            pass  # a writer is running (it will publish), or the directory cannot be written now
        if state == "stale":
            try:
                return cls(path, "r")  # the last complete master
            except MasterDamaged as exc:
                damage = str(exc).split("; ")[0]
        if state == "absent":
            integrity.notice(f"{path}: no master file yet (a build is under way?); reading the shards directly")
        else:
            integrity.notice(f"{damage}; reading the shards directly ({integrity.REPAIR_HINT})")
        return cls(path, "r", read_around=True)

    def _load(self) -> None:
        if self.mode == "r":
            if self._read_around:
                self._load_from_shards()
                return
            f = self._open_master()
            master = self.path / MASTER_NAME
            try:
                self._models = read_table(f["models"], schema.MODEL_COLUMNS)
                self._layers = read_table(f["layers"], schema.LAYER_COLUMNS)
                self._spans = read_spans(f) or None  # format 1.0: computed from the layers when needed
                self._layer_digests = read_layer_digests(f, len(self._layers))
                if str(f.attrs.get("encoding-version", "")) == MASTER_VERSION:
                    index = read_table(f["shards"], INDEX_COLUMNS)
                    check_tables(f, master, self._models, self._layers, index,
                                 read_table(f["spans"], SPAN_COLUMNS))
                    self._digests = {mid: int(d, 16) for mid, d in zip(index["model_id"], index["digest"]) if d}
                    self._indexed = dict(zip(index["model_id"], zip(index["size"].tolist(), index["mtime_ns"].tolist())))
            except DamagedDatabaseError as exc:
                self.close()
                raise MasterDamaged(str(exc)) from None
            except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
                self.close()
                raise MasterDamaged(str(integrity.read_error(master, exc, "the master cannot be read"))) from None
            return
        self._lock = WriterLock(self.path)
        try:
            remove_stale_temps(self.path / SHARD_DIR)  # left by a killed build: the model in flight, never complete
            remove_stale_temps(self.path)
            self._state = None if self._force_rebuild else read_state(self.path)
            if self._state is None or not is_current(self.path, self._state, list_shards(self.path)):
                self._reconcile()
                self._publish()
            # A current master is left as it is, even if it does not vouch for the folder (readers
            # then list it): opening for writing changes nothing on disk until a model changes.
        except BaseException:
            self._lock.release()
            self._lock = None
            raise

    def _load_from_shards(self) -> None:
        """Reading around an unusable master: the tables of every shard (each verified), in key order."""
        parts = []
        for mid in sorted(list_shards(self.path)):
            models, layers, _, identity = read_verified_shard(shard_path(self.path, mid))
            parts.append((models["key"].iloc[0], mid, models, layers, identity))
        parts.sort(key=lambda item: item[0])
        if parts:
            models = pd.concat([p[2] for p in parts])
            models.index = pd.Index(models["model_id"].to_numpy(dtype=object), dtype=object)
            layers = global_rows(pd.concat([p[3] for p in parts], ignore_index=True), {})
        else:
            models, layers = empty_frame(schema.MODEL_COLUMNS, "model_id"), empty_frame(schema.LAYER_COLUMNS)
        self._models, self._layers = models, layers
        self._digests = {p[1]: p[4].digest for p in parts}
        self._spans = None

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
        for mid in known:
            if on_disk.get(mid) != known[mid]:  # replaced behind our back (a build killed before its publish)
                self._drop(mid)
        fresh = []
        for mid in sorted(set(on_disk) - {m for m in known if on_disk.get(m) == known[m]}):
            models, layers, offsets, identity = read_verified_shard(shard_path(self.path, mid))
            fresh.append((models["key"].iloc[0], mid, models, layers, offsets, identity))
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

    def _open_master(self) -> h5py.File:
        master = self.path / MASTER_NAME
        try:
            f = h5py.File(master, "r")
        except (OSError, ValueError, RuntimeError) as exc:
            raise MasterDamaged(str(integrity.read_error(master, exc, "the master cannot be read"))) from None
        if f.attrs.get("format") != schema.FORMAT_NAME:
            f.close()
            raise MasterDamaged(f"{master}: not a filterdb database file; {integrity.REPAIR_HINT}")
        try:
            check_readable(f.attrs.get("encoding-version", MASTER_VERSION), MASTER_VERSION, f"{master}: database format")
        except FilterDBError:
            f.close()
            raise
        self._file = f
        return f

    def close(self) -> None:
        if self._unpublished and self._lock is not None:
            self._publish()
        for f in self._shards.values():
            f.close()
        self._shards.clear()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        for mid in list(self._checks):
            self._forget_check(mid)
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> "FilterDB":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FilterDB({str(self.path)!r}, {len(self.models)} models, {len(self.layers)} layers)"

    # ---------------------------------------------------------------- reading

    @property
    def models(self) -> pd.DataFrame:
        """The model table, indexed by model_id (columns: filterdb.schema.MODEL_COLUMNS)."""
        return self._tables()[0]

    @property
    def layers(self) -> pd.DataFrame:
        """The layer table; start/stop index /filters/<kernel> of the master file."""
        return self._tables()[1]

    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        if self.mode == "r":
            return self._models, self._layers
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

    @property
    def kernels(self) -> list[str]:
        return sorted(self.layers["kernel"].unique(), key=lambda k: (math.prod(schema.kernel_shape(k)), k))

    def filters(self, kernel: str = "3x3") -> h5py.Dataset:
        """The virtual dataset of all filters of one kernel size (read lazily, slice what you need)."""
        if self._unpublished:
            self._publish()
        if self._read_around:
            raise integrity.damaged(self.path / MASTER_NAME, "the master file is unusable, so its virtual datasets are "
                                    "too (FilterDB.read_layer and read_filters read the shards)")
        f = self._file if self._file is not None else self._open_master()
        if kernel not in f["filters"]:
            raise FilterDBError(f"no {kernel} filters in {self.path}; kernels present: {', '.join(self.kernels) or 'none'}")
        return f["filters"][kernel]

    def has_model(self, model_id: str) -> bool:
        if self.mode == "r":
            return model_id in self._models.index
        return model_id in self._pending or (model_id not in self._dropped and not self._rewrite
                                             and self._state is not None
                                             and model_id in self._index_ids())

    def _index_ids(self) -> set[str]:
        state = self._state
        assert state is not None, "the writer's master state is loaded on open"
        if self._ids is None or self._ids[0] is not state:
            self._ids = (state, set(state.index["model_id"]))
        return self._ids[1]

    def shard_path(self, model_id: str) -> Path:
        return shard_path(self.path, model_id)

    def shard_token(self, model_id: str) -> str:
        """Changes whenever the model is re-extracted: a cache key for anything derived from its filters."""
        row = self.models.loc[model_id]
        return f"{row['weights_sha256']}@{row['extracted_at']}"

    def shard_digest(self, model_id: str) -> str:
        """The recorded digest of the model's shard (tables and filters): changes with any change of either."""
        value = self._expected_digest(model_id)
        if value is None:
            value = shard_facts(self.shard_path(model_id))[1]
        return f"{integrity.ALGORITHM}:{value:016x}"

    def _expected_digest(self, model_id: str) -> int | None:
        """The digest the index (or this writer) records of the model's shard; None where none is recorded."""
        if self.mode == "r":
            return self._digests.get(model_id)
        part = self._pending.get(model_id)
        if part is not None:
            return part.digest
        if self._state is not None and not self._rewrite and "digest" in self._state.index:
            index = self._state.index
            found = index["digest"].to_numpy()[index["model_id"].to_numpy() == model_id]
            if len(found) and found[0]:
                return int(found[0], 16)
        return None

    def _shard(self, model_id: str) -> h5py.File:
        f = self._shards.get(model_id)
        if f is None:
            if len(self._shards) >= 64:
                oldest = next(iter(self._shards))
                self._shards.pop(oldest).close()
                self._forget_check(oldest)
            path = self.shard_path(model_id)
            try:
                f = h5py.File(path, "r")
            except (OSError, ValueError, RuntimeError) as exc:
                what = "the shard file is missing" if not path.exists() else "the shard cannot be opened"
                raise integrity.read_error(path, exc, what) from None
            try:
                self._checks[model_id] = integrity.ShardCheck(f, path, model_id, self._model_name(model_id),
                                                              self._expected_digest(model_id))
            except BaseException:
                f.close()
                raise
            self._shards[model_id] = f
        return f

    def _model_name(self, model_id: str) -> str:
        """The model's name, for messages (a dict of the current table: ``.loc`` per shard cost more than its read)."""
        models = self.models
        if self._names is None or self._names[0] is not models:
            self._names = (models, dict(zip(models["model_id"], models["name"])))
        return str(self._names[1].get(model_id, model_id))

    def _filter_dataset(self, model_id: str, kernel: str) -> tuple[h5py.Dataset, integrity.ShardCheck]:
        self._shard(model_id)
        try:
            check = self._checks[model_id]
            return check.dataset(kernel), check
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            raise integrity.read_error(self.shard_path(model_id), exc, f"no readable {kernel} filters") from None

    def _forget_shard(self, model_id: str) -> None:
        """Close the model's open shard (it is being replaced or removed)."""
        f = self._shards.pop(model_id, None)
        self._forget_check(model_id)
        if f is not None:
            f.close()
        fd = self._fds.pop(model_id, None)
        if fd is not None:
            os.close(fd)

    def _forget_check(self, model_id: str) -> None:
        check = self._checks.pop(model_id, None)
        if check is not None:
            check.close()

    def _span(self, model_id: str, kernel: str) -> tuple[int, int]:
        """(first row of a model's filters of one kernel size in /filters/<kernel>, their byte offset in its shard or -1)."""
        if self._spans is None:
            offsets = self._offsets()
            self._spans = {key: (start, offsets.get(key, -1)) for key, start in
                           self.layers.groupby(["model_id", "kernel"], sort=False)["start"].min().items()}
        return self._spans[(model_id, kernel)]

    def _offsets(self) -> dict[tuple[str, str], int]:
        if self.mode == "r":
            return {}
        if self._base_spans is None:
            self._base_spans = {}
            if not self._rewrite and (self.path / MASTER_NAME).exists():
                with h5py.File(self.path / MASTER_NAME, "r") as f:
                    self._base_spans = read_spans(f)
        offsets = {key: offset for key, (_, offset) in self._base_spans.items() if key[0] not in self._dropped}
        offsets.update({(mid, k): o for mid, part in self._pending.items() for k, o in part.offsets.items()})
        return offsets

    def _read_rows(self, model_id: str, kernel: str, lo: int, hi: int,
                   layers: list[tuple[int, int, str]]) -> np.ndarray:
        """Rows [lo, hi) of /filters/<kernel> (global rows within one model), from its shard, each of
        ``layers`` ((start, stop, name) in global rows, together covering the read) verified against its
        digest before the array is returned: one read at the data's byte offset (large reads hash a private
        mapping instead of copying, ``integrity.read_hashing``), or through HDF5 for another layout. The
        single place filters are read; damage is a ``DamagedDatabaseError`` naming shard, model and layer."""
        recorded = self._read_recorded(model_id, kernel, lo, hi, layers)
        if recorded is not None:
            return recorded
        base, _ = self._span(model_id, kernel)
        dataset, check = self._filter_dataset(model_id, kernel)
        a, b = lo - base, hi - base
        if a < 0 or b < a or b > dataset.shape[0]:
            raise integrity.damaged(self.shard_path(model_id), f"rows {a}:{b} of model {model_id} are outside its "
                                    f"{dataset.shape[0]} {kernel} filters (the master and the shard disagree)")
        try:
            return check.read_verified(dataset, kernel, a, b, [(s - base, e - base, name) for s, e, name in layers])
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise integrity.read_error(self.shard_path(model_id), exc, "the filters cannot be read") from None

    def _read_recorded(self, model_id: str, kernel: str, lo: int, hi: int,
                       layers: list[tuple[int, int, str]]) -> np.ndarray | None:
        """:meth:`_read_rows` from the master's records alone: the shard's bytes at the offset /spans records,
        each layer checked against the digest /layer_digests records of it, no HDF5 open of the shard (which
        costs ~0.7 ms, more than reading a small layer). None when the master records no offset or digest, or
        anything does not match: the caller then reads through the shard and its own records, which say what
        is wrong."""
        if self._layer_digests is None or not layers or hi <= lo:
            return None
        base, offset = self._span(model_id, kernel)
        if offset < 0:
            return None
        if self._digest_of is None:
            layer_rows = self._layers
            self._digest_of = {(k, a): (b, d) for k, a, b, d in zip(layer_rows["kernel"], layer_rows["start"].tolist(),
                                                                    layer_rows["stop"].tolist(),
                                                                    self._layer_digests.tolist())}
        kh, kw = schema.kernel_shape(kernel)
        row_bytes = kh * kw * 4
        hashers, expected = [], []
        for start, stop, _ in layers:
            stop_digest = self._digest_of.get((kernel, start))
            if stop_digest is None or stop_digest[0] != stop or not stop_digest[1]:
                return None
            hashers.append(((start - lo) * row_bytes, (stop - lo) * row_bytes, integrity.ShardCheck.hasher()))
            expected.append(stop_digest[1])
        try:
            fd = self._fd(model_id)
            if fd is None:
                return None
            out = integrity.read_hashing(fd, offset + (lo - base) * row_bytes, (hi - lo, kh, kw), hashers)
        except (OSError, ValueError):
            return None
        if any(hasher.intdigest() != value for (_, _, hasher), value in zip(hashers, expected)):
            return None
        return out

    def _fd(self, model_id: str) -> int | None:
        """A read-only descriptor of the model's shard (the 64 most recently used are kept open); None when the
        file's size or mtime is not what the index records (changed since: it is read through HDF5 and checked whole)."""
        fd = self._fds.pop(model_id, None)
        if fd is None:
            fd = os.open(self.shard_path(model_id), os.O_RDONLY)
            stat = os.fstat(fd)
            if self._indexed.get(model_id) != (stat.st_size, stat.st_mtime_ns):
                os.close(fd)
                return None
            if len(self._fds) >= 64:
                os.close(self._fds.pop(next(iter(self._fds))))
        self._fds[model_id] = fd
        return fd

    def read_layer(self, row: pd.Series) -> np.ndarray:
        """The filters of one layer-table row, float32 (n, kh, kw), read from the model's shard and verified."""
        start, stop = int(row["start"]), int(row["stop"])
        return self._read_rows(row["model_id"], row["kernel"], start, stop, [(start, stop, row["name"])])

    def read_model(self, model_id: str, kernel: str = "3x3") -> np.ndarray:
        """Every filter of one kernel size of one model, in layer order (each layer verified)."""
        layers = self.layers
        rows = layers[(layers["model_id"] == model_id) & (layers["kernel"] == kernel)]
        if rows.empty:
            return np.empty((0, *schema.kernel_shape(kernel)), np.float32)
        spans = list(zip(rows["start"].tolist(), rows["stop"].tolist(), rows["name"]))
        return self._read_rows(model_id, kernel, min(s for s, _, _ in spans), max(e for _, e, _ in spans), spans)

    def iter_layers(self, layers: pd.DataFrame | None = None) -> Iterator[tuple[pd.Series, np.ndarray]]:
        """Yield (layer row, filters) one layer at a time, in the order of ``layers`` (default: all)."""
        frame = self.layers if layers is None else layers
        for _, row in frame.iterrows():
            yield row, self.read_layer(row)

    def iter_filter_chunks(self, kernel: str = "3x3", layers: pd.DataFrame | None = None,
                           chunk_rows: int = 1 << 20) -> Iterator[np.ndarray]:
        """Yield the filters of the selected layers of one kernel size in chunks of at most ``chunk_rows``
        (a layer of more rows is hashed as it streams: its last chunk comes only once the layer verifies)."""
        frame = self.layers if layers is None else layers
        mine = frame["kernel"].to_numpy() == kernel  # numpy, not pandas: callers pass one layer at a time
        ids, names = frame["model_id"].to_numpy()[mine], frame["name"].to_numpy()[mine]
        starts, stops = frame["start"].to_numpy()[mine].tolist(), frame["stop"].to_numpy()[mine].tolist()
        for mid, name, start, stop in zip(ids, names, starts, stops):
            if stop - start <= chunk_rows:
                yield self._read_rows(mid, kernel, start, stop, [(start, stop, name)])
                continue
            base, _ = self._span(mid, kernel)
            check = self._filter_dataset(mid, kernel)[1]
            hasher = check.hasher()
            for lo in range(start, stop, chunk_rows):
                hi = min(lo + chunk_rows, stop)
                chunk = self._read_rows(mid, kernel, lo, hi, [])
                hasher.update(np.ascontiguousarray(chunk).data.cast("B"))
                if hi == stop:
                    check.verify_streamed(kernel, start - base, stop - base, hasher.intdigest(), name)
                yield chunk

    def read_filters(self, layers: pd.DataFrame, kernel: str = "3x3") -> np.ndarray:
        """The filters of a selection of layers of one kernel size, concatenated in the selection's order."""
        parts = list(self.iter_filter_chunks(kernel, layers))
        if not parts:
            return np.empty((0, *schema.kernel_shape(kernel)), np.float32)
        return np.concatenate(parts)

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    @property
    def cache_dir(self) -> Path:
        """Where derived data (the metrics cache, the divergence basis) lives: the database directory."""
        return self.path

    def export(self, out: str | os.PathLike, models: list[str] | None = None, layers: pd.DataFrame | None = None,
               *, force: bool = False, selection: str = "", layer_selector: str = "") -> Path:
        """Pack the database (or the ``models`` ids, and of them the ``layers`` rows given) into one
        self-contained HDF5 file that ``open_database`` reads (:mod:`filterdb.packed`): the tables with
        the filters copied in (no virtual datasets, no shards beside it). Written under a temporary name;
        an existing file is replaced only with ``force``."""
        from filterdb.packed import write_packed
        return write_packed(self, out, models, layers, force=force, selection=selection,
                            layer_selector=layer_selector)

    # ---------------------------------------------------------------- writing

    def _require_writable(self) -> None:
        if self.mode != "a":
            raise FilterDBError(f"{self.path} is open read-only; open it with mode='a' to change it")

    def register_shards(self) -> None:
        """Pick up shards written by other processes (build workers) and rewrite the master."""
        self._require_writable()
        self._adopting = True
        self._reconcile()
        self._unpublished = True
        self._publish()

    @contextmanager
    def batch(self, max_delay: float = 10.0) -> Iterator["FilterDB"]:
        """Within the block, rewrite the master file at most every ``max_delay`` seconds, and on exit.

        Builds add models in a batch: the master is then published once per interval
        instead of once per model. Nothing is less safe: the shards are the database, a
        reader sees the last master written, and a process killed inside the block leaves
        a master that the next open brings up to date. This object's own tables are always current.
        """
        self._require_writable()
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
        self._require_writable()
        self._adopting = True
        models, layers, offsets, identity = read_verified_shard(self.shard_path(model_id))
        self._add(model_id, models, layers, offsets, identity.digest, _digests_of(identity, layers))

    def add_extracted(self, record: dict, layers: list) -> str:
        """Store an extracted model (a complete model-table row and its ``ExtractedLayer`` list); returns its model_id."""
        self._require_writable()
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
        self._pending[model_id] = Pending(models, layers, (stat.st_size, stat.st_mtime_ns), offsets, digest,
                                          layer_digests)
        self._changed()

    def remove_model(self, model_id: str) -> None:
        self._require_writable()
        if not self.has_model(model_id):
            raise FilterDBError(f"no model {model_id} in {self.path}; 'filterdb info' lists the models")
        self._forget_shard(model_id)
        self._drop(model_id)
        self._changed_tables()
        self._publish()  # the master first: a kill before the unlink leaves a shard the next open adopts again
        self.shard_path(model_id).unlink()



def _is_stale(path: Path) -> bool:
    """Whether a reader should ask for the master to be brought up to date first."""
    state = read_state(path)
    if state is not None and state.version != MASTER_VERSION:
        return _legacy_is_stale(path)
    return not is_current(path, state)


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


def open_database(path: str | os.PathLike, mode: str = "r"):
    """Open a filter database: a directory (``FilterDB``, see ``FilterDB.open``) or, for reading, a
    file written by ``filterdb export`` (``filterdb.packed.PackedDB``, the same reading API)."""
    return FilterDB.open(path, mode)
