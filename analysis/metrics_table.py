"""Per-layer metrics of a filter database: read one layer at a time, cached per model.

:func:`database_metrics` is the notebook entry point (a DataFrame, one row per layer);
:func:`model_metrics_job` is the unit of work for a process pool or a Dask executor
(``client.get_executor()``): it opens the database itself and fills one model's cache file.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from concurrent.futures import Executor, ProcessPoolExecutor
from functools import cached_property

import numpy as np
import pandas as pd

from filterdb.analysis import cache
from filterdb.analysis.metrics import METRIC_NAMES, SPARSITY_EPS, Moments, layer_metrics
from filterdb.errors import FilterDBError

LAYER_KEY_COLUMNS = ("model_id", "layer_index")
LAYER_INFO_COLUMNS = ("model_id", "layer_index", "member", "name", "kernel", "conv_depth", "conv_depth_norm",
                      "in_channels", "out_channels", "groups")
EXTRA_COLUMNS = ("n_filters", "n_nonsparse", "absmax", "notes")
MODEL_INFO_COLUMNS = ("training", "dataset", "architecture", "pair")  # carried by every metrics frame: no merge needed


def worker_pool(jobs: int) -> ProcessPoolExecutor:
    """A process pool for the per-model work whose workers share the cores: each limits its
    BLAS threads to cores // jobs (unlimited, N workers x N BLAS threads thrash)."""
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
    cached = cache.load(db.cache_dir, model_id, token, eps)
    if cached is not None:
        return cached
    frame, moments = compute_model_metrics(db, model_id, eps)
    cache.store(db.cache_dir, model_id, token, eps, frame, moments)
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
                        on_model=None) -> tuple[pd.DataFrame, LayerMoments]:
    """Per-layer metrics (and moments keyed by (model_id, layer_index)) of some models, in the order of ``model_ids``.

    Current models come from the cache's snapshot (one file); the others from their cache files,
    or computed here, or on ``executor`` when given; then the snapshot is rewritten. ``on_model``
    is called once per model done (progress).
    """
    snapshot = cache.load_snapshot(db.cache_dir, eps)
    current = snapshot.current(db.cache_dir, {mid: cache_token(db, mid) for mid in model_ids})
    rest = [m for m in model_ids if m not in current]
    if executor is not None:
        stale = [m for m in rest if cache.load(db.cache_dir, m, cache_token(db, m), eps) is None]
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
        cache.store_snapshot(db.cache_dir, eps, snapshot)
    return _select(snapshot, fresh, model_ids)


def _updated_snapshot(db, snapshot: cache.Snapshot, fresh: dict) -> cache.Snapshot:
    """The snapshot with the fresh models' rows (those whose cache file exists) in place of their old
    ones, and without models no longer in the database."""
    stats = {mid: cache.file_stat(db.cache_dir, mid) for mid in fresh}
    written = [mid for mid in fresh if stats[mid] is not None]
    keep = (~snapshot.frame["model_id"].isin(written) & snapshot.frame["model_id"].isin(db.models.index)
            if len(snapshot.frame) else np.zeros(0, bool))
    frames = [snapshot.frame[keep]] if len(snapshot.frame) else []
    moments = [m for m, k in zip(snapshot.moments, keep) if k]
    for mid in written:
        frames.append(fresh[mid][0])
        moments += fresh[mid][1]
    files = {mid: f for mid, f in snapshot.files.items() if mid in db.models.index and mid not in written}
    files.update({mid: (cache_token(db, mid), *stat) for mid, stat in stats.items() if stat is not None})
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*LAYER_KEY_COLUMNS, *METRIC_NAMES,
                                                                                      *EXTRA_COLUMNS])
    return cache.Snapshot(files, frame, moments)


class LayerMoments(Mapping):
    """(model_id, layer_index) -> Moments of the layers :func:`layer_metrics_frame` selected: the fresh
    ones, and ``rows`` (snapshot row, model_id, layer_index) of the snapshot's, looked up only when
    first read (a comparison on the database's cached basis reads none)."""

    def __init__(self, snapshot_moments, rows: tuple, fresh: dict[tuple[str, int], Moments]) -> None:
        self.snapshot_moments, self.rows, self.fresh = snapshot_moments, rows, fresh

    @cached_property
    def _index(self) -> dict[tuple[str, int], int]:
        rows, ids, layers = self.rows
        return {(mid, int(i)): int(r) for r, mid, i in zip(rows, ids, layers)}

    def __getitem__(self, key: tuple[str, int]) -> Moments:
        if key in self.fresh:
            return self.fresh[key]
        return self.snapshot_moments[self._index[key]]

    def __iter__(self):
        yield from self.fresh
        yield from (key for key in self._index if key not in self.fresh)

    def __len__(self) -> int:
        return len(self.fresh) + sum(key not in self.fresh for key in self._index)


def _select(snapshot: cache.Snapshot, fresh: dict, model_ids: list[str]
            ) -> tuple[pd.DataFrame, LayerMoments]:
    """The rows of ``model_ids`` in their order (fresh ones from ``fresh``, the others from the snapshot)."""
    columns = [*LAYER_KEY_COLUMNS, *METRIC_NAMES, *EXTRA_COLUMNS]
    order = {mid: i for i, mid in enumerate(model_ids)}
    parts = []
    rows: tuple = ((), (), ())  # (snapshot row, model_id, layer_index) of the snapshot's layers
    old = [mid for mid in model_ids if mid not in fresh]
    if old:
        frame = snapshot.frame
        chosen = np.flatnonzero(frame["model_id"].isin(old).to_numpy())
        parts.append(frame.iloc[chosen])
        rows = (chosen, frame["model_id"].to_numpy()[chosen], frame["layer_index"].to_numpy()[chosen])
    fresh_moments = {}
    for mid, (frame, model_moments) in fresh.items():
        parts.append(frame)
        fresh_moments.update({(mid, int(i)): m for i, m in zip(frame["layer_index"], model_moments)})
    moments = LayerMoments(snapshot.moments, rows, fresh_moments)
    if not parts:
        return pd.DataFrame(columns=columns), moments
    frame = pd.concat(parts, ignore_index=True)
    position = frame["model_id"].map(order).to_numpy()
    frame = frame.iloc[np.argsort(position, kind="stable")].reset_index(drop=True)
    return frame[columns], moments


def database_metrics(db, models: Iterable[str] | None = None, eps: float = SPARSITY_EPS,
                     executor: Executor | None = None, progress: bool = False, kernel: str | None = None,
                     select: str | None = None) -> pd.DataFrame:
    """One row per layer: the model's name, layer-table identification columns, every metric (NaN
    with a reason in ``notes`` where undefined), then the model columns training, dataset,
    architecture and pair. ``db`` is a FilterDB, a database path or an exported file; ``models``
    ids or names; ``select`` a group expression (``"robust,arch=cnn"``, ``"*resnet*"``); ``kernel``
    keeps the layers of one kernel size (``filterdb metrics`` defaults to 3x3)."""
    db, owned = _open(db)
    try:
        if kernel is not None and kernel not in set(db.layers["kernel"]):
            raise FilterDBError(f"no {kernel} layers in {db.path}; kernels present: {', '.join(db.kernels)}")
        ids = resolve_models(db.models, models)
        if select:
            from filterdb.analysis.groups import select_models
            chosen = set(select_models(db.models, select).index)
            ids = [m for m in ids if m in chosen]
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
        model_info = db.models[["name", *MODEL_INFO_COLUMNS]].rename(columns={"name": "model"})
        return merged.merge(model_info, left_on="model_id", right_index=True).pipe(
            lambda f: f[["model", *[c for c in f.columns if c != "model"]]]).reset_index(drop=True)
    finally:
        if owned:
            db.close()


def plot_metrics(frame: pd.DataFrame, metrics: Iterable[str] | None = None, by: str = "training", path=None):
    """A figure of a metrics frame (:func:`database_metrics`): one panel per metric, its mean over
    the models of each value of ``by`` (a model column the frame carries) per conv_depth_norm
    decile, the first layer on its own at 0. Saved to ``path`` when given; returns the Figure
    (not registered with pyplot: no backend is touched)."""
    from matplotlib.figure import Figure

    from filterdb.analysis.groups import DECILE_LABELS, decile_labels

    metrics = list(metrics or [m for m in METRIC_NAMES if frame[m].notna().any()])
    if by not in frame.columns:
        raise FilterDBError(f"the metrics frame has no column {by!r}; choose one of {', '.join(MODEL_INFO_COLUMNS)}")
    cells = frame.assign(depth=decile_labels(frame["conv_depth"], frame["conv_depth_norm"]))
    fig = Figure(figsize=(3.2 * len(metrics), 3.2))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        for value, part in cells.groupby(by, sort=True):
            per_model = part.groupby(["depth", "model_id"], observed=True)[metric].mean()
            means = per_model.groupby(level="depth", observed=True).mean().reindex(list(DECILE_LABELS))
            ax.plot(range(len(DECILE_LABELS)), means.to_numpy(), "o-", label=str(value) or "(none)")
        ax.set_xticks(range(len(DECILE_LABELS)), DECILE_LABELS, rotation=60, ha="right", fontsize=6)
        ax.set_title(metric)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"mean over models by {by}, per conv_depth_norm decile", fontsize=9)
    fig.tight_layout()
    if path is not None:
        from filterdb.analysis.filter_plots import save_figure
        save_figure(fig, path)
    return fig
