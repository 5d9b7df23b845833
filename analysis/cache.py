"""The metrics cache: one JSON file per model under ``<db.cache_dir>/metrics/`` (the database
directory; for an exported file ``$FILTERDB_HOME/cache/<its tables digest>/``).

A file holds the per-layer metrics of one model and the moments of its layers'
L-inf-scaled non-sparse filters (the streamed covariance of the divergence). It is valid
while the model's shard digest (``db.shard_digest``: changes with any change of the shard's
tables or filters), :data:`METRICS_VERSION` (changes with any metric's definition) and the
sparsity eps are the ones it was written with, and while its numbers match the digest
recorded with them (``filterdb.integrity``); anything else is recomputed (an edited or
damaged file with one line saying so). Files are published durably (``filterdb.atomic``),
so a killed run leaves no half-written cache. Deleting the folder is always safe.
"""
from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np
import pandas as pd

from filterdb.analysis.metrics import Moments
from filterdb.atomic import atomic_path
from filterdb.integrity import arrays_digest, digest, notice

METRICS_VERSION = "2"  # 2: variance entropy of 1x1 filters is NaN
CACHE_DIR = "metrics"
CACHE_FORMAT = "filterdb-metrics"


def cache_path(db_path: str | os.PathLike, model_id: str) -> Path:
    return Path(db_path) / CACHE_DIR / f"{model_id}.json"


def load(db_path, model_id: str, token: str, eps: float) -> tuple[pd.DataFrame, list[Moments]] | None:
    """The cached (per-layer frame, moments) of a model, or None if absent, stale or unreadable."""
    try:
        with open(cache_path(db_path, model_id)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or (data.get("format"), data.get("metrics_version"), data.get("token"),
                                      data.get("eps")) != (CACHE_FORMAT, METRICS_VERSION, token, eps):
        return None
    if data.get("digest") != _payload_digest(data):
        notice(f"{cache_path(db_path, model_id)}: the cached metrics do not match their checksum (edited or damaged); "
               "recomputing them")
        return None
    frame = pd.DataFrame(data["layers"])
    moments = [Moments(m["count"], np.array(m["mean"], dtype=np.float64), np.array(m["scatter"], dtype=np.float64))
               for m in data["moments"]]
    return frame, moments


def check_file(path: Path) -> str:
    """What is wrong with a cache file ('' if nothing): unreadable, not a cache file, or numbers not matching their digest."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as exc:
        return f"cannot be read ({exc})"
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT:
        return "is not a filterdb metrics cache file"
    if data.get("digest") != _payload_digest(data):
        return "the cached metrics do not match their checksum (edited or damaged)"
    return ""


def store(db_path, model_id: str, token: str, eps: float, frame: pd.DataFrame, moments: list[Moments]) -> bool:
    """Write a model's cache file atomically; False (nothing written) if the database directory is read-only."""
    path = cache_path(db_path, model_id)
    data = {
        "format": CACHE_FORMAT, "metrics_version": METRICS_VERSION, "token": token, "eps": eps,
        "layers": {c: [_plain(v) for v in frame[c]] for c in frame.columns},
        "moments": [{"count": m.count, "mean": m.mean.tolist(), "scatter": m.scatter.tolist()} for m in moments],
    }
    data["digest"] = _payload_digest(data)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w") as fh:
            json.dump(data, fh)
    except OSError:
        return False
    return True


def _payload_digest(data: dict) -> str:
    """Digest of the numbers (and the key they belong to) as JSON writes them: round trips exactly."""
    payload = {k: data.get(k) for k in ("format", "metrics_version", "token", "eps", "layers", "moments")}
    return f"{digest(json.dumps(payload, sort_keys=True).encode()):016x}"


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


# ---------------------------------------------------------------------------- the snapshot of the cache

SNAPSHOT_NAME = "snapshot.npz"
SNAPSHOT_FORMAT = "filterdb-metrics-snapshot"


def snapshot_path(db_path) -> Path:
    return Path(db_path) / CACHE_DIR / SNAPSHOT_NAME


@dataclass
class Snapshot:
    """Every model's cache file in one file (``metrics/snapshot.npz``), so that reading the metrics of
    thousands of models is one read, not thousands of JSON parses. A model's rows are used while its
    token is current and its JSON file has the size and mtime recorded with them (so an edited file
    is read, found out by its digest, and recomputed); the snapshot's own digest covers its numbers.
    It is rewritten whenever a model had to be read from its file or computed."""
    files: dict[str, tuple[str, int, int]]  # model_id -> (token, size, mtime_ns) of its cache file
    frame: pd.DataFrame  # the rows of every model, as :func:`load` gives them
    moments: Sequence[Moments]  # one per row of frame

    @classmethod
    def empty(cls) -> Snapshot:
        return cls({}, pd.DataFrame(), [])

    def current(self, db_path, tokens: dict[str, str]) -> set[str]:
        """The models of ``tokens`` (model_id -> current token) whose rows here are current."""
        folder = os.path.join(os.fspath(db_path), CACHE_DIR)  # str paths: a Path per model cost 30 us of 35
        return {mid for mid, token in tokens.items() if mid in self.files and self.files[mid][0] == token
                and _size_and_mtime(os.path.join(folder, f"{mid}.json")) == self.files[mid][1:]}


def file_stat(db_path, model_id: str) -> tuple[int, int] | None:
    return _size_and_mtime(cache_path(db_path, model_id))


def _size_and_mtime(path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def load_snapshot(db_path, eps: float) -> Snapshot:
    """The snapshot written with ``eps`` and this METRICS_VERSION (empty if absent, stale or damaged)."""
    path = snapshot_path(db_path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile):
        return Snapshot.empty()
    problem = _snapshot_problem(arrays)
    if problem == "stale":
        return Snapshot.empty()
    if problem:
        notice(f"{path}: {problem}; reading the cache files instead")
        return Snapshot.empty()
    if str(arrays["eps"]) != repr(eps):
        return Snapshot.empty()
    files = {str(m): (str(t), int(s), int(n)) for m, t, s, n in
             zip(arrays["file_model_id"], arrays["file_token"], arrays["file_size"].tolist(),
                 arrays["file_mtime_ns"].tolist())}
    columns = [str(c) for c in arrays["columns"]]
    frame = pd.DataFrame({c: arrays[f"column:{c}"].astype(object) if arrays[f"column:{c}"].dtype.kind == "U"
                          else arrays[f"column:{c}"] for c in columns})
    return Snapshot(files, frame, _split_moments(arrays))


def store_snapshot(db_path, eps: float, snapshot: Snapshot) -> bool:
    """Write the snapshot atomically; False (nothing written) where the directory is read-only."""
    arrays: dict[str, Any] = {"format": np.array(SNAPSHOT_FORMAT), "metrics_version": np.array(METRICS_VERSION),
              "eps": np.array(repr(eps)), "columns": np.array(list(snapshot.frame.columns), dtype=str)}
    ids = sorted(snapshot.files)
    arrays["file_model_id"] = np.array(ids, dtype=str)
    arrays["file_token"] = np.array([snapshot.files[m][0] for m in ids], dtype=str)
    arrays["file_size"] = np.array([snapshot.files[m][1] for m in ids], np.int64)
    arrays["file_mtime_ns"] = np.array([snapshot.files[m][2] for m in ids], np.int64)
    for c in snapshot.frame.columns:
        values = snapshot.frame[c].to_numpy()
        arrays[f"column:{c}"] = values.astype(str) if values.dtype == object else values
    moments = snapshot.moments
    arrays["moment_count"] = np.array([m.count for m in moments], np.int64)
    arrays["moment_dim"] = np.array([len(m.mean) for m in moments], np.int64)
    arrays["moment_mean"] = np.concatenate([m.mean for m in moments]) if moments else np.empty(0)
    arrays["moment_scatter"] = np.concatenate([m.scatter.ravel() for m in moments]) if moments else np.empty(0)
    arrays["digest"] = np.array(arrays_digest(arrays), dtype=np.uint64)
    path = snapshot_path(db_path)
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    except OSError:
        return False
    return True


def check_snapshot(path: Path) -> str:
    """What is wrong with a snapshot file ('' if nothing or merely stale)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        return f"cannot be read ({exc})"
    problem = _snapshot_problem(arrays)
    return "" if problem == "stale" else problem


def _snapshot_problem(arrays: dict) -> str:
    if "format" not in arrays or str(arrays["format"]) != SNAPSHOT_FORMAT or "digest" not in arrays:
        return "is not a filterdb metrics snapshot"
    if str(arrays.get("metrics_version")) != METRICS_VERSION:
        return "stale"
    if int(arrays["digest"]) != arrays_digest(arrays):
        return "the snapshot of the metrics does not match its checksum (edited or damaged)"
    return ""


def _split_moments(arrays: dict) -> MomentRows:
    return MomentRows(arrays["moment_count"], arrays["moment_dim"], arrays["moment_mean"], arrays["moment_scatter"])


class MomentRows(Sequence):
    """The snapshot's moments, one per row of its frame, made into :class:`Moments` only when read:
    a comparison on the database basis needs none of them (28,000 objects were 0.05 s)."""

    def __init__(self, counts: np.ndarray, dims: np.ndarray, means: np.ndarray, scatters: np.ndarray):
        self._counts, self._dims, self._means, self._scatters = counts, dims, means, scatters
        self._mean_at = np.concatenate([[0], np.cumsum(dims)])
        self._scatter_at = np.concatenate([[0], np.cumsum(dims * dims)])

    def __len__(self) -> int:
        return len(self._counts)

    @overload
    def __getitem__(self, row: int) -> Moments: ...

    @overload
    def __getitem__(self, row: slice) -> list[Moments]: ...

    def __getitem__(self, row):
        if isinstance(row, slice):
            return [self[r] for r in range(*row.indices(len(self)))]
        d, at, scatter_at = int(self._dims[row]), int(self._mean_at[row]), int(self._scatter_at[row])
        return Moments(int(self._counts[row]), self._means[at:at + d], self._scatters[scatter_at:scatter_at + d * d].reshape(d, d))
