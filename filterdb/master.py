"""The master file ``<db>/filterdb.h5``: every model's tables, the shard index and one view of all filters.

Format 2.0 (``encoding-version`` 2.0 of ``filterdb-database``)::

    /models, /layers        the tables (chunked: a publish appends rows instead of rewriting them)
    /shards                 the index: one row per shard, in /models order (INDEX_COLUMNS)
    /spans                  one row per (model, kernel): its rows and its data's byte offset in the shard
    /layer_digests          uint64 per /layers row: the digest its shard records of the layer's filters
    /filters/<kernel>       (N, kh, kw) float32, a virtual dataset over /batches/<kernel>/<batch>
    /batches/<kernel>/<b>   a virtual dataset over the shards of models b*BATCH ... b*BATCH+BATCH-1

Models keep the position they were added at, so adding models appends rows and remaps only
the last batch and the short /filters/<kernel> list of batches: a publish costs what
changed, not the size of the database (a flat virtual dataset with one source per shard
costs ~45 us per source to write and slows every read as it grows). Removing or
re-extracting a model rewrites the master.

A publish never touches the file readers have open: it writes a copy under a temporary
name and renames it over ``filterdb.h5``. The master is derived from the shards; when the
shard files on disk differ from the index (a build killed between a shard and the
master), the writer brings it up to date, reading only the shards that changed.
Format 1.0 masters (flat tables, one virtual dataset over all shards) read the same way.
"""
from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from filterdb import integrity, schema
from filterdb.atomic import io_failure, publish, remove_quietly
from filterdb.errors import FilterDBError
from filterdb.h5table import append_rows, read_table, write_table
from filterdb.schema import Column
from filterdb.shards import FILTERS_ENCODING, SHARD_DIR, TMP_SUFFIX, root_attrs
from filterdb.versions import check_readable

# Root attributes: the digest of each publish's rows (a write, then each append), so that a reader
# verifies the tables it reads and a publish hashes only what it appends.
SEGMENT_STOPS = "digest_segments"  # (n, 4) int64: rows of /models, /layers, /shards, /spans after each publish
SEGMENT_DIGESTS = "digest_values"  # (n,) uint64: xxh3_64 of that publish's rows of the four tables

MASTER_NAME = "filterdb.h5"
DATABASE_ENCODING = "filterdb-database"
MASTER_VERSION = "2.0"
BATCH = 64  # models per /batches virtual dataset
MODEL_CHUNK, LAYER_CHUNK = 1024, 4096
LAYER_DIGESTS, LAYER_DIGESTS_ENCODING = "layer_digests", "filterdb-layer-digests"

# One row per shard, in the order of /models. A shard's identity on open is (file, size, mtime_ns).
INDEX_COLUMNS: tuple[Column, ...] = (
    Column("model_id", "str", "Model whose shard this is (models.model_id)."),
    Column("file", "str", "The shard file, relative to the database directory."),
    Column("size", "int", "Size of the shard file in bytes when it was indexed."),
    Column("mtime_ns", "int", "Modification time of the shard file (ns) when it was indexed."),
    Column("layer_start", "int", "First row of the model in /layers."),
    Column("layer_stop", "int", "One past the last row of the model in /layers."),
    Column("digest", "str", "The shard's own digest (xxh3_64 of its tables and of each layer's filters, 16 hex "
                            "digits): a swapped or rewritten shard does not match it."),
)


# One row per (model, kernel): where the model's filters of that kernel are, in the master and in its shard.
SPAN_COLUMNS: tuple[Column, ...] = (
    Column("model_id", "str", "Model (models.model_id)."),
    Column("kernel", "str", "Kernel size, 'HxW'."),
    Column("start", "int", "First row of the model's filters in /filters/<kernel>."),
    Column("stop", "int", "One past the last row."),
    Column("offset", "int", "Byte offset of the shard's /filters/<kernel> data (contiguous little-endian float32) "
                            "in its file; -1 if not stored that way."),
)


@dataclass
class MasterState:
    """What a writer needs of the published master, without reading its tables."""
    version: str
    index: pd.DataFrame  # INDEX_COLUMNS, one row per model in /models order (empty for 1.0)
    totals: dict[str, int]  # kernel -> rows of /filters/<kernel>
    n_layers: int
    clean: bool
    shards_mtime_ns: int
    has_layer_digests: bool = True  # /layer_digests aligned with /layers (masters before Dec 2026 lack it)


def master_path(db_dir: str | os.PathLike) -> Path:
    return Path(db_dir) / MASTER_NAME


def empty_frame(columns: tuple[Column, ...], index: str | None = None) -> pd.DataFrame:
    frame = pd.DataFrame({c.name: pd.Series(dtype=c.numpy_dtype) for c in columns})
    return frame.set_index(index, drop=False).rename_axis(None) if index else frame


def read_state(db_dir: Path) -> MasterState | None:
    """The published master's index and sizes; None when it is missing or unreadable."""
    try:
        with h5py.File(master_path(db_dir), "r") as f:
            version = str(f.attrs.get("encoding-version", ""))
            if f.attrs.get("format") != schema.FORMAT_NAME:
                return None
            check_readable(version or schema.FORMAT_VERSION, MASTER_VERSION, f"{master_path(db_dir)}: database format")
            if version == MASTER_VERSION and not {"shards", "spans", "batches"} <= set(f):
                version = "incomplete"  # written before the index had all its parts: rewritten from the shards
            totals = {k: int(f["filters"][k].shape[0]) for k in f["filters"]}
            n_layers = int(f["layers"]["model_id"].shape[0])
            if "shards" in f:
                index = read_table(f["shards"], INDEX_COLUMNS)
            else:
                index = empty_frame(INDEX_COLUMNS, "model_id")
            return MasterState(version, index, totals, n_layers, bool(f.attrs.get("clean", False)),
                               int(f.attrs.get("shards_mtime_ns", -1)), read_layer_digests(f, n_layers) is not None)
    except (OSError, KeyError, ValueError):
        return None


def is_current(db_dir: Path, state: MasterState | None, on_disk: dict[str, tuple[int, int]] | None = None) -> bool:
    """Whether the index lists exactly the shard files on disk, each with its size and mtime.

    Cheap first: a master published with no other process writing shards (``clean``)
    recorded the shards folder's mtime, and any shard renamed in or out since changes it.
    Otherwise (and always when the caller passes the listing ``on_disk``: a writer, which must
    notice a shard overwritten in place, e.g. swapped) one directory listing with a stat per
    shard; no shard is opened.
    """
    if state is None or state.version != MASTER_VERSION:
        return False
    if on_disk is None and vouches_for_folder(db_dir, state):
        return True
    on_disk = on_disk if on_disk is not None else _list(db_dir)
    index = state.index
    return on_disk == dict(zip(index["model_id"], zip(index["size"].tolist(), index["mtime_ns"].tolist())))


def vouches_for_folder(db_dir: Path, state: MasterState) -> bool:
    """Whether the shards folder is unchanged since a master published with no other process writing shards."""
    return state.clean and _dir_mtime(db_dir) == state.shards_mtime_ns


def _list(db_dir: Path) -> dict[str, tuple[int, int]]:
    from filterdb.shards import list_shards
    return list_shards(db_dir)


def _dir_mtime(db_dir: Path) -> int:
    try:
        return (Path(db_dir) / SHARD_DIR).stat().st_mtime_ns
    except OSError:
        return -2


def global_rows(layers: pd.DataFrame, totals: dict[str, int]) -> pd.DataFrame:
    """Layer rows with shard-local start/stop turned into rows of /filters/<kernel> after ``totals``
    (the rows already there): the filters of each kernel follow one another in table order."""
    layers = layers.reset_index(drop=True)
    n = layers["n_filters"].to_numpy(np.int64)
    start = np.empty(len(layers), np.int64)
    for kernel, rows in layers.groupby("kernel", sort=False).indices.items():
        ends = np.cumsum(n[rows]) + totals.get(kernel, 0)
        start[rows] = ends - n[rows]
    layers["start"], layers["stop"] = start, start + n
    return layers


def spans(layers: pd.DataFrame, offsets: dict[str, dict[str, int]]) -> pd.DataFrame:
    """The /spans rows of ``layers`` (global rows): per model and kernel, its rows and its shard's byte offset."""
    grouped = layers.groupby(["model_id", "kernel"], sort=False).agg(start=("start", "min"), stop=("stop", "max"))
    frame = grouped.reset_index()
    frame["offset"] = [offsets.get(mid, {}).get(kernel, -1) for mid, kernel in zip(frame["model_id"], frame["kernel"])]
    return frame.astype({"start": np.int64, "stop": np.int64, "offset": np.int64})


def read_spans(f: h5py.File) -> dict[tuple[str, str], tuple[int, int]]:
    """(model_id, kernel) -> (first row in /filters/<kernel>, byte offset in the shard or -1); {} for format 1.0."""
    if "spans" not in f:
        return {}
    group = f["spans"]
    ids, kernels = group["model_id"].asstr()[()], group["kernel"].asstr()[()]
    return dict(zip(zip(ids, kernels), zip(group["start"][()].tolist(), group["offset"][()].tolist())))


def write_master(db_dir: Path, models: pd.DataFrame, layers: pd.DataFrame, index: pd.DataFrame,
                 span_rows: pd.DataFrame, layer_digests: np.ndarray, *, clean: bool) -> MasterState:
    """Write the whole master (``layers`` with global rows) under a temporary name, then rename it."""
    tmp = _tmp(db_dir)
    try:
        _require_room(db_dir)
        with h5py.File(tmp, "w", libver="latest", fs_strategy="fsm", fs_persist=True) as f:
            root_attrs(f, DATABASE_ENCODING, MASTER_VERSION)
            write_table(f, "models", models, schema.MODEL_COLUMNS, index="model_id", chunk_rows=MODEL_CHUNK)
            write_table(f, "layers", layers, schema.LAYER_COLUMNS, chunk_rows=LAYER_CHUNK)
            write_table(f, "shards", index, INDEX_COLUMNS, index="model_id", chunk_rows=MODEL_CHUNK)
            write_table(f, "spans", span_rows, SPAN_COLUMNS, chunk_rows=MODEL_CHUNK)
            _write_layer_digests(f, layer_digests)
            f.create_group("filters")
            f.create_group("batches")
            _map_batches(f, range((len(models) + BATCH - 1) // BATCH))
            _add_segment(f, models, layers, index, span_rows)
            mtime = _finish(f, db_dir, len(models), clean)
        commit(tmp, master_path(db_dir))
    except (OSError, RuntimeError) as exc:  # HDF5 reports a failed write (a full disk) as RuntimeError
        remove_quietly(tmp)
        raise _write_error(db_dir, exc) from None
    except BaseException:
        remove_quietly(tmp)
        raise
    return MasterState(MASTER_VERSION, index.reset_index(drop=True), _totals(layers, {}), len(layers), clean, mtime)


def append_master(db_dir: Path, state: MasterState, models: pd.DataFrame, layers: pd.DataFrame,
                  index: pd.DataFrame, span_rows: pd.DataFrame, layer_digests: np.ndarray, *, clean: bool) -> MasterState:
    """Publish models added after the current master (``layers`` with global rows): a copy of the
    master gets their rows appended and its last batches remapped, then replaces it."""
    tmp = _tmp(db_dir)
    try:
        _require_room(db_dir)
        shutil.copyfile(master_path(db_dir), tmp)
        with h5py.File(tmp, "r+") as f:
            before = int(f["models"]["model_id"].shape[0])
            append_rows(f["models"], models, schema.MODEL_COLUMNS)
            append_rows(f["layers"], layers, schema.LAYER_COLUMNS)
            append_rows(f["shards"], index, INDEX_COLUMNS)
            append_rows(f["spans"], span_rows, SPAN_COLUMNS)
            _append_layer_digests(f, layer_digests, state.n_layers)
            after = before + len(models)
            _map_batches(f, range(before // BATCH, (after + BATCH - 1) // BATCH))
            _add_segment(f, models, layers, index, span_rows)
            mtime = _finish(f, db_dir, after, clean)
        commit(tmp, master_path(db_dir))
    except (OSError, RuntimeError) as exc:
        remove_quietly(tmp)
        raise _write_error(db_dir, exc) from None
    except BaseException:
        remove_quietly(tmp)
        raise
    return MasterState(MASTER_VERSION, pd.concat([state.index, index], ignore_index=True),
                       _totals(layers, state.totals), state.n_layers + len(layers), clean, mtime,
                       state.has_layer_digests)


def _write_layer_digests(f: h5py.File, digests: np.ndarray) -> None:
    dataset = f.create_dataset(LAYER_DIGESTS, data=np.asarray(digests, np.uint64), chunks=(LAYER_CHUNK,),
                               maxshape=(None,))
    dataset.attrs["encoding-type"] = LAYER_DIGESTS_ENCODING
    dataset.attrs["encoding-version"] = "1.0"
    dataset.attrs["description"] = ("xxh3_64 of each /layers row's filters (as its shard records them; 0: none "
                                    "recorded), so that a reader verifies a layer without opening its shard")


def _append_layer_digests(f: h5py.File, digests: np.ndarray, n_layers_before: int) -> None:
    """Extend /layer_digests with the appended rows; a master without it (or not aligned with /layers) keeps
    none (its readers open the shards), until it is next written whole."""
    dataset = f.get(LAYER_DIGESTS)
    if dataset is None:
        return
    if dataset.shape[0] != n_layers_before:
        del f[LAYER_DIGESTS]
        return
    dataset.resize((n_layers_before + len(digests),))
    dataset[n_layers_before:] = np.asarray(digests, np.uint64)


def read_layer_digests(f: h5py.File, n_layers: int) -> np.ndarray | None:
    """/layer_digests (uint64, one per /layers row) if this master has it aligned with its ``n_layers`` rows."""
    dataset = f.get(LAYER_DIGESTS)
    if dataset is None or dataset.shape != (n_layers,) or dataset.dtype != np.uint64:
        return None
    return dataset[()]


def _totals(layers: pd.DataFrame, before: dict[str, int]) -> dict[str, int]:
    """Rows of each /filters/<kernel> once ``layers`` (global rows) are in."""
    totals = dict(before)
    if len(layers):
        totals.update({k: int(v) for k, v in layers.groupby("kernel")["stop"].max().items()})
    return totals


def commit(tmp: Path, final: Path) -> None:
    """Make a completely written temporary file the real one: fsync, atomic rename, fsync of the folder."""
    publish(tmp, final)


ROOM = 4 << 20  # bytes free beyond a copy of the master before a publish starts


def _require_room(db_dir: Path) -> None:
    """Refuse a publish that the disk cannot hold (an ENOSPC OSError) before HDF5 starts it: HDF5 that runs
    out of space inside a write can fail again, or crash, when it closes the file."""
    try:
        stat = os.statvfs(db_dir)
        size = master_path(db_dir).stat().st_size if master_path(db_dir).is_file() else 0
    except OSError:
        return
    if stat.f_bavail * stat.f_frsize < size + ROOM:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(db_dir))


def _write_error(db_dir: Path, exc: BaseException) -> FilterDBError:
    return FilterDBError(f"{master_path(db_dir)}: cannot write the master file ({io_failure(exc)}); the shards "
                         "(every model added) are safe and the last good master still reads - free space or fix "
                         "the directory and rerun")


def _segment_digest(models: pd.DataFrame, layers: pd.DataFrame, index: pd.DataFrame, span_rows: pd.DataFrame) -> int:
    return integrity.table_digest([(models, schema.MODEL_COLUMNS), (layers, schema.LAYER_COLUMNS),
                                   (index, INDEX_COLUMNS), (span_rows, SPAN_COLUMNS)])


def _add_segment(f: h5py.File, models, layers, index, span_rows) -> None:
    """Record the digest of the rows this publish wrote (appended after those of earlier publishes)."""
    stops = np.asarray(f.attrs.get(SEGMENT_STOPS, np.zeros((0, 4), np.int64)), np.int64).reshape(-1, 4)
    values = np.asarray(f.attrs.get(SEGMENT_DIGESTS, np.zeros(0, np.uint64)), np.uint64)
    last = stops[-1] if len(stops) else np.zeros(4, np.int64)
    row = last + np.array([len(models), len(layers), len(index), len(span_rows)], np.int64)
    f.attrs[SEGMENT_STOPS] = np.vstack([stops, row[None]])
    f.attrs[SEGMENT_DIGESTS] = np.append(values, np.uint64(_segment_digest(models, layers, index, span_rows)))
    f.attrs["integrity"] = integrity.ALGORITHM


def check_tables(f: h5py.File, path: Path, models: pd.DataFrame, layers: pd.DataFrame, index: pd.DataFrame,
                 span_rows: pd.DataFrame) -> None:
    """Raise ``DamagedDatabaseError`` unless the master's tables (as read) are the rows its publishes wrote."""
    if f.attrs.get("integrity") != integrity.ALGORITHM or SEGMENT_STOPS not in f.attrs:
        raise integrity.damaged(path, "the master has no checksums (written by an older filterdb)")
    stops = np.asarray(f.attrs[SEGMENT_STOPS], np.int64).reshape(-1, 4)
    values = np.asarray(f.attrs[SEGMENT_DIGESTS], np.uint64)
    tables = (models, layers, index, span_rows)
    if len(stops) != len(values) or (len(stops) and list(stops[-1]) != [len(t) for t in tables]):
        raise integrity.damaged(path, "the master's tables do not match their checksum (rows missing or added)")
    # Column arrays, sliced per publish: a database grown by one `add` at a time has a segment per model.
    arrays = [{name: frame[name].to_numpy() for name in frame.columns} for frame in tables]
    begin = [0, 0, 0, 0]
    for end, value in zip(stops.tolist(), values.tolist()):
        parts = [{name: column[a:b] for name, column in table.items()} for table, a, b in zip(arrays, begin, end)]
        if _segment_digest(*parts) != int(value):
            raise integrity.damaged(path, "the master's tables do not match their checksum (the file is damaged)")
        begin = end


def _tmp(db_dir: Path) -> Path:
    return Path(db_dir) / f".{MASTER_NAME}.{os.getpid()}{TMP_SUFFIX}"


def _finish(f: h5py.File, db_dir: Path, n_models: int, clean: bool) -> int:
    mtime = _dir_mtime(db_dir)
    f.attrs["n_models"] = n_models
    f.attrs["clean"] = clean
    f.attrs["shards_mtime_ns"] = mtime
    return mtime


def _map_batches(f: h5py.File, batches: range) -> None:
    """(Re)create the virtual datasets of ``batches`` from the tables in ``f``, then every /filters/<kernel>."""
    if len(batches):
        index = f["shards"]
        first = batches.start * BATCH
        ids = index["model_id"].asstr()[first:]
        layer_rows = slice(int(index["layer_start"][first]), int(index["layer_stop"][-1])) if len(ids) else slice(0, 0)
        lay = {name: f["layers"][name][layer_rows] for name in ("start", "stop")}
        lay["kernel"] = f["layers"]["kernel"].asstr()[layer_rows]
        lay["model_id"] = f["layers"]["model_id"].asstr()[layer_rows]
        spans = pd.DataFrame(lay).groupby(["model_id", "kernel"], sort=False).agg(start=("start", "min"),
                                                                                  stop=("stop", "max"))
        position = {mid: first + i for i, mid in enumerate(ids)}
        by_batch: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
        for (mid, kernel), (start, stop) in zip(spans.index, spans.to_numpy()):
            if stop > start:
                by_batch.setdefault((kernel, position[mid] // BATCH), []).append((mid, int(start), int(stop)))
        for kernel in {k for k, _ in by_batch} | set(f["batches"]):
            group = f["batches"].require_group(kernel)
            mapped = {int(b): (int(lo), int(hi)) for b, lo, hi in zip(group.attrs.get("batch", []),
                                                                   group.attrs.get("start", []),
                                                                   group.attrs.get("stop", []))}
            for b in batches:
                if mapped.pop(b, None) is not None:
                    del group[f"{b:05d}"]
            for b in batches:
                sources = by_batch.get((kernel, b))
                if sources:
                    lo, hi = sources[0][1], sources[-1][2]
                    _create_vds(group, f"{b:05d}", kernel, hi - lo,
                                [(f"{SHARD_DIR}/{mid}.h5", f"filters/{kernel}", start - lo, stop - lo)
                                 for mid, start, stop in sources])
                    mapped[b] = (lo, hi)
            order = sorted(mapped)
            group.attrs["batch"] = np.array(order, np.int64)  # which /batches/<kernel>/<b> exist, and their rows
            group.attrs["start"] = np.array([mapped[b][0] for b in order], np.int64)
            group.attrs["stop"] = np.array([mapped[b][1] for b in order], np.int64)
    for kernel in f["batches"]:
        attrs = f["batches"][kernel].attrs
        vds_sources = [(".", f"batches/{kernel}/{b:05d}", int(lo), int(hi))
                   for b, lo, hi in zip(attrs["batch"], attrs["start"], attrs["stop"])]
        if kernel in f["filters"]:
            del f["filters"][kernel]
        _create_vds(f["filters"], kernel, kernel, max((hi for *_, hi in vds_sources), default=0), vds_sources)


def _create_vds(group: h5py.Group, name: str, kernel: str, rows: int, sources: list[tuple[str, str, int, int]]):
    """A float32 (rows, kh, kw) virtual dataset; each source (file, dataset, lo, hi) fills rows [lo, hi)."""
    kh, kw = schema.kernel_shape(kernel)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_fill_value(np.array(np.nan, np.float32))
    space = h5py.h5s.create_simple((rows, kh, kw))
    for file, dataset, lo, hi in sources:
        space.select_hyperslab((lo, 0, 0), (hi - lo, kh, kw))
        dcpl.set_virtual(space, file.encode(), dataset.encode(), h5py.h5s.create_simple((hi - lo, kh, kw)))
    space.select_all()
    dataset = h5py.Dataset(h5py.h5d.create(group.id, name.encode(), h5py.h5t.IEEE_F32LE, space, dcpl=dcpl))
    dataset.attrs["encoding-type"] = FILTERS_ENCODING
    dataset.attrs["encoding-version"] = schema.FORMAT_VERSION
    return dataset
