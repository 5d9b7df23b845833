"""The reference basis of the divergence, streamed from a database and cached in it.

Which filters define the PCA basis and the shared histogram range of the divergence
(:mod:`.divergence`) is a named variant (``compare --basis``):

- ``database`` (the default; the authors' pipeline): every model of the database, all its
  layers of the kernel size. One basis, reused for every comparison and every decile.
- a group expression, e.g. ``dataset=cifar10``: the models of that reference group.
- ``groups``: the layers under comparison, both groups together, per layer group (the
  basis filterdb used before the authors' pipeline was followed; see compare.py).

A database or reference-group basis costs one pass over the reference filters (the range;
the moments come from the metrics cache) and is cached in ``<db>/divergence/`` under a
token of the reference models' shards, the sparsity eps and :data:`BASIS_VERSION`: adding,
removing or re-extracting a model invalidates it. The per-layer histogram counts on such a
basis (:func:`reference_histograms`) are cached beside it under the same token, so a repeated
comparison reads no filters. Deleting the folder is always safe.

The passes over filters (:func:`run_pass`) go layer by layer, per model, on an optional
executor (a process pool or a Dask client's executor).
"""
from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from filterdb import npy_records
from filterdb.analysis.divergence import N_BINS, DivergenceBasis, Histograms, PCABasis, RangeScan
from filterdb.analysis.metrics import SPARSITY_EPS, Moments
from filterdb.analysis.metrics_table import _open, cache_token, layer_metrics_frame
from filterdb.atomic import atomic_path, remove_quietly
from filterdb.errors import FilterDBError
from filterdb.integrity import digest, notice
from filterdb.schema import kernel_shape

BASIS_VERSION = "1"
HIST_VERSION = "1"
HIST_SUFFIX = "-hist.npy"
BASIS_DIR = "divergence"
DATABASE = "database"
GROUPS = "groups"
CHUNK_ROWS = 1 << 20


def kernel_size(kernel: str) -> int:
    kh, kw = kernel_shape(kernel)
    return kh * kw


# ---------------------------------------------------------------------------- passes over filters

def run_pass(db, kind: str, targets: dict[int, list], absmax: dict[int, float], bases: dict, eps: float = SPARSITY_EPS,
             executor=None, progress: str | None = None) -> dict:
    """Accumulate ``kind`` ("range": :class:`RangeScan` on PCABases, "hist": :class:`Histograms` on
    DivergenceBases) over layers: ``targets`` maps a layer row (db.layers index) to the keys of
    ``bases`` it counts for. Returns {(key, model_id): accumulator}, one per model and key."""
    plan = db.layers.loc[sorted(targets), ["model_id", "kernel", "start"]].sort_values(["kernel", "start"])
    work = [(list(rows), {r: targets[r] for r in rows}, {r: absmax[r] for r in rows})
            for _, rows in plan.groupby("model_id", sort=False).groups.items()]
    if executor is not None:
        futures = [executor.submit(pass_job, str(db.path), kind, rows, t, a, bases, eps) for rows, t, a in work]
        parts = [f.result() for f in futures]
    elif progress:
        from filterdb.progress import progress_bar
        parts = []
        with progress_bar("models", transient=True) as bar:
            task = bar.add_task(progress, total=len(work), status="")
            for rows, t, a in work:
                parts.append(accumulate(db, kind, rows, t, a, bases, eps))
                bar.advance(task)
    else:
        parts = [accumulate(db, kind, rows, t, a, bases, eps) for rows, t, a in work]
    out = {}
    for part in parts:
        out.update(part)
    return out


def accumulate(db, kind: str, rows, targets, absmax, bases, eps, chunk_rows: int = CHUNK_ROWS) -> dict:
    """One model's share of :func:`run_pass`."""
    make = {"range": RangeScan, "hist": Histograms}[kind]
    accumulators: dict = {}
    for row in rows:
        layer = db.layers.loc[[row]]
        model_id = layer["model_id"].iloc[0]
        for chunk in db.iter_filter_chunks(layer["kernel"].iloc[0], layer, chunk_rows):
            for key in targets[row]:
                acc = accumulators.get((key, model_id))
                if acc is None:
                    acc = accumulators[(key, model_id)] = make(bases[key])
                acc.add(chunk, absmax[row], eps)
    return accumulators


def pass_job(db_path: str, kind, rows, targets, absmax, bases, eps) -> dict:
    """:func:`accumulate` in a worker that opens the database itself."""
    db, _ = _open(db_path)
    try:
        return accumulate(db, kind, rows, targets, absmax, bases, eps)
    finally:
        db.close()


def fit_bases(db, groups: dict, values: pd.DataFrame, moments: Mapping, eps: float = SPARSITY_EPS, executor=None,
              progress: str | None = None, source: str = "") -> dict[object, DivergenceBasis]:
    """One DivergenceBasis per key of ``groups`` (key -> layer rows): the moments of the layers'
    non-sparse scaled filters give the PCA, one pass over their filters the signs and the range."""
    keys = db.layers[["model_id", "layer_index", "kernel"]]
    pcas, targets = {}, defaultdict(list)
    for key, rows in groups.items():
        rows = list(rows)
        kernels = set(keys.loc[rows, "kernel"])
        if len(kernels) != 1:
            raise ValueError(f"a divergence basis needs one kernel size, got {sorted(kernels)}")
        pooled = Moments.empty(kernel_size(kernels.pop()))
        for mid, index in zip(keys.loc[rows, "model_id"], keys.loc[rows, "layer_index"]):
            pooled = pooled + moments[(mid, int(index))]
        pcas[key] = PCABasis.from_moments(pooled)
        for row in rows:
            targets[row].append(key)
    absmax = _absmax(db, values, targets)
    scans = run_pass(db, "range", dict(targets), absmax, pcas, eps, executor, progress)
    merged: dict = {}
    for (key, _), scan in scans.items():
        merged[key] = merged[key].merge(scan) if key in merged else scan
    return {key: merged[key].finish(source or str(key)) for key in pcas if key in merged}


def _absmax(db, values: pd.DataFrame, rows) -> dict[int, float]:
    """Max |w| per layer row, from the per-layer metrics (model_id, layer_index, absmax)."""
    lookup = dict(zip(zip(values["model_id"], values["layer_index"].astype(int)), values["absmax"]))
    layers = db.layers.loc[list(rows), ["model_id", "layer_index"]]
    return {row: float(lookup[(mid, int(i))]) for row, mid, i in zip(layers.index, layers["model_id"],
                                                                        layers["layer_index"])}


# ---------------------------------------------------------------------------- reference bases

def reference_models(db, reference: str) -> list[str]:
    """Model ids of a reference set: ``database`` (all) or a group expression."""
    if reference == DATABASE:
        return sorted(db.models.index)
    from filterdb.analysis.groups import select_models
    return sorted(select_models(db.models, reference).index)


def reference_layers(db, kernel: str, reference: str) -> pd.DataFrame:
    """The layers of ``kernel`` of the reference set's models (an error if there are none)."""
    models = reference_models(db, reference)
    layers = db.layers[db.layers["model_id"].isin(models) & (db.layers["kernel"] == kernel)]
    if layers.empty:
        raise FilterDBError(f"the divergence basis {reference!r} has no {kernel} filters in {db.path}; "
                            f"kernels present: {', '.join(db.kernels)}")
    return layers


def reference_token(db, kernel: str, reference: str, eps: float) -> str:
    """The cache key of a reference basis: changes with any change of the reference models' shards."""
    return _token(db, sorted(set(reference_layers(db, kernel, reference)["model_id"])), kernel, eps)


def reference_basis(db, kernel: str = "3x3", reference: str = DATABASE, eps: float = SPARSITY_EPS, executor=None,
                    progress: bool = False) -> DivergenceBasis:
    """The basis and range of ``reference`` (``database`` or a group expression) for ``kernel``,
    from the cache in the database directory when it is current. ``db``: a FilterDB or a path."""
    db, owned = _open(db)
    try:
        layers = reference_layers(db, kernel, reference)
        ids = sorted(set(layers["model_id"]))
        token = _token(db, ids, kernel, eps)
        path = basis_path(db.cache_dir, reference, kernel)
        cached = _load(path, token)
        if cached is not None:
            return cached
        values, moments = layer_metrics_frame(db, ids, eps, executor)
        label = f"divergence basis ({reference})" if progress else None
        basis = fit_bases(db, {reference: list(layers.index)}, values, moments, eps, executor, label, reference)[reference]
        _store(path, token, basis)
        return basis
    finally:
        if owned:
            db.close()


def basis_path(db_path, reference: str, kernel: str, suffix: str = ".json") -> Path:
    slug = DATABASE if reference == DATABASE else "group-" + hashlib.sha1(reference.encode()).hexdigest()[:12]
    return Path(db_path) / BASIS_DIR / f"{slug}-{kernel}{suffix}"


# ---------------------------------------------------------------------------- histograms on a reference basis

def reference_histograms(db, rows: list[int], absmax: dict[int, float], basis: DivergenceBasis, reference: str,
                         kernel: str, eps: float = SPARSITY_EPS, executor=None, progress: str | None = None
                         ) -> dict[int, np.ndarray]:
    """Per layer row (db.layers index, all of ``kernel``): the bin counts (components x N_BINS) of
    its non-sparse scaled filters on the reference basis. Cached beside the basis in
    ``<db>/divergence/<reference>-<kernel>-hist.npy`` (:mod:`filterdb.npy_records`) under the basis' token (a change of any
    reference model invalidates both); layers not in the file are counted in one pass and added."""
    token = f"{HIST_VERSION}|{reference_token(db, kernel, reference, eps)}"
    path = basis_path(db.cache_dir, reference, kernel, HIST_SUFFIX)
    cached = _load_histograms(path, token)
    keys = db.layers.loc[rows, ["model_id", "layer_index"]]
    layer_keys = dict(zip(rows, zip(keys["model_id"], keys["layer_index"].astype(int))))
    missing = [row for row in rows if layer_keys[row] not in cached]
    if missing:
        bins = (len(basis.pca.components), N_BINS)
        counted = run_pass(db, "hist", {row: [row] for row in missing}, absmax, {row: basis for row in missing}, eps,
                           executor, progress)
        for row in missing:
            found = counted.get((row, layer_keys[row][0]))
            cached[layer_keys[row]] = found.counts if found is not None else np.zeros(bins, np.int64)
        _store_histograms(path, token, cached)
    return {row: cached[layer_keys[row]] for row in rows}


def _load_histograms(path: Path, token: str) -> dict[tuple[str, int], np.ndarray]:
    try:
        data = npy_records.read(path)
        if str(data["token"]) != token:
            return {}
        ids, index, counts = data["model_id"], data["layer_index"], data["counts"]
        if int(data["digest"]) != _histograms_digest(ids, index, counts):
            notice(f"{path}: the cached histograms do not match their checksum (edited or damaged); "
                   "counting them again")
            return {}
    except (OSError, ValueError, KeyError, EOFError):
        return {}
    return {(str(m), int(i)): c for m, i, c in zip(ids, index.tolist(), counts)}


def _store_histograms(path: Path, token: str, histograms: dict[tuple[str, int], np.ndarray]) -> bool:
    keys = sorted(histograms)
    ids = np.array([m for m, _ in keys], dtype=str)
    index = np.array([i for _, i in keys], dtype=np.int64)
    counts = np.stack([histograms[k] for k in keys]).astype(np.int64)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            npy_records.write(fh, {"token": np.array(token), "model_id": ids, "layer_index": index, "counts": counts,
                                   "digest": np.uint64(_histograms_digest(ids, index, counts))})
        remove_quietly(path.with_suffix(".npz"))  # what earlier versions kept
    except OSError:  # a read-only database: counted again next time
        return False
    return True


def _histograms_digest(ids: np.ndarray, index: np.ndarray, counts: np.ndarray) -> int:
    return digest("\x1f".join(ids.tolist()).encode() + np.ascontiguousarray(index, np.int64).tobytes()
                  + np.ascontiguousarray(counts, np.int64).tobytes())


def _token(db, model_ids: list[str], kernel: str, eps: float) -> str:
    digest = hashlib.sha1(f"{BASIS_VERSION}|{kernel}|{eps!r}".encode())
    for mid in model_ids:
        digest.update(f"|{mid}:{cache_token(db, mid)}".encode())
    return digest.hexdigest()


def _load(path: Path, token: str) -> DivergenceBasis | None:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    if data.get("token") != token:
        return None
    return DivergenceBasis.from_json(data["basis"])


def _store(path: Path, token: str, basis: DivergenceBasis) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "w") as fh:
            json.dump({"format": "filterdb-divergence-basis", "token": token, "basis": basis.to_json()}, fh)
    except OSError:  # a read-only database: the basis is recomputed next time
        return False
    return True
