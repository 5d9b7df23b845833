"""What a database directory's reader and its writer share: reading a model's filters from its shard.

Every filter of a directory is read here, from the model's shard file (never through the master's
virtual datasets), and verified against its digest before it is returned: in one read at the
offset and against the digest the master records (:meth:`DirectoryReading._read_recorded`), or
through HDF5 and the shard's own records. The tables, the recorded offsets and digests come from
the subclass: :class:`filterdb.reader.DatabaseReader` reads them from the master (or, around an
unusable one, from the shards), :class:`filterdb.writer.DatabaseWriter` keeps them as it changes them.
"""
from __future__ import annotations

import os
from abc import abstractmethod
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from filterdb import integrity, schema
from filterdb.errors import FilterDBError
from filterdb.integrity import MasterDamaged
from filterdb.master import MASTER_NAME, MASTER_VERSION
from filterdb.reading import DatabaseReading
from filterdb.shards import open_shard, shard_facts, shard_path
from filterdb.versions import check_readable


class DirectoryReading(DatabaseReading):
    """A database directory's reading machinery: its open shards, their checks, the master file."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file: h5py.File | None = None  # the master file, when open
        self._checks: dict[str, integrity.ShardCheck] = {}  # model_id -> the digests of its open shard
        self._shards: dict[str, h5py.File] = {}
        self._fds: dict[str, int] = {}  # model_id -> an open descriptor of its shard (reads through the master's records)
        self._indexed: dict[str, tuple[int, int]] = {}  # model_id -> (size, mtime_ns) the master's index records
        self._layer_digests: np.ndarray | None = None  # one per row of the layer table as the master records it, or None
        self._digest_of: dict[tuple[str, int], tuple[int, int]] | None = None  # (kernel, start) -> (stop, digest)
        self._spans: dict[tuple[str, str], tuple[int, int]] | None = None  # (model, kernel) -> (start, offset)
        self._names: tuple[pd.DataFrame, dict[str, str]] | None = None

    @abstractmethod
    def _offsets(self) -> dict[tuple[str, str], int]:
        """(model_id, kernel) -> the byte offset of those filters in the model's shard, where recorded."""

    @abstractmethod
    def _expected_digest(self, model_id: str) -> int | None:
        """The digest recorded of the model's shard; None where none is recorded."""

    def close(self) -> None:
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

    def _master_dataset(self, kernel: str) -> h5py.Dataset:
        f = self._file if self._file is not None else self._open_master()
        if kernel not in f["filters"]:
            raise FilterDBError(f"no {kernel} filters in {self.path}; kernels present: {', '.join(self.kernels) or 'none'}")
        return f["filters"][kernel]

    def _shard(self, model_id: str) -> h5py.File:
        f = self._shards.get(model_id)
        if f is None:
            if len(self._shards) >= 64:
                oldest = next(iter(self._shards))
                self._shards.pop(oldest).close()
                self._forget_check(oldest)
            # the same open and checks as build and verify (tables and identity), so all agree on what is readable
            f, self._checks[model_id] = open_shard(self.shard_path(model_id), model_id, self._model_name(model_id),
                                                   self._expected_digest(model_id))
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
            layer_rows = self.layers
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

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    @property
    def cache_dir(self) -> Path:
        """Where derived data (the metrics cache, the divergence basis) lives: the database directory."""
        return self.path

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

