"""Compare two groups of models, e.g. robust vs normal, layer by layer.

:func:`compare_groups` selects the models of each group (:mod:`.groups`), their layers
(``first``, ``last``, ``all``, an index, a conv_depth_norm range, ``deciles``), takes the
cached per-layer metrics (:mod:`.database`), and reports per layer group:

- per group: models, layers, filters, and mean, std and median of each metric over the
  models. **Each model counts once**: its value is the mean of the metric over its
  selected layers, so a deep network weighs as much as a shallow one and a model is one
  sample in the tests;
- between groups: difference of the means (A - B) with a percentile bootstrap interval,
  the Mann-Whitney U p-value and Cliff's delta on the per-model values;
- the divergence of the groups' filters (:mod:`.divergence`), per kernel size, streamed
  in one pass over the selected layers (the basis comes from the cached moments).
"""
from __future__ import annotations

import math
from collections import defaultdict
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from filterdb.analysis.database import _open, layer_metrics_frame
from filterdb.analysis.divergence import N_BINS, Histograms, PCABasis, divergence_from_histograms
from filterdb.analysis.groups import ALIASES, select_layers, select_models
from filterdb.analysis.metrics import DEFAULT_VE, METRIC_NAMES, SPARSITY_EPS, Moments
from filterdb.analysis.stats import CONFIDENCE, two_sample
from filterdb.errors import FilterDBError

EACH_MODEL_ONCE = "each model counts once: its value is the mean of the metric over its selected layers"
CHUNK_ROWS = 1 << 20


@dataclass
class Comparison:
    """The result of :func:`compare_groups`; every part is a DataFrame."""
    group_a: str
    group_b: str
    layer: str
    by: str | None
    models: pd.DataFrame  # group, model_id, name, [by]
    per_model: pd.DataFrame  # group, cell, layers, model_id, n_layers, n_filters, metric means
    groups: pd.DataFrame  # per cell and group: n_models, n_layers, n_filters, metric mean/std/median
    tests: pd.DataFrame  # per cell and metric: the between-group statistics
    divergence: pd.DataFrame  # per cell and kernel
    notes: list[str] = field(default_factory=list)

    def to_frame(self) -> pd.DataFrame:
        """One flat table: a row per layer group and metric, then a row per layer group and
        kernel for the divergence (metric "divergence")."""
        keys = (["by"] if self.by else []) + ["layers"]
        div = self.divergence.assign(metric="divergence")
        frame = pd.concat([self.tests.assign(kernel=""), div], ignore_index=True)
        order = keys + ["metric", "kernel"] + [c for c in frame.columns if c not in (*keys, "metric", "kernel", "cell")]
        return frame[order]

    def display(self) -> pd.DataFrame:
        """The comparison table for people: mean ± std and median per group, the statistics."""
        t = self.tests
        keys = (["by"] if self.by else []) + ["layers"]
        return pd.DataFrame({
            **{k: t[k].astype(str) for k in keys}, "metric": t["metric"],
            "n": t["n_a"].astype(str) + " vs " + t["n_b"].astype(str),
            "A mean ± std": [_pm(m, s) for m, s in zip(t["mean_a"], t["std_a"])],
            "A median": t["median_a"],
            "B mean ± std": [_pm(m, s) for m, s in zip(t["mean_b"], t["std_b"])],
            "B median": t["median_b"],
            "A - B": t["difference"],
            f"{CONFIDENCE:.0%} CI": [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(t["ci_low"], t["ci_high"])],
            "p (MWU)": t["p_value"], "Cliff's d": t["cliffs_delta"],
        })


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "nan"
    return f"{mean:.4g} ± {std:.2g}" if not math.isnan(std) else f"{mean:.4g}"


def compare_groups(db, group_a: str = "robust", group_b: str = "normal", layer: str = "first", *,
                   by: str | None = None, metrics: list[str] | None = None, kernel: str | None = None,
                   eps: float = SPARSITY_EPS, seed: int = 0, with_divergence: bool = True,
                   executor: Executor | None = None, progress: bool = False) -> Comparison:
    """Compare the models of ``group_a`` and ``group_b`` on the layers that ``layer`` selects.

    ``db``: a FilterDB or a database path. ``by``: a model column; compare within each of
    its values (``--by dataset``). ``metrics``: names from METRIC_NAMES (default: all).
    ``kernel``: only layers of that kernel size. ``executor``: a concurrent.futures
    executor (process pool, ``dask.distributed.Client.get_executor()``) for the
    per-model work. Errors name the culprit and list the valid choices.
    """
    metrics = _check_metrics(metrics)
    by = ALIASES.get(by, by) if by else None
    db, owned = _open(db)
    try:
        models_a = select_models(db.models, group_a)
        models_b = select_models(db.models, group_b)
        notes = [EACH_MODEL_ONCE, f"default variance entropy: {DEFAULT_VE} (L-inf-scaled, sparse filters removed)"]
        overlap = models_a.index.intersection(models_b.index)
        if len(overlap):
            notes.append(f"{len(overlap)} model(s) are in both groups")
        models = _group_models(models_a, models_b, group_a, group_b, by)
        layers = db.layers[db.layers["model_id"].isin(models["model_id"])]
        if kernel is not None:
            if kernel not in set(db.layers["kernel"]):
                raise FilterDBError(f"no {kernel} layers in the database; kernels present: {', '.join(db.kernels)}")
            layers = layers[layers["kernel"] == kernel]
        selected = select_layers(layers, layer)
        selected = selected.join(models.set_index("model_id")[["group", "by"]], on="model_id", how="inner")
        for name in (group_a, group_b):
            if not (selected["group"] == name).any():
                raise FilterDBError(f"layer selector {layer!r} selects no layers of group {name!r}"
                                    + (f" with kernel {kernel}" if kernel else "") + "; try --layer all")
        ids = sorted(set(selected["model_id"]))
        if progress:
            from filterdb.progress import progress_bar
            with progress_bar("models", transient=True) as bar:
                task = bar.add_task("metrics", total=len(ids), status="")
                values, moments = layer_metrics_frame(db, ids, eps, executor, lambda _: bar.advance(task))
        else:
            values, moments = layer_metrics_frame(db, ids, eps, executor)
        selected = selected.reset_index(names="row").merge(
            values[["model_id", "layer_index", *METRIC_NAMES, "absmax"]], on=["model_id", "layer_index"])
        selected["cell"] = list(zip(selected["by"], selected["layers"].astype(str)))
        per_model = _per_model(selected, metrics)
        groups = _group_summary(per_model, metrics, group_a, group_b)
        tests = _tests(per_model, metrics, group_a, group_b, seed)
        divergence = (_divergences(db, selected, moments, (group_a, group_b), eps, executor, progress)
                      if with_divergence else pd.DataFrame(columns=["by", "layers", "kernel", "divergence"]))
        result = Comparison(group_a, group_b, str(layer), by, models, per_model, groups, tests, divergence, notes)
        return _drop_by(result) if by is None else result
    finally:
        if owned:
            db.close()


def _check_metrics(metrics):
    if not metrics:
        return list(METRIC_NAMES)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise FilterDBError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    return list(metrics)


def _group_models(models_a, models_b, group_a, group_b, by) -> pd.DataFrame:
    if by and by not in db_columns():
        raise FilterDBError(f"unknown model column {by!r} for --by; valid: {', '.join(db_columns())}")
    frames = []
    for name, frame in ((group_a, models_a), (group_b, models_b)):
        frames.append(pd.DataFrame({"group": name, "model_id": frame.index, "name": frame["name"].to_numpy(),
                                    "by": frame[by].astype(str).to_numpy() if by else ""}))
    models = pd.concat(frames, ignore_index=True)
    if by:
        shared = set(models.loc[models["group"] == group_a, "by"]) & set(models.loc[models["group"] == group_b, "by"])
        if not shared:
            raise FilterDBError(f"no {by} value has models in both groups: {group_a!r} has "
                                f"{_values(models, group_a)}, {group_b!r} has {_values(models, group_b)}")
        models = models[models["by"].isin(shared)]
    return models


def db_columns() -> list[str]:
    from filterdb.schema import MODEL_COLUMN_NAMES
    return list(MODEL_COLUMN_NAMES)


def _values(models, group) -> str:
    return ", ".join(sorted(set(models.loc[models["group"] == group, "by"])))


def _per_model(selected: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    keys = ["group", "by", "layers", "model_id"]
    grouped = selected.groupby(keys, observed=True, sort=True)
    frame = grouped[metrics].mean()
    frame.insert(0, "n_layers", grouped.size())
    frame.insert(1, "n_filters", grouped["stop"].sum() - grouped["start"].sum())
    return frame.reset_index()


def _group_summary(per_model: pd.DataFrame, metrics, group_a, group_b) -> pd.DataFrame:
    rows = []
    for (by, cell, group), frame in per_model.groupby(["by", "layers", "group"], observed=True, sort=True):
        row = {"by": by, "layers": cell, "group": group, "models": len(frame),
               "layers_total": int(frame["n_layers"].sum()), "filters": int(frame["n_filters"].sum())}
        for m in metrics:
            row.update({f"{m} mean": frame[m].mean(), f"{m} std": frame[m].std(ddof=1), f"{m} median": frame[m].median()})
        rows.append(row)
    out = pd.DataFrame(rows)
    order = {group_a: 0, group_b: 1}
    return out.sort_values(["by", "layers", "group"], key=lambda s: s.map(order) if s.name == "group" else s,
                           kind="stable").reset_index(drop=True)


def _tests(per_model: pd.DataFrame, metrics, group_a, group_b, seed) -> pd.DataFrame:
    rows = []
    for (by, cell), frame in per_model.groupby(["by", "layers"], observed=True, sort=True):
        a, b = frame[frame["group"] == group_a], frame[frame["group"] == group_b]
        for m in metrics:
            s = two_sample(a[m], b[m], seed=seed)
            rows.append({"by": by, "layers": cell, "metric": m, "n_a": s.n_a, "n_b": s.n_b,
                         "mean_a": s.mean_a, "std_a": a[m].std(ddof=1), "median_a": a[m].median(),
                         "mean_b": s.mean_b, "std_b": b[m].std(ddof=1), "median_b": b[m].median(),
                         "difference": s.difference, "ci_low": s.ci_low, "ci_high": s.ci_high,
                         "p_value": s.p_value, "cliffs_delta": s.cliffs_delta})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------- divergence

def _divergences(db, selected: pd.DataFrame, moments: dict, groups: tuple[str, str], eps: float, executor,
                 progress: bool) -> pd.DataFrame:
    """Divergence per (by, layers, kernel): basis from the cached moments, one histogram pass."""
    bases, targets = {}, defaultdict(list)
    for (by, cell, kernel), frame in selected.groupby(["by", "layers", "kernel"], observed=True, sort=True):
        if set(frame["group"]) != set(groups):
            continue  # a kernel only one group has: nothing to compare
        pooled = Moments.empty(_kernel_size(kernel))
        for key in zip(frame["model_id"], frame["layer_index"]):
            pooled = pooled + moments[key]
        bases[(by, cell, kernel)] = PCABasis.from_moments(pooled)
        for row, group in zip(frame["row"], frame["group"]):
            targets[int(row)].append(((by, cell, kernel), group))
    absmax = dict(zip(selected["row"], selected["absmax"]))
    plan = pd.DataFrame({"row": list(targets)}).merge(
        db.layers[["model_id", "kernel", "start"]], left_on="row", right_index=True).sort_values(["kernel", "start"])
    work = [(rows, {r: targets[r] for r in rows}, {r: absmax[r] for r in rows})
            for _, rows in plan.groupby("model_id", sort=False)["row"]]
    counts = {(key, g): Histograms(basis) for key, basis in bases.items() for g in groups}
    results = _run(work, db, bases, eps, executor, progress)
    for partial in results:
        for k, c in partial.items():
            counts[k].counts += c
    rows = []
    for (by, cell, kernel), basis in bases.items():
        result = divergence_from_histograms(counts[((by, cell, kernel), groups[0])], counts[((by, cell, kernel), groups[1])])
        rows.append({"by": by, "layers": cell, "kernel": kernel, "divergence": result.value,
                     "filters_a": result.n_a, "filters_b": result.n_b, "note": result.reason})
    return pd.DataFrame(rows, columns=["by", "layers", "kernel", "divergence", "filters_a", "filters_b", "note"])


def _kernel_size(kernel: str) -> int:
    kh, kw = kernel.split("x")
    return int(kh) * int(kw)


def _run(work, db, bases, eps, executor, progress):
    if executor is not None:
        futures = [executor.submit(histogram_job, str(db.path), rows, targets, absmax, bases, eps)
                   for rows, targets, absmax in work]
        return [f.result() for f in futures]
    if not progress:
        return [count_histograms(db, rows, targets, absmax, bases, eps) for rows, targets, absmax in work]
    from filterdb.progress import progress_bar
    out = []
    with progress_bar("models", transient=True) as bar:
        task = bar.add_task("divergence", total=len(work), status="")
        for rows, targets, absmax in work:
            out.append(count_histograms(db, rows, targets, absmax, bases, eps))
            bar.advance(task)
    return out


def count_histograms(db, rows, targets, absmax, bases, eps, chunk_rows: int = CHUNK_ROWS) -> dict:
    """Histogram counts of some layers (global layer rows), each routed to its targets."""
    hists = {}
    for row in rows:
        layer = db.layers.loc[[row]]
        for chunk in db.iter_filter_chunks(layer["kernel"].iloc[0], layer, chunk_rows):
            for key, group in targets[row]:
                h = hists.get((key, group))
                if h is None:
                    h = hists[(key, group)] = Histograms(bases[key], N_BINS)
                h.add(chunk, absmax[row], eps)
    return {k: h.counts for k, h in hists.items()}


def histogram_job(db_path: str, rows, targets, absmax, bases, eps) -> dict:
    """:func:`count_histograms` in a worker that opens the database itself."""
    db, _ = _open(db_path)
    try:
        return count_histograms(db, rows, targets, absmax, bases, eps)
    finally:
        db.close()


def _drop_by(result: Comparison) -> Comparison:
    for name in ("models", "per_model", "groups", "tests", "divergence"):
        frame = getattr(result, name)
        if "by" in frame.columns:
            setattr(result, name, frame.drop(columns="by"))
    return result


# ---------------------------------------------------------------------------- output

def emit_comparison(result: Comparison, fmt: str = "table", file=None) -> None:
    """Print a comparison: three tables (groups, metrics, divergence) or one flat CSV/JSON table."""
    from filterdb.output import emit
    if fmt != "table":
        emit(result.to_frame(), fmt, file=file)
        return
    title = f"{result.group_a} vs {result.group_b}, layers: {result.layer}"
    groups = result.groups[[c for c in result.groups.columns if not c.endswith((" mean", " std", " median"))]]
    emit(groups, "table", title=f"Groups ({title})", file=file)
    emit(result.display(), "table", file=file,
         title=f"A = {result.group_a}, B = {result.group_b}: Mann-Whitney U p-value (MWU), Cliff's delta, bootstrap CI\n"
               f"({EACH_MODEL_ONCE})")
    if len(result.divergence):
        emit(result.divergence, "table", title="Divergence of the groups' filters (PCA, symmetric KL)", file=file)
    print("; ".join(result.notes[1:]), file=file)


def print_demo_comparison(db_path, fmt: str = "table") -> Comparison:
    """What ``filterdb demo`` prints: robust vs normal on the first layer."""
    result = compare_groups(db_path, "robust", "normal", layer="first")
    emit_comparison(result, fmt)
    return result


def plot_comparison(result: Comparison, path) -> None:
    """One panel per metric: mean ± std over models of each group, per layer group."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    t = result.tests
    metrics = list(dict.fromkeys(t["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        rows = t[t["metric"] == metric]
        x = np.arange(len(rows))
        for side, name, shift in (("a", result.group_a, -0.1), ("b", result.group_b, 0.1)):
            ax.errorbar(x + shift, rows[f"mean_{side}"], yerr=rows[f"std_{side}"].fillna(0), fmt="o-", capsize=3,
                        label=name)
        ax.set_xticks(x, rows["layers"].astype(str), rotation=45 if len(rows) > 3 else 0, ha="right", fontsize=7)
        ax.set_title(metric)
    axes[0][0].legend()
    fig.suptitle(f"{result.group_a} vs {result.group_b} (each model counts once)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
