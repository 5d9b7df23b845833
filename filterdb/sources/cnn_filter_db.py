"""Import the published CNN-Filter-DB / robustness-through-filters HDF5 file into a filterdb database.

The file (Gavrikov & Keuper, CVPR 2022 and CVPR-W 2022) holds ``/filters`` (or ``/filter``),
every 3x3 filter of every model, (N, 3, 3) or (N, 9), float64 or float32, and ``/meta``, a
pandas DataFrame (fixed format) with one row per convolution layer, indexed by
``[model_id, conv_depth, conv_depth_norm(, layer_id)]``; a layer's filters are the rows
``filter_ids = "start:end"`` (both ends inclusive), ``out * in_channels + in`` within it.

Each published model (``model`` column) becomes one filterdb model of source
``cnn-filter-db`` whose id derives from that name, one layer per ``/meta`` row. Filters are
stored as float32: float64 values are rounded to nearest (numpy's cast); a value that does not
fit float32, or a NaN, fails that model. The import streams: one model at a time, in chunks of
``chunk_rows`` filters written straight into the model's shard, so memory stays bounded
whatever the file's size; like a build it skips models already present, loses at most the
model in flight if killed, and reports failed models at the end.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from filterdb import schema
from filterdb.errors import FilterDBError
from filterdb.ids import model_id as make_model_id
from filterdb.ids import model_key
from filterdb.outcomes import BuildReport, ModelOutcome
from filterdb.output import json_safe
from filterdb.progress import progress_bar
from filterdb.shards import shard_writer
from filterdb.sources.direct_io import DirectFile, aligned_buffer, window
from filterdb.sources.pandas_hdf import is_missing, read_fixed_frame
from filterdb.store import FilterDB
from filterdb.versions import TOOL_VERSION

SOURCE = "cnn-filter-db"
FILTER_DATASETS = ("filters", "filter")  # the code writes /filters, the CNN-Filter-DB README says /filter
LAYER_FIELDS = ("layer_depth", "in_channels", "out_channels", "filter_ids")  # the rest describes the model
REQUIRED = ("model", "in_channels", "out_channels", "filter_ids")
INDEX_LEVELS = ("model_id", "conv_depth", "conv_depth_norm", "layer_id")
_DATASET_ALIASES = {"imagenet1k": "imagenet", "ilsvrc2012": "imagenet", "ilsvrc12": "imagenet"}
_THREAT_MODELS = {"linf": "Linf", "l2": "L2", "corruptions": "corruptions"}
_BYTES_PER_FILTER = 9 * 4


@dataclass
class PublishedModel:
    """One published model: its model-table row, its layer-table rows and where their filters are."""

    name: str
    record: dict = field(default_factory=dict)
    layers: list[dict] = field(default_factory=list)  # complete layer rows, shard-local start/stop
    sources: list[tuple[int, int]] = field(default_factory=list)  # per layer: rows [lo, hi) of /filters
    error: str = ""  # why the model cannot be imported ('' if it can)

    @property
    def model_id(self) -> str:
        return make_model_id(SOURCE, self.name)

    @property
    def n_filters(self) -> int:
        return sum(hi - lo for lo, hi in self.sources)


# --------------------------------------------------------------------------- reading the metadata

def filters_dataset(f: h5py.File, path) -> h5py.Dataset:
    """The file's filter array, checked: (N, 3, 3) or (N, 9), float32 or float64."""
    name = next((n for n in FILTER_DATASETS if n in f and isinstance(f[n], h5py.Dataset)), None)
    if name is None:
        raise FilterDBError(f"{path}: no /filters (or /filter) dataset; this is not a CNN-Filter-DB file")
    ds = f[name]
    if ds.shape[1:] not in ((3, 3), (9,)) or ds.dtype not in (np.float32, np.float64):
        raise FilterDBError(f"{path}:/{name} has shape {ds.shape} and dtype {ds.dtype}; expected (N, 3, 3) or (N, 9) "
                            "float32 or float64 filters")
    return ds


def _row_label(position: int, index: tuple, names: list[str], model: object) -> str:
    where = ", ".join(f"{n}={v}" for n, v in zip(names, index))
    return f"/meta row {position} ({where}, model {model!r})"


def _parse_ids(text, label: str) -> tuple[int, int]:
    """``"start:end"``, both ends inclusive, as the half-open rows [start, end + 1)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text) if isinstance(text, str) else None
    if match is None:
        raise FilterDBError(f"{label}: filter_ids {text!r} is not 'start:end'")
    start, end = int(match[1]), int(match[2])
    if end < start:
        raise FilterDBError(f"{label}: filter_ids {text!r} ends before it starts")
    return start, end + 1


def _as_int(value, what: str, label: str) -> int:
    try:
        whole = not isinstance(value, (bool, np.bool_, str)) and float(value) == int(value)
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise FilterDBError(f"{label}: {what} {value!r} is not an integer")
    return int(value)


def _dataset_name(text) -> str:
    if is_missing(text) or not str(text).strip():
        return ""
    key = re.sub(r"[^0-9a-z]", "", str(text).lower())
    return _DATASET_ALIASES.get(key, key)


def _training(robust) -> str:
    """``Robust``: True -> robust, False -> normal, NaN/None -> '' (unknown). The authors'
    ``.apply(bool)`` turned NaN into True; an unknown model is not called robust here."""
    if is_missing(robust):
        return ""
    if isinstance(robust, str):
        text = robust.strip().lower()
        if text in ("true", "false"):
            return "robust" if text == "true" else "normal"
        raise FilterDBError(f"Robust value {robust!r} is neither True, False nor missing")
    return "robust" if bool(robust) else "normal"


def _float(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _input_shape(value) -> str:
    numbers = [int(n) for n in re.findall(r"\d+", str(value))] if not is_missing(value) else []
    return "x".join(map(str, numbers[-3:])) if len(numbers) >= 3 else ""


def model_record(name: str, fields: dict, n_layers: int, n_filters: int) -> dict:
    """The model-table row of a published model from its model-level metadata ``fields``."""
    def get(*names):
        for n in names:
            value = fields.get(n)
            if not is_missing(value) and value != "":
                return value
        return None

    tokens = name.lower().split("_")
    threat = next((_THREAT_MODELS[t] for t in tokens if t in _THREAT_MODELS), "")
    row = {
        "model_id": make_model_id(SOURCE, name), "key": model_key(SOURCE, name), "source": SOURCE, "name": name,
        "dataset": _dataset_name(get("Training-Dataset")),
        "threat_model": threat,
        "training": _training(fields.get("Robust")),
        "architecture": str(get("Network", "Backbone") or ""),
        "clean_acc": _float(get("Clean Accuracy")), "robust_acc": _float(get("Robust Accuracy")),
        "paper": str(get("Paper") or ""),
        "input_shape": _input_shape(fields.get("Input Shape")),
        "n_members": 1, "n_layers": n_layers, "n_filters": n_filters,
        "published_json": json.dumps({k: json_safe(v) for k, v in fields.items()}, allow_nan=False),
        "tool_version": TOOL_VERSION,
        "extracted_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    return schema.complete_record(row, schema.MODEL_COLUMNS, "model")


def _layer_row(model_id: str, index: int, depth: int, depth_norm: float, layer_id, in_c: int, out_c: int,
               start: int) -> dict:
    n = in_c * out_c
    row = {"model_id": model_id, "layer_index": index, "member": 0,
           "name": f"layer{layer_id}" if layer_id is not None else f"conv{depth}",
           "exec_order": depth, "reached": True, "conv_depth": depth, "conv_depth_norm": depth_norm,
           # in_channels as published: the weight's second dimension, per group for grouped convolutions
           "in_channels": in_c, "out_channels": out_c, "groups": 1, "kernel": "3x3", "kernel_h": 3, "kernel_w": 3,
           "n_filters": n, "start": start, "stop": start + n}
    return schema.complete_record(row, schema.LAYER_COLUMNS, "layer")


def plan_import(path: str | os.PathLike) -> list[PublishedModel]:
    """Read and check the file's metadata; one ``PublishedModel`` per published model, in file order.

    A model whose rows do not check out (filter ids not 'start:end', outside /filters or
    overlapping another layer's, n_filters != in * out, conv_depth inconsistent) carries the
    error naming the row, and is not imported.
    """
    path = Path(path)
    with h5py.File(path, "r") as f:
        n_rows = len(filters_dataset(f, path))
    meta = read_fixed_frame(path, "meta")
    if meta.index.nlevels not in (3, 4):
        raise FilterDBError(f"{path}: /meta has a {meta.index.nlevels}-level index; expected "
                            f"[{', '.join(INDEX_LEVELS)}] (or the first three)")
    names = [n or INDEX_LEVELS[i] for i, n in enumerate(meta.index.names)]
    missing = [c for c in REQUIRED if c not in meta.columns]
    if missing:
        raise FilterDBError(f"{path}: /meta lacks the column(s) {', '.join(missing)}; this is not a CNN-Filter-DB file")
    model_fields = [c for c in meta.columns if c not in LAYER_FIELDS]
    index_rows = list(meta.index)
    columns = {c: meta[c].tolist() for c in meta.columns}

    rows_of: dict[str, list[int]] = {}
    for position, name in enumerate(columns["model"]):
        if not isinstance(name, str) or not name:
            label = _row_label(position, index_rows[position], names, name)
            raise FilterDBError(f"{path}: {label}: the model name is missing; every row needs one")
        rows_of.setdefault(name, []).append(position)

    models = []
    claimed: list[tuple[int, int, str, PublishedModel]] = []  # (lo, hi, row label, model) of every layer, for overlaps
    for name, positions in rows_of.items():
        model = PublishedModel(name)
        try:
            _plan_model(model, positions, index_rows, names, columns, model_fields, n_rows, claimed)
        except FilterDBError as exc:
            model.error = f"{path}: {exc}"
        models.append(model)
    claimed.sort(key=lambda c: (c[0], c[1]))
    for (_, hi, label, _), (lo, _, other_label, other) in zip(claimed, claimed[1:]):
        if lo < hi and not other.error:
            other.error = f"{path}: {other_label}: filter_ids overlap those of {label}"
    return models


def _plan_model(model: PublishedModel, positions: list[int], index_rows: list[tuple], names: list[str],
                columns: dict[str, list], model_fields: list[str], n_rows: int, claimed: list) -> None:
    labels, layers = {}, []
    for p in positions:
        label = labels[p] = _row_label(p, index_rows[p], names, model.name)
        published_id, depth, depth_norm = index_rows[p][:3]
        layer_id = index_rows[p][3] if len(index_rows[p]) > 3 else None
        depth = _as_int(depth, "conv_depth", label)
        depth_norm = float(depth_norm)
        if depth < 0 or not 0.0 <= depth_norm <= 1.0:
            raise FilterDBError(f"{label}: conv_depth {depth} / conv_depth_norm {depth_norm} out of range "
                                "(conv_depth >= 0, 0 <= conv_depth_norm <= 1)")
        in_c = _as_int(columns["in_channels"][p], "in_channels", label)
        out_c = _as_int(columns["out_channels"][p], "out_channels", label)
        lo, hi = _parse_ids(columns["filter_ids"][p], label)
        if hi > n_rows:
            raise FilterDBError(f"{label}: filter_ids {columns['filter_ids'][p]!r} reach past the end of /filters "
                                f"({n_rows} filters)")
        if hi - lo != in_c * out_c:
            raise FilterDBError(f"{label}: {hi - lo} filters in filter_ids {columns['filter_ids'][p]!r}, but "
                                f"in_channels * out_channels = {in_c} * {out_c} = {in_c * out_c}")
        layers.append((lo, hi, p, published_id, depth, depth_norm, layer_id, in_c, out_c))

    if len({row[3] for row in layers}) != 1:
        raise FilterDBError(f"{labels[positions[0]]}: the rows of model {model.name!r} have different model_ids "
                            f"({sorted({row[3] for row in layers})})")
    by_depth = sorted(layers, key=lambda row: (row[4], row[5]))
    for previous, row in zip(by_depth, by_depth[1:]):
        if row[5] < previous[5] or (row[4] == previous[4] and row[5] != previous[5]):
            raise FilterDBError(f"{labels[row[2]]}: conv_depth_norm {row[5]} is inconsistent with conv_depth "
                                f"{row[4]} ({labels[previous[2]]} has conv_depth {previous[4]}, "
                                f"conv_depth_norm {previous[5]})")
    layers.sort()  # file order: the shard is then one sequential read of the source
    claimed.extend((lo, hi, labels[p], model) for lo, hi, p, *_ in layers)

    first = positions[0]
    fields = {names[0]: json_safe(index_rows[first][0])}  # the published model_id
    for c in model_fields:
        values = [columns[c][p] for p in positions]
        same = all(v == values[0] or (is_missing(v) and is_missing(values[0])) for v in values)
        fields[c] = values[0] if same else values
    start = 0
    mid = model.model_id
    for index, (lo, hi, _padding, _, depth, depth_norm, layer_id, in_c, out_c) in enumerate(layers):
        model.layers.append(_layer_row(mid, index, depth, depth_norm, layer_id, in_c, out_c, start))
        model.sources.append((lo, hi))
        start += hi - lo
    try:
        model.record = model_record(model.name, fields, len(layers), start)
    except FilterDBError as exc:
        raise FilterDBError(f"{labels[first]}: {exc}") from None


# --------------------------------------------------------------------------- writing the shards

def import_cnn_filter_db(path: str | os.PathLike, db: FilterDB, *, force: bool = False, chunk_rows: int = 1 << 20,
                         show_progress: bool = True, models: list[PublishedModel] | None = None) -> BuildReport:
    """Import every model of the file at ``path`` into ``db`` (open for writing); returns what happened to each.

    Models already in ``db`` are skipped unless ``force``, so a rerun resumes an interrupted
    import. Memory: three chunks of ``chunk_rows`` filters in the file's dtype and three in float32
    (324 MB at the default for a float64 file), whatever the size of a model; the page cache
    is bypassed where the file system allows (``O_DIRECT``).
    ``models``: the file's ``plan_import`` if already read.
    """
    path = Path(path)
    models = plan_import(path) if models is None else models
    report = BuildReport()
    todo = []
    for model in models:
        if model.error:
            report.outcomes.append(ModelOutcome(model_key(SOURCE, model.name), model.model_id, "failed",
                                                error=model.error))
        elif db.has_model(model.model_id) and not force:
            report.outcomes.append(ModelOutcome(model_key(SOURCE, model.name), model.model_id, "skipped"))
        else:
            todo.append(model)
    with h5py.File(path, "r") as f, db.batch(), progress_bar(unit="filters", transient=not show_progress) as progress:
        pipeline = _Pipeline(filters_dataset(f, path), chunk_rows)
        task = progress.add_task(SOURCE, total=sum(m.n_filters for m in todo), status="", visible=show_progress)
        try:
            _import_models(db, todo, pipeline, report, path, lambda n: progress.advance(task, n),
                           lambda name: progress.update(task, status=name))
        finally:
            pipeline.close()
        progress.update(task, status="done")
    return report


def _import_models(db: FilterDB, todo: list[PublishedModel], pipeline: _Pipeline, report: BuildReport, path: Path,
                   advance, show) -> None:
    for model in todo:
        show(model.name)
        t0 = time.perf_counter()
        try:
            _write_model(db, model, pipeline, advance)
        except (FilterDBError, OSError) as exc:
            report.outcomes.append(ModelOutcome(model_key(SOURCE, model.name), model.model_id, "failed",
                                                seconds=time.perf_counter() - t0, error=f"{path}: {exc}"))
            continue
        report.outcomes.append(ModelOutcome(model_key(SOURCE, model.name), model.model_id, "added",
                                            len(model.layers), model.n_filters, time.perf_counter() - t0))


class _Pipeline:
    """Moves rows of /filters into shards through three slots, so that reading the next chunk
    (a reader thread), converting and checking this one (the caller) and writing the previous
    one (a writer thread) overlap. A slot holds a chunk as read and as float32; it is read into
    again only once its last write has finished. Reads and writes bypass the page cache where
    they can (:mod:`.direct_io`): each byte is read once and written once."""

    SLOTS = 3

    def __init__(self, dataset: h5py.Dataset, chunk_rows: int):
        self.dataset = dataset
        self.chunk_rows = chunk_rows
        rows = max(1, min(chunk_rows, len(dataset)))
        self._row_bytes = dataset.dtype.itemsize * 9
        self._raw = [aligned_buffer(rows * self._row_bytes) for _ in range(self.SLOTS)]
        self._out = [aligned_buffer(rows * _BYTES_PER_FILTER) for _ in range(self.SLOTS)]
        self._writes: list[Future | None] = [None] * self.SLOTS
        self._reader = ThreadPoolExecutor(max_workers=1)
        self._writer = ThreadPoolExecutor(max_workers=1)
        # A contiguous, unfiltered little-endian dataset (what h5py writes by default) is read at
        # its file offset; any other goes through HDF5.
        plain = dataset.chunks is None and dataset.compression is None and dataset.dtype.byteorder in "<=" \
            and sys.byteorder == "little" and dataset.id.get_offset() is not None
        self._source = DirectFile(dataset.file.filename, "r") if plain else None
        self._offset = dataset.id.get_offset() if plain else None

    def close(self) -> None:
        self._reader.shutdown()
        self._writer.shutdown()
        if self._source is not None:
            self._source.close()

    def _read(self, slot: int, lo: int, hi: int) -> np.ndarray:
        shape = (hi - lo, *self.dataset.shape[1:])
        if self._source is None:
            raw = self._raw[slot][:(hi - lo) * self._row_bytes].view(self.dataset.dtype).reshape(shape)
            self.dataset.read_direct(raw, source_sel=np.s_[lo:hi])
            return raw
        data = self._source.read(self._raw[slot], self._offset + lo * self._row_bytes, (hi - lo) * self._row_bytes)
        return data.view(self.dataset.dtype).reshape(shape)

    def _submit_read(self, slot: int, lo: int, hi: int) -> Future:
        pending = self._writes[slot]
        if pending is not None:
            pending.result()
            self._writes[slot] = None
        return self._reader.submit(self._read, slot, lo, hi)

    def copy(self, model: PublishedModel, shard: DirectFile, offset: int, advance) -> None:
        """Every filter of ``model`` into ``shard``, whose filters start at byte ``offset``."""
        tasks = list(_chunks(model, self.chunk_rows))
        reads = {0: self._submit_read(0, *tasks[0][:2])} if tasks else {}
        try:
            for k, (lo, hi, row) in enumerate(tasks):
                if k + 1 < len(tasks):
                    reads[k + 1] = self._submit_read((k + 1) % self.SLOTS, *tasks[k + 1][:2])
                raw = reads.pop(k).result()
                slot, n, at = k % self.SLOTS, hi - lo, offset + row * _BYTES_PER_FILTER
                data = window(self._out[slot], at, n * _BYTES_PER_FILTER)
                out = data.view(np.float32).reshape(n, 3, 3)
                with np.errstate(over="ignore"):  # float64 -> float32 overflow gives inf, which the check reports
                    np.copyto(out.reshape(raw.shape), raw, casting="same_kind")
                _check_finite(out, model, lo)
                self._writes[slot] = self._writer.submit(shard.write, data, at)
                advance(n)
        except BaseException:  # nothing may still read into or write from the buffers after this
            for future in [*reads.values(), *self._writes]:
                if future is not None:
                    future.exception()
            self._writes = [None] * self.SLOTS
            raise
        for slot, future in enumerate(self._writes):  # the shard is complete once every write is
            if future is not None:
                future.result()
            self._writes[slot] = None


def _chunks(model: PublishedModel, chunk_rows: int):
    """(first row, end row in /filters, first row in the shard) of chunks of at most ``chunk_rows``
    filters; layers that follow one another in the file are read as one run."""
    runs: list[list[int]] = []
    for layer, (lo, hi) in zip(model.layers, model.sources):
        if runs and runs[-1][1] == lo:
            runs[-1][1] = hi
        else:
            runs.append([lo, hi, layer["start"]])
    for lo, hi, row in runs:
        for a in range(lo, hi, chunk_rows):
            yield a, min(a + chunk_rows, hi), row + a - lo


def _write_model(db: FilterDB, model: PublishedModel, pipeline: _Pipeline, advance) -> None:
    """One model's shard, written in place by the pipeline, then registered with the database."""
    with shard_writer(db.path, model.record, model.layers) as (tmp, offsets):
        shard = DirectFile(tmp, "w")
        try:
            pipeline.copy(model, shard, offsets["3x3"], advance)
        finally:
            shard.close()
    db.adopt_shard(model.model_id)


def _check_finite(chunk: np.ndarray, model: PublishedModel, first_row: int) -> None:
    """Raise ``FilterDBError`` naming the model, layer and row of the first NaN/Inf filter of a chunk."""
    if np.isfinite(chunk.sum()) or np.isfinite(chunk).all():
        return
    row = first_row + int(np.flatnonzero(~np.isfinite(chunk).reshape(len(chunk), -1).all(axis=1))[0])
    layer, (lo, _) = next((lay, src) for lay, src in zip(model.layers, model.sources) if src[0] <= row < src[1])
    raise FilterDBError(f"model {model.name!r}, {layer['name']}: filter {row - lo} of the layer (row {row} of /filters) "
                        "is NaN or Inf (or a float64 value beyond float32's range); the file is corrupt - "
                        "download it again")
