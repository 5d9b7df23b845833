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

from filterdb import schema
from filterdb.errors import FilterDBError
from filterdb.extract import ExtractedLayer
from filterdb.h5table import read_table, table_columns, table_frame, write_table
from filterdb.records import extract_loaded, tool_version
from filterdb.sources.base import LoadedModel, ModelSpec

MASTER_NAME = "filterdb.h5"
SHARD_DIR = "shards"
TMP_SUFFIX = ".tmp"
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
                ) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Write one model's shard atomically: a temporary file, renamed into place once complete.

    ``record`` is a complete model-table row (``model_record``). Filters of one layer are
    contiguous and out-channel-major; ``start``/``stop`` in the shard's layer table are
    local to the shard. NaN/Inf weights raise ``FilterDBError`` naming the layer, and no
    shard is left. Returns the shard's path and its model and layer tables.
    """
    final = shard_path(Path(db_dir), record["model_id"])
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.{os.getpid()}{TMP_SUFFIX}")
    sizes: dict[str, int] = {}
    rows = []
    for layer in layers:
        start = sizes.get(layer.kernel, 0)
        sizes[layer.kernel] = start + layer.info["n_filters"]
        rows.append({**layer.info, "model_id": record["model_id"], "start": start, "stop": sizes[layer.kernel]})
    model_columns = table_columns([record], schema.MODEL_COLUMNS)
    layer_columns = table_columns(rows, schema.LAYER_COLUMNS)
    try:
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
                for layer in layers:
                    layer.check_finite()
                models = table_frame(model_columns, schema.MODEL_COLUMNS, "model_id")
                layer_frame = table_frame(layer_columns, schema.LAYER_COLUMNS)
            finally:
                written.result()
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final, models, layer_frame


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


@contextmanager
def shard_writer(db_dir: str | os.PathLike, record: dict, layer_rows: list[dict]
                 ) -> Iterator[tuple[Path, dict[str, int]]]:
    """Write one model's shard whose filters the caller streams in (an imported file, in chunks).

    ``layer_rows`` are complete layer-table rows (``start``/``stop`` local to the shard).
    Yields the temporary file and, per kernel, the file offset of its contiguous float32
    dataset: the caller writes the filters' little-endian bytes there (``os.pwrite``) and
    checks their values. On a clean exit the shard is renamed into place (register it
    with ``FilterDB.adopt_shard``); on an exception nothing is left.
    """
    final = shard_path(Path(db_dir), record["model_id"])
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.{os.getpid()}{TMP_SUFFIX}")
    sizes = {row["kernel"]: (max(r["stop"] for r in layer_rows if r["kernel"] == row["kernel"]),
                             row["kernel_h"], row["kernel_w"]) for row in layer_rows}
    try:
        with h5py.File(tmp, "w", libver="latest") as f:
            _root_attrs(f, SHARD_ENCODING)
            write_table(f, "models", table_columns([record], schema.MODEL_COLUMNS), schema.MODEL_COLUMNS,
                        index="model_id")
            write_table(f, "layers", table_columns(layer_rows, schema.LAYER_COLUMNS), schema.LAYER_COLUMNS)
            group = f.create_group("filters")
            offsets = {kernel: _allocate_contiguous(group, kernel, shape) for kernel, shape in sizes.items()}
        yield tmp, offsets
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_shard_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    with h5py.File(path, "r") as f:
        if f.attrs.get("encoding-type") != SHARD_ENCODING:
            raise FilterDBError(f"{path} is not a filterdb shard; remove it from the shards folder")
        return read_table(f["models"], schema.MODEL_COLUMNS), read_table(f["layers"], schema.LAYER_COLUMNS)


def _master_is_stale(path: Path) -> bool:
    """Whether the shard files on disk differ from the models the master lists (cheap: a listing)."""
    master = path / MASTER_NAME
    if not master.exists():
        return True
    on_disk = {p.stem for p in (path / SHARD_DIR).glob("*.h5")}
    try:
        with h5py.File(master, "r") as f:
            listed = set(f["models"]["model_id"].asstr()[()])
    except (OSError, KeyError):
        return True
    return on_disk != listed


# --------------------------------------------------------------------------- the database

class FilterDB:
    """A filter database directory. Open with ``open_database(path)`` (read) or ``FilterDB.open(path, "a")``."""

    def __init__(self, path: Path, mode: str):
        self.path = Path(path)
        self.mode = mode
        self._lock_fh = None
        self._file: h5py.File | None = None
        self._shards: dict[str, h5py.File] = {}
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
        if mode == "r" and _master_is_stale(path):
            try:  # a build was killed between writing a shard and the master: bring the master up to date
                cls.open(path, "a").close()
            except FilterDBError:
                pass  # a writer is running and will do it; read the last complete master
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

    def _load(self) -> None:
        if self.mode == "a":
            self._lock_fh = open(self.path / ".lock", "a+")
            try:
                fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as exc:
                self._lock_fh.close()
                self._lock_fh = None
                raise FilterDBError(f"{self.path} is being written by another filterdb process; "
                                    "wait for it to finish or use another --db") from exc
            for stale in (self.path / SHARD_DIR).glob(f".*{TMP_SUFFIX}"):
                stale.unlink(missing_ok=True)  # left by a killed build: the model in flight, never complete
            for stale in self.path.glob(f".*{TMP_SUFFIX}"):
                stale.unlink(missing_ok=True)
            self._parts = self._scan_shards()
            self._stale_tables = True
            self._sync()
            if not self._master_is_current():
                self._write_master()
        self._open_master()

    def _scan_shards(self) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
        """model_id -> (model row, layer rows with shard-local start/stop) of every complete shard."""
        parts = {}
        for path in sorted((self.path / SHARD_DIR).glob("*.h5")):
            try:
                m, l = read_shard_tables(path)
            except (OSError, KeyError, ValueError) as exc:
                raise FilterDBError(f"shard {path} cannot be read ({exc}); delete it and rerun the build "
                                    "to extract that model again") from exc
            parts[path.stem] = (m, l)
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

    def _master_is_current(self) -> bool:
        master = self.path / MASTER_NAME
        if not master.exists():
            return False
        try:
            with h5py.File(master, "r") as f:
                ids = set(f["models"]["model_id"].asstr()[()])
                stamps = dict(zip(f["models"]["model_id"].asstr()[()], f["models"]["extracted_at"].asstr()[()]))
        except (OSError, KeyError):
            return False
        return ids == set(self._models.index) and all(
            stamps[i] == self._models.loc[i, "extracted_at"] for i in ids)

    def _write_master(self) -> None:
        """Rewrite the master file (tables + virtual datasets) under a temporary name, then rename it."""
        final = self.path / MASTER_NAME
        tmp = self.path / f".{MASTER_NAME}.{os.getpid()}{TMP_SUFFIX}"
        try:
            with h5py.File(tmp, "w", libver="latest") as f:
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
            if self._file is not None:
                self._file.close()
                self._file = None
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _open_master(self) -> None:
        self._file = h5py.File(self.path / MASTER_NAME, "r")
        if self._file.attrs.get("format") != schema.FORMAT_NAME:
            raise FilterDBError(f"{self.path / MASTER_NAME} is not a filterdb database file")
        if self.mode == "r":
            self._models = read_table(self._file["models"], schema.MODEL_COLUMNS)
            self._layers = read_table(self._file["layers"], schema.LAYER_COLUMNS)
            self._spans = _model_spans(self._layers)

    def close(self) -> None:
        if self._unpublished and self._lock_fh is not None:
            self._publish()
        for f in self._shards.values():
            f.close()
        self._shards.clear()
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

    def _shard(self, model_id: str) -> h5py.File:
        f = self._shards.get(model_id)
        if f is None:
            if len(self._shards) >= 64:
                self._shards.pop(next(iter(self._shards))).close()
            f = self._shards[model_id] = h5py.File(self.shard_path(model_id), "r")
        return f

    def read_layer(self, row: pd.Series) -> np.ndarray:
        """The filters of one layer-table row, float32 (n, kh, kw), read from the model's shard."""
        self._sync()
        base = self._spans[(row["model_id"], row["kernel"])][0]
        dataset = self._shard(row["model_id"])["filters"][row["kernel"]]
        out = np.empty((int(row["stop"]) - int(row["start"]), dataset.shape[1], dataset.shape[2]), np.float32)
        if len(out):
            dataset.read_direct(out, source_sel=np.s_[int(row["start"]) - base:int(row["stop"]) - base])
        return out

    def read_model(self, model_id: str, kernel: str = "3x3") -> np.ndarray:
        """Every filter of one kernel size of one model, in layer order."""
        layers = self.layers
        rows = layers[(layers["model_id"] == model_id) & (layers["kernel"] == kernel)]
        if rows.empty:
            return np.empty((0, *map(int, kernel.split("x"))), np.float32)
        dataset = self._shard(model_id)["filters"][kernel]
        out = np.empty(dataset.shape, np.float32)
        dataset.read_direct(out)
        return out

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
            base = self._spans[(row["model_id"], kernel)][0]
            dataset = self._shard(row["model_id"])["filters"][kernel]
            for lo in range(int(row["start"]), int(row["stop"]), chunk_rows):
                hi = min(lo + chunk_rows, int(row["stop"]))
                yield dataset[lo - base:hi - base]

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
        tmp = out.with_name(f".{out.name}.{os.getpid()}{TMP_SUFFIX}")
        try:
            with h5py.File(tmp, "w", libver="latest") as f:
                _root_attrs(f, DATABASE_ENCODING)
                f.attrs["n_models"] = len(self.models)
                f.attrs["packed"] = True
                write_table(f, "models", self.models, schema.MODEL_COLUMNS, index="model_id")
                write_table(f, "layers", self.layers, schema.LAYER_COLUMNS)
                group = f.create_group("filters")
                for kernel in self.kernels:
                    source = self.filters(kernel)
                    target = group.create_dataset(kernel, shape=source.shape, dtype=np.float32)
                    for attr, value in source.attrs.items():
                        target.attrs[attr] = value
                    for lo in range(0, len(source), chunk_rows):
                        target[lo:lo + chunk_rows] = source[lo:lo + chunk_rows]
            os.replace(tmp, out)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise FilterDBError(f"{out}: cannot write the export ({exc.strerror or exc}); choose a writable path") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
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
        self._parts[model_id] = read_shard_tables(self.shard_path(model_id))
        self._changed()

    def add_extracted(self, record: dict, layers: list[ExtractedLayer]) -> str:
        """Store an extracted model (a complete model-table row and its layers); returns its model_id."""
        self._require_writable()
        _, models, layer_rows = write_shard(self.path, record, layers)
        self._parts[record["model_id"]] = (models, layer_rows)
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
        f = self._shards.pop(model_id, None)
        if f is not None:
            f.close()
        self.shard_path(model_id).unlink()
        del self._parts[model_id]
        self._changed()


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
