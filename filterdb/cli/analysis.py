"""``filterdb metrics`` and ``filterdb compare`` (registered by filterdb.cli through ``commands``)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click

from filterdb.analysis.metrics import METRIC_DOCS, METRIC_NAMES
from filterdb.cli.options import (
    check_output_file,
    db_option,
    format_option,
    jobs_option,
    plot_option,
    resolve_db,
    scheduler_option,
    select_option,
    selected_models,
)
from filterdb.errors import FilterDBError
from filterdb.output import emit

_TABLE_COLUMNS = ("model", "name", "kernel", "conv_depth_norm", "n_filters", *METRIC_NAMES, "notes")




@contextmanager
def _executor(jobs: int, scheduler: str | None):
    """A process pool, a Dask client (both have submit(fn, *args) -> future.result()), or None."""
    if scheduler:
        from dask.distributed import Client

        from filterdb.errors import FilterDBError
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise FilterDBError(f"cannot reach the Dask scheduler at {scheduler} ({exc}); "
                                "check the address (e.g. tcp://HOST:8786) and that the scheduler runs") from exc
        with client:
            yield client
    elif jobs > 1:
        from filterdb.analysis.metrics_table import worker_pool
        with worker_pool(jobs) as pool:
            yield pool
    else:
        yield None


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


_METRICS_HELP = """Per-layer metrics of the filters in the database.

Computed one layer at a time and cached in <db>/metrics/ (for a file from 'filterdb
export': $FILTERDB_HOME/cache/<its digest>/metrics/; recomputed when a model is
re-extracted or a metric's definition changes). NaN marks an undefined value; the notes
column says why.

\b
""" + "\n".join(f"{name:<14} {doc}" for name, doc in METRIC_DOCS.items())


@click.command(help=_METRICS_HELP)
@db_option
@click.option("--models", "-m", multiple=True, metavar="ID|NAME",
              help="Models to report, by model id or name (repeat or separate with commas) [default: all].")
@select_option
@format_option
@jobs_option
@click.option("--kernel", default="3x3", show_default=True, metavar="KxK|all",
              help="Only layers of this kernel size; 'all' for every size.")
@scheduler_option
def metrics(db_path, models, select, fmt, jobs, kernel, scheduler):
    from filterdb.analysis.metrics_table import database_metrics, resolve_models
    from filterdb.store import open_database
    with open_database(resolve_db(db_path)) as db, _executor(jobs, scheduler) as executor:
        wanted = resolve_models(db.models, _split(models)) if models else list(db.models.index)
        if select:
            chosen = set(selected_models(db.models, select).index)
            wanted = [m for m in wanted if m in chosen]
            if not wanted:
                raise FilterDBError(f"none of the models given with --models is in --select {select!r}")
        frame = database_metrics(db, wanted, executor=executor,
                                 progress=fmt == "table", kernel=None if kernel == "all" else kernel)
    if fmt == "table":
        frame = frame[list(_TABLE_COLUMNS)].rename(columns={"name": "layer"})
    emit(frame, fmt, priority=["model", "layer", "ve_linf", "orthogonality", "sparsity", "l2_norm", "l1_norm"],
         title=f"Per-layer metrics, kernel {kernel} (default variance entropy: ve_linf)")


_COMPARE_HELP = """Compare two groups of models, e.g. `filterdb compare robust normal --layer first`.

GROUP_A and GROUP_B select models by the model table: robust, normal, COLUMN=VALUE
(arch for architecture; COLUMN=V1|V2 for several values), joined with commas:
robust,dataset=cifar10. Layers are those of one kernel size (--kernel, default 3x3 as in
the papers: first/last are the first/last 3x3 convolution).

\b
Aggregation (--aggregate), each model counts once per layer group:
  model   x_m = mean over the model's selected layers (the default; the unit of the tests)
  pooled  the paper's pooling: x_m = sum_l w_l x_l / sum_l w_l with w_l = out_channels
          (orthogonality), non-sparse filters (ve_linf, ve_normalized), filters
          (sparsity, ve_raw: sparsity = sparse filters / filters); norms unweighted

\b
Statistics, A - B on the per-model values:
  unpaired  difference of means, bootstrap 95% CI (each group resampled), Mann-Whitney U
            p (two-sided), Cliff's delta = (#{a>b} - #{a<b}) / (n_a n_b)
  paired    where the groups are matched pairs (models sharing a value of the column
            `pair`, or of --paired COLUMN): d_k = a_k - b_k per pair, mean d with a paired
            bootstrap 95% CI (pairs resampled), Wilcoxon signed-rank p (two-sided)
  perm p    permutation null, T = |mean A - mean B|: labels shuffled over models (each
            model whole; within pairs for paired rows), p = (1 + #{T* >= T}) / (1 + N),
            exact over all labelings when there are at most N (--permutations N)
  p Holm    Holm's step-down adjustment over all metrics x layer groups of the table:
            p_(j) = max_{i<=j} min(1, (m - i + 1) p_(i))
A group with fewer than 2 models gets no p-value and no interval.

\b
Divergence of the groups' filters (the robustness paper's, natural log):
  D = sum_i EVR_i (KL(p_i||q_i) + KL(q_i||p_i)); filters scaled by their L-inf norm;
  p_i, q_i: 70-bin density histograms of the groups' non-sparse filters projected on
  PCA component i, over one scalar range (min, max of all projections of the reference
  filters, sparse included), empty bins = float32 eps, renormalised to sum 1.
  --basis names the reference set the PCA (EVR_i, v_i) and the range come from:
  database  every model of the database (the authors' pipeline; the default), cached
            in <db>/divergence/ until the models change
  groups    the compared layers of both groups, per layer group
  EXPR      a reference group, e.g. dataset=cifar10
  Its permutation null shuffles the model labels (same basis) and gives perm p and the
  null median of D.
"""


@click.command(help=_COMPARE_HELP, short_help="Compare two groups of models: per-layer metrics, paired, unpaired and "
                                                "permutation statistics, filter divergence.")
@click.argument("group_a")
@click.argument("group_b")
@click.option("--layer", default="first", show_default=True,
              help="first, last, all, an INDEX (e.g. 0, -1), a conv_depth_norm range LO-HI (e.g. 0.2-0.5), "
                   "or deciles (first layer as '0', then right-closed deciles of conv_depth_norm).")
@click.option("--by", default=None, metavar="COLUMN", help="Compare within each value of a model column, e.g. dataset.")
@click.option("--metric", "metric_names", multiple=True, type=click.Choice(METRIC_NAMES),
              help="Metric to compare (repeatable) [default: all].")
@click.option("--kernel", default="3x3", show_default=True, metavar="KxK|all",
              help="Only layers of this kernel size; 'all' for every size.")
@click.option("--aggregate", type=click.Choice(("model", "pooled")), default="model", show_default=True,
              help="How a model's layers in a layer group make its value (see above).")
@click.option("--basis", default="database", show_default=True, metavar="database|groups|EXPR",
              help="Reference set of the divergence's PCA basis and range (see above).")
@click.option("--paired", "paired_by", default="auto", show_default=True, metavar="auto|none|COLUMN",
              help="Pair the models of the two groups by a model column (auto: the column pair, where filled).")
@click.option("--permutations", default=9999, show_default=True, metavar="N",
              help="Bound on each permutation null (all labelings when there are fewer).")
@click.option("--no-divergence", is_flag=True, help="Skip the divergence (it reads the selected filters once).")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap intervals and permutations.")
@format_option
@plot_option
@db_option
@jobs_option
@scheduler_option
def compare(group_a, group_b, layer, by, metric_names, kernel, aggregate, basis, paired_by, permutations,
            no_divergence, seed, fmt, plot, db_path, jobs, scheduler):
    from filterdb.analysis.compare import compare_groups
    from filterdb.analysis.rendering import emit_comparison, plot_comparison
    with _executor(jobs, scheduler) as executor:
        result = compare_groups(resolve_db(db_path), group_a, group_b, layer, by=by,
                                metrics=list(metric_names) or None, kernel=kernel, basis=basis, aggregate=aggregate,
                                paired_by=None if paired_by == "none" else paired_by, permutations=permutations,
                                seed=seed, with_divergence=not no_divergence, executor=executor,
                                progress=fmt == "table")
    emit_comparison(result, fmt)
    if plot:
        plot_comparison(result, plot)
        click.echo(f"plot written to {plot}", err=True)




SHOW_COLUMNS = ("layer_index", "name", "kernel", "conv_depth_norm", "in_channels", "out_channels", "n_filters",
                *METRIC_NAMES, "notes")
MODEL_FACTS = ("model_id", "key", "training", "dataset", "architecture", "threat_model", "eps", "clean_acc",
               "robust_acc", "pair")


def find_layer(layers, query: str):
    """The row of a model's layer table named ``query`` (module name), or at layer_index ``query``."""
    hits = layers[layers["name"] == query]
    if hits.empty and query.lstrip("-").isdigit():
        hits = layers[layers["layer_index"] == int(query)]
    if hits.empty:
        from filterdb.output import first_few
        names = first_few([f"{i}:{n}" for i, n in zip(layers["layer_index"], layers["name"])], 8)
        raise FilterDBError(f"no layer {query!r} in this model; give a module name or a layer index "
                            f"(index:name): {names}; 'filterdb show MODEL' lists them all")
    return hits.iloc[0]


@click.command(short_help="A model's layers with their metrics; a layer's filters as a picture or a .npy.")
@click.argument("model")
@click.argument("layer", required=False)
@db_option
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="With LAYER: draw its filters into this file (.png, .pdf or .svg).")
@click.option("--npy", type=click.Path(path_type=Path), default=None,
              help="With LAYER: save its filters, float32 (n, kh, kw) exactly as stored, to this .npy file.")
@format_option
def show(model, layer, db_path, plot, npy, fmt):
    """A model's layers with their metrics; a layer's filters as a picture or a .npy.

    MODEL is a model id, key or name, or a selection that picks one model ('robust,*wrn*',
    the grammar of compare's groups); near matches are suggested. LAYER is a
    module name or a layer index ('filterdb show MODEL' lists them): its metrics, and with
    --plot / --npy its filters. The metrics come from the metrics cache (computed once).
    """
    from filterdb.analysis.filter_plots import PLOT_SUFFIXES, plot_layer

    if layer is None and (plot or npy):
        raise FilterDBError("--plot and --npy draw or save one layer's filters: give MODEL LAYER")
    check_output_file(plot, PLOT_SUFFIXES, "--plot")
    check_output_file(npy, ("npy",), "--npy")
    from filterdb.analysis.groups import find_model
    from filterdb.analysis.metrics_table import database_metrics
    from filterdb.store import open_database

    with open_database(resolve_db(db_path)) as db:
        mid = find_model(db.models, model)
        facts = db.models.loc[mid]
        layers = db.layers[db.layers["model_id"] == mid]
        row = find_layer(layers, layer) if layer is not None else None
        frame = database_metrics(db, [mid])[list(SHOW_COLUMNS)]
        if row is not None:
            frame = frame[frame["layer_index"] == int(row["layer_index"])]
            filters = db.read_layer(row) if plot or npy else None
    from filterdb.output import cell_text
    title = f"{facts['name']}: " + ", ".join(f"{c}={cell_text(facts[c])}" for c in MODEL_FACTS
                                             if str(facts[c]) not in ("", "nan"))
    emit(frame.reset_index(drop=True), fmt, title=title,
         priority=["layer_index", "name", "ve_linf", "orthogonality", "sparsity", "kernel", "l2_norm", "l1_norm"])
    if npy:
        import numpy as np

        from filterdb.atomic import atomic_path
        with atomic_path(npy) as tmp, open(tmp, "wb") as fh:
            np.save(fh, filters)
        click.echo(f"{npy}: {filters.shape[0]} filters {row['kernel']}, float32", err=True)
    if plot:
        plot_layer(filters, int(row["out_channels"]), f"{facts['name']}, layer {row['name']} ({row['kernel']}, "
                   f"{row['out_channels']} x {int(row['in_channels']) // int(row['groups'])} filters)", plot)
        click.echo(f"plot written to {plot}", err=True)
