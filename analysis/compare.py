"""Compare two groups of models, e.g. robust vs normal, layer by layer.

:func:`compare_groups` selects the models of each group (:mod:`.groups`), their layers of
one kernel size (3x3 by default, as in the papers; ``first``/``last`` are then the first and
last 3x3 convolution) and layer group (``first``, ``last``, ``all``, an index, a
conv_depth_norm range, ``deciles``), takes the cached per-layer metrics (:mod:`.database`),
and reports per layer group:

- per group: models, layers, filters, and mean, std and median of each metric over the
  models. **Each model counts once**: its value aggregates the metric over its selected
  layers, either as the unweighted mean (``aggregate="model"``, the default for tests) or
  pooled as in the robustness paper (``aggregate="pooled"``, the authors' notebooks
  ``pca.ipynb``/``orthogonality.ipynb``/``metric_comparison.ipynb``, ``agg_by_depth_decile``):
  orthogonality weighted by out_channels, ve_linf and ve_normalized by the non-sparse filter
  count, sparsity and ve_raw by the filter count (sparsity = sparse filters / filters), the
  norms unweighted (the paper pools none);
- between groups (:mod:`.stats`): unpaired (difference of the means with a bootstrap
  interval, Mann-Whitney U p, Cliff's delta) and, where the groups are matched pairs
  (models sharing a value of the model column ``pair``, or of ``paired=COLUMN``), paired
  (mean per-pair difference with a paired bootstrap interval, Wilcoxon signed-rank p);
  each with a permutation null (labels shuffled over models; within pairs for the paired
  rows), and Holm-adjusted p-values over all metrics x layer groups of the comparison;
- the divergence of the groups' filters (:mod:`.divergence`) on the basis ``basis`` names
  (:mod:`.basis`: ``database`` by default), per kernel size, streamed (per-model histogram
  counts, so its permutation null over models costs no further pass), with its null.
"""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from filterdb.analysis.basis import (
    DATABASE,
    GROUPS,
    _absmax,
    fit_bases,
    reference_basis,
    reference_histograms,
    run_pass,
)
from filterdb.analysis.blas import single_threaded_blas
from filterdb.analysis.divergence import N_BINS, SplitDivergences, divergence_from_counts
from filterdb.analysis.groups import ALIASES, select_layers, select_models
from filterdb.analysis.metrics import DEFAULT_VE, METRIC_NAMES, SPARSITY_EPS
from filterdb.analysis.metrics_table import MODEL_INFO_COLUMNS, _open, layer_metrics_frame
from filterdb.analysis.stats import (
    CONFIDENCE,
    FEWER_THAN_TWO,
    PERMUTATIONS,
    Permutation,
    holm,
    packed_labelings,
    paired,
    paired_permutation_test,
    permutation_p,
    permutation_test_columns,
    sign_flips,
    two_sample_columns,
)
from filterdb.analysis.subset_sums import PackedCounts, PackedMasks
from filterdb.errors import FilterDBError

EACH_MODEL_ONCE = "each model counts once: its value is the mean of the metric over its selected layers"
POOLED = ("each model counts once: its value pools its selected layers as the paper does (orthogonality "
          "weighted by out_channels, variance entropy by non-sparse filters, sparsity over filters)")
AGGREGATES = ("model", "pooled")
POOL_WEIGHTS = {"sparsity": "n_filters", "ve_raw": "n_filters", "ve_linf": "n_nonsparse",
                "ve_normalized": "n_nonsparse", "orthogonality": "out_channels", "l1_norm": None, "l2_norm": None}
PAIR_COLUMN = "pair"
DEFAULT_KERNEL = "3x3"
ALL_KERNELS = "all"


# Columns of Comparison.to_frame() that count something (integers, also in CSV and JSON).
COUNT_COLUMNS = {"n_a", "n_b", "n_pairs", "n_permutations", "paired_n_permutations",
                 "models_a", "models_b", "filters_a", "filters_b"}


@dataclass
class Comparison:
    """The result of :func:`compare_groups`; every part is a DataFrame."""
    group_a: str
    group_b: str
    layer: str
    by: str | None
    models: pd.DataFrame  # group, model_id, name, [by], pair
    per_model: pd.DataFrame  # group, cell, layers, model_id, n_layers, n_filters, metric values
    groups: pd.DataFrame  # per cell and group: n_models, n_layers, n_filters, metric mean/std/median
    tests: pd.DataFrame  # per cell and metric: unpaired and paired statistics side by side
    divergence: pd.DataFrame  # per cell and kernel
    pairs: pd.DataFrame = field(default_factory=pd.DataFrame)  # per cell, metric and pair: the differences
    notes: list[str] = field(default_factory=list)
    kernel: str = DEFAULT_KERNEL
    aggregate: str = "model"
    basis: str = DATABASE
    permutations: int = PERMUTATIONS

    def to_frame(self) -> pd.DataFrame:
        """One flat table: a row per layer group and metric (unpaired and paired columns), then a
        row per layer group and kernel for the divergence (metric "divergence")."""
        keys = (["by"] if self.by else []) + ["layers"]
        div = self.divergence.assign(metric="divergence")
        frame = pd.concat([self.tests.assign(kernel=self.kernel), div], ignore_index=True)
        for column in COUNT_COLUMNS & set(frame.columns):  # counts stay integers; blank where a row has none
            frame[column] = frame[column].astype("Int64")
        frame.insert(0, "group_a", self.group_a)
        frame.insert(1, "group_b", self.group_b)
        order = ["group_a", "group_b", *keys, "metric", "kernel"]
        return frame[order + [c for c in frame.columns if c not in (*order, "cell")]]

    def __repr__(self) -> str:
        n_a = int((self.models["group"] == self.group_a).sum()) if len(self.models) else 0
        n_b = int((self.models["group"] == self.group_b).sum()) if len(self.models) else 0
        cells = self.tests["layers"].nunique() if len(self.tests) else 0
        return (f"Comparison(A={self.group_a!r} ({n_a} models) vs B={self.group_b!r} ({n_b} models), layers "
                f"{self.layer!r} ({cells} layer group(s)), kernel {self.kernel}, aggregate {self.aggregate}; "
                ".to_frame(), .display(), .groups, .per_model, .divergence, .plot())")

    def _repr_html_(self) -> str:
        """What a notebook shows: the groups, the statistics table and the divergence (:mod:`.rendering`)."""
        from filterdb.analysis.rendering import comparison_html
        return comparison_html(self)

    def plot(self, path=None):
        """A figure (one panel per metric: mean ± std of each group per layer group); saved to ``path``
        (.png, .pdf, .svg) when given. Returns the matplotlib Figure."""
        from filterdb.analysis.rendering import plot_comparison
        return plot_comparison(self, path)

    def display(self) -> pd.DataFrame:
        """The comparison table for people: one row per layer group, metric and test."""
        keys = (["by"] if self.by else []) + ["layers"]
        rows = []
        for _, t in self.tests.iterrows():
            common = {**{k: str(t[k]) for k in keys}, "metric": t["metric"]}
            rows.append({**common, "test": "unpaired: MWU", "n": f"{t['n_a']} vs {t['n_b']}",
                         "A mean ± std": _pm(t["mean_a"], t["std_a"]), "B mean ± std": _pm(t["mean_b"], t["std_b"]),
                         "A - B": t["difference"], f"{CONFIDENCE:.0%} CI": _ci(t["ci_low"], t["ci_high"], t["note"]),
                         "p": t["p_value"], "p Holm": t["p_holm"], "perm p": t["perm_p"],
                         "null med |A-B|": t["perm_null_median"], "Cliff's d": t["cliffs_delta"]})
            if t["n_pairs"] > 0:
                rows.append({**common, "test": "paired: Wilcoxon", "n": f"{t['n_pairs']} pairs",
                             "A mean ± std": "", "B mean ± std": "", "A - B": t["paired_difference"],
                             f"{CONFIDENCE:.0%} CI": _ci(t["paired_ci_low"], t["paired_ci_high"], t["paired_note"]),
                             "p": t["paired_p_value"], "p Holm": t["paired_p_holm"], "perm p": t["paired_perm_p"],
                             "null med |A-B|": t["paired_perm_null_median"], "Cliff's d": math.nan})
        return pd.DataFrame(rows)


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "nan"
    return f"{mean:.4g} ± {std:.2g}" if not math.isnan(std) else f"{mean:.4g}"


def _ci(lo: float, hi: float, note: str) -> str:
    if math.isnan(lo):
        return note or "nan"
    return f"[{lo:.3g}, {hi:.3g}]"


def compare_groups(db, group_a: str = "robust", group_b: str = "normal", layer: str = "first", *,
                   by: str | None = None, metrics: list[str] | None = None, kernel: str | None = DEFAULT_KERNEL,
                   basis: str = DATABASE, aggregate: str = "model", paired_by: str | None = "auto",
                   permutations: int = PERMUTATIONS, eps: float = SPARSITY_EPS, seed: int = 0,
                   with_divergence: bool = True, executor: Executor | None = None,
                   progress: bool = False) -> Comparison:
    """Compare the models of ``group_a`` and ``group_b`` on the layers that ``layer`` selects.

    ``db``: a FilterDB or a database path. ``by``: a model column; compare within each of
    its values (``--by dataset``). ``metrics``: names from METRIC_NAMES (default: all).
    ``kernel``: layers of that kernel size (default 3x3; ``"all"`` or None: every size).
    ``basis``: the divergence's reference set, ``database``, ``groups`` or a group expression.
    ``aggregate``: ``model`` (unweighted mean over a model's layers) or ``pooled`` (the paper's).
    ``paired_by``: ``auto`` (pairs from the model column ``pair`` where the groups have any),
    a model column, or None (unpaired only). ``permutations``: the bound on each permutation
    null (all labelings when there are fewer). ``executor``: a concurrent.futures executor
    (process pool, ``dask.distributed.Client.get_executor()``) for the per-model work.
    Errors name the culprit and list the valid choices.
    """
    metrics = _check_metrics(metrics)
    if aggregate not in AGGREGATES:
        raise FilterDBError(f"unknown aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    if permutations < 1:
        raise FilterDBError(f"--permutations must be at least 1, got {permutations}")
    kernel = None if kernel in (None, ALL_KERNELS) else kernel
    by = ALIASES.get(by, by) if by else None
    if group_a == group_b:
        raise FilterDBError(f"both groups are {group_a!r}: every difference would be 0; to see what models trained "
                            "alike give, compare two halves of it, e.g. 'normal,seed=0|1|2|3' 'normal,seed=4|5|6|7'")
    db, owned = _open(db)
    try:
        by_key = db.models.sort_values("key")  # results (permutation nulls) independent of the order models were added
        models_a = select_models(by_key, group_a)
        models_b = select_models(by_key, group_b)
        pair_column = _pair_column(paired_by, db.models)
        notes = [EACH_MODEL_ONCE if aggregate == "model" else POOLED,
                 f"default variance entropy: {DEFAULT_VE} (L-inf-scaled, sparse filters removed)",
                 f"kernel: {kernel or 'all sizes'}"]
        overlap = models_a.index.intersection(models_b.index)
        if len(overlap):
            notes.append(f"{len(overlap)} model(s) are in both groups (no permutation null)")
        models = _group_models(models_a, models_b, group_a, group_b, by, pair_column)
        layers = db.layers[db.layers["model_id"].isin(models["model_id"])]
        if kernel is not None:
            if kernel not in set(db.layers["kernel"]):
                raise FilterDBError(f"no {kernel} layers in the database; kernels present: {', '.join(db.kernels)}"
                                    f"; choose one with --kernel (or --kernel all)")
            layers = layers[layers["kernel"] == kernel]
        selected = select_layers(layers, layer)
        selected = selected.join(models.set_index("model_id")[["group", "by"]], on="model_id", how="inner")
        for name in (group_a, group_b):
            if not (selected["group"] == name).any():
                raise FilterDBError(f"layer selector {layer!r} selects no layers of group {name!r}"
                                    + (f" with kernel {kernel}" if kernel else "") + "; try --layer all or --kernel all")
        ids = sorted(set(selected["model_id"]))
        if progress:
            from filterdb.progress import progress_bar
            with progress_bar("models", transient=True) as bar:
                task = bar.add_task("metrics", total=len(ids), status="")
                values, moments = layer_metrics_frame(db, ids, eps, executor, lambda _: bar.advance(task))
        else:
            values, moments = layer_metrics_frame(db, ids, eps, executor)
        selected = selected.reset_index(names="row").merge(
            values[["model_id", "layer_index", *METRIC_NAMES, "absmax", "n_nonsparse"]], on=["model_id", "layer_index"])
        selected["cell"] = list(zip(selected["by"], selected["layers"].astype(str)))
        per_model = _per_model(selected, metrics, aggregate)
        groups = _group_summary(per_model, metrics, group_a, group_b)
        pair_of = dict(zip(models["model_id"], models["pair"]))
        with single_threaded_blas():
            tests, pairs = _metric_statistics(per_model, metrics, group_a, group_b, pair_of, seed, permutations, len(overlap) > 0)
        if pair_column and paired_by not in ("auto", None) and not (tests["n_pairs"] > 0).any():
            raise FilterDBError(f"no model of {group_a!r} shares a {pair_column} value with one of {group_b!r}: "
                                "no pairs to test; drop --paired")
        if pair_column and (tests["n_pairs"] > 0).any():
            notes.append(f"pairs: models of the two groups sharing a value of {pair_column!r}")
        notes.append(f"permutation nulls: up to {permutations} label shuffles (seed {seed}), every labeling when "
                     "there are fewer; p-values Holm-adjusted over metrics x layer groups")
        divergence = (_divergences(db, selected, values, moments, (group_a, group_b), basis, eps, seed, permutations,
                                   len(overlap) > 0, executor, progress, pair_of)
                      if with_divergence else pd.DataFrame(columns=["by", "layers", "kernel", "divergence"]))
        per_model = per_model.join(db.models[list(MODEL_INFO_COLUMNS)], on="model_id")  # no merge needed later
        result = Comparison(group_a, group_b, str(layer), by, models, per_model, groups, tests, divergence, pairs,
                            notes, kernel or ALL_KERNELS, aggregate, basis, permutations)
        return _drop_by(result) if by is None else result
    finally:
        if owned:
            db.close()


def _pair_column(paired_by, models: pd.DataFrame) -> str | None:
    if paired_by is None or paired_by == "none":
        return None
    column = PAIR_COLUMN if paired_by == "auto" else ALIASES.get(paired_by, paired_by)
    if column not in models.columns:
        if paired_by == "auto":
            return None
        raise FilterDBError(f"unknown model column {column!r} for --paired; valid: {', '.join(db_columns())}")
    return column


def _check_metrics(metrics):
    if not metrics:
        return list(METRIC_NAMES)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise FilterDBError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRIC_NAMES)}")
    return list(metrics)


def _group_models(models_a, models_b, group_a, group_b, by, pair_column) -> pd.DataFrame:
    if by and by not in db_columns():
        raise FilterDBError(f"unknown model column {by!r} for --by; valid: {', '.join(db_columns())}")
    frames = []
    for name, frame in ((group_a, models_a), (group_b, models_b)):
        pair = frame[pair_column].astype(str).to_numpy() if pair_column else ""
        frames.append(pd.DataFrame({"group": name, "model_id": frame.index, "name": frame["name"].to_numpy(),
                                    "by": frame[by].astype(str).to_numpy() if by else "", "pair": pair}))
    models = pd.concat(frames, ignore_index=True)
    models.loc[models["pair"].isin(["nan", "-1", "None"]), "pair"] = ""  # missing values of non-string columns
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


def _per_model(selected: pd.DataFrame, metrics: list[str], aggregate: str = "model") -> pd.DataFrame:
    """One row per (group, by, layers, model): the metric over the model's selected layers."""
    keys = ["group", "by", "layers", "model_id"]
    selected = selected.assign(n_filters=selected["stop"] - selected["start"])
    grouped = selected.groupby(keys, observed=True, sort=True)
    if aggregate == "model":
        frame = grouped[metrics].mean()
    else:
        frame = pd.DataFrame(index=grouped.size().index)
        for m in metrics:
            weight = selected[POOL_WEIGHTS[m]].astype(float) if POOL_WEIGHTS[m] else pd.Series(1.0, selected.index)
            weight = weight.where(selected[m].notna(), 0.0)
            total = (selected[m].fillna(0.0) * weight).groupby([selected[k] for k in keys], observed=True).sum()
            weights = weight.groupby([selected[k] for k in keys], observed=True).sum()
            frame[m] = (total / weights.where(weights > 0)).reindex(frame.index)
    frame.insert(0, "n_layers", grouped.size())
    frame.insert(1, "n_filters", grouped["n_filters"].sum())
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
    if isinstance(per_model["layers"].dtype, pd.CategoricalDtype):  # deciles: "0" first, then (0, 0.1], ...
        out["layers"] = pd.Categorical(out["layers"], categories=per_model["layers"].cat.categories, ordered=True)
    order = {group_a: 0, group_b: 1}
    return out.sort_values(["by", "layers", "group"], key=lambda s: s.map(order) if s.name == "group" else s,
                           kind="stable").reset_index(drop=True)


def match_pairs(a: pd.DataFrame, b: pd.DataFrame, pair_of: dict) -> list[tuple[str, str, str]]:
    """(pair, model A, model B) for every non-empty pair value held by exactly one model of each group."""
    by_pair_a, by_pair_b = defaultdict(list), defaultdict(list)
    for mid in a["model_id"]:
        if pair_of.get(mid):
            by_pair_a[pair_of[mid]].append(mid)
    for mid in b["model_id"]:
        if pair_of.get(mid):
            by_pair_b[pair_of[mid]].append(mid)
    return [(p, by_pair_a[p][0], by_pair_b[p][0]) for p in sorted(by_pair_a)
            if len(by_pair_a[p]) == 1 and len(by_pair_b.get(p, ())) == 1 and by_pair_a[p][0] != by_pair_b[p][0]]


def _metric_statistics(per_model: pd.DataFrame, metrics, group_a, group_b, pair_of: dict, seed: int,
                       permutations: int, overlap: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per layer group and metric, the unpaired and paired statistics of the per-model values
    (:mod:`.stats`), and per matched pair its difference."""
    rows, pair_rows = [], []
    for (by, cell), frame in per_model.groupby(["by", "layers"], observed=True, sort=True):
        a, b = frame[frame["group"] == group_a], frame[frame["group"] == group_b]
        matched = match_pairs(a, b, pair_of)
        va, vb = a.set_index("model_id"), b.set_index("model_id")
        values_a, values_b = a[metrics].to_numpy(dtype=float), b[metrics].to_numpy(dtype=float)
        samples = two_sample_columns(values_a, values_b, seed)
        perms = ([Permutation.none()] * len(metrics) if overlap
                 else permutation_test_columns(values_a, values_b, permutations, seed))
        for m, s, perm in zip(metrics, samples, perms):
            row = {"by": by, "layers": cell, "metric": m, "n_a": s.n_a, "n_b": s.n_b,
                   "mean_a": s.mean_a, "std_a": a[m].std(ddof=1), "median_a": a[m].median(),
                   "mean_b": s.mean_b, "std_b": b[m].std(ddof=1), "median_b": b[m].median(),
                   "test": "Mann-Whitney U", "difference": s.difference, "ci_low": s.ci_low, "ci_high": s.ci_high,
                   "p_value": s.p_value, "cliffs_delta": s.cliffs_delta, "perm_p": perm.p_value,
                   "perm_null_median": perm.null_median, "n_permutations": perm.n_permutations,
                   "perm_exact": perm.exact, "note": s.note}
            xa = np.array([va.loc[ma, m] for _, ma, _ in matched], dtype=float)
            xb = np.array([vb.loc[mb, m] for _, _, mb in matched], dtype=float)
            if matched:
                ps = paired(xa, xb, seed=seed)
                pperm = paired_permutation_test(xa, xb, permutations, seed)
                row.update({"paired_test": "Wilcoxon signed-rank", "n_pairs": ps.n_pairs,
                            "paired_difference": ps.difference, "paired_ci_low": ps.ci_low,
                            "paired_ci_high": ps.ci_high, "paired_p_value": ps.p_value,
                            "paired_perm_p": pperm.p_value, "paired_perm_null_median": pperm.null_median,
                            "paired_n_permutations": pperm.n_permutations, "paired_note": ps.note})
                for (pair, ma, mb), x, y in zip(matched, xa, xb):
                    pair_rows.append({"by": by, "layers": cell, "metric": m, "pair": pair, "model_a": ma,
                                      "model_b": mb, "value_a": x, "value_b": y, "difference": x - y})
            else:
                row.update({"paired_test": "", "n_pairs": 0, "paired_difference": math.nan,
                            "paired_ci_low": math.nan, "paired_ci_high": math.nan, "paired_p_value": math.nan,
                            "paired_perm_p": math.nan, "paired_perm_null_median": math.nan,
                            "paired_n_permutations": 0, "paired_note": "no matched pairs"})
            rows.append(row)
    tests = pd.DataFrame(rows)
    for column in ("p_value", "perm_p", "paired_p_value", "paired_perm_p"):
        tests[_holm_name(column)] = holm(tests[column].to_numpy(dtype=float))
    return tests, pd.DataFrame(pair_rows)


def _holm_name(column: str) -> str:
    return {"p_value": "p_holm", "perm_p": "perm_p_holm", "paired_p_value": "paired_p_holm",
            "paired_perm_p": "paired_perm_p_holm"}[column]


# ---------------------------------------------------------------------------- divergence

def _divergences(db, selected: pd.DataFrame, values, moments: Mapping, groups: tuple[str, str], basis: str, eps: float,
                 seed: int, permutations: int, overlap: bool, executor, progress: bool, pair_of: dict
                 ) -> pd.DataFrame:
    """Divergence per (by, layers, kernel) on the chosen basis, from per-model histogram counts,
    with its permutation null over models (labels shuffled, each model whole) and, where every
    model is in a matched pair, the null of labels swapped within pairs (twins share their
    initial weights, so their filters are alike: shuffling across pairs overstates D's null)."""
    cells = {}
    for (by, cell, kernel), frame in selected.groupby(["by", "layers", "kernel"], observed=True, sort=True):
        if set(frame["group"]) == set(groups):  # a kernel only one group has: nothing to compare
            cells[(by, cell, kernel)] = frame
    targets = defaultdict(list)
    for key, frame in cells.items():
        for row in sorted(set(frame["row"])):
            targets[int(row)].append(key)
    absmax = _absmax(db, values, targets)
    label = "divergence" if progress else None
    if basis == GROUPS:
        members = {key: sorted(set(frame["row"])) for key, frame in cells.items()}
        bases = fit_bases(db, members, values, moments, eps, executor, "divergence basis" if progress else None,
                          GROUPS)
        counts = {key: acc.counts for key, acc in
                  run_pass(db, "hist", dict(targets), absmax, bases, eps, executor, label).items()}
    else:
        kernels = sorted({key[2] for key in cells})
        reference = {k: reference_basis(db, k, basis, eps, executor, progress) for k in kernels}
        bases = {key: reference[key[2]] for key in cells}
        counts = _reference_counts(db, cells, targets, absmax, reference, basis, eps, executor, label)
    rows = []
    for key, frame in cells.items():
        by, cell, kernel = key
        b = bases[key]
        d = len(b.pca.components)
        model_groups = frame.drop_duplicates(["model_id", "group"])[["model_id", "group"]]
        ids = {g: list(model_groups.loc[model_groups["group"] == g, "model_id"]) for g in groups}
        per_model = {mid: counts.get((key, mid), np.zeros((d, N_BINS), np.int64)) for mid in set(frame["model_id"])}
        total_a = sum(per_model[m] for m in ids[groups[0]])
        total_b = sum(per_model[m] for m in ids[groups[1]])
        result = divergence_from_counts(b, total_a, total_b)
        if overlap:
            perm = Permutation.none()
        else:
            perm = divergence_permutation(b, [per_model[m] for m in ids[groups[0]]],
                                          [per_model[m] for m in ids[groups[1]]], result.value, permutations, seed)
        matched = [] if overlap else match_pairs(pd.DataFrame({"model_id": ids[groups[0]]}),
                                                 pd.DataFrame({"model_id": ids[groups[1]]}), pair_of)
        if matched and len(matched) == len(ids[groups[0]]) == len(ids[groups[1]]):
            twin = divergence_permutation(b, [per_model[a] for _, a, _ in matched],
                                          [per_model[x] for _, _, x in matched], result.value, permutations, seed,
                                          paired=True)
        else:
            twin = Permutation.none()
        note = result.reason or (FEWER_THAN_TWO if min(len(ids[groups[0]]), len(ids[groups[1]])) < 2 else "")
        rows.append({"by": by, "layers": cell, "kernel": kernel, "basis": b.source, "divergence": result.value,
                     "perm_p": perm.p_value, "perm_null_median": perm.null_median,
                     "n_permutations": perm.n_permutations, "perm_exact": perm.exact,
                     "paired_perm_p": twin.p_value, "paired_perm_null_median": twin.null_median,
                     "models_a": len(ids[groups[0]]), "models_b": len(ids[groups[1]]),
                     "filters_a": result.n_a, "filters_b": result.n_b, "note": note})
    out = pd.DataFrame(rows, columns=["by", "layers", "kernel", "basis", "divergence", "perm_p", "perm_null_median",
                                      "n_permutations", "perm_exact", "paired_perm_p", "paired_perm_null_median",
                                      "models_a", "models_b", "filters_a", "filters_b", "note"])
    out.insert(out.columns.get_loc("perm_p") + 1, "perm_p_holm", holm(out["perm_p"].to_numpy(dtype=float)))
    out.insert(out.columns.get_loc("paired_perm_p") + 1, "paired_perm_p_holm",
               holm(out["paired_perm_p"].to_numpy(dtype=float)))
    return out


def _reference_counts(db, cells: dict, targets: dict, absmax: dict, reference: dict, basis: str, eps: float,
                      executor, label) -> dict:
    """{(cell key, model_id): bin counts} on reference bases, summed from the cached per-layer counts."""
    kernel_of = db.layers.loc[sorted(targets), "kernel"].to_dict()
    per_row = {}
    for kernel, b in reference.items():
        rows = [row for row in sorted(targets) if kernel_of[row] == kernel]
        per_row.update(reference_histograms(db, rows, absmax, b, basis, kernel, eps, executor, label))
    model_of = db.layers.loc[sorted(targets), "model_id"].to_dict()
    counts: dict = {}
    for row in sorted(targets):
        for key in targets[row]:
            at = (key, model_of[row])
            counts[at] = counts[at] + per_row[row] if at in counts else per_row[row].copy()
    return counts


def divergence_permutation(basis, counts_a: list[np.ndarray], counts_b: list[np.ndarray], observed: float,
                           n_permutations: int = PERMUTATIONS, seed: int = 0, paired: bool = False,
                           block: int = 2048) -> Permutation:
    """The divergence's null: D of the two groups with their model labels shuffled (each model's
    filters stay together), on the same basis; ``paired``: counts_a[k] and counts_b[k] are twins
    and the labels are swapped within pairs only. Groups of fewer than 2 models: no null."""
    if len(counts_a) < 2 or len(counts_b) < 2 or math.isnan(observed):
        return Permutation.none()
    counts = np.stack(counts_a + counts_b)  # (n, d, bins), integers
    splits = SplitDivergences(counts.sum(axis=0), basis.edges, basis.pca.explained_variance_ratio)
    packed = PackedCounts(counts.reshape(len(counts), -1), splits.columns)
    masks: np.ndarray | PackedMasks
    if paired:
        signs, exact = sign_flips(len(counts_a), n_permutations, seed)
        masks = np.concatenate([signs > 0, signs < 0], axis=1)
    else:
        masks, exact = packed_labelings(len(counts_a), len(counts_b), n_permutations, seed)
    with single_threaded_blas():  # in blocks of labelings: their integer sums stay small at any model count
        null = np.concatenate([splits(packed.masked_sums(masks[lo:lo + block]))
                               for lo in range(0, len(masks), block)])
    finite = null[np.isfinite(null)]
    return Permutation(permutation_p(observed, null, exact), float(np.median(finite)) if len(finite) else math.nan,
                       len(null), exact)


def _drop_by(result: Comparison) -> Comparison:
    for name in ("models", "per_model", "groups", "tests", "divergence", "pairs"):
        frame = getattr(result, name)
        if "by" in frame.columns:
            setattr(result, name, frame.drop(columns="by"))
    return result


def baseline_halves(db, group: str = "normal") -> tuple[str, str]:
    """Two group expressions splitting ``group`` into halves: a null comparison of models trained
    alike. By seed where the models have two or more seeds (``normal,seed=0|1|2|3`` and
    ``normal,seed=4|5|6|7``: each architecture on both sides), else alternating model ids in
    (architecture, name) order."""
    db, owned = _open(db)
    try:
        models = select_models(db.models, group).sort_values(["architecture", "seed", "name"])
    finally:
        if owned:
            db.close()
    ids = list(models.index)
    if len(ids) < 2:
        raise FilterDBError(f"group {group!r} has {len(ids)} model(s); a baseline needs two halves")
    seeds = sorted({int(s) for s in pd.to_numeric(models["seed"], errors="coerce").dropna()})
    if len(seeds) >= 2 and models["seed"].notna().all():
        half = seeds[:len(seeds) // 2], seeds[len(seeds) // 2:]
        low, high = ("|".join(str(s) for s in h) for h in half)
        return f"{group},seed={low}", f"{group},seed={high}"
    return f"{group},model_id=" + "|".join(ids[0::2]), f"{group},model_id=" + "|".join(ids[1::2])


def group_label(expression: str) -> str:
    """A group expression as a person names it: ``normal,seed=0|1|2|3`` -> ``normal, seeds 0-3``;
    a list of model ids -> ``normal, 8 models``."""
    parts = []
    for term in expression.split(","):
        column, _, value = term.partition("=")
        values = value.split("|")
        if column == "seed" and all(v.isdigit() for v in values):
            numbers = sorted(int(v) for v in values)
            run = numbers == list(range(numbers[0], numbers[-1] + 1))
            parts.append(f"seed{'s' if len(numbers) > 1 else ''} "
                         + (f"{numbers[0]}-{numbers[-1]}" if run and len(numbers) > 2 else ", ".join(map(str, numbers))))
        elif column == "model_id" and len(values) > 1:
            parts.append(f"{len(values)} models")
        else:
            parts.append(term)
    return ", ".join(parts)
