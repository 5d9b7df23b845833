"""``filterdb metrics`` and ``filterdb compare`` (registered by filterdb.cli through ``commands``)."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import click

from filterdb import paths
from filterdb.analysis.metrics import METRIC_DOCS, METRIC_NAMES
from filterdb.output import FORMATS, emit

_DB_HELP = "Database directory [default: $FILTERDB_DB or $FILTERDB_HOME/db]."
_TABLE_COLUMNS = ("model", "name", "kernel", "conv_depth_norm", "n_filters", *METRIC_NAMES, "notes")


_JOBS_HELP = "Worker processes for the per-model work (metrics of uncached models, histograms)."
_SCHEDULER_HELP = "Dask scheduler address (tcp://HOST:8786): run the per-model work on that cluster."


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
        from filterdb.analysis.database import worker_pool
        with worker_pool(jobs) as pool:
            yield pool
    else:
        yield None


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


_METRICS_HELP = """Per-layer metrics of the filters in the database.

Computed one layer at a time and cached in <db>/metrics/ (recomputed when a model is
re-extracted or a metric's definition changes). NaN marks an undefined value; the notes
column says why.

\b
""" + "\n".join(f"{name:<14} {doc}" for name, doc in METRIC_DOCS.items())


@click.command(help=_METRICS_HELP)
@click.option("--db", "db_path", type=click.Path(path_type=Path), default=None, help=_DB_HELP)
@click.option("--models", "-m", multiple=True, metavar="ID|NAME",
              help="Models to report, by model id or name (repeat or separate with commas) [default: all].")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--jobs", "-j", default=1, show_default=True, help=_JOBS_HELP)
@click.option("--scheduler", default=None, help=_SCHEDULER_HELP)
def metrics(db_path, models, fmt, jobs, scheduler):
    from filterdb.analysis.database import database_metrics
    with _executor(jobs, scheduler) as executor:
        frame = database_metrics(db_path or paths.default_db_path(), _split(models), executor=executor,
                                 progress=fmt == "table")
    if fmt == "table":
        frame = frame[list(_TABLE_COLUMNS)].rename(columns={"name": "layer"})
    emit(frame, fmt, title="Per-layer metrics (default variance entropy: ve_linf)")


@click.command()
@click.argument("group_a")
@click.argument("group_b")
@click.option("--layer", default="first", show_default=True,
              help="first, last, all, an INDEX (e.g. 0, -1), a conv_depth_norm range LO-HI (e.g. 0.2-0.5), "
                   "or deciles (first layer as '0', then right-closed deciles of conv_depth_norm).")
@click.option("--by", default=None, metavar="COLUMN", help="Compare within each value of a model column, e.g. dataset.")
@click.option("--metric", "metric_names", multiple=True, type=click.Choice(METRIC_NAMES),
              help="Metric to compare (repeatable) [default: all].")
@click.option("--kernel", default=None, metavar="KxK", help="Only layers of this kernel size, e.g. 3x3.")
@click.option("--no-divergence", is_flag=True, help="Skip the divergence (it reads the selected filters once).")
@click.option("--seed", default=0, show_default=True, help="Seed of the bootstrap confidence intervals.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also save a figure (mean ± std per group and layer group) to this file.")
@click.option("--db", "db_path", type=click.Path(path_type=Path), default=None, help=_DB_HELP)
@click.option("--jobs", "-j", default=1, show_default=True, help=_JOBS_HELP)
@click.option("--scheduler", default=None, help=_SCHEDULER_HELP)
def compare(group_a, group_b, layer, by, metric_names, kernel, no_divergence, seed, fmt, plot, db_path, jobs,
            scheduler):
    """Compare two groups of models, e.g. `filterdb compare robust normal --layer first`.

    GROUP_A and GROUP_B select models by the model table: robust, normal, COLUMN=VALUE
    (arch for architecture), joined with commas: robust,dataset=cifar10. Each model counts
    once: its value is the mean of a metric over its selected layers. Reports per group
    the models, layers, filters and mean ± std and median of each metric; between groups
    the difference with a bootstrap 95% interval, the Mann-Whitney U p-value, Cliff's delta,
    and the divergence of the groups' filters.
    """
    from filterdb.analysis.compare import compare_groups, emit_comparison, plot_comparison
    with _executor(jobs, scheduler) as executor:
        result = compare_groups(db_path or paths.default_db_path(), group_a, group_b, layer, by=by,
                                metrics=list(metric_names) or None, kernel=kernel, seed=seed,
                                with_divergence=not no_divergence, executor=executor, progress=fmt == "table")
    emit_comparison(result, fmt)
    if plot:
        plot_comparison(result, plot)
        click.echo(f"plot written to {plot}", err=True)


commands = [metrics, compare]
