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
from pathlib import Path

import numpy as np
import pandas as pd

from filterdb.analysis.metrics import Moments
from filterdb.atomic import atomic_path
from filterdb.integrity import digest, notice

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
