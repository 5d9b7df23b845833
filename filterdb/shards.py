"""Shard files: one model's tables and filters, written under a temporary name and renamed when complete.

A shard (``<db>/shards/<model_id>.h5``, ``encoding-type`` ``filterdb-shard``) holds
``/models`` (one row), ``/layers`` (``start``/``stop`` counting within the shard) and one
contiguous float32 dataset ``/filters/<kernel>`` per kernel size, and the xxh3 digests of
its tables and of each layer's filters (:mod:`filterdb.integrity`). Its durable rename into
place (:mod:`filterdb.atomic`: fsync, rename, fsync of the folder) is the commit of a model:
everything else in a database is derived from the shards.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import h5py
import numpy as np
import pandas as pd

from filterdb import integrity, schema
from filterdb.atomic import TMP_SUFFIX, io_failure, publish, remove_quietly
from filterdb.errors import FilterDBError
from filterdb.h5table import read_table, table_columns, table_frame, write_table
from filterdb.versions import TOOL_VERSION, check_readable


class LayerFilters(Protocol):
    """What a shard is written from: one layer's table row and filters (``filterdb.extract.ExtractedLayer``)."""
    info: dict  # layer-table columns except model_id, start, stop

    @property
    def kernel(self) -> str: ...

    def filters(self) -> np.ndarray: ...  # float32 (n, kh, kw), out-channel-major

    def check_finite(self) -> None: ...  # FilterDBError naming the model and layer on a NaN/Inf weight


SHARD_DIR = "shards"
SHARD_ENCODING = "filterdb-shard"
FILTERS_ENCODING = "filter-array"


def root_attrs(f: h5py.File, encoding: str, version: str = schema.FORMAT_VERSION) -> None:
    f.attrs["format"] = schema.FORMAT_NAME
    f.attrs["format_version"] = version
    f.attrs["encoding-type"] = encoding
    f.attrs["encoding-version"] = version
    f.attrs["tool_version"] = TOOL_VERSION


def shard_path(db_dir: str | os.PathLike, model_id: str) -> Path:
    return Path(db_dir) / SHARD_DIR / f"{model_id}.h5"


def write_shard(db_dir: str | os.PathLike, record: dict, layers: Sequence[LayerFilters]
                ) -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """Write one model's shard atomically: a temporary file, renamed into place once complete.

    ``record`` is a complete model-table row (``model_record``). Filters of one layer are
    contiguous and out-channel-major; ``start``/``stop`` in the shard's layer table are
    local to the shard. NaN/Inf weights raise ``FilterDBError`` naming the layer, and no
    shard is left; so does an I/O error (a full disk), in one line. The shard records the
    digests of its tables and of each layer's filters. Returns the shard's path and its
    model and layer tables.
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
    tables_digest = integrity.table_digest([(model_columns, schema.MODEL_COLUMNS), (layer_columns, schema.LAYER_COLUMNS)])
    with _nothing_left_on_failure(tmp, final, record):
        shapes = {layer.kernel: (layer.info["kernel_h"], layer.info["kernel_w"]) for layer in layers}
        offsets = _create_shard_file(tmp, model_columns, layer_columns,
                                     {kernel: (n, *shapes[kernel]) for kernel, n in sizes.items()})
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
        _seal(tmp, final, record["model_id"], tables_digest, rows, digests)
    return final, models, layer_frame


@contextmanager
def _nothing_left_on_failure(tmp: Path, final: Path, record: dict) -> Iterator[None]:
    """Remove the temporary shard on any failure; an I/O error becomes one line naming the shard."""
    try:
        yield
    except (OSError, RuntimeError) as exc:  # HDF5 reports a failed write (a full disk) as RuntimeError
        remove_quietly(tmp)
        raise FilterDBError(f"{final}: cannot write the shard of {record.get('key', record['model_id'])} "
                            f"({io_failure(exc)}); nothing of it was stored - free space or fix the directory "
                            "and rerun") from None
    except BaseException:
        remove_quietly(tmp)
        raise


def _seal(tmp: Path, final: Path, model_id: str, tables_digest: int, layer_rows: list[dict],
          digests: list[int]) -> None:
    """Record the digests of the complete shard ``tmp``, then rename it durably into place."""
    with h5py.File(tmp, "r+", libver="latest") as f:
        integrity.write_shard_digests(f, model_id, tables_digest, _kernel_layers(layer_rows), digests)
    publish(tmp, final)


def _kernel_layers(rows: list[dict]) -> dict[str, list[tuple[int, int, int]]]:
    """kernel -> (row in the layer table, local start, local stop) of its layers."""
    out: dict[str, list[tuple[int, int, int]]] = {}
    for i, row in enumerate(rows):
        out.setdefault(row["kernel"], []).append((i, int(row["start"]), int(row["stop"])))
    return out


def _write_filter_bytes(path: Path, runs: dict[int, list[LayerFilters]]) -> None:
    """Write each run of layers (file offset -> the layers whose filters follow one another
    there) with one ``pwritev``: this thread then needs Python's GIL only between runs,
    and the other thread does not have to hand it over every few megabytes."""
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset, layers in runs.items():
            pieces = [np.ascontiguousarray(layer.filters(), dtype="<f4").data.cast("B") for layer in layers]
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


def _create_shard_file(tmp: Path, model_columns: dict, layer_columns: dict,
                       shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """A new shard file with its tables and, per kernel, a contiguous float32 dataset of ``shape``
    allocated but not written; returns each dataset's file offset."""
    with h5py.File(tmp, "w", libver="latest") as f:
        root_attrs(f, SHARD_ENCODING)
        write_table(f, "models", model_columns, schema.MODEL_COLUMNS, index="model_id")
        write_table(f, "layers", layer_columns, schema.LAYER_COLUMNS)
        group = f.create_group("filters")
        return {kernel: _allocate_contiguous(group, kernel, shape) for kernel, shape in shapes.items()}


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
    checks their values. On a clean exit the digests of the tables and of each layer's
    filters (read back from the file) are recorded and the shard is durably renamed into
    place (register it with ``FilterDB.adopt_shard``); on an exception nothing is left.
    """
    final = shard_path(Path(db_dir), record["model_id"])
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.{os.getpid()}{TMP_SUFFIX}")
    sizes: dict[str, tuple[int, ...]] = {row["kernel"]: (max(r["stop"] for r in layer_rows if r["kernel"] == row["kernel"]),
                             row["kernel_h"], row["kernel_w"]) for row in layer_rows}
    model_columns = table_columns([record], schema.MODEL_COLUMNS)
    layer_columns = table_columns(layer_rows, schema.LAYER_COLUMNS)
    tables_digest = integrity.table_digest([(model_columns, schema.MODEL_COLUMNS), (layer_columns, schema.LAYER_COLUMNS)])
    with _nothing_left_on_failure(tmp, final, record):
        offsets = _create_shard_file(tmp, model_columns, layer_columns, sizes)
        yield tmp, offsets
        _seal(tmp, final, record["model_id"], tables_digest, layer_rows, _digests_of_written(tmp, offsets, layer_rows))


def _digests_of_written(path: Path, offsets: dict[str, int], layer_rows: list[dict]) -> list[int]:
    """The digest of each layer's filter bytes as the caller wrote them into ``path`` (one read per layer)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        digests = []
        for row in layer_rows:
            row_bytes = int(row["kernel_h"]) * int(row["kernel_w"]) * 4
            shape = (int(row["stop"]) - int(row["start"]), int(row["kernel_h"]), int(row["kernel_w"]))
            hasher = integrity.ShardCheck.hasher()
            n_bytes = shape[0] * row_bytes
            integrity.read_hashing(fd, offsets[row["kernel"]] + int(row["start"]) * row_bytes, shape,
                                   [(0, n_bytes, hasher)])
            digests.append(hasher.intdigest())
        return digests
    finally:
        os.close(fd)


def read_shard_tables(path: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A shard's model row and layer rows (shard-local start/stop)."""
    return read_shard(path)[:2]


def read_shard(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """A shard's model row, layer rows (shard-local start/stop) and ``filter_offsets``, the tables
    verified against their digest (``DamagedDatabaseError`` naming the file otherwise)."""
    return read_verified_shard(path)[:3]


def read_verified_shard(path: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int], integrity.ShardIdentity]:
    """:func:`read_shard` and the shard's identity (model, size, digest)."""
    with _reading(path):
        with h5py.File(path, "r") as f:
            models, layers, identity = _checked_tables(f, path)
            return models, layers, _offsets(f), replace(identity, layer_digests=layer_digests(f, layers))


def open_shard(path: Path, model_id: str, model_name: str, expected_digest: int | None
               ) -> tuple[h5py.File, integrity.ShardCheck]:
    """Open a model's shard to read its filters through HDF5: the one judgment of whether a shard is
    readable, shared by the readers, export, build and verify. Its tables are read and checked against
    their digest (as :func:`read_verified_shard` does, with the same one-line errors), then its identity
    against ``expected_digest``; returns the open file and the :class:`integrity.ShardCheck` of its filters."""
    with _reading(path, "the shard cannot be read" if path.exists() else "the shard file is missing"):
        f = h5py.File(path, "r")
        try:
            _checked_tables(f, path)
            return f, integrity.ShardCheck(f, path, model_id, model_name, expected_digest)
        except BaseException:
            f.close()
            raise


def _checked_tables(f: h5py.File, path: Path) -> tuple[pd.DataFrame, pd.DataFrame, integrity.ShardIdentity]:
    """An open shard's model row and layer rows, verified against its recorded digest and its file name."""
    if f.attrs.get("encoding-type") != SHARD_ENCODING:
        raise integrity.damaged(path, "not a filterdb shard (a stray file in the shards folder)")
    check_readable(f.attrs.get("encoding-version", schema.FORMAT_VERSION), schema.FORMAT_VERSION,
                   f"{path}: shard format")
    models, layers = read_table(f["models"], schema.MODEL_COLUMNS), read_table(f["layers"], schema.LAYER_COLUMNS)
    identity = integrity.check_shard_tables(f, path, models, layers, (schema.MODEL_COLUMNS, schema.LAYER_COLUMNS))
    return models, layers, identity


@contextmanager
def _reading(path: Path, what: str = "the shard cannot be read") -> Iterator[None]:
    """An error HDF5 raises while reading a shard becomes one line naming it (``DamagedDatabaseError``)."""
    try:
        yield
    except FilterDBError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeDecodeError) as exc:
        raise integrity.read_error(path, exc, what) from None


def verify_shard(path: Path) -> integrity.ShardIdentity:
    """Read a shard whole (opened as every reader opens it, :func:`open_shard`) and check its tables and every
    layer's filters against their digests; ``DamagedDatabaseError`` naming the file if it is not intact."""
    models, layers, _, identity = read_verified_shard(path)
    f, check = open_shard(path, identity.model_id, str(models["name"].iloc[0]), identity.digest)
    try:
        with _reading(path, "the filters cannot be read"):
            for kernel in sorted(set(layers["kernel"])):
                dataset = check.dataset(kernel)
                data = np.empty(dataset.shape, np.float32)
                if len(data):
                    dataset.read_direct(data)
                rows = layers[layers["kernel"] == kernel]
                for name, start, stop in zip(rows["name"], rows["start"], rows["stop"]):
                    if stop > len(data):
                        raise integrity.damaged(path, f"layer {name} ends past the {len(data)} stored filters")
                    check.verify(kernel, int(start), data[start:stop], name)
    finally:
        check.close()
        f.close()
    return identity


def recorded_identity(path: Path) -> integrity.ShardIdentity:
    """A shard's identity as its root attributes record it (model id, file size, ``shard_digest``): one open,
    no table or filter read; ``DamagedDatabaseError`` naming the file where those cannot be read or it is
    not a filterdb shard with checksums of the model its name says."""
    with _reading(path, "the shard cannot be read" if path.exists() else "the shard file is missing"):
        with h5py.File(path, "r") as f:
            attrs = f.attrs
            if attrs.get("encoding-type") != SHARD_ENCODING:
                raise integrity.damaged(path, "not a filterdb shard (a stray file in the shards folder)")
            if attrs.get("integrity") != integrity.ALGORITHM:
                raise integrity.damaged(path, "the shard has no checksums (written by an older filterdb or not by "
                                              "filterdb); re-extract that model")
            model_id = str(attrs["model_id"])
            if model_id != path.stem:
                raise integrity.damaged(path, f"this file holds model {model_id}, not model {path.stem}: a stray or "
                                              "swapped shard")
            return integrity.ShardIdentity(model_id, path.stat().st_size, int(attrs["shard_digest"]))


def shard_digest(path: Path) -> int:
    """The digest a shard records of itself (its identity; 0 for a shard without checksums)."""
    with h5py.File(path, "r") as f:
        return int(f.attrs.get("shard_digest", 0))


def shard_facts(path: Path, layers: pd.DataFrame | None = None) -> tuple[dict[str, int], int, np.ndarray | None]:
    """``filter_offsets``, the recorded shard digest and (given its layer rows) ``layer_digests``, in one open."""
    with h5py.File(path, "r") as f:
        return (_offsets(f), int(f.attrs.get("shard_digest", 0)),
                None if layers is None else layer_digests(f, layers))


def layer_digests(f: h5py.File, layers: pd.DataFrame) -> np.ndarray:
    """The recorded digest of each layer row's filters (shard-local start/stop), uint64 in table order; 0 where
    none is recorded (the master keeps them, so that a reader verifies a layer without opening its shard)."""
    recorded = {kernel: integrity.recorded_digests(f["filters"][kernel].attrs) for kernel in f["filters"]
                if "layer_digests" in f["filters"][kernel].attrs}
    return np.array([recorded.get(k, {}).get((a, b), 0) for k, a, b in
                     zip(layers["kernel"], layers["start"].tolist(), layers["stop"].tolist())], np.uint64)


def filter_offsets(path: Path) -> dict[str, int]:
    """kernel -> byte offset of the shard's /filters/<kernel> data in its file (-1: not contiguous there)."""
    with h5py.File(path, "r") as f:
        return _offsets(f)


def _offsets(f: h5py.File) -> dict[str, int]:
    return {kernel: _offset(f["filters"][kernel]) for kernel in f["filters"]}


def _offset(dataset: h5py.Dataset) -> int:
    if dataset.compression or dataset.chunks or dataset.dtype != np.dtype("<f4"):
        return -1
    offset = dataset.id.get_offset()
    return -1 if offset is None else int(offset)


def list_shards(db_dir: str | os.PathLike) -> dict[str, tuple[int, int]]:
    """model_id -> (size, mtime_ns) of every complete shard file (a directory listing, no file opened)."""
    found: dict[str, tuple[int, int]] = {}
    try:
        entries = os.scandir(Path(db_dir) / SHARD_DIR)
    except FileNotFoundError:
        return found
    with entries:
        for entry in entries:
            if entry.name.endswith(".h5") and not entry.name.startswith("."):
                stat = entry.stat()
                found[entry.name[:-3]] = (stat.st_size, stat.st_mtime_ns)
    return found
