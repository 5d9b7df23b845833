"""Per-layer metrics of a filter database: read one layer at a time, cached per model.

:func:`database_metrics` is the notebook entry point (a DataFrame, one row per layer);
:func:`model_metrics_job` is the unit of work for a process pool or a Dask executor
(``client.get_executor()``): it opens the database itself and fills one model's cache file.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import Executor, ProcessPoolExecutor

import numpy as np
import pandas as pd

from filterdb.analysis import cache
from filterdb.analysis.metrics import METRIC_NAMES, SPARSITY_EPS, Moments, layer_metrics
from filterdb.errors import FilterDBError

LAYER_KEY_COLUMNS = ("model_id", "layer_index")
LAYER_INFO_COLUMNS = ("model_id", "layer_index", "member", "name", "kernel", "conv_depth", "conv_depth_norm",
                      "in_channels", "out_channels", "groups")
EXTRA_COLUMNS = ("n_filters", "n_nonsparse", "absmax", "notes")


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """A process pool for the per-model work whose workers share the cores: each limits its
    BLAS and torch threads to cores // jobs (unlimited, N workers x N BLAS threads thrash)."""
    threads = max(1, (os.cpu_count() or 1) // jobs)
    return ProcessPoolExecutor(max_workers=jobs, initializer=_limit_threads, initargs=(threads, os.getpid()))


def _limit_threads(threads: int, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        from filterdb.workers import die_with_parent
        die_with_parent(parent_pid)  # no orphan outlives a killed 'compare --jobs N'
    try:
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=threads)
    except ImportError:
        pass
    import torch
    torch.set_num_threads(threads)


def _open(db):
    from filterdb.store import open_database
    return (open_database(db), True) if isinstance(db, (str, os.PathLike)) else (db, False)


def compute_model_metrics(db, model_id: str, eps: float = SPARSITY_EPS) -> tuple[pd.DataFrame, list[Moments]]:
    """Metrics of every layer of one model, reading one layer at a time (no cache)."""
    rows, moments = [], []
    model_name = db.models.loc[model_id, "name"]
    for row, filters in db.iter_layers(db.layers[db.layers["model_id"] == model_id]):
        where = f"model {model_id} ({model_name}), layer {row['name']}"
        try:
            values, m = layer_metrics(filters, out_channels=int(row["out_channels"]), eps=eps, where=where)
        except ValueError as exc:
            raise FilterDBError(f"{exc}; re-extract the model ('filterdb build --force') or remove it") from None
        rows.append({"model_id": model_id, "layer_index": int(row["layer_index"]), **values})
        moments.append(m)
    return pd.DataFrame(rows, columns=[*LAYER_KEY_COLUMNS, *METRIC_NAMES, *EXTRA_COLUMNS]), moments


def cache_token(db, model_id: str) -> str:
    """The shard's digest (``db.shard_digest``: its tables, extraction time included, and every
    layer's filter bytes), so a cache file belongs to exactly one extraction of the model."""
    return db.shard_digest(model_id)


def model_metrics(db, model_id: str, eps: float = SPARSITY_EPS) -> tuple[pd.DataFrame, list[Moments]]:
    """Metrics and moments of one model's layers, from the cache when it is current."""
    token = cache_token(db, model_id)
    cached = cache.load(db.path, model_id, token, eps)
    if cached is not None:
        return cached
    frame, moments = compute_model_metrics(db, model_id, eps)
    cache.store(db.path, model_id, token, eps, frame, moments)
    return frame, moments


def model_metrics_job(db_path: str, model_id: str, eps: float = SPARSITY_EPS) -> str:
    """Fill one model's cache file; runs anywhere the database directory is visible."""
    db, _ = _open(db_path)
    try:
        model_metrics(db, model_id, eps)
    finally:
        db.close()
    return model_id


def resolve_models(models: pd.DataFrame, wanted: Iterable[str] | None) -> list[str]:
    """Model ids for ids or names in ``wanted`` (all models if None); unknown ones raise FilterDBError."""
    if not wanted:
        return list(models.index)
    by_name = {name: mid for mid, name in zip(models.index, models["name"])}
    out = []
    for item in wanted:
        if item in models.index:
            out.append(item)
        elif item in by_name:
            out.append(by_name[item])
        else:
            known = ", ".join(f"{mid} ({name})" for mid, name in list(zip(models.index, models["name"]))[:20])
            raise FilterDBError(f"no model {item!r} in the database; give a model id or name, e.g. {known}")
    return out


def layer_metrics_frame(db, model_ids: list[str], eps: float = SPARSITY_EPS, executor: Executor | None = None,
                        on_model=None) -> tuple[pd.DataFrame, dict[tuple[str, int], Moments]]:
    """Per-layer metrics (and moments keyed by (model_id, layer_index)) of some models, in the order of ``model_ids``.

    Current models come from the cache's snapshot (one file); the others from their cache files,
    or computed here, or on ``executor`` when given; then the snapshot is rewritten. ``on_model``
    is called once per model done (progress).
    """
    snapshot = cache.load_snapshot(db.path, eps)
    current = snapshot.current(db.path, {mid: cache_token(db, mid) for mid in model_ids})
    rest = [m for m in model_ids if m not in current]
    if executor is not None:
        stale = [m for m in rest if cache.load(db.path, m, cache_token(db, m), eps) is None]
        futures = [executor.submit(model_metrics_job, str(db.path), m, eps) for m in stale]
        for future in futures:
            future.result()
    fresh = {}
    for mid in model_ids:
        if mid not in current:
            fresh[mid] = model_metrics(db, mid, eps)
        if on_model:
            on_model(mid)
    if fresh:
        snapshot = _updated_snapshot(db, snapshot, fresh)
        cache.store_snapshot(db.path, eps, snapshot)
    return _select(snapshot, fresh, model_ids)


def _updated_snapshot(db, snapshot: cache.Snapshot, fresh: dict) -> cache.Snapshot:
    """The snapshot with the fresh models' rows (those whose cache file exists) in place of their old
    ones, and without models no longer in the database."""
    stats = {mid: cache.file_stat(db.path, mid) for mid in fresh}
    written = [mid for mid in fresh if stats[mid] is not None]
    keep = (~snapshot.frame["model_id"].isin(written) & snapshot.frame["model_id"].isin(db.models.index)
            if len(snapshot.frame) else np.zeros(0, bool))
    frames = [snapshot.frame[keep]] if len(snapshot.frame) else []
    moments = [m for m, k in zip(snapshot.moments, keep) if k]
    for mid in written:
        frames.append(fresh[mid][0])
        moments += fresh[mid][1]
    files = {mid: f for mid, f in snapshot.files.items() if mid in db.models.index and mid not in written}
    files.update({mid: (cache_token(db, mid), *stats[mid]) for mid in written})
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*LAYER_KEY_COLUMNS, *METRIC_NAMES,
                                                                                      *EXTRA_COLUMNS])
    return cache.Snapshot(files, frame, moments)


def _select(snapshot: cache.Snapshot, fresh: dict, model_ids: list[str]
            ) -> tuple[pd.DataFrame, dict[tuple[str, int], Moments]]:
    """The rows of ``model_ids`` in their order (fresh ones from ``fresh``, the others from the snapshot)."""
    columns = [*LAYER_KEY_COLUMNS, *METRIC_NAMES, *EXTRA_COLUMNS]
    order = {mid: i for i, mid in enumerate(model_ids)}
    parts, moments = [], {}
    old = [mid for mid in model_ids if mid not in fresh]
    if old:
        frame = snapshot.frame
        chosen = np.flatnonzero(frame["model_id"].isin(old).to_numpy())
        parts.append(frame.iloc[chosen])
        moments.update({(mid, int(i)): snapshot.moments[r] for r, mid, i in
                        zip(chosen, frame["model_id"].to_numpy()[chosen], frame["layer_index"].to_numpy()[chosen])})
    for mid, (frame, model_moments) in fresh.items():
        parts.append(frame)
        moments.update({(mid, int(i)): m for i, m in zip(frame["layer_index"], model_moments)})
    if not parts:
        return pd.DataFrame(columns=columns), moments
    frame = pd.concat(parts, ignore_index=True)
    position = frame["model_id"].map(order).to_numpy()
    frame = frame.iloc[np.argsort(position, kind="stable")].reset_index(drop=True)
    return frame[columns], moments


def database_metrics(db, models: Iterable[str] | None = None, eps: float = SPARSITY_EPS,
                     executor: Executor | None = None, progress: bool = False, kernel: str | None = None
                     ) -> pd.DataFrame:
    """One row per layer: layer-table identification columns, then every metric (NaN with a
    reason in ``notes`` where undefined). ``db`` is a FilterDB or a database path; ``kernel``
    keeps the layers of one kernel size (``filterdb metrics`` defaults to 3x3)."""
    db, owned = _open(db)
    try:
        if kernel is not None and kernel not in set(db.layers["kernel"]):
            raise FilterDBError(f"no {kernel} layers in {db.path}; kernels present: {', '.join(db.kernels)}")
        ids = resolve_models(db.models, models)
        if progress:
            from filterdb.progress import progress_bar
            with progress_bar("models", transient=True) as bar:
                task = bar.add_task("metrics", total=len(ids), status="")
                frame, _ = layer_metrics_frame(db, ids, eps, executor, on_model=lambda _: bar.advance(task))
        else:
            frame, _ = layer_metrics_frame(db, ids, eps, executor)
        info = db.layers[list(LAYER_INFO_COLUMNS)]
        if kernel is not None:
            info = info[info["kernel"] == kernel]
        merged = info.merge(frame, on=list(LAYER_KEY_COLUMNS), how="inner")
        model_names = db.models["name"].rename("model")
        return merged.merge(model_names, left_on="model_id", right_index=True).pipe(
            lambda f: f[["model", *[c for c in f.columns if c != "model"]]]).reset_index(drop=True)
    finally:
        if owned:
            db.close()
