"""The filter database: a directory of per-model shard files and one master HDF5 file.

Layout::

    <db>/filterdb.h5            master: /models, /layers and /filters/<kernel> (virtual datasets)
    <db>/shards/<model_id>.h5   one model: /models (1 row), /layers, /filters/<kernel>
    <db>/.lock                  writers take an exclusive lock on it

A shard is written under a temporary name and renamed into place when complete, and
the master is rewritten the same way after every change, so a build killed at any
instant loses at most the model in flight and readers always see a complete file.
The master presents the filters of all shards as one dataset per kernel size through
HDF5 virtual datasets, so ``h5py.File("<db>/filterdb.h5")["filters/3x3"]`` is every
3x3 filter of every model, (N, 3, 3) float32, a layer's rows at ``[start:stop]``.
"""
from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
from torch import nn

from filterdb import integrity, schema
from filterdb.atomic import TMP_SUFFIX, atomic_path, io_failure, remove_stale_temps  # noqa: F401 - TMP_SUFFIX: public name
from filterdb.errors import FilterDBError
from filterdb.extract import ExtractedLayer
from filterdb.h5table import read_table, table_columns, table_frame, write_table
from filterdb.records import extract_loaded, tool_version
from filterdb.sources.base import LoadedModel, ModelSpec

MASTER_NAME = "filterdb.h5"
SHARD_DIR = "shards"
DATABASE_ENCODING = "filterdb-database"
SHARD_ENCODING = "filterdb-shard"
FILTERS_ENCODING = "filter-array"


def _root_attrs(f: h5py.File, encoding: str) -> None:
    f.attrs["format"] = schema.FORMAT_NAME
    f.attrs["format_version"] = schema.FORMAT_VERSION
    f.attrs["encoding-type"] = encoding
    f.attrs["encoding-version"] = schema.FORMAT_VERSION
    f.attrs["tool_version"] = tool_version()


# --------------------------------------------------------------------------- shards

def shard_path(db_dir: Path, model_id: str) -> Path:
    return Path(db_dir) / SHARD_DIR / f"{model_id}.h5"


def write_shard(db_dir: str | os.PathLike, record: dict, layers: list[ExtractedLayer]
                ) -> tuple[Path, pd.DataFrame, pd.DataFrame, integrity.ShardIdentity]:
    """Write one model's shard atomically: a temporary file, renamed into place once complete.

    ``record`` is a complete model-table row (``model_record``). Filters of one layer are
    contiguous and out-channel-major; ``start``/``stop`` in the shard's layer table are
    local to the shard. NaN/Inf weights raise ``FilterDBError`` naming the layer, and no
    shard is left. The shard records the digests of its tables and of each layer's filters
    (``filterdb.integrity``). Returns the shard's path, its model and layer tables and its identity.
    """
    final = shard_path(Path(db_dir), record["model_id"])
    final.parent.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    rows = []
    kernel_rows: dict[str, list[tuple[int, int]]] = {}
    for i, layer in enumerate(layers):
        start = sizes.get(layer.kernel, 0)
        sizes[layer.kernel] = start + layer.info["n_filters"]
        rows.append({**layer.info, "model_id": record["model_id"], "start": start, "stop": sizes[layer.kernel]})
        kernel_rows.setdefault(layer.kernel, []).append((i, start, sizes[layer.kernel]))
    model_columns = table_columns([record], schema.MODEL_COLUMNS)
    layer_columns = table_columns(rows, schema.LAYER_COLUMNS)
    tables_digest = integrity.table_digest([(model_columns, schema.MODEL_COLUMNS), (layer_columns, schema.LAYER_COLUMNS)])
    try:
        return _write_shard_file(final, record, layers, sizes, kernel_rows, model_columns, layer_columns, tables_digest)
    except (OSError, RuntimeError) as exc:  # HDF5 reports a failed write (a full disk) as RuntimeError
        raise FilterDBError(f"{final}: cannot write the shard of {record['key']} ({io_failure(exc)}); nothing of it "
                            "was stored - free space or fix the directory and rerun") from None


def _write_shard_file(final: Path, record: dict, layers: list[ExtractedLayer], sizes: dict[str, int],
                      kernel_rows: dict, model_columns: dict, layer_columns: dict, tables_digest: int):
    with atomic_path(final) as tmp:
        with h5py.File(tmp, "w", libver="latest") as f:
            _root_attrs(f, SHARD_ENCODING)
            write_table(f, "models", model_columns, schema.MODEL_COLUMNS, index="model_id")
            write_table(f, "layers", layer_columns, schema.LAYER_COLUMNS)
            group = f.create_group("filters")
            shapes = {layer.kernel: (layer.info["kernel_h"], layer.info["kernel_w"]) for layer in layers}
            offsets = {kernel: _allocate_contiguous(group, kernel, (n, *shapes[kernel])) for kernel, n in sizes.items()}
        # The filter datasets are contiguous, unfiltered little-endian float32 at known file
        # offsets: a thread writes the bytes there directly (HDF5's own write path is 2x
        # slower) while this one checks the weights for NaN/Inf.
        with ThreadPoolExecutor(max_workers=1) as writer:
            runs = {offsets[kernel]: [layer for layer in layers if layer.kernel == kernel] for kernel in sizes}
            written = writer.submit(_write_filter_bytes, tmp, runs)
            try:
                digests = []
                for layer in layers:
                    layer.check_finite()
                    digests.append(integrity.filter_digest(layer.filters()))
                models = table_frame(model_columns, schema.MODEL_COLUMNS, "model_id")
                layer_frame = table_frame(layer_columns, schema.LAYER_COLUMNS)
            finally:
                written.result()
        with h5py.File(tmp, "r+", libver="latest") as f:
            shard_digest = integrity.write_shard_digests(f, record["model_id"], tables_digest, kernel_rows, digests)
        size = tmp.stat().st_size
    return final, models, layer_frame, integrity.ShardIdentity(record["model_id"], size, shard_digest)


def _write_filter_bytes(path: Path, runs: dict[int, list[ExtractedLayer]]) -> None:
    """Write each run of layers (file offset -> the layers whose filters follow one another
    there) with one ``pwritev``: this thread then needs Python's GIL only between runs,
    and the other thread does not have to hand it over every few megabytes."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, layers in runs.items():
            pieces = [memoryview(np.ascontiguousarray(layer.filters(), dtype="<f4")).cast("B") for layer in layers]
            pieces = [piece for piece in pieces if len(piece)]
            while pieces:
                written = os.pwritev(fd, pieces[:_IOV_MAX], offset)
                offset += written
                while pieces and written >= len(pieces[0]):
                    written -= len(pieces.pop(0))
                if written:  # a partial write stopped inside this piece
                    pieces[0] = pieces[0][written:]
    finally:
        os.close(fd)


_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024


def _allocate_contiguous(group: h5py.Group, name: str, shape: tuple[int, ...]) -> int:
    """Create a contiguous float32 dataset, allocated now and never filled; return its file offset."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_layout(h5py.h5d.CONTIGUOUS)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    space = h5py.h5s.create_simple(shape)
    dataset = h5py.Dataset(h5py.h5d.create(group.id, name.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=dcpl))
    dataset.attrs["encoding-type"] = FILTERS_ENCODING
    dataset.attrs["encoding-version"] = schema.FORMAT_VERSION
    return dataset.id.get_offset() or 0  # None only for an empty dataset: nothing to write there


def read_shard(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, integrity.ShardIdentity]:
    """A shard's model and layer tables, verified against their digests, and its identity."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("encoding-type") != SHARD_ENCODING:
                raise integrity.damaged(path, "not a filterdb shard (a stray file in the shards folder)")
            models, layers = read_table(f["models"], schema.MODEL_COLUMNS), read_table(f["layers"], schema.LAYER_COLUMNS)
            identity = integrity.check_shard_tables(f, path, models, layers, (schema.MODEL_COLUMNS, schema.LAYER_COLUMNS))
    except FilterDBError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
        raise integrity.read_error(path, exc, "the shard cannot be read") from None
    return models, layers, identity


def read_shard_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_shard(path)[:2]


# --------------------------------------------------------------------------- the database

class FilterDB:
    """A filter database directory. Open with ``open_database(path)`` (read) or ``FilterDB.open(path, "a")``."""

    def __init__(self, path: Path, mode: str, read_around: bool = False):
        self.path = Path(path)
        self.mode = mode
        self._lock_fh = None
        self._file: h5py.File | None = None
        self._shards: dict[str, h5py.File] = {}
        self._checks: dict[str, integrity.ShardCheck] = {}  # model_id -> the digests of its open shard
        self._identities: dict[str, integrity.ShardIdentity] = {}  # what the master records of each shard
        self._read_around = read_around  # reading: the master is unusable, the tables come from the shards
        self._stale_tables = False  # self._parts changed since self._models/_layers were assembled
        self._unpublished = False  # ... since the master file was written
        self._publish_every: float | None = None  # seconds, inside batch(); None: after every change
        self._published_at = time.monotonic()
        self._load()

    # ---------------------------------------------------------------- opening

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r") -> "FilterDB":
        """Open a database directory. ``mode``: "r" read only, "a" create if missing and write."""
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise FilterDBError(f"{path} is a file, not a filterdb database directory; choose another --db path")
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
        return cls(path, mode)

    @classmethod
    def _open_reader(cls, path: Path) -> "FilterDB":
        """Open for reading: a stale master is brought up to date, a damaged or missing one rebuilt
        from the shards; where that is impossible (a writer holds the lock, the disk is read-only or
        full) the last good master is read, or the shards themselves, with one line saying so."""
        master = path / MASTER_NAME
        try:
            state = integrity.master_state(master, path / SHARD_DIR)
            if state == "ok":
                return cls(path, "r")
        except integrity.MasterDamaged as exc:
            state = str(exc)
        try:  # a build was killed (or is running) between a shard and the master, or the master is damaged
            cls.open(path, "a").close()  # says so in one line if the master was damaged
            return cls(path, "r")
        except integrity.DamagedDatabaseError:
            raise
        except FilterDBError:
            pass  # a writer is running (it will publish), or the directory is not writable
        if state == "stale":
            return cls(path, "r")  # the last complete master
        if state == "absent":
            integrity.notice(f"{path}: no master file yet (a build is under way?); reading the shards directly")
        else:
            integrity.notice(f"{state.split('; ')[0]}; reading the shards directly ({integrity.REPAIR_HINT})")
        return cls(path, "r", read_around=True)

    def _load(self) -> None:
        if self.mode == "a":
            try:
                self._lock_fh = open(self.path / ".lock", "a+")
            except OSError as exc:
                raise FilterDBError(f"{self.path / '.lock'}: cannot open the writer lock ({exc.strerror}); "
                                    "it must be a writable file (remove what is there)") from None
            try:
                fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                self._lock_fh.close()
                self._lock_fh = None
                raise FilterDBError(f"{self.path} is being written by another filterdb process; "
                                    "wait for it to finish or use another --db") from exc
            try:
                remove_stale_temps(self.path / SHARD_DIR)  # left by a killed build: never complete
                remove_stale_temps(self.path)
                previous = self._previous_records()
                self._parts = self._scan_shards()
                missing = sorted(set(previous or {}) - set(self._parts))
                if missing:
                    raise integrity.DamagedDatabaseError(
                        f"{shard_path(self.path, missing[0])}: the shard file of model(s) {', '.join(missing[:5])} "
                        f"is missing (the master lists it); {integrity.REPAIR_HINT}, then rebuild those models")
                self._stale_tables = True
                self._sync()
                if previous != self._identities:
                    self._write_master()
            except BaseException:
                self._lock_fh.close()
                self._lock_fh = None
                raise
        elif self._read_around:
            self._parts = self._scan_shards()
            self._stale_tables = True
            self._sync()
            return
        self._open_master()

    def _previous_records(self) -> dict[str, integrity.ShardIdentity] | None:
        """The shard records of the master on disk, or None if there is none or it is damaged (said in one line)."""
        try:
            if integrity.master_state(self.path / MASTER_NAME, self.path / SHARD_DIR) == "absent":
                return None
            with h5py.File(self.path / MASTER_NAME, "r") as f:
                records = integrity.read_master_records(f, self.path / MASTER_NAME)
                models, layers = read_table(f["models"], schema.MODEL_COLUMNS), read_table(f["layers"], schema.LAYER_COLUMNS)
                integrity.check_master_tables(f, self.path / MASTER_NAME, integrity.table_digest(
                    [(models, schema.MODEL_COLUMNS), (layers, schema.LAYER_COLUMNS)]), records)
            return records
        except integrity.MasterDamaged as exc:
            integrity.notice(f"{str(exc).split('; ')[0]}; rebuilding it from the shards")
            return None
        except integrity.DamagedDatabaseError as exc:
            if "is missing" in str(exc):
                raise
            integrity.notice(f"{str(exc).split('; ')[0]}; rebuilding it from the shards")
            return None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
            integrity.notice(f"{integrity.read_error(self.path / MASTER_NAME, exc, 'the master cannot be read')}"
                             .split("; ")[0] + "; rebuilding it from the shards")
            return None

    def _scan_shards(self) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
        """model_id -> (model row, layer rows with shard-local start/stop) of every complete shard,
        each verified against its digests (their identities go to ``self._identities``)."""
        parts, identities = {}, {}
        for path in sorted((self.path / SHARD_DIR).glob("*.h5")):
            m, l, identity = read_shard(path)
            parts[path.stem] = (m, l)
            identities[path.stem] = identity
        self._identities = identities
        return parts

    @staticmethod
    def _assemble(parts: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Concatenate per-model tables in key order; turn shard-local start/stop into global rows."""
        if not parts:
            empty_models = pd.DataFrame({c.name: pd.Series(dtype=c.numpy_dtype) for c in schema.MODEL_COLUMNS})
            empty_layers = pd.DataFrame({c.name: pd.Series(dtype=c.numpy_dtype) for c in schema.LAYER_COLUMNS})
            return empty_models.set_index("model_id", drop=False).rename_axis(None), empty_layers
        pairs = sorted(parts.values(), key=lambda p: p[0]["key"].iloc[0])
        model_frame = pd.concat([m for m, _ in pairs])
        model_frame.index = pd.Index(model_frame["model_id"].to_numpy(dtype=object), dtype=object)
        layer_frame = pd.concat([l for _, l in pairs], ignore_index=True)
        kernels, stops = layer_frame["kernel"].to_numpy(), layer_frame["stop"].to_numpy()
        shift = np.zeros(len(layer_frame), np.int64)  # rows of each kernel in the models before
        offsets: dict[str, int] = {}
        row = 0
        for _, part in pairs:
            span = slice(row, row + len(part))
            for kernel in set(kernels[span]):
                mine = kernels[span] == kernel
                base = offsets.get(kernel, 0)
                shift[span][mine] = base
                offsets[kernel] = base + int(stops[span][mine].max())
            row = span.stop
        layer_frame["start"] += shift
        layer_frame["stop"] += shift
        return model_frame, layer_frame

    def _write_master(self) -> None:
        """Rewrite the master file (tables + virtual datasets) under a temporary name, then rename it."""
        final = self.path / MASTER_NAME
        try:
            with atomic_path(final) as tmp, h5py.File(tmp, "w", libver="latest") as f:
                _root_attrs(f, DATABASE_ENCODING)
                f.attrs["n_models"] = len(self._models)
                write_table(f, "models", self._models, schema.MODEL_COLUMNS, index="model_id")
                write_table(f, "layers", self._layers, schema.LAYER_COLUMNS)
                group = f.create_group("filters")
                by_kernel: dict[str, list[tuple[str, int, int]]] = {}
                for (mid, kernel), (start, stop) in self._spans.items():
                    by_kernel.setdefault(kernel, []).append((mid, start, stop))
                for kernel, spans in sorted(by_kernel.items()):
                    kh, kw = map(int, kernel.split("x"))
                    total = max(stop for _, _, stop in spans)
                    layout = h5py.VirtualLayout(shape=(total, kh, kw), dtype=np.float32)
                    for mid, start, stop in spans:
                        source = h5py.VirtualSource(f"{SHARD_DIR}/{mid}.h5", f"filters/{kernel}",
                                                    shape=(stop - start, kh, kw))
                        layout[start:stop] = source
                    ds = group.create_virtual_dataset(kernel, layout, fillvalue=np.nan)
                    ds.attrs["encoding-type"] = FILTERS_ENCODING
                    ds.attrs["encoding-version"] = schema.FORMAT_VERSION
                integrity.write_master_records(f, {m: self._identities[m] for m in self._models.index}, integrity.table_digest(
                    [(self._models, schema.MODEL_COLUMNS), (self._layers, schema.LAYER_COLUMNS)]))
                f.close()
                if self._file is not None:  # published on leaving the block: let go of the old master first
                    self._file.close()
                    self._file = None
        except (OSError, RuntimeError) as exc:  # HDF5 reports a failed write (a full disk) as RuntimeError
            raise FilterDBError(f"{final}: cannot write the master file ({io_failure(exc)}); the shards (every "
                                "model added) are safe and the last good master still reads - free space or fix "
                                "the directory and rerun") from None

    def _open_master(self) -> None:
        master = self.path / MASTER_NAME
        try:
            self._file = h5py.File(master, "r")
            if self._file.attrs.get("format") != schema.FORMAT_NAME:
                raise integrity.MasterDamaged(f"{master}: not a filterdb database file; {integrity.REPAIR_HINT}")
            if self.mode == "r":
                self._models = read_table(self._file["models"], schema.MODEL_COLUMNS)
                self._layers = read_table(self._file["layers"], schema.LAYER_COLUMNS)
                self._identities = integrity.read_master_records(self._file, master)
                integrity.check_master_tables(self._file, master, integrity.table_digest(
                    [(self._models, schema.MODEL_COLUMNS), (self._layers, schema.LAYER_COLUMNS)]), self._identities)
                self._spans = _model_spans(self._layers)
        except integrity.DamagedDatabaseError as exc:
            self.close()
            raise integrity.MasterDamaged(str(exc)) from None
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
            self.close()
            raise integrity.MasterDamaged(str(integrity.read_error(master, exc, "the master cannot be read"))) from None

    def close(self) -> None:
        if self._unpublished and self._lock_fh is not None:
            self._publish()
        for f in self._shards.values():
            f.close()
        self._shards.clear()
        for mid in list(self._checks):
            self._forget_check(mid)
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock_fh is not None:
            self._lock_fh.close()
            self._lock_fh = None

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
        self._sync()
        return self._models

    @property
    def layers(self) -> pd.DataFrame:
        """The layer table; start/stop index /filters/<kernel> of the master file."""
        self._sync()
        return self._layers

    @property
    def kernels(self) -> list[str]:
        return sorted(self.layers["kernel"].unique(), key=lambda k: (int(k.split("x")[0]) * int(k.split("x")[1]), k))

    def filters(self, kernel: str = "3x3") -> h5py.Dataset:
        """The virtual dataset of all filters of one kernel size (read lazily, slice what you need)."""
        if self._unpublished:
            self._publish()
        if self._file is None:
            raise integrity.damaged(self.path / MASTER_NAME, "the master file is unusable, so its virtual datasets are "
                                    "too (FilterDB.read_layer and read_filters read the shards)")
        if kernel not in self._file["filters"]:
            raise FilterDBError(f"no {kernel} filters in {self.path}; kernels present: {', '.join(self.kernels) or 'none'}")
        return self._file["filters"][kernel]

    def has_model(self, model_id: str) -> bool:
        return model_id in self.models.index

    def shard_path(self, model_id: str) -> Path:
        return shard_path(self.path, model_id)

    def shard_token(self, model_id: str) -> str:
        """Changes whenever the model is re-extracted: a cache key for anything derived from its filters."""
        row = self.models.loc[model_id]
        return f"{row['weights_sha256']}@{row['extracted_at']}"

    def shard_digest(self, model_id: str) -> str:
        """The recorded digest of the model's shard (tables and filters): changes with any change of either."""
        self._sync()
        return f"{integrity.ALGORITHM}:{self._identities[model_id].digest:016x}"

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
                record = self._identities.get(model_id)
                self._checks[model_id] = integrity.ShardCheck(f, path, model_id, str(self.models.loc[model_id, "name"]),
                                                              record.digest if record else None)
            except BaseException:
                f.close()
                raise
            self._shards[model_id] = f
        return f

    def _filter_dataset(self, model_id: str, kernel: str) -> tuple[h5py.Dataset, integrity.ShardCheck]:
        f = self._shard(model_id)
        try:
            return f["filters"][kernel], self._checks[model_id]
        except (KeyError, OSError, ValueError, RuntimeError) as exc:
            raise integrity.read_error(self.shard_path(model_id), exc, f"no readable {kernel} filters") from None

    def _read_rows(self, dataset: h5py.Dataset, out: np.ndarray, lo: int, hi: int, model_id: str) -> None:
        """Read local rows [lo, hi) of a shard's filter dataset into ``out`` (HDF5 errors: a damaged shard)."""
        if not len(out):
            return
        if hi > dataset.shape[0] or lo < 0:
            raise integrity.damaged(self.shard_path(model_id), f"rows {lo}:{hi} of model {model_id} are outside its "
                                    f"{dataset.shape[0]} filters (the master and the shard disagree)")
        try:
            dataset.read_direct(out, source_sel=np.s_[lo:hi])
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise integrity.read_error(self.shard_path(model_id), exc, "the filters cannot be read") from None

    def _read_checked(self, model_id: str, kernel: str, lo: int, hi: int, layers: list[tuple[int, int, str]]
                      ) -> np.ndarray:
        """Local rows [lo, hi) of a model's filters, each of ``layers`` (local start, stop, name) verified."""
        dataset, check = self._filter_dataset(model_id, kernel)
        if hi > dataset.shape[0] or lo < 0 or hi < lo:
            raise integrity.damaged(self.shard_path(model_id), f"rows {lo}:{hi} of model {model_id} are outside its "
                                    f"{dataset.shape[0]} filters (the master and the shard disagree)")
        try:
            return check.read_verified(dataset, kernel, lo, hi, layers)
        except (OSError, ValueError, TypeError, RuntimeError) as exc:
            raise integrity.read_error(self.shard_path(model_id), exc, "the filters cannot be read") from None

    def read_layer(self, row: pd.Series) -> np.ndarray:
        """The filters of one layer-table row, float32 (n, kh, kw), read from the model's shard and verified."""
        self._sync()
        mid, kernel = row["model_id"], row["kernel"]
        base = self._spans[(mid, kernel)][0]
        lo, hi = int(row["start"]) - base, int(row["stop"]) - base
        return self._read_checked(mid, kernel, lo, hi, [(lo, hi, row["name"])])

    def read_model(self, model_id: str, kernel: str = "3x3") -> np.ndarray:
        """Every filter of one kernel size of one model, in layer order (each layer verified)."""
        layers = self.layers
        rows = layers[(layers["model_id"] == model_id) & (layers["kernel"] == kernel)]
        if rows.empty:
            return np.empty((0, *map(int, kernel.split("x"))), np.float32)
        base = self._spans[(model_id, kernel)][0]
        spans = list(zip(rows["start"].to_numpy() - base, rows["stop"].to_numpy() - base, rows["name"]))
        return self._read_checked(model_id, kernel, 0, int(max(stop for _, stop, _ in spans)), spans)

    def iter_layers(self, layers: pd.DataFrame | None = None) -> Iterator[tuple[pd.Series, np.ndarray]]:
        """Yield (layer row, filters) one layer at a time, in the order of ``layers`` (default: all)."""
        frame = self.layers if layers is None else layers
        for _, row in frame.iterrows():
            yield row, self.read_layer(row)

    def iter_filter_chunks(self, kernel: str = "3x3", layers: pd.DataFrame | None = None,
                           chunk_rows: int = 1 << 20) -> Iterator[np.ndarray]:
        """Yield the filters of the selected layers of one kernel size in chunks of at most ``chunk_rows``."""
        frame = self.layers if layers is None else layers
        frame = frame[frame["kernel"] == kernel]
        self._sync()
        for _, row in frame.iterrows():
            mid = row["model_id"]
            base = self._spans[(mid, kernel)][0]
            start, stop = int(row["start"]) - base, int(row["stop"]) - base
            if stop - start <= chunk_rows:
                yield self._read_checked(mid, kernel, start, stop, [(start, stop, row["name"])])
                continue
            dataset, check = self._filter_dataset(mid, kernel)
            hasher = check.hasher()
            for lo in range(start, stop, chunk_rows):  # the last chunk is yielded only once the layer verifies
                hi = min(lo + chunk_rows, stop)
                chunk = np.empty((hi - lo, *dataset.shape[1:]), np.float32)
                self._read_rows(dataset, chunk, lo, hi, mid)
                hasher.update(memoryview(chunk).cast("B"))
                if hi == stop:
                    check.verify_streamed(kernel, start, stop, hasher.intdigest(), row["name"])
                yield chunk

    def read_filters(self, layers: pd.DataFrame, kernel: str = "3x3") -> np.ndarray:
        """The filters of a selection of layers of one kernel size, concatenated in the selection's order."""
        parts = list(self.iter_filter_chunks(kernel, layers))
        if not parts:
            return np.empty((0, *map(int, kernel.split("x"))), np.float32)
        return np.concatenate(parts)

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def export(self, out: str | os.PathLike, chunk_rows: int = 1 << 20) -> Path:
        """Pack the database into one self-contained HDF5 file for publication: the master's
        layout (root attributes, /models, /layers, /filters/<kernel>) with the filters copied
        in (no virtual datasets, no shards beside it). Written under a temporary name."""
        out = Path(out).expanduser()
        if out.is_dir():
            raise FilterDBError(f"{out} is a directory; give the path of the .h5 file to write")
        try:
            with atomic_path(out) as tmp, h5py.File(tmp, "w", libver="latest") as f:
                _root_attrs(f, DATABASE_ENCODING)
                f.attrs["n_models"] = len(self.models)
                f.attrs["packed"] = True
                write_table(f, "models", self.models, schema.MODEL_COLUMNS, index="model_id")
                write_table(f, "layers", self.layers, schema.LAYER_COLUMNS)
                group = f.create_group("filters")
                layers = self.layers.sort_values("start", kind="stable")
                for kernel in self.kernels:
                    rows = layers[layers["kernel"] == kernel]
                    kh, kw = map(int, kernel.split("x"))
                    target = group.create_dataset(kernel, shape=(int(rows["stop"].max()), kh, kw), dtype=np.float32)
                    target.attrs["encoding-type"] = FILTERS_ENCODING
                    target.attrs["encoding-version"] = schema.FORMAT_VERSION
                    for _, row in rows.iterrows():  # through the shards, each layer verified (not the VDS)
                        at = int(row["start"])
                        for chunk in self.iter_filter_chunks(kernel, rows.loc[[row.name]], chunk_rows):
                            target[at:at + len(chunk)] = chunk
                            at += len(chunk)
        except (OSError, RuntimeError) as exc:
            raise FilterDBError(f"{out}: cannot write the export ({io_failure(exc)}); choose a writable path") from None
        return out

    # ---------------------------------------------------------------- writing

    def _require_writable(self) -> None:
        if self.mode != "a":
            raise FilterDBError(f"{self.path} is open read-only; open it with mode='a' to change it")

    def register_shards(self) -> None:
        """Pick up shards written by other processes (build workers) and rewrite the master."""
        self._require_writable()
        self._parts = self._scan_shards()
        self._stale_tables = self._unpublished = True
        self._publish()

    @contextmanager
    def batch(self, max_delay: float = 10.0) -> Iterator["FilterDB"]:
        """Within the block, rewrite the master file at most every ``max_delay`` seconds, and on exit.

        Builds add models in a batch: the master (tables and virtual datasets of every
        model) is then rewritten once per interval instead of once per model. Nothing is
        less safe: the shards are the database, a reader sees the last master written, and
        a process killed inside the block leaves a master that the next open rebuilds.
        This object's own tables are always current.
        """
        self._require_writable()
        before = self._publish_every
        self._publish_every = max_delay
        try:
            yield self
        finally:
            self._publish_every = before
            if self._unpublished and before is None:
                self._publish()

    def _changed(self) -> None:
        """The shards changed: publish now, or later inside ``batch``."""
        self._stale_tables = self._unpublished = True
        if self._publish_every is None or time.monotonic() - self._published_at >= self._publish_every:
            self._publish()

    def _sync(self) -> None:
        """Bring the in-memory tables up to date with the shards (without writing the master)."""
        if self._stale_tables:
            self._models, self._layers = self._assemble(self._parts)
            self._spans = _model_spans(self._layers)
            self._stale_tables = False

    def _publish(self) -> None:
        self._sync()
        self._write_master()
        self._open_master()
        self._unpublished = False
        self._published_at = time.monotonic()

    def adopt_shard(self, model_id: str) -> None:
        """Register a shard that another process (a build worker) wrote into this database."""
        self._require_writable()
        models, layers, identity = read_shard(self.shard_path(model_id))
        self._parts[model_id] = (models, layers)
        self._identities[model_id] = identity
        self._forget_shard(model_id)
        self._changed()

    def add_extracted(self, record: dict, layers: list[ExtractedLayer]) -> str:
        """Store an extracted model (a complete model-table row and its layers); returns its model_id."""
        self._require_writable()
        self._forget_shard(record["model_id"])
        _, models, layer_rows, identity = write_shard(self.path, record, layers)
        self._parts[record["model_id"]] = (models, layer_rows)
        self._identities[record["model_id"]] = identity
        self._changed()
        return record["model_id"]

    def add_module(self, module: nn.Module | list[nn.Module], *, source: str, name: str,
                   input_shape: tuple[int, int, int], record: dict | None = None,
                   weights_path: str | os.PathLike | None = None) -> str:
        """Extract a network (or the members of an ensemble) and store it; returns its model_id."""
        members = module if isinstance(module, list) else [module]
        spec = ModelSpec(source, name, record=dict(record or {}))
        loaded = LoadedModel(spec, members, tuple(input_shape), Path(weights_path) if weights_path else None)
        return self.add_extracted(*extract_loaded(loaded))

    def remove_model(self, model_id: str) -> None:
        self._require_writable()
        if model_id not in self.models.index:
            raise FilterDBError(f"no model {model_id} in {self.path}; 'filterdb info' lists the models")
        self._forget_shard(model_id)
        del self._parts[model_id]
        self._stale_tables = self._unpublished = True
        self._publish()  # the master first: a kill before the unlink leaves a shard the next open adopts again
        self.shard_path(model_id).unlink()
        self._identities.pop(model_id, None)

    def _forget_shard(self, model_id: str) -> None:
        """Close the model's open shard (it is being replaced or removed)."""
        f = self._shards.pop(model_id, None)
        self._forget_check(model_id)
        if f is not None:
            f.close()

    def _forget_check(self, model_id: str) -> None:
        check = self._checks.pop(model_id, None)
        if check is not None:
            check.close()


def _model_spans(layers: pd.DataFrame) -> dict[tuple[str, str], tuple[int, int]]:
    """(model_id, kernel) -> the rows [start, stop) of that model's filters in /filters/<kernel>."""
    spans: dict[tuple[str, str], tuple[int, int]] = {}
    columns = (layers[name].to_numpy() for name in ("model_id", "kernel", "start", "stop"))
    for mid, kernel, start, stop in zip(*columns):
        lo, hi = spans.get((mid, kernel), (start, stop))
        spans[(mid, kernel)] = (int(min(lo, start)), int(max(hi, stop)))
    return spans



def open_database(path: str | os.PathLike, mode: str = "r") -> FilterDB:
    """Open a filter database directory (see ``FilterDB.open``)."""
    return FilterDB.open(path, mode)
