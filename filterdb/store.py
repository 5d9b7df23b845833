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
nor the extraction code: reading a database needs h5py, numpy and pandas only.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

from filterdb import schema
from filterdb.errors import FilterDBError
from filterdb.h5table import read_table, write_table
from filterdb.lock import WriterLock
from filterdb.master import (DATABASE_ENCODING, INDEX_COLUMNS, MASTER_NAME, MASTER_VERSION, MasterState, append_master,
                             empty_frame, global_rows, is_current, read_spans, read_state, spans, vouches_for_folder,
                             write_master)
from filterdb.shards import (FILTERS_ENCODING, SHARD_DIR, SHARD_ENCODING, TMP_SUFFIX, filter_offsets,  # noqa: F401
                             list_shards, read_shard, read_shard_tables, root_attrs, shard_path, shard_writer,
                             write_shard)


@dataclass
class Pending:
    """A model stored since the last publish: its tables (shard-local rows), shard identity and data offsets."""
    models: pd.DataFrame
    layers: pd.DataFrame
    stat: tuple[int, int]  # (size, mtime_ns) of the shard file
    offsets: dict[str, int]  # kernel -> byte offset of its filters in the shard


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

    def __init__(self, path: Path, mode: str):
        self.path = Path(path)
        self.mode = mode
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
        self._spans: dict[tuple[str, str], tuple[int, int]] | None = None  # (model, kernel) -> (start, offset)
        self._base_spans: dict[tuple[str, str], tuple[int, int]] | None = None
        self._ids: tuple[MasterState, set[str]] | None = None
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
        if mode == "r" and _is_stale(path):
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
        if self.mode == "r":
            self._open_master()
            self._models = read_table(self._file["models"], schema.MODEL_COLUMNS)
            self._layers = read_table(self._file["layers"], schema.LAYER_COLUMNS)
            self._spans = read_spans(self._file) or None  # format 1.0: computed from the layers when needed
            return
        self._lock = WriterLock(self.path)
        for stale in [*(self.path / SHARD_DIR).glob(f".*{TMP_SUFFIX}"), *self.path.glob(f".*{TMP_SUFFIX}")]:
            stale.unlink(missing_ok=True)  # left by a killed build: the model in flight, never complete
        self._state = read_state(self.path)
        if self._state is None or not is_current(self.path, self._state):
            self._reconcile()
            self._publish()
        elif not vouches_for_folder(self.path, self._state):
            self._unpublished = True  # current, but say so in the master: the next open skips the listing

    def _reconcile(self) -> None:
        """Bring the tables up to date with the shard files on disk, reading only the shards that changed."""
        state = self._state
        if state is None or state.version != MASTER_VERSION:
            self._rewrite, known = True, {}  # no usable index: every shard is read
        else:
            known = self._known()
        on_disk = list_shards(self.path)
        for mid in known:
            if on_disk.get(mid) != known[mid]:  # deleted or replaced behind our back
                self._drop(mid)
        fresh = []
        for mid in sorted(set(on_disk) - {m for m in known if on_disk.get(m) == known[m]}):
            path = shard_path(self.path, mid)
            try:
                models, layers, offsets = read_shard(path)
            except (OSError, KeyError, ValueError) as exc:
                raise FilterDBError(f"shard {path} cannot be read ({exc}); delete it and rerun the build "
                                    "to extract that model again") from exc
            fresh.append((models["key"].iloc[0], mid, models, layers, offsets))
        for _, mid, models, layers, offsets in sorted(fresh, key=lambda item: item[0]):
            self._pending[mid] = Pending(models, layers, on_disk[mid], offsets)
        self._changed_tables()

    def _known(self) -> dict[str, tuple[int, int]]:
        """model_id -> (size, mtime_ns) of the shard behind every model of the current tables."""
        index = self._state.index if self._state is not None and not self._rewrite else empty_frame(INDEX_COLUMNS)
        known = {mid: stat for mid, stat in zip(index["model_id"], zip(index["size"].tolist(),
                                                                        index["mtime_ns"].tolist()))
                 if mid not in self._dropped}
        known.update({mid: part.stat for mid, part in self._pending.items()})
        return known

    def _open_master(self) -> None:
        try:
            self._file = h5py.File(self.path / MASTER_NAME, "r")
        except OSError as exc:
            raise FilterDBError(f"{self.path / MASTER_NAME} cannot be read ({exc}); open the database for "
                                "writing ('filterdb build' or 'filterdb add') to rebuild it from the shards") from exc
        if self._file.attrs.get("format") != schema.FORMAT_NAME:
            raise FilterDBError(f"{self.path / MASTER_NAME} is not a filterdb database file")

    def close(self) -> None:
        if self._unpublished and self._lock is not None:
            self._publish()
        for f in self._shards.values():
            f.close()
        self._shards.clear()
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

    @property
    def kernels(self) -> list[str]:
        return sorted(self.layers["kernel"].unique(), key=lambda k: (int(k.split("x")[0]) * int(k.split("x")[1]), k))

    def filters(self, kernel: str = "3x3") -> h5py.Dataset:
        """The virtual dataset of all filters of one kernel size (read lazily, slice what you need)."""
        if self._unpublished:
            self._publish()
        if self._file is None:
            self._open_master()
        if kernel not in self._file["filters"]:
            raise FilterDBError(f"no {kernel} filters in {self.path}; kernels present: {', '.join(self.kernels) or 'none'}")
        return self._file["filters"][kernel]

    def has_model(self, model_id: str) -> bool:
        if self.mode == "r":
            return model_id in self._models.index
        return model_id in self._pending or (model_id not in self._dropped and not self._rewrite
                                             and self._state is not None
                                             and model_id in self._index_ids())

    def _index_ids(self) -> set[str]:
        if self._ids is None or self._ids[0] is not self._state:
            self._ids = (self._state, set(self._state.index["model_id"]))
        return self._ids[1]

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

    def _read_rows(self, model_id: str, kernel: str, lo: int, hi: int) -> np.ndarray:
        """Rows [lo, hi) of /filters/<kernel> (global rows within one model), from its shard: one pread at
        the data's byte offset when the index has it, else through HDF5."""
        base, offset = self._span(model_id, kernel)
        kh, kw = map(int, kernel.split("x"))
        if offset >= 0:
            count = (hi - lo) * kh * kw
            out = np.fromfile(self.shard_path(model_id), dtype="<f4", count=count, offset=offset + (lo - base) * kh * kw * 4)
            if len(out) != count:
                raise FilterDBError(f"shard {self.shard_path(model_id)} is shorter than its index says; "
                                    "open the database for writing to re-index it, or rebuild that model")
            return out.astype(np.float32, copy=False).reshape(hi - lo, kh, kw)
        dataset = self._shard(model_id)["filters"][kernel]
        out = np.empty((hi - lo, kh, kw), np.float32)
        if hi > lo:
            dataset.read_direct(out, source_sel=np.s_[lo - base:hi - base])
        return out

    def read_layer(self, row: pd.Series) -> np.ndarray:
        """The filters of one layer-table row, float32 (n, kh, kw), read from the model's shard."""
        return self._read_rows(row["model_id"], row["kernel"], int(row["start"]), int(row["stop"]))

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
        mine = frame["kernel"].to_numpy() == kernel  # numpy, not pandas: callers pass one layer at a time
        ids = frame["model_id"].to_numpy()[mine]
        starts, stops = frame["start"].to_numpy()[mine].tolist(), frame["stop"].to_numpy()[mine].tolist()
        for mid, start, stop in zip(ids, starts, stops):
            for lo in range(start, stop, chunk_rows):
                yield self._read_rows(mid, kernel, lo, min(lo + chunk_rows, stop))

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
        tables (root attributes, /models, /layers, /filters/<kernel>) with the filters copied
        in (no virtual datasets, no shards beside it). Written under a temporary name."""
        out = Path(out).expanduser()
        if out.is_dir():
            raise FilterDBError(f"{out} is a directory; give the path of the .h5 file to write")
        tmp = out.with_name(f".{out.name}.{os.getpid()}{TMP_SUFFIX}")
        try:
            with h5py.File(tmp, "w", libver="latest") as f:
                root_attrs(f, DATABASE_ENCODING)
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
        if self._rewrite or self._dropped or state is None:
            models, layers = self._tables()
            stats = {**self._known()}
            index = _index_rows(models, layers, stats, first_layer=0)
            span_rows = spans(layers, _by_model(self._offsets()))
            self._state = write_master(self.path, models, layers, index, span_rows, clean=clean)
            self._base = models, layers
            self._base_spans = None
        else:
            parts = list(self._pending.values())
            models = pd.concat([p.models for p in parts]) if parts else empty_frame(schema.MODEL_COLUMNS, "model_id")
            layers = global_rows(pd.concat([p.layers for p in parts], ignore_index=True) if parts
                                 else empty_frame(schema.LAYER_COLUMNS), state.totals)
            index = _index_rows(models, layers, {mid: part.stat for mid, part in self._pending.items()},
                                first_layer=state.n_layers)
            span_rows = spans(layers, {mid: part.offsets for mid, part in self._pending.items()})
            self._state = append_master(self.path, state, models, layers, index, span_rows, clean=clean)
            self._base = self._view if self._view is not None else None
            if self._base_spans is not None:
                self._base_spans.update({(m, k): (s, o) for m, k, s, o in
                                         zip(span_rows["model_id"], span_rows["kernel"], span_rows["start"].tolist(),
                                             span_rows["offset"].tolist())})
        if self._file is not None:
            self._file.close()
            self._file = None
        self._pending, self._dropped, self._rewrite = {}, set(), False
        self._unpublished = False
        self._published_at = time.monotonic()

    def adopt_shard(self, model_id: str) -> None:
        """Register a shard that another process (a build worker) wrote into this database."""
        self._require_writable()
        self._adopting = True
        models, layers = read_shard_tables(self.shard_path(model_id))
        self._add(model_id, models, layers)

    def add_extracted(self, record: dict, layers: list) -> str:
        """Store an extracted model (a complete model-table row and its ``ExtractedLayer`` list); returns its model_id."""
        self._require_writable()
        _, models, layer_rows = write_shard(self.path, record, layers)
        self._add(record["model_id"], models, layer_rows)
        return record["model_id"]

    def _add(self, model_id: str, models: pd.DataFrame, layers: pd.DataFrame) -> None:
        path = self.shard_path(model_id)
        stat = path.stat()
        offsets = filter_offsets(path)
        f = self._shards.pop(model_id, None)
        if f is not None:
            f.close()
        if self.has_model(model_id):
            self._drop(model_id)  # re-extracted: the new rows go last
        self._pending[model_id] = Pending(models, layers, (stat.st_size, stat.st_mtime_ns), offsets)
        self._changed()

    def add_module(self, module, *, source: str, name: str, input_shape: tuple[int, int, int],
                   record: dict | None = None, weights_path: str | os.PathLike | None = None) -> str:
        """Extract a ``torch.nn.Module`` (or a list: the members of an ensemble) and store it; returns its model_id."""
        from filterdb.records import extract_loaded  # extraction imports torch: only here, never to read
        from filterdb.sources.base import LoadedModel, ModelSpec

        members = module if isinstance(module, list) else [module]
        spec = ModelSpec(source, name, record=dict(record or {}))
        loaded = LoadedModel(spec, members, tuple(input_shape), Path(weights_path) if weights_path else None)
        return self.add_extracted(*extract_loaded(loaded))

    def remove_model(self, model_id: str) -> None:
        self._require_writable()
        if not self.has_model(model_id):
            raise FilterDBError(f"no model {model_id} in {self.path}; 'filterdb info' lists the models")
        f = self._shards.pop(model_id, None)
        if f is not None:
            f.close()
        self.shard_path(model_id).unlink()
        self._drop(model_id)
        self._changed()



def _is_stale(path: Path) -> bool:
    """Whether a reader should ask for the master to be brought up to date first."""
    state = read_state(path)
    if state is not None and state.version != MASTER_VERSION:
        return _legacy_is_stale(path)
    return not is_current(path, state)


def _by_model(offsets: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for (mid, kernel), offset in offsets.items():
        out.setdefault(mid, {})[kernel] = offset
    return out


def _index_rows(models: pd.DataFrame, layers: pd.DataFrame, stats: dict[str, tuple[int, int]],
                first_layer: int) -> pd.DataFrame:
    """The index rows of ``models`` (in order): shard file, its size and mtime, and its rows in /layers."""
    ids = models["model_id"].to_numpy(dtype=object)
    counts = layers["model_id"].value_counts().reindex(ids, fill_value=0).to_numpy(np.int64)
    stops = first_layer + np.cumsum(counts)
    return pd.DataFrame({
        "model_id": ids, "file": [f"{SHARD_DIR}/{mid}.h5" for mid in ids],
        "size": np.array([stats[mid][0] for mid in ids], np.int64),
        "mtime_ns": np.array([stats[mid][1] for mid in ids], np.int64),
        "layer_start": stops - counts, "layer_stop": stops,
    })


def open_database(path: str | os.PathLike, mode: str = "r") -> FilterDB:
    """Open a filter database directory (see ``FilterDB.open``)."""
    return FilterDB.open(path, mode)
