"""The packed database: one self-contained, read-only HDF5 file (``filterdb export``).

Layout (root ``encoding-type`` ``filterdb-database``, attribute ``packed`` true)::

    /models                 the model table (filterdb.schema.MODEL_COLUMNS), one row per model
    /layers                 the layer table; start/stop index /filters/<kernel> of this file
    /filters/<kernel>       (N, kh, kw) float32, the filters copied in (no virtual datasets, no
                            shards beside it), chunked (about 256 KiB of filters a chunk) with
                            HDF5's Fletcher-32 filter, so that any HDF5 reader (h5py alone)
                            raises on a damaged chunk instead of returning wrong filters;
                            attributes layer_starts, layer_stops, layer_digests: the xxh3-64
                            digest of each layer's rows
    /model_digests          model_id, digest: each model's identity (its source shard digest
                            combined with the digests of its exported layers)

Format versions (root ``encoding-version``): 1.0 wrote /filters/<kernel> contiguous and
unfiltered; 1.1 (``PACKED_VERSION``) chunked with Fletcher-32. Both read the same way (HDF5
hides the layout), and filterdb's own digests are checked on either.

The root attribute ``tables_digest`` covers both tables and /model_digests; a reader checks
it on open and each layer's digest on every read, as for a database directory.
:class:`PackedDB` reads the file with the reading API every database shares
(:class:`filterdb.reading.DatabaseReading`: models, layers, read_layer, iter_filter_chunks, ...), so ``open_database("x.h5")`` serves every read-only
command and the figures. Derived data (the metrics cache, the divergence basis) cannot live
beside a single file: it is kept in ``$FILTERDB_HOME/cache/<tables digest>/`` (``cache_dir``),
keyed by the file's content, so a copy of the file anywhere shares it and a different file
never does. Deleting that folder is always safe.

This module reads and writes with h5py, numpy and pandas only.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import xxhash

from filterdb import integrity, paths, schema
from filterdb.atomic import atomic_path, io_failure
from filterdb.errors import FilterDBError
from filterdb.h5table import read_table, write_table
from filterdb.master import DATABASE_ENCODING, MASTER_NAME
from filterdb.reading import DatabaseReading
from filterdb.shards import FILTERS_ENCODING, root_attrs
from filterdb.versions import check_readable

DIGESTS = "model_digests"
CACHE_DIR = "cache"
PACKED_VERSION = "1.1"
CHUNK_BYTES = 256 << 10  # filters per chunk of /filters/<kernel>: about this many bytes (bench/bench_fletcher.py)
CHUNK_CACHE_BYTES = 4 * CHUNK_BYTES  # a reader's HDF5 chunk cache: a layer read twice is checksummed once


def chunk_rows(kh: int, kw: int, n: int, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Filters per chunk of an (n, kh, kw) float32 dataset: about ``chunk_bytes``, at most n, at least 1."""
    return max(1, min(n, chunk_bytes // (kh * kw * 4)))


# ---------------------------------------------------------------------------- writing

def write_packed(db, out: str | os.PathLike, models: list[str] | None = None, layers: pd.DataFrame | None = None,
                 *, force: bool = False, selection: str = "", layer_selector: str = "",
                 chunk_bytes: int = CHUNK_BYTES) -> Path:
    """Pack ``models`` (ids; default all) of a database (a ``FilterDB`` or a ``PackedDB``) and, of
    them, the ``layers`` rows given (default: every layer) into one file ``out``, written under a
    temporary name and renamed into place. ``n_layers``/``n_filters`` of the model rows count what
    the file holds; ``selection`` and ``layer_selector`` are recorded as root attributes. ``chunk_bytes``
    sizes the filter datasets' chunks (0: contiguous without checksums, format 1.0's layout, for
    bench/bench_fletcher.py)."""
    out = Path(out).expanduser()
    if out.is_dir():
        raise FilterDBError(f"{out} is a directory; give the path of the .h5 file to write")
    if out.exists() and not force:
        raise FilterDBError(f"{out} exists; pass --force to overwrite it, or choose another path")
    if models is not None:
        unknown = [m for m in models if m not in db.models.index]
        if unknown:
            raise FilterDBError(f"no model {unknown[0]!r} in {db.path} to export; 'filterdb info' lists the models")
    model_rows = db.models if models is None else db.models.loc[list(dict.fromkeys(models))]
    rows = db.layers if layers is None else layers
    rows = rows[rows["model_id"].isin(model_rows.index)]
    counts = rows.groupby("model_id")["n_filters"].agg(["size", "sum"]).reindex(model_rows.index, fill_value=0)
    model_rows = model_rows.assign(n_layers=counts["size"].to_numpy(np.int64),
                                   n_filters=counts["sum"].to_numpy(np.int64))
    source = rows.reset_index(drop=True)  # start/stop in the source
    rows = source.copy()
    ends = rows.groupby("kernel")["n_filters"].cumsum().to_numpy(np.int64)
    rows["start"], rows["stop"] = ends - rows["n_filters"].to_numpy(np.int64), ends
    try:
        with atomic_path(out) as tmp, h5py.File(tmp, "w", libver="latest") as f:
            root_attrs(f, DATABASE_ENCODING, PACKED_VERSION)
            f.attrs["n_models"] = len(model_rows)
            f.attrs["packed"] = True
            f.attrs["selection"] = selection
            f.attrs["layer_selector"] = layer_selector
            write_table(f, "models", model_rows, schema.MODEL_COLUMNS, index="model_id")
            write_table(f, "layers", rows, schema.LAYER_COLUMNS)
            layer_digests = _copy_filters(db, f, source, rows, chunk_bytes)
            ids = list(model_rows.index)
            of_model = rows.groupby("model_id", sort=False).indices  # model_id -> positions of its layers
            model_digests = np.array([_model_digest(db.shard_digest(mid), layer_digests[of_model.get(mid, [])])
                                      for mid in ids], np.uint64)
            group = f.create_group(DIGESTS)
            group.create_dataset("model_id", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
            group.create_dataset("digest", data=model_digests)
            f.attrs["integrity"] = integrity.ALGORITHM
            f.attrs["tables_digest"] = np.uint64(_tables_digest(read_table(f["models"], schema.MODEL_COLUMNS),
                                                                read_table(f["layers"], schema.LAYER_COLUMNS),
                                                                ids, model_digests))
    except (OSError, RuntimeError) as exc:
        raise FilterDBError(f"{out}: cannot write the export ({io_failure(exc)}); choose a writable path") from None
    return out


def _copy_filters(db, f: h5py.File, source: pd.DataFrame, rows: pd.DataFrame, chunk_bytes: int) -> np.ndarray:
    """Copy every layer's filters (``source`` rows, read and verified through ``db``) into /filters/<kernel>
    at the rows of ``rows``; their digests."""
    digests = np.zeros(len(rows), np.uint64)
    group = f.create_group("filters")
    for kernel, frame in rows.groupby("kernel", sort=True):
        kh, kw = map(int, kernel.split("x"))
        n = int(frame["stop"].max())
        target = create_filter_dataset(group, kernel, (n, kh, kw), chunk_bytes)
        with ChunkWriter(target) as writer:
            for position in frame.index:  # in the order of their rows, one after another
                filters = db.read_layer(source.loc[position])
                writer.write(filters)
                digests[position] = integrity.filter_digest(filters)
        target.attrs["layer_starts"] = frame["start"].to_numpy(np.int64)
        target.attrs["layer_stops"] = frame["stop"].to_numpy(np.int64)
        target.attrs["layer_digests"] = digests[frame.index.to_numpy()]
    return digests


def create_filter_dataset(group: h5py.Group, name: str, shape: tuple[int, int, int],
                          chunk_bytes: int = CHUNK_BYTES) -> h5py.Dataset:
    """An (n, kh, kw) float32 filter dataset, chunked with Fletcher-32 (contiguous when empty, no chunk to
    check, or when ``chunk_bytes`` is 0)."""
    n, kh, kw = shape
    layout = {"chunks": (chunk_rows(kh, kw, n, chunk_bytes), kh, kw), "fletcher32": True} if n and chunk_bytes else {}
    dataset = group.create_dataset(name, shape=shape, dtype="<f4", **layout)
    dataset.attrs["encoding-type"] = FILTERS_ENCODING
    dataset.attrs["encoding-version"] = schema.FORMAT_VERSION
    return dataset


class ChunkWriter:
    """Appends filters to a chunked dataset from row 0 on, a whole chunk per HDF5 write: HDF5 then
    never reads a chunk back to fill it in part (and checksums each chunk once)."""

    def __init__(self, dataset: h5py.Dataset):
        self.dataset = dataset
        rows = dataset.chunks[0] if dataset.chunks else max(1, len(dataset))
        self.buffer = np.empty((rows, *dataset.shape[1:]), np.float32)
        self.filled = 0
        self.row = 0

    def write(self, filters: np.ndarray) -> None:
        size, i = len(self.buffer), 0
        while i < len(filters):
            if self.filled == 0 and len(filters) - i >= size:  # whole chunks straight from the layer
                whole = (len(filters) - i) // size * size
                self.dataset[self.row:self.row + whole] = filters[i:i + whole]
                self.row, i = self.row + whole, i + whole
                continue
            take = min(size - self.filled, len(filters) - i)
            self.buffer[self.filled:self.filled + take] = filters[i:i + take]
            self.filled, i = self.filled + take, i + take
            if self.filled == size:
                self.flush()

    def flush(self) -> None:
        if self.filled:
            self.dataset[self.row:self.row + self.filled] = self.buffer[:self.filled]
            self.row, self.filled = self.row + self.filled, 0

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.flush()


def _model_digest(source_digest: str, layer_digests: np.ndarray) -> int:
    return integrity.combine(int(source_digest.split(":")[-1], 16), np.asarray(layer_digests, np.uint64))


def _tables_digest(models: pd.DataFrame, layers: pd.DataFrame, ids: list[str], digests: np.ndarray) -> int:
    tables = integrity.table_digest([(models, schema.MODEL_COLUMNS), (layers, schema.LAYER_COLUMNS)])
    hasher = xxhash.xxh3_64(np.array([tables], np.uint64).tobytes())
    hasher.update("\x1f".join(ids).encode())
    hasher.update(np.asarray(digests, np.uint64).tobytes())
    return hasher.intdigest()


# ---------------------------------------------------------------------------- reading

class PackedDB(DatabaseReading):
    """A packed database file, read only (:class:`filterdb.reading.DatabaseReading`)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser()
        self._file: h5py.File | None = None
        try:
            self._file = h5py.File(self.path, "r", rdcc_nbytes=CHUNK_CACHE_BYTES)
        except (OSError, ValueError, RuntimeError):
            raise FilterDBError(f"{self.path} is neither a filterdb database directory nor a filterdb export "
                                "(not an HDF5 file); give --db a database directory or a file from "
                                "'filterdb export'") from None
        try:
            self._load()
        except BaseException:
            self.close()
            raise

    @property
    def _open_file(self) -> h5py.File:
        if self._file is None:
            raise FilterDBError(f"{self.path}: the export was closed; open it again with filterdb.open_database")
        return self._file

    def _load(self) -> None:
        attrs = self._open_file.attrs
        if attrs.get("format") != schema.FORMAT_NAME or attrs.get("encoding-type") != DATABASE_ENCODING:
            raise FilterDBError(f"{self.path} is an HDF5 file but not a filterdb export; give --db a database "
                                "directory or a file from 'filterdb export'")
        if not attrs.get("packed", False):
            hint = (f"; it is the master file of the database directory {self.path.parent}: pass that directory"
                    if self.path.name == MASTER_NAME else "")
            raise FilterDBError(f"{self.path} is not a packed filterdb export{hint}")
        check_readable(attrs.get("encoding-version", "1.0"), PACKED_VERSION, f"{self.path}: export format")
        if attrs.get("integrity") != integrity.ALGORITHM or "tables_digest" not in attrs:
            raise FilterDBError(f"{self.path} has no checksums (exported by an older filterdb); export it again "
                                "from its database directory")
        try:
            self._models = read_table(self._open_file["models"], schema.MODEL_COLUMNS)
            self._layers = read_table(self._open_file["layers"], schema.LAYER_COLUMNS)
            ids = [str(i) for i in self._open_file[DIGESTS]["model_id"].asstr()[()]]
            digests = self._open_file[DIGESTS]["digest"][()].astype(np.uint64)
        except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
            raise self._damaged(f"its tables cannot be read ({' '.join(str(exc).split())[:160]})") from None
        self._content_digest = int(attrs["tables_digest"])
        if _tables_digest(self._models, self._layers, ids, digests) != self._content_digest:
            raise self._damaged("its tables do not match their checksum (the file is damaged)")
        self._model_digests = dict(zip(ids, digests.tolist()))
        self._layer_digests: dict[str, dict[tuple[int, int], int]] = {}

    def _damaged(self, what: str) -> integrity.DamagedDatabaseError:
        return integrity.DamagedDatabaseError(f"{self.path}: {what}; export it again from its database directory")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _tables(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        return self._models, self._layers

    @property
    def cache_dir(self) -> Path:
        """Where derived data (metrics cache, divergence basis) of this file lives: keyed by its content."""
        return paths.home() / CACHE_DIR / f"{self._content_digest:016x}"

    def shard_digest(self, model_id: str) -> str:
        return f"{integrity.ALGORITHM}:{self._model_digests[model_id]:016x}"

    def size_on_disk(self) -> int:
        return self.path.stat().st_size

    def filters(self, kernel: str = "3x3") -> h5py.Dataset:
        if kernel not in self._open_file["filters"]:
            raise FilterDBError(f"no {kernel} filters in {self.path}; kernels present: {', '.join(self.kernels) or 'none'}")
        return self._open_file["filters"][kernel]

    def _digests(self, kernel: str) -> dict[tuple[int, int], int]:
        table = self._layer_digests.get(kernel)
        if table is None:
            attrs = self._open_file["filters"][kernel].attrs
            table = dict(zip(zip(attrs["layer_starts"].tolist(), attrs["layer_stops"].tolist()),
                             attrs["layer_digests"].tolist()))
            self._layer_digests[kernel] = table
        return table

    def _read(self, model_id: str, kernel: str, start: int, stop: int, name: str) -> np.ndarray:
        dataset = self.filters(kernel)
        out = np.empty((stop - start, *dataset.shape[1:]), np.float32)
        try:
            if len(out):
                dataset.read_direct(out, source_sel=np.s_[start:stop])
            recorded = self._digests(kernel).get((start, stop))
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as exc:
            model_name = self._models.loc[model_id, "name"] if model_id in self._models.index else "?"
            if "filter returned failure" in str(exc) and dataset.fletcher32:
                raise self._damaged(f"the filters of model {model_id} ({model_name}), layer {name} fail their "
                                    "HDF5 Fletcher-32 checksum (the file is damaged)") from None
            raise self._damaged(f"the filters of model {model_id} ({model_name}), layer {name} cannot be read "
                                f"({' '.join(str(exc).split())[:160]})") from None
        if recorded != integrity.filter_digest(out):
            model_name = self._models.loc[model_id, "name"] if model_id in self._models.index else "?"
            raise self._damaged(f"the filters of model {model_id} ({model_name}), layer {name} do not match their "
                                "checksum (the file is damaged)")
        return out

    def read_layer(self, row: pd.Series) -> np.ndarray:
        """The filters of one layer-table row, float32 (n, kh, kw), verified."""
        return self._read(row["model_id"], row["kernel"], int(row["start"]), int(row["stop"]), row["name"])

    def iter_filter_chunks(self, kernel: str = "3x3", layers: pd.DataFrame | None = None,
                           chunk_rows: int = 1 << 20) -> Iterator[np.ndarray]:
        """The filters of the selected layers of one kernel size, a layer at a time (verified), in
        pieces of at most ``chunk_rows``."""
        frame = self._layers if layers is None else layers
        frame = frame[frame["kernel"].to_numpy() == kernel]
        for mid, name, start, stop in zip(frame["model_id"], frame["name"], frame["start"].tolist(),
                                          frame["stop"].tolist()):
            filters = self._read(mid, kernel, start, stop, name)
            for lo in range(0, len(filters), chunk_rows):
                yield filters[lo:lo + chunk_rows]
