"""The metrics cache: one JSON file per model under ``<db>/metrics/``.

A file holds the per-layer metrics of one model and the moments of its layers'
L-inf-scaled non-sparse filters (the streamed covariance of the divergence). It is valid
while the model's ``db.shard_token`` (changes on re-extraction), :data:`METRICS_VERSION`
(changes with any metric's definition) and the sparsity eps are the ones it was written
with; anything else is recomputed. Files are written under a temporary name and renamed,
so a killed run leaves no half-written cache. Deleting the folder is always safe.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from filterdb.analysis.metrics import Moments

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
    if (data.get("format"), data.get("metrics_version"), data.get("token"), data.get("eps")) != (
            CACHE_FORMAT, METRICS_VERSION, token, eps):
        return None
    frame = pd.DataFrame(data["layers"])
    moments = [Moments(m["count"], np.array(m["mean"], dtype=np.float64), np.array(m["scatter"], dtype=np.float64))
               for m in data["moments"]]
    return frame, moments


def store(db_path, model_id: str, token: str, eps: float, frame: pd.DataFrame, moments: list[Moments]) -> bool:
    """Write a model's cache file atomically; False (nothing written) if the database directory is read-only."""
    path = cache_path(db_path, model_id)
    data = {
        "format": CACHE_FORMAT, "metrics_version": METRICS_VERSION, "token": token, "eps": eps,
        "layers": {c: [_plain(v) for v in frame[c]] for c in frame.columns},
        "moments": [{"count": m.count, "mean": m.mean.tolist(), "scatter": m.scatter.tolist()} for m in moments],
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(exist_ok=True)
        with open(tmp, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    return value
